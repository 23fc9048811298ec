"""Inverted dropout, validated (Srivastava et al., 2014; PyTorch's ``dropout`` semantics).

Each value is kept with probability 1 - p and scaled by 1 / (1 - p), so the expectation is
unchanged and evaluation needs no rescaling. The mask is drawn as
``rng.random(x.shape, dtype=x.dtype) >= p`` from the caller's Generator, and nothing is drawn
for p = 0 or p = 1: the stream a checkpoint saves and restores depends on these rules, so they
must not change. Two element-wise NumPy passes (multiply by the mask, then by the scale) are
memory-bound already; a kernel would not be faster.
"""
import numpy as np

from .._validation import check_float_array, generator, plain_array, real, shape_is
from . import _memory

__all__ = ["dropout", "dropout_backward"]


def _p(p):
    return real(p, "dropout probability p", 0.0, 1.0)


def _scale(p):
    return 0.0 if p == 1.0 else 1.0 / (1.0 - p)


def dropout(x, p, rng):
    """(y, mask): mask (bool, x's shape) is True where a value is kept; y = x * mask / (1 - p)."""
    x = check_float_array(x, "x")
    p = _p(p)
    generator(rng)
    if p == 0.0:
        keep = np.ones(x.shape, bool)
    elif p == 1.0:
        keep = np.zeros(x.shape, bool)
    else:
        keep = np.asarray(rng.random(x.shape, dtype=x.dtype.type) >= p)  # a 0-d draw is a scalar
    return _masked(x, keep, p), keep


def _masked(a, keep, p):
    out = np.multiply(a, keep, out=_memory.empty_like(a))  # out=: an array also for 0-d input
    out *= a.dtype.type(_scale(p))
    return out


def dropout_backward(dy, mask, p):
    """dx = dy * mask / (1 - p) for the ``mask`` that ``dropout`` returned (0 where dropped)."""
    check_float_array(dy, "dy")
    plain_array(mask, "mask")
    if mask.dtype != np.bool_:
        raise TypeError(f"mask must be the bool array dropout returned, got dtype {mask.dtype}")
    shape_is(mask, dy.shape, "mask (the shape of dy)")
    return _masked(dy, mask, _p(p))
