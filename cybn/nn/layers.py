"""Layers: thin stateful wrappers around ``cybn.functional`` ops (see ``module.py`` for conventions).

Every layer computes through ``cybn.functional`` only; gradients are **overwritten** by ``backward``.
"""
import math

import numpy as np

from .. import functional as F
from .._validation import (MAX_INT, as_generator, check_float_array, conv_output_size, flag, float_dtype,
                           nonnegative_int, pair, plain_array, positive_float, positive_int, real)
from . import init as _init
from .module import Module, Recomputed

__all__ = ["Conv2D", "Linear", "BatchNorm1D", "BatchNorm2D", "ReLU", "MaxPool2D", "Flatten", "Dropout",
           "SoftmaxCrossEntropy"]


# Sizes reach C ``int`` kernel arguments and BLAS dimensions: anything larger is an input bug
# (it could never be allocated), reported as a ValueError naming the argument.
def _size(v, name):
    return positive_int(v, name, MAX_INT)


class _Affine(Module):
    """Shared by Conv2D and Linear: weight from an initializer, optional bias, overwrite-grads."""

    def _init_params(self, shape, bias, dtype, rng, init, size_names):
        bias = flag(bias, "bias")
        self.dtype = float_dtype(dtype)
        n = math.prod(shape)
        if n * self.dtype.itemsize > np.iinfo(np.intp).max:
            raise ValueError(f"{type(self).__name__} weight of shape {tuple(shape)} ({n} values) is too large "
                             f"to allocate: check {size_names}")
        rng = as_generator(rng)
        initializer = _init.init_from_spec(init)
        self.init = initializer
        w = np.ascontiguousarray(initializer(shape, rng, self.dtype), dtype=self.dtype)
        if w.shape != tuple(shape):
            raise ValueError(f"initializer {initializer!r} returned shape {w.shape}, expected {tuple(shape)}")
        self.params["weight"] = w
        if bias:
            fan_in = _init.fans(shape)[0]
            self.params["bias"] = np.ascontiguousarray(
                initializer.bias((shape[0],), fan_in, rng, self.dtype), dtype=self.dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def _grads_out(self):
        """The backward op's ``out``: it writes straight into this layer's gradient arrays."""
        return self.grads["weight"], self.grads.get("bias")


class Conv2D(_Affine):
    """2-D convolution (cross-correlation, like PyTorch). weight (C_out, C_in, kh, kw), bias (C_out,).

    ``needs_input_grad = False`` makes ``backward`` skip the input gradient and return None
    (``Sequential`` sets it on its first layer: the data needs no gradient).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 dtype=np.float32, rng=None, init="he"):
        super().__init__()
        self.in_channels = _size(in_channels, "in_channels")
        self.out_channels = _size(out_channels, "out_channels")
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.padding = pair(padding, "padding", nonnegative_int)
        self._init_params((self.out_channels, self.in_channels) + self.kernel_size, bias, dtype, rng, init,
                          "in_channels, out_channels and kernel_size")

    def forward(self, x):
        self._check_input(x, 4)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2D expects {self.in_channels} input channels, got input shape {x.shape}")
        y = F.conv2d(x, self.params["weight"], self.params.get("bias"), self.stride, self.padding)
        self._save_for_backward(x, y)
        return y

    def backward(self, dy):
        x = self._pop_cache(dy)
        return F.conv2d_backward(dy, x, self.params["weight"], self.stride, self.padding,
                                 compute_dx=self.needs_input_grad, out=self._grads_out())[0]

    def output_shape(self, input_shape):
        n, _, h, w = input_shape
        return (n, self.out_channels) + conv_output_size((h, w), self.kernel_size, self.stride, self.padding)

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if "bias" not in self.params:
            s += ", bias=False"
        return s


class Linear(_Affine):
    """Fully connected layer y = x @ weight.T + bias; weight (out_features, in_features)."""

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, rng=None, init="he"):
        super().__init__()
        self.in_features = _size(in_features, "in_features")
        self.out_features = _size(out_features, "out_features")
        self._init_params((self.out_features, self.in_features), bias, dtype, rng, init,
                          "in_features and out_features")

    def forward(self, x):
        self._check_input(x, 2)
        if x.shape[1] != self.in_features:
            raise ValueError(f"Linear expects {self.in_features} input features, got input shape {x.shape}")
        y = F.linear(x, self.params["weight"], self.params.get("bias"))
        self._save_for_backward(x, y)
        return y

    def backward(self, dy):
        x = self._pop_cache(dy)
        return F.linear_backward(dy, x, self.params["weight"], out=self._grads_out())[0]

    def output_shape(self, input_shape):
        return (input_shape[0], self.out_features)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={'bias' in self.params}")


class _BatchNorm(Module):
    """Batch Normalization (Ioffe & Szegedy, 2015) with PyTorch's running-statistics semantics.

    Training: normalize with the batch mean / biased variance, then update the running stats
    ``r = (1 - momentum) * r + momentum * batch`` with the *unbiased* batch variance
    (``momentum=None``: cumulative average, ``momentum = 1 / num_batches_tracked``).
    Eval: normalize with the running stats. ``affine=False``: no weight/bias parameters.
    """
    _ndim = None
    no_weight_decay = frozenset({"weight", "bias"})

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, dtype=np.float32):
        super().__init__()
        self.num_features = _size(num_features, "num_features")
        self.eps = positive_float(eps, "eps")
        self.momentum = None if momentum is None else real(momentum, "momentum (or None)", 0.0, 1.0)
        self.affine = flag(affine, "affine")
        self.dtype = float_dtype(dtype)
        c = self.num_features
        if self.affine:
            self.params = {"weight": np.ones(c, self.dtype), "bias": np.zeros(c, self.dtype)}
            self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.buffers = {"running_mean": np.zeros(c, self.dtype), "running_var": np.ones(c, self.dtype),
                        "num_batches_tracked": np.zeros((), np.int64)}

    @property
    def running_mean(self):
        return self.buffers["running_mean"]

    @property
    def running_var(self):
        return self.buffers["running_var"]

    @property
    def num_batches_tracked(self):
        return int(self.buffers["num_batches_tracked"])

    def forward(self, x):
        return self._forward(x, False)

    def _forward(self, x, relu):
        """BN's forward, or with ``relu`` relu(BN(x)) from the fused ops: the cache is BN's
        either way (the fused backward recomputes the ReLU mask from it)."""
        self._check_channels(x)
        w, b = self.params.get("weight"), self.params.get("bias")
        if self.training:
            y, mean, var = (F.batch_norm_relu_train if relu else F.batch_norm_train)(
                x, w, b, self.eps, **self._running())
            self._tracked()
            self._save_for_backward(("train", x, mean, var), y)
        else:
            y = (F.batch_norm_relu_eval if relu else F.batch_norm_eval)(
                x, w, b, self.buffers["running_mean"], self.buffers["running_var"], self.eps)
            self._save_for_backward(("eval", x), y)
        return y

    def _forward_relu_pool(self, x):
        """max_pool2d(relu(BN(x)), 2) through the fused op: (y, code, mean, var), BN's cache its
        forward's. In eval mode (only under inference mode, which keeps no caches): (y, None, ...)."""
        self._check_channels(x)
        if not self.training:  # inference mode only (Sequential): nothing is kept, no code needed
            y = F.batch_norm_relu_pool_eval(x, self.params.get("weight"), self.params.get("bias"),
                                            self.buffers["running_mean"], self.buffers["running_var"],
                                            self.eps)
            self._save_for_backward(None, x)
            return y, None, None, None
        y, code, mean, var = F.batch_norm_relu_pool_train(x, self.params.get("weight"),
                                                          self.params.get("bias"), self.eps,
                                                          **self._running())
        self._tracked()
        self._save_for_backward(("train", x, mean, var), x)  # BN's output has x's shape and dtype
        return y, code, mean, var

    def _check_channels(self, x):
        """The input checks of the forward: this layer's dtype and rank, ``num_features`` channels."""
        self._check_input(x, self._ndim)
        if x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__} expects {self.num_features} channels, "
                             f"got input shape {x.shape}")

    def _momentum(self):
        """This batch's momentum (None: the cumulative average, 1 / batches tracked)."""
        if self.momentum is None:
            return 1.0 / (int(self.buffers["num_batches_tracked"]) + 1)
        return self.momentum

    def _running(self):
        """The running-statistics arguments of a training forward: the buffers, updated in place
        by the op (in its kernel), and this batch's momentum."""
        return {"running_mean": self.buffers["running_mean"],
                "running_var": self.buffers["running_var"], "momentum": self._momentum()}

    def _tracked(self):
        """Count a training batch (after its op updated the running statistics)."""
        self.buffers["num_batches_tracked"] += 1

    def _track(self, mean, var, count):
        """Move the running statistics towards a batch's ``mean`` and biased ``var`` over
        ``count`` values per channel, and count the batch (SyncBatchNorm's global statistics)."""
        F.update_running_stats(self.buffers["running_mean"], self.buffers["running_var"], mean, var,
                               count, self._momentum())
        self._tracked()

    def _cached_mode(self):
        """The mode ("train", "eval"; SyncBatchNorm: "sync") of the forward whose cache awaits
        ``backward``; None when there is none (no forward yet, or an inference forward)."""
        return self._cache[0][0] if isinstance(self._cache, tuple) else None

    def backward(self, dy):
        return self._backward(self._pop_cache(dy), dy, False)

    def _backward(self, cache, dy, relu):
        """dx from BN's forward ``cache``; with ``relu``, ``dy`` is the gradient of relu(BN(x))
        (training caches only: the fused backward)."""
        w = self.params.get("weight")
        if cache[0] == "train":
            _, x, mean, var = cache
            if relu:
                dx, dw, db = F.batch_norm_relu_backward(dy, x, w, self.params.get("bias"), mean, var,
                                                        self.eps)
            else:
                dx, dw, db = F.batch_norm_backward(dy, x, w, mean, var, self.eps)
        else:
            dx, dw, db = F.batch_norm_eval_backward(dy, cache[1], w, self.buffers["running_mean"],
                                                    self.buffers["running_var"], self.eps)
        return self._store_grads(dx, dw, db)

    def _backward_relu_pool(self, cache, code, dy):
        """dx of ``_forward_relu_pool`` from BN's training ``cache``, given dy = dL/d(pooled y)."""
        _, x, mean, var = cache
        return self._store_grads(*F.batch_norm_relu_pool_backward(
            dy, code, x, self.params.get("weight"), self.params.get("bias"), mean, var, self.eps))

    def _store_grads(self, dx, dw, db):
        if self.affine:
            np.copyto(self.grads["weight"], dw)
            np.copyto(self.grads["bias"], db)
        return dx

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"


