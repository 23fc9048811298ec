"""Batch normalization (training forward, backward, evaluation, running statistics), validated.

Same maths and signatures as ``cybn.reference.batchnorm`` (see its docstrings). Kernels in
``cybn._kernels.batchnorm``; passes over memory per call:

* ``batch_norm_train``: 1 read of x for mean+variance (one-pass shifted sums over blocks of
  <= 16384 values, merged pairwise: stable, accumulated in double), then 1 read of x + 1 write of y.
* ``batch_norm_backward``: 1 fused read of dy and x for sum(dy) and sum(dy*(x-mean)) (which give
  dbias and dweight), then 1 read of dy, x + 1 write of dx.
* ``batch_norm_eval`` (and ``batch_norm_relu_eval``, the ReLU applied as y is written): 1 read
  + 1 write.
* ``batch_norm_eval_backward``: the same fused read of dy and x for the sums, then 1 read of dy
  + 1 write of dx (eval-mode BN is a fixed per-channel affine map).
* ``batch_norm_relu_train`` / ``batch_norm_relu_backward``: BN followed by ReLU, fused: the same
  passes as BN alone. The forward applies the ReLU as it writes y; the backward recomputes the
  ReLU mask from x (the forward's pre-activation, bit for bit) inside its two passes, so the
  ReLU costs no pass of its own and its input gradient is never stored.
* ``batch_norm_relu_pool_train`` / ``_backward`` / ``_eval``: BN, ReLU and a 2x2 stride-2
  max-pool. After the statistics one read of x writes the pooled y and a uint8 code per window
  (where its maximum is), a quarter and a sixteenth of x's size; the backward's two passes read
  the pooled dy, the code and x, rebuilding each plane's gradient in a per-thread scratch plane,
  so neither BN's output nor its full-size gradient is ever stored.

Each training forward and backward is one kernel call and one parallel region: its passes are
separated by the loop barriers, with the per-channel coefficients (invstd, the mean split into
hi + lo, scale; dx's a, b, d) computed in C between them, rounded as NumPy rounds the same
expressions. Waking a sleeping thread costs ~90 us per region on the development VM, and
Python between the passes ran with its data evicted from the caches.

Determinism: reductions are split into chunks of rows chosen from the input shape only, each
chunk reduced by one thread in a fixed order, partials merged in a fixed order: results are
bit-identical for any thread count.

Dtypes: x, dy, weight, bias share one dtype (float32 or float64). The statistics (mean, var,
running_mean, running_var) may be float32 or float64 independently of x; batch mean/var are
returned as float64. ``weight``/``bias`` None means gamma = 1 / beta = 0 (affine=False);
``batch_norm_backward`` still returns dweight/dbias (for the implicit gamma=1, beta=0).
"""
import numpy as np

from .._kernels import batchnorm as _k
from ._dispatch import threads_for
from .._validation import check_float_array, float_array, integer, positive_float, real, shape_is
from . import _memory

_PAGE = 4096  # bytes between two threads' scratch rows
_NO_CODE = np.empty((1, 1, 1), np.uint8)  # the code argument of a forward without pooling
_NO_RUNNING = {np.dtype(t): np.empty(0, t) for t in (np.float32, np.float64)}  # not tracked

__all__ = ["batch_norm_train", "batch_norm_backward", "batch_norm_eval", "batch_norm_eval_backward",
           "update_running_stats", "batch_norm_relu_train", "batch_norm_relu_backward",
           "batch_norm_relu_eval", "batch_norm_relu_pool_train", "batch_norm_relu_pool_backward",
           "batch_norm_relu_pool_eval"]


def _input(x, name="x"):
    x = float_array(x, name, ndim=(2, 4))
    if x.shape[1] < 1:
        raise ValueError(f"{name} must have at least one channel (axis 1), got shape {x.shape}")
    return x


def _as3(a):
    """(N, C) or (N, C, H, W) -> (N, C, H*W) view (a is C-contiguous)."""
    return a.reshape(a.shape[0], a.shape[1], a.shape[2] * a.shape[3] if a.ndim == 4 else 1)


def _count(x):
    return x.shape[0] * (x.shape[2] * x.shape[3] if x.ndim == 4 else 1)


