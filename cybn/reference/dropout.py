"""Inverted dropout, plain NumPy: keep each value with probability 1 - p, scaled by 1 / (1 - p).

The mask is ``rng.random(x.shape, dtype=x.dtype) >= p`` (nothing drawn for p = 0 or 1), so the
same Generator state gives ``cybn.functional.dropout`` the same mask.
"""
import numpy as np

__all__ = ["dropout", "dropout_backward"]


def _mask(shape, p, rng, dtype):
    if p == 0:
        return np.ones(shape, bool)
    if p == 1:
        return np.zeros(shape, bool)
    return np.asarray(rng.random(shape, dtype=dtype) >= p)


def dropout(x, p, rng):
    """(y, mask) with y = x / (1 - p) where mask, else 0 (all 0 for p = 1)."""
    mask = _mask(x.shape, p, rng, x.dtype.type)
    y = np.asarray(np.where(mask, x / (1 - p) if p < 1 else 0, 0), dtype=x.dtype)
    return y, mask


def dropout_backward(dy, mask, p):
    """dx = dy / (1 - p) where mask, else 0: dropout is linear in x for a fixed mask."""
    return np.asarray(np.where(mask, dy / (1 - p) if p < 1 else 0, 0), dtype=dy.dtype)