class BatchNorm2D(_BatchNorm):
    """Batch Normalization over (N, C, H, W): per-channel statistics over N*H*W values."""
    _ndim = 4


class BatchNorm1D(_BatchNorm):
    """Batch Normalization over (N, C): per-feature statistics over the batch."""
    _ndim = 2


class ReLU(Module):
    def forward(self, x):
        plain_array(x, "ReLU's input x")
        y = F.relu(x)
        self._save_for_backward(y, y)
        return y

    def backward(self, dy):
        return F.relu_backward(dy, self._pop_cache(dy))


def bn_relu_forward(bn, relu, x):
    """``relu(bn(x))`` in the fused pass, leaving both layers' caches exactly as the two
    forwards would (BN's: its input and statistics; the ReLU's: its output), so either layer's
    own ``backward`` still works and ``bn_relu_backward`` may fuse the two."""
    y = bn._forward(x, True)
    relu._save_for_backward(y, y)
    return y


def bn_relu_backward(bn, relu, dy):
    """``bn.backward(relu.backward(dy))`` in BN's two backward passes when BN ran in training
    mode (the ReLU mask recomputed from BN's cache); else the two backwards. The caller
    guarantees the ReLU's input was this BN's output (consecutive forwards of a Sequential)."""
    if bn._cached_mode() != "train":  # the unfused backwards (they also raise on a missing cache)
        return bn.backward(relu.backward(dy))
    relu._pop_cache(dy)  # validates dy against the ReLU's output (BN's output shape and dtype)
    return bn._backward(bn._pop_cache(dy), dy, True)


