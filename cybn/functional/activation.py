"""ReLU on any rank: the data is viewed flat and handed to an OpenMP kernel.

NaN: relu(NaN) = NaN (as PyTorch), so a diverged activation stays visible downstream.
relu_backward takes relu's OUTPUT y: dx = dy where y > 0 else 0 (a select, so a NaN/inf dy at a
dead unit gives 0, and a NaN y gives 0; PyTorch would pass dy through at a NaN y).
"""
import numpy as np

from .._kernels import elementwise as _k
from .._validation import float_array, shape_is
from ._dispatch import threads_for
from . import _memory

__all__ = ["relu", "relu_backward"]


def relu(x):
    """max(x, 0) element-wise for an array of any shape; NaN propagates."""
    shape = getattr(x, "shape", None)
    x = float_array(x, "x")  # note: np.ascontiguousarray turns a 0-d array into shape (1,)
    y = _memory.empty_like(x)
    _k.relu_forward(x.reshape(-1), y.reshape(-1), threads_for(x.size))
    return y.reshape(shape)


def relu_backward(dy, y):
    """dx = dy where y > 0 else 0; y is the output of relu (same shape and dtype as dy)."""
    shape = getattr(dy, "shape", None)
    dy = float_array(dy, "dy")
    y_in = y
    y = float_array(y, "y", dtype=dy.dtype)
    shape_is(y_in, shape, "y (the shape of dy)")
    dx = _memory.empty_like(dy)
    _k.relu_backward(dy.reshape(-1), y.reshape(-1), dx.reshape(-1), threads_for(dy.size))
    return dx.reshape(shape)
