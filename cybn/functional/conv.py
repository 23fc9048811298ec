"""2-D convolution (NCHW, zero padding, any kernel/stride): validated front end of ``_kernels.conv``.

The maths is in ``cybn.reference.conv``. Algorithms (see the kernel module docstring):
- 3x3 stride-1 layers with >= 16 input and output channels and >= _WINO_MIN_PIXELS output
  pixels: Winograd F(4x4, 3x3) for the forward, for dx (the forward conv of dy with the flipped,
  transposed kernel) and for dW;
- everything else: im2col / col2im per image, fused with single-threaded BLAS GEMMs.
Measured on the shared 2-core Xeon (AVX-512; 1 thread, CPU-time medians, batch 128, float32,
forward + backward with dx, ms), this design vs the previous one (F(2x2) forward/dx, im2col
dW, SSE-only transforms): 32->32 @32x32 35 vs 63, 32->64 @16x16 16 vs 31, 64->64 @16x16 26 vs
58, 64->128 @8x8 16 vs 33. With the transforms as they are now, im2col dW instead of F(4x4) dW
costs 10-40% more per layer. dW's 36 GEMMs per group take the transformed dy channel-minor
(tiles as the outer dimension: (C, tiles) @ (tiles, F)), 1.6-2x the GEMM rate of tiles as both
operands' inner dimension; dW of the four 3x3 cnn7 layers 37.5 -> 29.1 ms at 1 thread, 23.1 ->
17.3 ms at 2 (wall medians, 2026-12-01). For 3->32 Winograd was 2x slower (GEMMs with 3 rows),
hence the channel threshold. F(4x4)'s float32 error is ~5x F(2x2)'s (~5e-6 of max |y|; see
tests/test_conv.py). ``python benchmarks/bench_conv.py --alternatives`` times them all.

The BLAS library (scipy's OpenBLAS, used through scipy.linalg.cython_blas) is held at one thread
for the duration of a call, since OpenMP provides the parallelism. Scratch buffers are cached
per (name, dtype) and reused.
"""
import math
import threading

import numpy as np

from .._kernels import conv as _k
from .._threads import kernel_threads, single_threaded_blas as _single_threaded_blas
from .._validation import MAX_INT, conv_output_size, flag, float_array, nonnegative_int, pair, positive_int
from . import _memory

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


# Small calls must not pay for threads they cannot use: waking a second OpenMP thread costs tens
# of microseconds (far more when the cores are shared) and a short call gains little from it.
# Measured (2 threads vs 1, wall medians of interleaved runs, fwd + bwd of the cnn7 layers at
# batch 1-16): 2 threads lost up to 18% below ~40 MFLOP of direct-conv work per thread and
# product, and won from ~1.5x that. The thread count never changes the result (fixed work splits).
_MIN_FLOPS_PER_THREAD = 40e6