def bn_relu_pool_forward(bn, relu, pool, x):
    """``pool(relu(bn(x)))`` for a 2x2, stride-2, unpadded max-pool on even H and W, in one pass
    after BN's statistics (``F.batch_norm_relu_pool_train``; in eval mode, only under inference
    mode, ``F.batch_norm_relu_pool_eval``). BN's cache is its forward's; the ReLU's output and
    the pool's indices, which no pass stores, are rebuilt from it (``Recomputed``) only if the
    ReLU's or the pool's own backward is called."""
    w, b = (bn.params[k].copy() if k in bn.params else None for k in ("weight", "bias"))
    y, code, mean, var = bn._forward_relu_pool(x)
    if code is None:  # eval mode under inference mode: no layer keeps a cache
        relu._save_for_backward(None, x)
        pool._save_for_backward(None, y)
        return y
    relu_out = Recomputed(lambda: F.batch_norm_relu_eval(x, w, b, mean, var, bn.eps))
    relu._save_for_backward(relu_out, x)
    pool._save_for_backward(Recomputed(lambda: (pool._indices(relu_out.value()), x.shape), code=code), y)
    return y


def bn_relu_pool_backward(bn, relu, pool, dy):
    """``bn.backward(relu.backward(pool.backward(dy)))`` after ``bn_relu_pool_forward``, in BN's
    two backward passes (``F.batch_norm_relu_pool_backward``) from the forward's code."""
    code = pool._pop_cache(dy, resolve=False).code
    relu.clear_cache()
    return bn._backward_relu_pool(bn._pop_cache(dy, check=False), code, dy)


