"""``Sequential``: a chain of layers with backward, prediction, state I/O and forward hooks."""
import os

import numpy as np

from .. import _formats
from ..checkpoint import write_atomically
from .._threads import single_threaded_blas
from .._validation import flag, positive_int
from .layers import (BatchNorm1D, BatchNorm2D, MaxPool2D, ReLU, bn_relu_backward, bn_relu_forward,
                     bn_relu_pool_backward, bn_relu_pool_forward)
from .module import Module, _inference
from .inference import DEFAULT_CHUNK_BYTES, infer as _infer

__all__ = ["Sequential", "HookHandle"]


class HookHandle:
    """Returned by ``register_forward_hook``; ``remove()`` unregisters the hook (idempotent)."""

    def __init__(self, hooks, key):
        self._hooks, self._key = hooks, key

    def remove(self):
        self._hooks.pop(self._key, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


class Sequential(Module):
    """Layers applied in order; ``backward`` runs them in reverse.

    ``input_grad`` (default False): whether ``backward`` returns the gradient with respect to the
    input. When False the first layer is told (``needs_input_grad = False``) so a first Conv2D
    skips its most expensive backward product, and ``backward`` returns None.

    A BatchNorm1D/2D directly followed by a ReLU runs as one fused op (``bn_relu_forward`` /
    ``bn_relu_backward``: bit-identical results, the same caches, running statistics and
    hooks); with a 2x2, stride-2 MaxPool2D after the ReLU (even H and W), in training mode or
    under inference mode, the three run as one (``bn_relu_pool_forward`` /
    ``bn_relu_pool_backward``: bit-identical, BN's full-size output never stored). While forward
    hooks are registered those forwards run unfused, so each hook sees its layer's output; the
    BN -> ReLU backward stays fused. ``fuse = False`` on an instance turns fusion off.
    """
    fuse = True

    def __init__(self, *layers, input_grad=False):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential layer {i} must be a cybn.nn Module, got {type(layer).__name__}")
        self.layers = list(layers)
        self._hooks = {}
        self._next_hook = 0
        self._fused = {}  # i -> n: layers i .. i+n-1 run as one fused op in the last forward
        self.needs_input_grad = flag(input_grad, "input_grad")

    # needs_input_grad is forwarded to the first layer (the only one whose input gradient is optional)
    @property
    def needs_input_grad(self):
        return self._needs_input_grad

    @needs_input_grad.setter
    def needs_input_grad(self, value):
        self._needs_input_grad = bool(value)
        if getattr(self, "layers", None):
            self.layers[0].needs_input_grad = self._needs_input_grad

    def children(self):
        return self.layers

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        if isinstance(i, slice):
            layers = self.layers[i]
            # a view sharing the layers: keep the first layer's flag as it is (no mutation)
            return Sequential(*layers, input_grad=layers[0].needs_input_grad if layers else False)
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    def append(self, layer):
        if not isinstance(layer, Module):
            raise TypeError(f"Sequential layers must be cybn.nn Modules, got {type(layer).__name__}")
        self.layers.append(layer)
        if len(self.layers) == 1:
            layer.needs_input_grad = self._needs_input_grad
        return self

    @property
    def dtype(self):
        """dtype of the first layer that has one (None for a model without parameters)."""
        for layer in self.layers:
            dt = getattr(layer, "dtype", None)
            if dt is not None:
                return dt
        return None

    # ---- mode --------------------------------------------------------------------------------
    def train(self, mode=True):
        self.training = bool(mode)
        for layer in self.layers:
            layer.train(mode)
        return self

    def clear_cache(self):
        for layer in self.layers:
            layer.clear_cache()

    # ---- computation -------------------------------------------------------------------------
    def _fusable(self, i, x):
        """How many layers from i run as one fused op on input ``x``: 3 for BN2D -> ReLU ->
        MaxPool2D that ``bn_relu_pool_forward`` supports, 2 for BN -> ReLU, else 1."""
        layers = self.layers
        if not (self.fuse and i + 1 < len(layers) and type(layers[i]) in (BatchNorm1D, BatchNorm2D)
                and type(layers[i + 1]) is ReLU):
            return 1
        # eval mode only under inference mode: an eval-mode backward needs the pair's caches
        if (i + 2 < len(layers) and type(layers[i + 2]) is MaxPool2D
                and (layers[i].training or getattr(_inference, "on", False))
                and layers[i + 2].fuses_after_relu(getattr(x, "shape", ()))):
            return 3
        return 2

    def forward(self, x):
        # BLAS held at one thread for the whole pass (the ops' own holds then only count): each
        # hold and release costs 7-25 us after a kernel has evicted Python from the caches
        with single_threaded_blas:
            return self._forward(x)

    def _forward(self, x):
        hooks = list(self._hooks.values())
        fused = {}
        i = 0
        while i < len(self.layers):
            layer = self.layers[i]
            n = self._fusable(i, x)
            if n > 1:
                if not hooks:
                    fused[i] = n
                    x = (bn_relu_forward if n == 2 else bn_relu_pool_forward)(*self.layers[i:i + n], x)
                    i += n
                    continue
                fused[i] = 2  # the forward runs unfused for the hooks; BN -> ReLU's backward fuses
            x = layer(x)
            for fn in hooks:
                fn(i, layer, x)
            i += 1
        self._fused = fused
        return x

    def backward(self, dy):
        """Back-propagate ``dy`` (gradient w.r.t. the output) through every layer in reverse.

        Overwrites every layer's ``grads``. Returns the input gradient, or None when
        ``needs_input_grad`` is False.
        """
        with single_threaded_blas:  # as in forward
            return self._backward(dy)

    def _backward(self, dy):
        last = {i + n - 1: i for i, n in self._fused.items()}  # last layer of a fused op -> first
        i = len(self.layers) - 1
        while i >= 0:
            if i in last:
                i = last[i]
                n = self._fused[i]
                dy = (bn_relu_backward if n == 2 else bn_relu_pool_backward)(*self.layers[i:i + n], dy)
            else:
                dy = self.layers[i].backward(dy)
            if dy is None and i > 0:
                raise RuntimeError(f"layer {i} ({self.layers[i]!r}) returned no input gradient but "
                                   "is not the first layer")
            i -= 1
        self._fused = {}
        return dy

    def infer(self, x, max_chunk_bytes=DEFAULT_CHUNK_BYTES):
        """Eval-mode outputs for the batch ``x`` keeping no activations (``cybn.nn.infer``)."""
        return _infer(self, x, max_chunk_bytes)

    def predict_logits(self, x, batch_size=256):
        """Outputs for ``x`` in eval mode, ``batch_size`` rows at a time; the previous mode is
        restored afterwards and cached activations are discarded (do not call between a training
        forward and its backward)."""
        batch_size = positive_int(batch_size, "batch_size")
        was_training = self.training
        modes = [layer.training for layer in self.layers]
        self.eval()
        try:
            outs = [self.infer(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        finally:
            for layer, mode in zip(self.layers, modes):
                layer.train(mode)
            self.training = was_training
            self.clear_cache()
        if not outs:
            raise ValueError("predict needs at least one sample, got an empty input")
        return np.concatenate(outs)

    def predict(self, x, batch_size=256):
        """Predicted class labels (int64 argmax of the outputs), computed in eval mode."""
        return self.predict_logits(x, batch_size).argmax(axis=1).astype(np.int64)

    # ---- hooks -------------------------------------------------------------------------------
    def register_forward_hook(self, fn):
        """Call ``fn(index, layer, output)`` after each layer's forward (every forward, in train
        and eval mode, including ``predict``). The return value of ``fn`` is ignored; ``output``
        is the live array passed to the next layer — copy it if you keep it, never modify it.
        Returns a handle whose ``remove()`` unregisters the hook."""
        if not callable(fn):
            raise TypeError(f"hook must be callable, got {type(fn).__name__}")
        key = self._next_hook
        self._next_hook += 1
        self._hooks[key] = fn
        return HookHandle(self._hooks, key)

    # ---- persistence -------------------------------------------------------------------------
    def save(self, path):
        """Write ``state_dict()`` to an uncompressed ``.npz`` (atomically: temp file + rename),
        with its format version (``cybn._formats.STATE_DICT``) as the array ``format_version``.
        The path is used exactly as given (no ``.npz`` appended)."""
        arrays = {**self.state_dict(), _formats.KEY: np.array(_formats.STATE_DICT)}
        write_atomically(path, lambda f: np.savez(f, **arrays))

    def load(self, path, strict=True):
        """Load a file written by ``save`` (read with ``allow_pickle=False``). A file without a
        version (older cybn) is read as version 1; a newer version raises ``FormatError``."""
        path = os.fspath(path)
        with np.load(path, allow_pickle=False) as data:
            state = {k: data[k] for k in data.files}
        version = state.pop(_formats.KEY, None)
        if version is not None:
            version = int(version) if version.shape == () and version.dtype.kind in "iu" else repr(version)
        _formats.check_version(version, _formats.STATE_DICT, "state-dict file", path)
        return self.load_state_dict(state, strict=strict)

    # ---- description -------------------------------------------------------------------------
    def __repr__(self):
        if not self.layers:
            return "Sequential()"
        lines = []
        for i, layer in enumerate(self.layers):
            sub = repr(layer).replace("\n", "\n  ")
            lines.append(f"  ({i}): {sub}")
        return "Sequential(\n" + "\n".join(lines) + "\n)"

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.layers:
            shape = layer.output_shape(shape)
        return shape

    def summary(self, input_shape=None):
        """A text table: index, layer, output shape (when ``input_shape`` is given, e.g.
        ``(1, 3, 32, 32)`` or ``(3, 32, 32)``), parameter count; and the total."""
        if input_shape is not None:
            shape = tuple(int(s) for s in input_shape)
            if self.layers and isinstance(self.layers[0], Module) and len(shape) in (1, 3):
                shape = (1,) + shape  # batch axis omitted
        rows = []
        for i, layer in enumerate(self.layers):
            out = ""
            if input_shape is not None:
                shape = layer.output_shape(shape)
                out = "(N, " + ", ".join(str(s) for s in shape[1:]) + ")"
            rows.append((str(i), repr(layer).split("\n")[0], out, f"{layer.num_parameters():,}"))
        total = self.num_parameters()
        headers = ("#", "layer", "output shape" if input_shape is not None else "", "params")
        widths = [max(len(h), *(len(r[j]) for r in rows)) if rows else len(h) for j, h in enumerate(headers)]
        def fmt(r):
            return "  ".join(c.ljust(w) if j < 3 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths)))
        sep = "-" * len(fmt(headers))
        lines = [fmt(headers), sep] + [fmt(r) for r in rows] + [sep, f"total parameters: {total:,}"]
        return "\n".join(line.rstrip() for line in lines)
