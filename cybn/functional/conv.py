"""2-D convolution (NCHW, zero padding, any kernel/stride): validated front end of ``_kernels.conv``.

The maths is in ``cybn.reference.conv``. Algorithms (see the kernel module docstring):
- 3x3 stride-1 layers with >= 16 input and output channels: Winograd F(2x2, 3x3) for the
  forward and for dx (dx = forward conv of dy with the flipped, transposed kernel), im2col for dW;
- everything else: im2col / col2im per image, fused with single-threaded BLAS GEMMs.
Measured on the shared 2-core EPYC (1 thread, CPU-time medians of interleaved runs, forward +
backward with dx, batch 128, float32), Winograd (fwd + dx) vs im2col: 145 vs 177 ms (32->32
@32x32), 72 vs 87 (32->64 @16x16), 132 vs 173 (64->64 @16x16), 76 vs 88 (64->128 @8x8); for
3->32 Winograd was 2x slower (48 vs 24 ms: GEMMs with 3 rows), hence the channel threshold.
Winograd for dW as well (16 GEMMs over the tiles) measured 5-10% slower than im2col, so dW
stays im2col. Per-thread single-threaded GEMMs on one image beat one whole-batch numpy GEMM
per product (BLAS-threaded): see ``python benchmarks/bench_conv.py --alternatives``.

The BLAS library (scipy's OpenBLAS, used through scipy.linalg.cython_blas) is held at one thread
for the duration of a call, since OpenMP provides the parallelism. Scratch buffers are cached
per (name, dtype) and reused.
"""
import threading

import numpy as np

from .._kernels import conv as _k
from .._threads import kernel_threads
from .._threads import single_threaded_blas as _single_threaded_blas
from .._validation import MAX_INT, float_array, nonnegative_int, pair, positive_int

__all__ = ["conv2d", "conv2d_backward"]

# Per Python thread: name, dtype -> flat scratch array, grown on demand and reused (avoids
# page-faulting fresh allocations on every call; a few MB: per kernel thread one image's im2col
# block or one group's Winograd transforms). Thread-local, so concurrent calls never share one.
_scratch = threading.local()

# Upper bound on one thread's im2col block (K x rows*Wo bytes); bigger images are processed in
# chunks of whole output rows. Measured (1 thread, CPU time, the five benchmark layers): blocks
# of 48-384 KB (to stay in L2) were not faster than whole images (GEMMs with a shorter N lose
# what the cache gains), so the bound only caps scratch memory for large images. <= 0: no cap.
_CHUNK_BYTES = 4 << 20

# Wall seconds each kernel thread spent inside BLAS during the last call, per op; read by
# benchmarks/bench_conv.py to report the GEMM rate. Not part of the API.
_gemm_seconds = {"forward": np.zeros(0), "backward": np.zeros(0), "backward_dx": np.zeros(0)}


# dW/db are summed per fixed block of images (then blocks in order): results are deterministic
# and the same for any thread count, while blocks are still handed out dynamically.
_BLOCKS = 16


def _buffer(name, shape, dtype):
    size = int(np.prod(shape))
    key = (name, np.dtype(dtype))
    cache = _scratch.__dict__
    buf = cache.get(key)
    if buf is None or buf.size < size:
        buf = np.empty(max(size, 1), dtype=dtype)
        cache[key] = buf
    return buf[:size].reshape(shape)


# Winograd F(2x2, 3x3) for 3x3 stride-1 layers (forward and dx); see the kernel. Switchable so
# the benchmark can time it against plain im2col. _WINO_TILES: tiles per GEMM group (how many
# images one thread transforms before its 16 GEMMs: enough columns for efficient GEMMs, small
# enough for the transformed block to stay in cache).
_WINOGRAD = True
_WINO_TILES = 256
_WINO_MIN_CHANNELS = 16  # below, the 16 GEMMs have a tiny inner (C) or outer (C for dx) size


def _use_winograd(kh, kw, sh, sw, C, F):
    return (_WINOGRAD and kh == 3 and kw == 3 and sh == 1 and sw == 1
            and min(C, F) >= _WINO_MIN_CHANNELS)