def _param(v, name, x):
    """weight/bias: None or an array of x's dtype and shape (C,)."""
    if v is None:
        return None
    v = float_array(v, name, ndim=1, dtype=x.dtype)
    return shape_is(v, (x.shape[1],), f"{name} (one value per channel of x {x.shape})")


def _stat(v, name, C, nonnegative=False):
    """mean/var/running stats: float32 or float64 array of shape (C,), returned as float64."""
    v = float_array(v, name, ndim=1)
    shape_is(v, (C,), f"{name} (one value per channel)")
    v = v.astype(np.float64, copy=False)
    if nonnegative and (v < 0).any():
        raise ValueError(f"{name} must be non-negative, found {v[v < 0][0]}")
    return v


def _eps(eps):
    return positive_float(eps, "eps")


def _need_two(x, fname):
    m = _count(x)
    if m < 2:
        raise ValueError(f"{fname}: expected more than 1 value per channel in training "
                         f"(N*H*W >= 2), got input shape {x.shape}")
    return m


def _split(mean, dtype):
    """mean (float64) as hi + lo in `dtype`, so (x - hi) - lo centres x to full precision."""
    hi = mean.astype(dtype)
    lo = (mean - hi.astype(np.float64)).astype(dtype)
    return hi, lo


def _affine(mean, invstd, weight, bias, dtype):
    """(hi, lo, scale, shift) in ``dtype``: y = ((x - hi) - lo) * scale + shift. The training
    kernels compute the same values in C (``_affine_channel``), rounded the same way."""
    scale = invstd if weight is None else invstd * weight.astype(np.float64)
    shift = np.zeros_like(mean) if bias is None else bias
    return _split(mean, dtype) + (scale.astype(dtype), shift.astype(dtype))


def _normalize(x, mean, invstd, weight, bias, relu=False):
    y = _memory.empty_like(x)
    if x.size:
        _k.affine_normalize(_as3(x), *_affine(mean, invstd, weight, bias, x.dtype), _as3(y), relu,
                            threads_for(x.size))
    return y


