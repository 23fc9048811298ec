"""2-D max pooling backed by OpenMP kernels (cybn/_kernels/pool.pyx).

Conventions (identical in cybn.reference.pool; values and indices match PyTorch's CPU
``max_pool2d(..., return_indices=True)`` apart from the NaN-index case below):
- padding is implicit -inf and must be <= kernel//2 per dimension (as in PyTorch), so every
  window contains at least one real input element; output size uses floor mode:
  Ho = (H + 2ph - kh)//sh + 1;
- ties: the FIRST maximum in row-major scan order of the window wins;
- NaN propagates: a NaN counts as the maximum. With several NaNs in one window the first one's
  index is returned (PyTorch's CPU kernel returns the last one; the value is NaN either way);
- indices are int64 flat positions h*W + w in the unpadded input plane (PyTorch's convention).
"""
import numpy as np

from .._kernels import pool as _k
from .._validation import conv_output_size, float_array, nonnegative_int, pair, positive_int
from ._dispatch import threads_for
from . import _memory

__all__ = ["max_pool2d", "max_pool2d_backward"]


def _geometry(shape, kernel_size, stride, padding):
    kh, kw = pair(kernel_size, "kernel_size")
    sh, sw = pair(kernel_size if stride is None else stride, "stride")
    ph, pw = pair(padding, "padding", check=nonnegative_int)
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"padding {(ph, pw)} must be at most half the kernel size {(kh, kw)} "
                         "(padding <= kernel_size // 2)")
    H, W = shape[2], shape[3]
    if H == 0 or W == 0:
        # with padding the windows would hold padding only: no element to take the max of
        raise ValueError(f"x of shape {shape} has an empty input plane (H = {H}, W = {W})")
    Ho, Wo = conv_output_size((H, W), (kh, kw), (sh, sw), (ph, pw))
    if Ho < 1 or Wo < 1:
        raise ValueError(f"input of shape {shape} padded by {(ph, pw)} is smaller than the kernel "
                         f"{(kh, kw)}: the output would be empty")
    return (kh, kw), (sh, sw), (ph, pw), (Ho, Wo)


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Max pooling of x (N, C, H, W) -> (y, indices), both (N, C, Ho, Wo).

    kernel_size, stride (None = kernel_size) and padding are an int or an (h, w) pair.
    indices (int64) hold, for every output, the flat position h*W + w of the chosen input
    element in its plane; ties go to the first maximum in row-major order, NaN wins.
    """
    x = float_array(x, "x", ndim=4)
    (kh, kw), (sh, sw), (ph, pw), (Ho, Wo) = _geometry(x.shape, kernel_size, stride, padding)
    N, C, H, W = x.shape
    y = _memory.empty((N, C, Ho, Wo), x.dtype)
    indices = _memory.empty((N, C, Ho, Wo), np.int64)
    _k.max_pool2d_forward(x.reshape(N * C, H, W), y.reshape(N * C, Ho, Wo),
                          indices.reshape(N * C, Ho, Wo), kh, kw, sh, sw, ph, pw, threads_for(x.size))
    return y, indices


def _input_shape(input_shape, dy_shape):
    if not isinstance(input_shape, (tuple, list)):
        raise TypeError(f"input_shape must be a tuple (N, C, H, W), got {type(input_shape).__name__}")
    if len(input_shape) != 4:
        raise ValueError(f"input_shape must be a 4-tuple (N, C, H, W), got {input_shape!r}")
    input_shape = tuple(positive_int(v, f"input_shape {tuple(input_shape)}: each size") for v in input_shape)
    if input_shape[:2] != dy_shape[:2]:
        raise ValueError(f"input_shape {input_shape} and dy of shape {dy_shape} disagree on (N, C)")
    return input_shape


def max_pool2d_backward(dy, indices, input_shape):
    """dx of shape input_shape: every dy element is added at the input position its index names
    (accumulated, since overlapping windows, stride < kernel, can pick the same element).

    ``indices`` normally come from max_pool2d; the kernel still bounds-checks every one (for
    free, in the same pass) and a value outside [0, H*W) raises ValueError instead of writing
    out of bounds.
    """
    dy = float_array(dy, "dy", ndim=4)
    if not isinstance(indices, np.ndarray):
        raise TypeError(f"indices must be a numpy.ndarray, got {type(indices).__name__}")
    if indices.dtype.kind not in "iu":
        raise TypeError(f"indices must have an integer dtype (int64 from max_pool2d), got {indices.dtype}")
    if indices.shape != dy.shape:
        raise ValueError(f"indices must have the shape of dy {dy.shape}, got {indices.shape}")
    N, C, H, W = _input_shape(input_shape, dy.shape)
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    dx = _memory.empty((N, C, H, W), dy.dtype)
    L = dy.shape[2] * dy.shape[3]
    bad = _k.max_pool2d_backward(dy.reshape(N * C, L), indices.reshape(N * C, L),
                                 dx.reshape(N * C, H * W), threads_for(dx.size))
    if bad:
        raise ValueError(f"indices hold {bad} value(s) outside [0, H*W) = [0, {H * W}) for "
                         f"input_shape {(N, C, H, W)}")
    return dx