class MaxPool2D(Module):
    """Max pooling; ``stride=None`` means ``stride = kernel_size`` (PyTorch)."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else pair(stride, "stride")
        self.padding = pair(padding, "padding", nonnegative_int)
        self._orig = (kernel_size, stride if stride is not None else kernel_size, padding)

    def forward(self, x):
        plain_array(x, "MaxPool2D's input x")
        y, indices = F.max_pool2d(x, self.kernel_size, self.stride, self.padding)
        self._save_for_backward((indices, x.shape), y)
        return y

    def backward(self, dy):
        indices, shape = self._pop_cache(dy)
        return F.max_pool2d_backward(dy, indices, shape)

    def _indices(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)[1]

    def fuses_after_relu(self, shape):
        """Whether ``bn_relu_pool_forward`` can run this pool on input of ``shape``."""
        return (self.kernel_size == (2, 2) and self.stride == (2, 2) and self.padding == (0, 0)
                and len(shape) == 4 and shape[2] % 2 == 0 and shape[3] % 2 == 0)

    def output_shape(self, input_shape):
        n, c, h, w = input_shape
        return (n, c) + conv_output_size((h, w), self.kernel_size, self.stride, self.padding)

    def extra_repr(self):
        k, s, p = self._orig
        return f"kernel_size={k}, stride={s}, padding={p}"


class Flatten(Module):
    """(N, ...) -> (N, prod(...)), C-order like ``torch.nn.Flatten`` (channels vary slowest)."""

    def forward(self, x):
        plain_array(x, "Flatten's input x")
        if x.ndim < 1:
            raise ValueError(f"Flatten expects an input with a batch axis, got a 0-d array (shape {x.shape})")
        # explicit feature count, not -1: reshape(0, -1) is ambiguous for an empty batch
        y = np.ascontiguousarray(x).reshape(x.shape[0], math.prod(x.shape[1:]))
        self._save_for_backward(x.shape, y)
        return y

    def backward(self, dy):
        shape = self._pop_cache(dy)
        return dy.reshape(shape)

    def output_shape(self, input_shape):
        return (input_shape[0], math.prod(int(s) for s in input_shape[1:]))


class Dropout(Module):
    """Inverted dropout: in training zero each value with probability ``p`` and scale the rest by
    ``1/(1-p)``; identity in eval. ``rng``: Generator or int seed (reproducible masks)."""

    def __init__(self, p=0.5, rng=None):
        super().__init__()
        self.p = real(p, "dropout probability p", 0.0, 1.0)
        self.rng = as_generator(rng, "rng")

    def forward(self, x):
        check_float_array(x, "Dropout's input x")
        if not self.training or self.p == 0.0:  # the identity: nothing drawn, nothing computed
            self._save_for_backward(None, x)
            return x
        y, mask = F.dropout(x, self.p, self.rng)
        self._save_for_backward(mask, y)
        return y

    def backward(self, dy):
        mask = self._pop_cache(dy)
        return dy if mask is None else F.dropout_backward(dy, mask, self.p)

    def extra_repr(self):
        return f"p={self.p}"


class SoftmaxCrossEntropy:
    """Mean softmax cross-entropy loss. ``forward(logits, labels)`` -> Python float;
    ``backward(grad=1.0)`` -> dlogits (overwrites nothing: it returns a new array).
    ``probs`` holds the last softmax output (for accuracy / predictions)."""

    def __init__(self):
        self.probs = None
        self._labels = None

    def forward(self, logits, labels):
        loss, probs = F.softmax_cross_entropy(logits, labels)
        self.probs, self._labels = probs, labels
        return loss

    __call__ = forward

    def backward(self, grad=1.0):
        if self.probs is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward() called before forward()")
        return F.softmax_cross_entropy_backward(self.probs, self._labels, grad)

    def __repr__(self):
        return "SoftmaxCrossEntropy()"
