"""2-D convolution (cross-correlation, PyTorch's ``conv2d``) in plain NumPy: the test oracle.

Shapes: x (N, C, H, W), weight (F, C, kh, kw), bias (F,) or None, y (N, F, Ho, Wo) with
``Ho = (H + 2*ph - kh) // sh + 1`` (same for W). With ``xp`` the zero-padded input:

    y[n, f, oh, ow] = bias[f] + sum_{c, i, j} weight[f, c, i, j] * xp[n, c, oh*sh + i, ow*sw + j]

The code loops over the kh*kw kernel offsets only: for a fixed offset (i, j) the pixels the
kernel tap touches form one strided slice of ``xp`` (N, C, Ho, Wo), and the sum over c is a
tensor contraction with ``weight[:, :, i, j]`` (F, C). The backward pass reuses the same slices:

    dweight[f, c, i, j] = sum_{n, oh, ow} dy[n, f, oh, ow] * xp[n, c, oh*sh + i, ow*sw + j]
    dxp[n, c, oh*sh + i, ow*sw + j] += sum_f dy[n, f, oh, ow] * weight[f, c, i, j]
    dbias[f] = sum_{n, oh, ow} dy[n, f, oh, ow]

and dx is dxp without its padding border. Clarity over speed; computes in the input dtype.
"""
import numpy as np

from .._validation import conv_output_size, nonnegative_int, pair

__all__ = ["conv2d", "conv2d_backward"]


def _geometry(x, weight, stride, padding):
    """(sh, sw), (ph, pw), (Ho, Wo) after basic shape checks."""
    x = np.asarray(x)
    weight = np.asarray(weight)
    if x.ndim != 4 or weight.ndim != 4 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"need x (N, C, H, W) and weight (F, C, kh, kw), got x {x.shape}, "
                         f"weight {weight.shape}")
    (sh, sw), (ph, pw) = pair(stride, "stride"), pair(padding, "padding", nonnegative_int)
    _, _, H, W = x.shape
    _, _, kh, kw = weight.shape
    if kh > H + 2 * ph or kw > W + 2 * pw:
        raise ValueError(f"kernel {(kh, kw)} larger than the padded input of x {x.shape} "
                         f"with padding {(ph, pw)}")
    return (sh, sw), (ph, pw), conv_output_size((H, W), (kh, kw), (sh, sw), (ph, pw))


def _tap(xp, i, j, sh, sw, Ho, Wo):
    """The (N, C, Ho, Wo) slice of the padded input that kernel tap (i, j) multiplies."""
    return xp[:, :, i:i + sh * (Ho - 1) + 1:sh, j:j + sw * (Wo - 1) + 1:sw]


def conv2d(x, weight, bias=None, stride=1, padding=0):
    """y = conv2d(x, weight) + bias, NCHW, zero padding; see the module docstring."""
    (sh, sw), (ph, pw), (Ho, Wo) = _geometry(x, weight, stride, padding)
    N = x.shape[0]
    F, _, kh, kw = weight.shape
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    y = np.zeros((N, F, Ho, Wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            # sum over input channels c for this tap: (N, C, Ho, Wo) x (F, C) -> (N, F, Ho, Wo)
            y += np.einsum("nchw,fc->nfhw", _tap(xp, i, j, sh, sw, Ho, Wo), weight[:, :, i, j])
    if bias is not None:
        y += np.asarray(bias).reshape(1, F, 1, 1)
    return y


def conv2d_backward(dy, x, weight, stride=1, padding=0, compute_dx=True):
    """(dx, dweight, dbias) of ``conv2d`` given the output gradient dy (N, F, Ho, Wo).

    dx is None when ``compute_dx`` is False.
    """
    (sh, sw), (ph, pw), (Ho, Wo) = _geometry(x, weight, stride, padding)
    N, _, H, W = x.shape
    F, _, kh, kw = weight.shape
    if dy.shape != (N, F, Ho, Wo):
        raise ValueError(f"dy must have the forward output shape {(N, F, Ho, Wo)}, got {dy.shape}")
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dxp = np.zeros_like(xp) if compute_dx else None
    dweight = np.zeros_like(weight)
    for i in range(kh):
        for j in range(kw):
            # dweight tap: contract dy with the input slice over n, oh, ow
            dweight[:, :, i, j] = np.einsum("nfhw,nchw->fc", dy, _tap(xp, i, j, sh, sw, Ho, Wo))
            if compute_dx:
                # scatter-add the tap's input gradient back into the strided slice
                _tap(dxp, i, j, sh, sw, Ho, Wo)[...] += np.einsum("nfhw,fc->nchw", dy,
                                                                  weight[:, :, i, j])
    dbias = dy.sum(axis=(0, 2, 3))
    dx = dxp[:, :, ph:ph + H, pw:pw + W].copy() if compute_dx else None
    return dx, dweight, dbias
