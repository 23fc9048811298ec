"""ReLU, plain NumPy."""
import numpy as np

__all__ = ["relu", "relu_backward"]


def relu(x):
    """max(x, 0) element-wise, any rank. np.maximum propagates NaN (as PyTorch's relu does)."""
    return np.maximum(x, x.dtype.type(0))


def relu_backward(dy, y):
    """dx = dy where y > 0 else 0 (y is relu's OUTPUT; a NaN y counts as "not > 0" -> 0)."""
    return np.where(y > 0, dy, dy.dtype.type(0))