def _train_forward(x, weight, bias, eps, relu, pool, fname, running):
    """Validated training forward: (y, code or None, mean, var); mean and var are the batch's
    float64 statistics (var biased). One kernel: statistics, coefficients and the normalising
    pass (with ReLU, with ReLU and 2x2 max-pool) in one parallel region. ``running``:
    (running_mean, running_var, momentum), updated as ``update_running_stats`` does; in the
    kernel when they are contiguous arrays of x's dtype (a layer's buffers), else after it."""
    x = _input(x)
    weight = _param(weight, "weight", x)
    bias = _param(bias, "bias", x)
    eps = _eps(eps)
    count = _need_two(x, fname)
    N, C = x.shape[:2]
    running_mean, running_var, momentum = running
    track = running_mean is not None or running_var is not None
    if track:
        momentum = _running_args(running_mean, running_var, C, momentum)
    in_kernel = track and all(r.dtype == x.dtype and r.flags.c_contiguous
                              for r in (running_mean, running_var))
    H, W = x.shape[2:] if x.ndim == 4 else (1, 1)
    mean = np.empty(C, dtype=np.float64)
    var = np.empty(C, dtype=np.float64)
    if pool:
        y = _memory.empty((N, C, H // 2, W // 2), x.dtype)
        code = _memory.empty(y.shape, np.uint8)
    else:
        y, code = _memory.empty_like(x), None
    unused = _NO_RUNNING[x.dtype]
    _k.batch_norm_forward(_as3(x), _gamma(weight, x), _beta(bias, x), eps, mean, var, _as3(y),
                          _NO_CODE if code is None else _as3(code), relu, pool, H, W,
                          running_mean if in_kernel else unused,
                          running_var if in_kernel else unused, in_kernel, momentum,
                          count / (count - 1), threads_for(x.size))
    if track and not in_kernel:
        update_running_stats(running_mean, running_var, mean, var, count, momentum)
    return y, code, mean, var


def _train(x, weight, bias, eps, relu, fname, running):
    y, _, mean, var = _train_forward(x, weight, bias, eps, relu, False, fname, running)
    return y, mean, var


def _pool_input(x, fname):
    """x of the fused BN -> ReLU -> 2x2 max-pool: (N, C, H, W) with H and W even."""
    x = float_array(x, "x", ndim=4)
    if x.shape[2] % 2 or x.shape[3] % 2:
        raise ValueError(f"{fname}: x must have an even height and width (2x2 windows of stride 2 "
                         f"cover it exactly), got shape {x.shape}")
    return x


def _dy_x(dy, x):
    """dy and x of a backward pass, validated: dy has x's shape and dtype."""
    x = _input(x)
    dy = float_array(dy, "dy", dtype=x.dtype)
    if dy.shape != x.shape:
        raise ValueError(f"dy must have the shape of x {x.shape}, got {dy.shape}")
    return dy, x


def _backward_args(dy, x, weight, mean, var, eps, names=("mean", "var")):
    """The validated arguments of both backward passes (``names``: what the statistics are)."""
    dy, x = _dy_x(dy, x)
    return (dy, x) + _stat_args(x, weight, mean, var, eps, names)


def _stat_args(x, weight, mean, var, eps, names=("mean", "var")):
    C = x.shape[1]
    return (_param(weight, "weight", x), _stat(mean, names[0], C),
            _stat(var, names[1], C, nonnegative=True), _eps(eps))


def batch_norm_train(x, weight, bias, eps=1e-5, *, running_mean=None, running_var=None,
                     momentum=0.1):
    """Training-mode forward: (y, mean, var); mean, var float64 (C,), var is the biased variance.

    With ``running_mean`` and ``running_var`` (both or neither), also updates them in place as
    ``update_running_stats(running_mean, running_var, mean, var, N*H*W, momentum)`` does, bit
    for bit (in the same kernel when they have x's dtype and are contiguous)."""
    return _train(x, weight, bias, eps, False, "batch_norm_train",
                  (running_mean, running_var, momentum))


def batch_norm_relu_train(x, weight, bias, eps=1e-5, *, running_mean=None, running_var=None,
                          momentum=0.1):
    """relu(batch_norm_train(x, ...)) in one pass after the statistics: (y, mean, var); the
    running statistics as in ``batch_norm_train``."""
    return _train(x, weight, bias, eps, True, "batch_norm_relu_train",
                  (running_mean, running_var, momentum))


def batch_norm_backward(dy, x, weight, mean, var, eps=1e-5):
    """(dx, dweight, dbias) of batch_norm_train; dweight/dbias are (C,) in x's dtype."""
    return _backward(dy, x, weight, None, mean, var, eps, False, "batch_norm_backward")


def batch_norm_relu_backward(dy, x, weight, bias, mean, var, eps=1e-5):
    """(dx, dweight, dbias) of batch_norm_relu_train given dy = dL/d(its output y).

    The ReLU mask is recomputed from x, weight, bias, mean, var and eps (pass the forward's).
    """
    return _backward(dy, x, weight, bias, mean, var, eps, True, "batch_norm_relu_backward")


def _backward(dy, x, weight, bias, mean, var, eps, relu, fname):
    dy, x, weight, mean, var, eps = _backward_args(dy, x, weight, mean, var, eps)
    bias = _param(bias, "bias", x)
    _need_two(x, fname)
    dx = _memory.empty_like(x)
    dweight, dbias = np.empty((2, x.shape[1]), x.dtype)  # dweight = sum(dy * x_hat)
    _k.backward(_as3(dy), _as3(x), mean, var, eps, _gamma(weight, x), _beta(bias, x), relu,
                _as3(dx), dweight, dbias, threads_for(x.size))
    return dx, dweight, dbias


def _gamma(weight, x):
    """weight, or ones for affine=False: the kernels take a gamma and a beta (x * 1.0 and + 0
    are exact, so the same bits as no affine transform)."""
    return np.ones(x.shape[1], x.dtype) if weight is None else weight


def _beta(bias, x):
    """bias, or zeros for affine=False."""
    return np.zeros(x.shape[1], x.dtype) if bias is None else bias


def batch_norm_relu_pool_train(x, weight, bias, eps=1e-5, *, running_mean=None, running_var=None,
                               momentum=0.1):
    """max_pool2d(batch_norm_relu_train(x, ...)[0], 2), fused: (y, code, mean, var).

    x is (N, C, H, W) with H and W even; the pool has 2x2 windows of stride 2. BN's full-size
    output is never stored: one pass after the statistics writes y (N, C, H/2, W/2), bitwise
    what the three ops give, and ``code`` (uint8, y's shape): the position of each window's
    maximum (0..3, row-major, ties to the first as in ``max_pool2d``) when it is > 0, else 4
    (the ReLU passes no gradient there). ``batch_norm_relu_pool_backward`` takes the code. The
    running statistics as in ``batch_norm_train``.
    """
    fname = "batch_norm_relu_pool_train"
    return _train_forward(_pool_input(x, fname), weight, bias, eps, True, True, fname,
                          (running_mean, running_var, momentum))


def batch_norm_relu_pool_eval(x, weight, bias, running_mean, running_var, eps=1e-5):
    """max_pool2d(batch_norm_relu_eval(x, ...), 2) in one pass (x (N, C, H, W), H and W even):
    the pooled output, bitwise what the two ops give."""
    x = _pool_input(x, "batch_norm_relu_pool_eval")
    bias = _param(bias, "bias", x)
    weight, running_mean, running_var, eps = _stat_args(x, weight, running_mean, running_var, eps,
                                                        ("running_mean", "running_var"))
    # the code is written by the kernel but not needed without a backward
    return _normalize_relu_pool(x, running_mean, 1.0 / np.sqrt(running_var + eps), weight, bias)[0]


def _normalize_relu_pool(x, mean, invstd, weight, bias):
    """(y, code) of the fused normalisation, ReLU and 2x2 pool of x (see _normalize)."""
    N, C, H, W = x.shape
    y = _memory.empty((N, C, H // 2, W // 2), x.dtype)
    code = _memory.empty(y.shape, np.uint8)
    _k.affine_relu_pool2(_as3(x), *_affine(mean, invstd, weight, bias, x.dtype), _as3(y), _as3(code),
                         H, W, threads_for(x.size))
    return y, code


def _pool_code(code, shape):
    if not isinstance(code, np.ndarray):
        raise TypeError(f"code must be a numpy.ndarray, got {type(code).__name__}")
    if code.dtype != np.uint8:
        raise TypeError(f"code must be uint8 (from batch_norm_relu_pool_train), got {code.dtype}")
    shape_is(code, shape, "code (one per pooled output)")
    return np.ascontiguousarray(code)  # its values (0..4) are checked by the kernel


def batch_norm_relu_pool_backward(dy, code, x, weight, bias, mean, var, eps=1e-5):
    """(dx, dweight, dbias) of batch_norm_relu_pool_train given dy = dL/d(its pooled output)
    and its ``code``; the same bits as the three backwards, with no full-size gradient stored
    between them (each plane's is rebuilt in a per-thread scratch plane)."""
    fname = "batch_norm_relu_pool_backward"
    x = _pool_input(x, fname)
    N, C, H, W = x.shape
    pooled = (N, C, H // 2, W // 2)
    dy = float_array(dy, "dy", dtype=x.dtype)
    if dy.shape != pooled:
        raise ValueError(f"dy must have the pooled shape {pooled} of x {x.shape}, got {dy.shape}")
    code = _pool_code(code, pooled)
    weight, mean, var, eps = _stat_args(x, weight, mean, var, eps)
    bias = _param(bias, "bias", x)
    _need_two(x, fname)
    threads = threads_for(x.size)
    dt = x.dtype
    # One plane per thread, rows a 4 KB page apart: the cores' prefetchers (software 2 KB ahead,
    # hardware within a page) would otherwise pull the lines the other thread is writing, and the
    # 8x8 and 16x16 backwards ran no faster at 2 threads than at 1.
    scratch = np.empty((threads, H * W + _PAGE // dt.itemsize), dt)
    dx = _memory.empty_like(x)
    dweight, dbias = np.empty((2, C), dt)
    if _k.pool2_backward(_as3(dy), _as3(code), _as3(x), W, mean, var, eps, _gamma(weight, x),
                         _beta(bias, x), _as3(dx), dweight, dbias, scratch, threads):
        raise ValueError(f"code values must be 0..4 (from batch_norm_relu_pool_train), found "
                         f"{code.max()}")
    return dx, dweight, dbias


def batch_norm_eval(x, weight, bias, running_mean, running_var, eps=1e-5):
    """Evaluation-mode forward with running statistics (any batch size, including 1)."""
    return _eval(x, weight, bias, running_mean, running_var, eps, False)


def batch_norm_relu_eval(x, weight, bias, running_mean, running_var, eps=1e-5):
    """relu(batch_norm_eval(x, ...)) in the same single pass (the ReLU applied as y is written)."""
    return _eval(x, weight, bias, running_mean, running_var, eps, True)


def _eval(x, weight, bias, running_mean, running_var, eps, relu):
    x = _input(x)
    weight = _param(weight, "weight", x)
    bias = _param(bias, "bias", x)
    C = x.shape[1]
    running_mean = _stat(running_mean, "running_mean", C)
    running_var = _stat(running_var, "running_var", C, nonnegative=True)
    eps = _eps(eps)
    return _normalize(x, running_mean, 1.0 / np.sqrt(running_var + eps), weight, bias, relu)


def batch_norm_eval_backward(dy, x, weight, running_mean, running_var, eps=1e-5):
    """(dx, dweight, dbias) of batch_norm_eval: a fixed per-channel affine map, so with
    invstd = 1/sqrt(running_var + eps): dx = weight * invstd * dy, dweight = sum(dy * x_hat),
    dbias = sum(dy); sums in float64, results in x's dtype (dweight/dbias also when weight is None)."""
    dy, x, weight, running_mean, running_var, eps = _backward_args(
        dy, x, weight, running_mean, running_var, eps, ("running_mean", "running_var"))
    C = x.shape[1]
    dt = x.dtype
    sum_dy = np.zeros(C, dtype=np.float64)
    sum_dyxc = np.zeros(C, dtype=np.float64)
    invstd = 1.0 / np.sqrt(running_var + eps)
    if x.size:
        _k.backward_sums(_as3(dy), _as3(x), running_mean, sum_dy, sum_dyxc,
                         *_affine(running_mean, invstd, weight, None, dt), False, threads_for(x.size))
    # dx = dy * scale: the normalisation kernel with a zero mean and shift (it never reads x)
    dx = _normalize(dy, np.zeros(C), invstd, weight, None)
    return dx, (sum_dyxc * invstd).astype(dt), sum_dy.astype(dt)


def _running(v, name):
    check_float_array(v, name, ndim=1)
    if not v.flags.writeable:
        raise ValueError(f"{name} is updated in place and must be writeable")
    return v


def _running_args(running_mean, running_var, C, momentum):
    """Validated running statistics (two writeable, non-overlapping (C,) float arrays) to update
    in place; returns the validated momentum."""
    if running_mean is None or running_var is None:
        raise ValueError("running_mean and running_var are updated together: give both or neither")
    _running(running_mean, "running_mean")
    _running(running_var, "running_var")
    for v, name in ((running_mean, "running_mean"), (running_var, "running_var")):
        if v.shape != (C,):
            raise ValueError(f"{name} must have shape {(C,)} (one value per channel), got {v.shape}")
    if np.shares_memory(running_mean, running_var):
        raise ValueError("running_mean and running_var must not share memory")
    return real(momentum, "momentum", 0.0, 1.0)


def update_running_stats(running_mean, running_var, mean, var, count, momentum=0.1):
    """In place: r = (1-momentum)*r + momentum*batch; the variance unbiased by count/(count-1)."""
    C = _running(running_mean, "running_mean").shape[0]
    momentum = _running_args(running_mean, running_var, C, momentum)
    mean = _stat(mean, "mean", C)
    var = _stat(var, "var", C, nonnegative=True)
    count = integer(count, "count", minimum=2)
    # O(C) work: plain NumPy, computed in float64 and stored in the running arrays' dtype.
    unbiased = var * (count / (count - 1))
    running_mean[...] = (1 - momentum) * running_mean.astype(np.float64) + momentum * mean
    running_var[...] = (1 - momentum) * running_var.astype(np.float64) + momentum * unbiased
