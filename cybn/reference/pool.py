"""2-D max pooling, plain NumPy (loops over output positions, vectorised over N and C).

Conventions (shared with cybn.functional.pool and PyTorch's CPU max_pool2d):
- padding is implicit -inf: out-of-range positions are simply not candidates;
- ties: the FIRST maximum in row-major scan order of the window wins (np.argmax's rule);
- NaN propagates: a NaN counts as the maximum (the first NaN of the window; PyTorch's CPU
  kernel reports the LAST NaN's index, the pooled value is NaN either way);
- indices are flat positions h*W + w inside the (unpadded) input plane, int64.
"""
import numpy as np

from .._validation import conv_output_size, nonnegative_int, pair

__all__ = ["max_pool2d", "max_pool2d_backward"]


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """x (N, C, H, W) -> (y, indices), both (N, C, Ho, Wo) with Ho = (H + 2ph - kh)//sh + 1."""
    kh, kw = pair(kernel_size, "kernel_size")
    sh, sw = pair(kernel_size if stride is None else stride, "stride")
    ph, pw = pair(padding, "padding", nonnegative_int)
    N, C, H, W = x.shape
    Ho, Wo = conv_output_size((H, W), (kh, kw), (sh, sw), (ph, pw))
    y = np.empty((N, C, Ho, Wo), dtype=x.dtype)
    indices = np.empty((N, C, Ho, Wo), dtype=np.int64)
    for oh in range(Ho):
        hs, he = max(oh * sh - ph, 0), min(oh * sh - ph + kh, H)
        for ow in range(Wo):
            ws, we = max(ow * sw - pw, 0), min(ow * sw - pw + kw, W)
            window = x[:, :, hs:he, ws:we].reshape(N, C, -1)
            a = np.argmax(window, axis=2)  # first max; first NaN if any
            y[:, :, oh, ow] = np.take_along_axis(window, a[:, :, None], axis=2)[:, :, 0]
            r, c = np.divmod(a, we - ws)
            indices[:, :, oh, ow] = (hs + r) * W + (ws + c)
    return y, indices


def max_pool2d_backward(dy, indices, input_shape):
    """dx (input_shape): each dy element added at its window's argmax (windows may overlap)."""
    N, C, H, W = input_shape
    dx = np.zeros((N, C, H * W), dtype=dy.dtype)
    n, c = np.meshgrid(np.arange(N), np.arange(C), indexing="ij")
    flat_dy = dy.reshape(N, C, -1)
    flat_idx = indices.reshape(N, C, -1)
    np.add.at(dx, (n[:, :, None], c[:, :, None], flat_idx), flat_dy)
    return dx.reshape(N, C, H, W)