def _threads_for(N, F, C, kh, kw, Ho, Wo, products=1):
    """Kernel threads for ``products`` GEMM products over N images: at most one per
    _MIN_FLOPS_PER_THREAD of direct-conv flops (2*N*F*C*kh*kw*Ho*Wo per product), at least 1, at
    most N and the setting."""
    nt = min(kernel_threads(), N)
    if _MIN_FLOPS_PER_THREAD > 0:
        flops = 2.0 * products * N * F * C * kh * kw * Ho * Wo
        nt = min(nt, int(flops // _MIN_FLOPS_PER_THREAD))
    return max(1, nt)


# Bytes after each row of a per-thread (or per-block) scratch buffer: the rows are written by
# different threads, and rows closer than that share cache lines (or, through the prefetchers,
# pages) between the cores. With the 8x8 layer's 32-byte zero rows and 256-byte transform rows
# touching, its F(4x4) transforms gained 1.2x from a second thread; with the gap 1.55x, and
# the 64->128 @8x8 forward 1.52-1.65x -> 1.84x (wall, 1 vs 2 threads).
_ROW_GAP = 4096

# The dx and V arguments of a backward kernel call without dx (never touched).
_NO_DX = {np.dtype(t): (np.empty((0, 0, 0, 0), t), np.empty((0, 0, 0), t))
          for t in (np.float32, np.float64)}


def _buffer(name, shape, dtype, rows_apart=False):
    """Scratch array of ``shape`` from the cache. ``rows_apart`` (2-D shapes): the rows are
    written by different threads, so each is padded by _ROW_GAP bytes (the kernels index rows
    by the array's stride and read only the first shape[1] elements of each)."""
    dtype = np.dtype(dtype)
    if rows_apart:
        shape = (shape[0], shape[1] + _ROW_GAP // dtype.itemsize)
    size = math.prod(shape)
    key = (name, dtype)
    cache = _scratch.__dict__
    buf = cache.get(key)
    if buf is None or buf.size < size:
        buf = np.empty(max(size, 1), dtype=dtype)
        cache[key] = buf
    return buf[:size].reshape(shape)


# Winograd for 3x3 stride-1 layers (forward and dx); see the kernel. _WINO_M: the output tile
# (2: F(2x2, 3x3), 4: F(4x4, 3x3)); _WINOGRAD = False: im2col only. Switchable so the benchmark
# can time the algorithms against each other. _WINO_TILES: tiles per GEMM group for each tile
# size (how many images one thread transforms before its GEMMs: enough columns for efficient
# GEMMs, few enough for the transformed block to stay in cache). _WINO_MIN_GROUPS: groups per
# conv at least, so the threads' shares even out when one runs slower. Only cnn7's 8x8 layer is
# below it at batch 128 (16 images of 4 tiles per group at 8, 8 images at 16): measured in a
# 2-thread step (medians of 8 runs) its forward 3156 -> 2875 us and its backward (dx groups)
# 7566 -> 7130 us at 16; at 1 thread 5100 -> 5230 and 13288 -> 12763 us.
_WINOGRAD = True
_WINO_M = 4
_WINO_TILES = {2: 256, 4: 64}
_WINO_MIN_GROUPS = 16
# dW by Winograd F(4x4, 3x3) (36 GEMMs over the tiles, 4x fewer flops than im2col) where the
# layer takes the Winograd path; False: im2col dW. _WINO_DW_TILES: tiles per GEMM group.
_WINO_DW = True
_WINO_DW_TILES = 64
_WINO_DW_BLOCK_TILES = 128
_WINO_MIN_CHANNELS = 16  # below, the GEMMs have a tiny inner (C) or outer (C for dx) size
# The weight transform costs the same for any batch; below this many output pixels per call
# (N*Ho*Wo) it is not paid back. Measured (1 thread, CPU time, forward, F(4x4) vs im2col):
# 64->128 @8x8 346 vs 124 us at batch 1, 731 vs 792 at batch 8; 32->64 @16x16 137 vs 121 us at
# batch 1; 32->32 @32x32 142 vs 355 us at batch 1.
_WINO_MIN_PIXELS = 512


def _use_winograd(kh, kw, sh, sw, C, F, pixels):
    """Winograd for this layer? ``pixels``: N*Ho*Wo of the conv that would run it."""
    return (_WINOGRAD and kh == 3 and kw == 3 and sh == 1 and sw == 1
            and min(C, F) >= _WINO_MIN_CHANNELS and pixels >= _WINO_MIN_PIXELS)


def _wino_conv_shape(N, C, F, W, Ho, Wo, m):
    """(group, per-thread scratch sizes U, M, Z, tmp, O) of the F(m x m) conv of N images with
    C input channels of width W into F channels of Ho x Wo (see ``conv2d_winograd``)."""
    TH, TW = -(-Ho // m), -(-Wo // m)
    T = TH * TW
    # ~_WINO_TILES tiles per group, and >= _WINO_MIN_GROUPS groups to balance the threads; not
    # depending on the thread count keeps results bitwise identical for any number of threads
    group = max(1, min(-(-N // _WINO_MIN_GROUPS), _WINO_TILES[m] // T))
    xis = (m + 2) ** 2  # one stream per xi, each padded by 16 elements (see _stream)
    return group, (xis * (C * group * T + 16), xis * (F * group * T + 16), W,
                   (m + 2) * (m * TW + 2) + 4,  # + the SSE over-read
                   16 * group * T if m == 4 else 1)


def _wino_dw_shape(N, C, F, W, Ho, Wo):
    """(blocks, group, per-thread scratch sizes U, Y, Z, tmp) of the F(4x4) dW of N images with
    C input channels of width W and F output channels of Ho x Wo (see
    ``conv2d_winograd_backward``)."""
    TH, TW = -(-Ho // 4), -(-Wo // 4)
    T = TH * TW
    # fixed image blocks, each with its own 36*F*C partial dV: with few tiles per image (8x8
    # planes) 16 blocks would make combining the partials cost more than the GEMMs, so a block
    # gets >= _WINO_DW_BLOCK_TILES tiles (up to _BLOCKS blocks); the split depends on shapes only
    nblocks = max(1, min(N, _BLOCKS, N * T // _WINO_DW_BLOCK_TILES))
    # groups inside a block of images: fixed by the shapes, never by the thread count
    group = max(1, min(-(-N // nblocks), _WINO_DW_TILES // T))
    return nblocks, group, (36 * (C * group * T + 16), 36 * (F * group * T + 16), W,
                            6 * (4 * TW + 2) + 4)


def _scratch_rows(nt, sizes, dtype):
    """The per-thread scratch U, M (or Y), Z, tmp[, O] with rows of at least these sizes."""
    names = ("wino_U", "wino_M", "wino_Z", "wino_tmp", "wino_O")
    return [_buffer(name, (nt, size), dtype, rows_apart=True) for name, size in zip(names, sizes)]


def _dw_partials(nblocks, F, C, dtype):
    return (_buffer("dw_part", (nblocks, 36 * F * C), dtype),
            _buffer("dw_acc", (36 * F * C,), np.float64),
            _buffer("db_part", (nblocks, F), np.float64, rows_apart=True))


def _winograd(x, weight, bias, ph, pw, Ho, Wo, key, flipped=False):
    """y = conv2d(x, weight, bias, 1, (ph, pw)) for a 3x3 kernel, by Winograd F(m x m, 3x3).

    ``flipped``: use weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1] instead (the dx conv).
    """
    N, C, _, W = x.shape
    F = weight.shape[1] if flipped else weight.shape[0]
    m = _WINO_M
    y = _memory.empty((N, F, Ho, Wo), x.dtype)
    nt = _threads_for(N, F, C, 3, 3, Ho, Wo)
    group, sizes = _wino_conv_shape(N, C, F, W, Ho, Wo, m)
    V = _memory.empty(((m + 2) ** 2, F, C), x.dtype)  # (G g G^T) of every kernel, rounded once
    U, M, Z, tmp, O = _scratch_rows(nt, sizes, x.dtype)
    b = bias if bias is not None else np.zeros(F, dtype=x.dtype)
    gemm_seconds = _gemm_seconds[key] = np.zeros(nt)
    with _single_threaded_blas:
        _k.conv2d_winograd(x, weight, flipped, V, b, bias is not None, y, U, M, Z, tmp, O,
                           gemm_seconds, ph, pw, m, group, nt)
    return y


def _winograd_backward(dy, x, weight, ph, pw, dweight, dbias, with_dx):
    """dweight, dbias (filled in) of a 3x3 stride-1 conv by F(4x4, 3x3), and with ``with_dx``
    dx (returned, else None), in one kernel call (``conv2d_winograd_backward``): dx is the conv
    of ``_winograd(flipped=True)`` at F(4x4); the scratch rows are sized for the larger pass."""
    N, C, H, W = x.shape
    _, F, Ho, Wo = dy.shape
    nt = _threads_for(N, F, C, 3, 3, Ho, Wo, products=2 if with_dx else 1)
    nblocks, dw_group, sizes = _wino_dw_shape(N, C, F, W, Ho, Wo)
    dx, V = _NO_DX[x.dtype]
    dx_group, sizes = 1, sizes + (1,)  # a 1-element O row: only the dx pass uses O
    if with_dx:
        dx_group, dx_sizes = _wino_conv_shape(N, F, C, Wo, H, W, 4)
        sizes = [max(a, b) for a, b in zip(dx_sizes, sizes)]
        V = _memory.empty((36, C, F), x.dtype)
        dx = _memory.empty_like(x)
    U, M, Z, tmp, O = _scratch_rows(nt, sizes, x.dtype)
    dv_part, dv_acc, db_part = _dw_partials(nblocks, F, C, x.dtype)
    gemm_seconds = _gemm_seconds["backward"] = np.zeros(nt)
    with _single_threaded_blas:
        _k.conv2d_winograd_backward(dy, x, weight, with_dx, V, dx, dv_part, dv_acc, db_part, U,
                                    M, Z, tmp, O, dweight, dbias, gemm_seconds, ph, pw, dx_group,
                                    dw_group, nt)
    return dx if with_dx else None


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
    Ho, Wo = conv_output_size((H, W), (kh, kw), (sh, sw), (ph, pw))
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
    if N > 0 and _use_winograd(kh, kw, sh, sw, C, F, N * Ho * Wo):
        return _winograd(x, weight, bias, ph, pw, Ho, Wo, "forward")
    y = _memory.empty((N, F, Ho, Wo), x.dtype)
    if N == 0:
        return y
    nt = _threads_for(N, F, C, kh, kw, Ho, Wo)
    K = C * kh * kw
    rows = _rows_per_chunk(K, Ho, Wo, x.itemsize)
    cols = _buffer("cols", (nt, K * rows * Wo), x.dtype, rows_apart=True)
    b = bias if bias is not None else np.zeros(F, dtype=x.dtype)
    gemm_seconds = _gemm_seconds["forward"] = np.zeros(nt)
    with _single_threaded_blas:
        _k.conv2d_forward(x, weight, b, bias is not None, y, cols, gemm_seconds, sh, sw, ph, pw,
                          rows, nt)
    return y


def conv2d_backward(dy, x, weight, stride=1, padding=0, compute_dx=True, *, out=None):
    """(dx, dweight, dbias) of ``conv2d``; dx is None when ``compute_dx`` is False.

    dy must have the forward output shape (N, F, Ho, Wo). dbias = dy.sum((0, 2, 3)).
    ``out=(dweight, dbias)``: arrays (dbias may be None) the gradients are written into and
    returned, e.g. a layer's own gradient arrays (no copy afterwards).
    """
    x, weight, (sh, sw), (ph, pw), (Ho, Wo) = _check(x, weight, stride, padding)
    dy = float_array(dy, "dy", 4, x.dtype)
    N, C, H, W = x.shape
    F, _, kh, kw = weight.shape
    if dy.shape != (N, F, Ho, Wo):
        raise ValueError(f"dy must have the forward output shape {(N, F, Ho, Wo)} of x {x.shape} "
                         f"and weight {weight.shape}, got {dy.shape}")
    compute_dx = flag(compute_dx, "compute_dx")
    dweight, dbias = _memory.weight_grads(out, weight, {"dy": dy, "x": x, "weight": weight})
    if N == 0:
        dweight.fill(0)
        dbias.fill(0)
        return (np.zeros_like(x) if compute_dx else None), dweight, dbias
    dx = None
    _gemm_seconds["backward_dx"] = np.zeros(1)
    wino_dx = compute_dx and _use_winograd(kh, kw, sh, sw, C, F, N * H * W) and ph <= 2 and pw <= 2
    wino_dw = _WINO_DW and _use_winograd(kh, kw, sh, sw, C, F, N * Ho * Wo)
    if wino_dx and wino_dw and _WINO_M == 4:  # dx and dW in one kernel call
        return _winograd_backward(dy, x, weight, ph, pw, dweight, dbias, True), dweight, dbias
    if wino_dx:
        # dx = 'full' correlation of dy with the flipped, transposed kernel: the same Winograd
        # forward conv with padding (2 - ph, 2 - pw); the kernels below then only do dW, db.
        dx = _winograd(dy, weight, None, 2 - ph, 2 - pw, H, W, "backward_dx", flipped=True)
        compute_dx = False
    elif compute_dx:
        dx = _memory.empty_like(x)
    if wino_dw and not compute_dx:
        _winograd_backward(dy, x, weight, ph, pw, dweight, dbias, False)
        return dx, dweight, dbias
    nt = _threads_for(N, F, C, kh, kw, Ho, Wo, 2 if compute_dx else 1)
    K = C * kh * kw
    rows = _rows_per_chunk(K, Ho, Wo, x.itemsize)
    cols = _buffer("cols", (nt, K * rows * Wo), x.dtype, rows_apart=True)
    dcols = _buffer("dcols", (nt, K * rows * Wo) if compute_dx else (1, 1), x.dtype,
                    rows_apart=True)
    nblocks = min(N, _BLOCKS)
    dw_part = _buffer("dw_part", (nblocks, F * K), x.dtype)
    db_part = _buffer("db_part", (nblocks, F), np.float64, rows_apart=True)
    dw_acc = _buffer("dw_acc", (F * K,), np.float64)
    dx_arg = dx if compute_dx else np.empty((0, 0, 0, 0), dtype=x.dtype)
    gemm_seconds = _gemm_seconds["backward"] = np.zeros(nt)
    with _single_threaded_blas:
        _k.conv2d_backward(dy, x, weight, dx_arg, compute_dx, dw_part, dw_acc, db_part, cols, dcols,
                           dweight, dbias, gemm_seconds, sh, sw, ph, pw, rows, nt)
    return dx, dweight, dbias
