"""Fully connected layer, plain NumPy: y = x W^T + b."""

__all__ = ["linear", "linear_backward"]


def linear(x, weight, bias=None):
    """x (N, in), weight (out, in), bias (out,) or None -> y (N, out)."""
    y = x @ weight.T
    if bias is not None:
        y = y + bias
    return y


def linear_backward(dy, x, weight):
    """Gradients of y = x W^T + b given dy (N, out): dx = dy W, dW = dy^T x, db = sum_n dy."""
    dx = dy @ weight
    dweight = dy.T @ x
    dbias = dy.sum(axis=0)
    return dx, dweight, dbias