def _winograd(x, weight, bias, ph, pw, Ho, Wo, key, flipped=False):
    """y = conv2d(x, weight, bias, 1, (ph, pw)) for a 3x3 kernel, by Winograd F(2x2, 3x3).

    ``flipped``: use weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1] instead (the dx conv).
    """
    N, C, _, W = x.shape
    F = weight.shape[1] if flipped else weight.shape[0]
    y = np.empty((N, F, Ho, Wo), dtype=x.dtype)
    nt = min(kernel_threads(), N)
    TH, TW = (Ho + 1) // 2, (Wo + 1) // 2
    T = TH * TW
    # ~_WINO_TILES tiles per group, and >= 8 groups to balance the threads; not depending on the
    # thread count keeps results bitwise identical for any number of threads
    group = max(1, min(-(-N // 8), _WINO_TILES // T))
    V = np.empty((16, F, C), dtype=x.dtype)  # (G g G^T) of every kernel, rounded once
    _k.winograd_weights(weight, V, flipped)
    U = _buffer("wino_U", (nt, 16 * C * group * T), x.dtype)
    M = _buffer("wino_M", (nt, 16 * F * group * T), x.dtype)
    Z = _buffer("wino_Z", (nt, W), x.dtype)
    tmp = _buffer("wino_tmp", (nt, 4 * (2 * TW + 2)), x.dtype)
    b = bias if bias is not None else np.zeros(F, dtype=x.dtype)
    gemm_seconds = _gemm_seconds[key] = np.zeros(nt)
    with _single_threaded_blas:
        _k.conv2d_winograd(x, V, b, bias is not None, y, U, M, Z, tmp, gemm_seconds, ph, pw,
                           group, nt)
    return y


def _rows_per_chunk(K, Ho, Wo, itemsize):
    """Output rows per GEMM so that the K x rows*Wo column block fits _CHUNK_BYTES (>= 1 row)."""
    if _CHUNK_BYTES <= 0:
        return Ho
    return max(1, min(Ho, _CHUNK_BYTES // (K * Wo * itemsize)))


def _check(x, weight, stride, padding):
    """Validate x/weight/stride/padding; returns arrays and the geometry."""
    x = float_array(x, "x", 4)
    weight = float_array(weight, "weight", 4, x.dtype)
    _, C, H, W = x.shape
    F, Cw, kh, kw = weight.shape
    if Cw != C:
        raise ValueError(f"weight {weight.shape} expects {Cw} input channels but x {x.shape} has {C}")
    if 0 in (C, F, kh, kw):
        raise ValueError(f"x {x.shape} and weight {weight.shape} must have non-zero channels and "
                         f"kernel size")
    sh, sw = pair(stride, "stride", positive_int)
    ph, pw = pair(padding, "padding", nonnegative_int)
    if kh > H + 2 * ph or kw > W + 2 * pw:
        raise ValueError(f"kernel {(kh, kw)} of weight {weight.shape} is larger than the padded "
                         f"input {(H + 2 * ph, W + 2 * pw)} of x {x.shape} with padding {(ph, pw)}")
    # The kernels index in C int (and BLAS takes int sizes): bound every derived size.
    if H + 2 * ph > MAX_INT or W + 2 * pw > MAX_INT:
        raise ValueError(f"padding {(ph, pw)} is too large: the padded input "
                         f"{(H + 2 * ph, W + 2 * pw)} of x {x.shape} must be <= {MAX_INT} per side")
    Ho = (H + 2 * ph - kh) // sh + 1
    Wo = (W + 2 * pw - kw) // sw + 1
    if Ho * Wo > MAX_INT:
        raise ValueError(f"the output plane {(Ho, Wo)} of x {x.shape} with padding {(ph, pw)} and "
                         f"stride {(sh, sw)} has more than {MAX_INT} elements")
    if F * C * kh * kw > MAX_INT:
        raise ValueError(f"weight {weight.shape} has more than {MAX_INT} elements")
    return x, weight, (sh, sw), (ph, pw), (Ho, Wo)


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """y (N, F, Ho, Wo) = conv2d(x (N, C, H, W), weight (F, C, kh, kw)) + bias (F,).

    stride/padding: int or (h, w) pair; Ho = (H + 2*ph - kh) // sh + 1.
    """
    x, weight, (sh, sw), (ph, pw), (Ho, Wo) = _check(x, weight, stride, padding)
    N, C, _, _ = x.shape
    F, _, kh, kw = weight.shape
    if bias is not None:
        bias = float_array(bias, "bias", 1, x.dtype)
        if bias.shape != (F,):
            raise ValueError(f"bias must have shape ({F},) for weight {weight.shape}, got {bias.shape}")
    if N > 0 and _use_winograd(kh, kw, sh, sw, C, F):
        return _winograd(x, weight, bias, ph, pw, Ho, Wo, "forward")
    y = np.empty((N, F, Ho, Wo), dtype=x.dtype)
    if N == 0:
        return y
    nt = min(kernel_threads(), N)
    K = C * kh * kw
    rows = _rows_per_chunk(K, Ho, Wo, x.itemsize)
    cols = _buffer("cols", (nt, K * rows * Wo), x.dtype)
    b = bias if bias is not None else np.zeros(F, dtype=x.dtype)
    gemm_seconds = _gemm_seconds["forward"] = np.zeros(nt)
    with _single_threaded_blas:
        _k.conv2d_forward(x, weight, b, bias is not None, y, cols, gemm_seconds, sh, sw, ph, pw,
                          rows, nt)
    return y


def conv2d_backward(dy, x, weight, stride=1, padding=0, compute_dx=True):
    """(dx, dweight, dbias) of ``conv2d``; dx is None when ``compute_dx`` is False.

    dy must have the forward output shape (N, F, Ho, Wo). dbias = dy.sum((0, 2, 3)).
    """
    x, weight, (sh, sw), (ph, pw), (Ho, Wo) = _check(x, weight, stride, padding)
    dy = float_array(dy, "dy", 4, x.dtype)
    N, C, H, W = x.shape
    F, _, kh, kw = weight.shape
    if dy.shape != (N, F, Ho, Wo):
        raise ValueError(f"dy must have the forward output shape {(N, F, Ho, Wo)} of x {x.shape} "
                         f"and weight {weight.shape}, got {dy.shape}")
    if not isinstance(compute_dx, (bool, np.bool_)):
        raise TypeError(f"compute_dx must be a bool, got {type(compute_dx).__name__} {compute_dx!r}")
    compute_dx = bool(compute_dx)
    dweight = np.empty_like(weight)
    dbias = np.empty(F, dtype=x.dtype)
    if N == 0:
        dweight.fill(0)
        dbias.fill(0)
        return (np.zeros_like(x) if compute_dx else None), dweight, dbias
    dx = None
    _gemm_seconds["backward_dx"] = np.zeros(1)
    if compute_dx and _use_winograd(kh, kw, sh, sw, C, F) and ph <= 2 and pw <= 2:
        # dx = 'full' correlation of dy with the flipped, transposed kernel: the same Winograd
        # forward conv with padding (2 - ph, 2 - pw); the kernel below then only does dW, db.
        dx = _winograd(dy, weight, None, 2 - ph, 2 - pw, H, W, "backward_dx", flipped=True)
        compute_dx = False
    elif compute_dx:
        dx = np.empty_like(x)
    nt = min(kernel_threads(), N)
    K = C * kh * kw
    rows = _rows_per_chunk(K, Ho, Wo, x.itemsize)
    cols = _buffer("cols", (nt, K * rows * Wo), x.dtype)
    dcols = _buffer("dcols", (nt, K * rows * Wo) if compute_dx else (1, 1), x.dtype)
    nblocks = min(N, _BLOCKS)
    dw_part = _buffer("dw_part", (nblocks, F * K), x.dtype)
    db_part = _buffer("db_part", (nblocks, F), np.float64)
    dw_acc = _buffer("dw_acc", (F * K,), np.float64)
    dx_arg = dx if compute_dx else np.empty((0, 0, 0, 0), dtype=x.dtype)
    gemm_seconds = _gemm_seconds["backward"] = np.zeros(nt)
    with _single_threaded_blas:
        _k.conv2d_backward(dy, x, weight, dx_arg, compute_dx, dw_part, dw_acc, db_part, cols, dcols,
                           dweight, dbias, gemm_seconds, sh, sw, ph, pw, rows, nt)
    return dx, dweight, dbias
