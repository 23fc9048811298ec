"""Fully connected layer: y = x W^T + b. The products go to BLAS (numpy matmul, which releases
the GIL and uses the BLAS pool that cybn.set_num_threads caps); only the bias is handled here."""
import numpy as np

from .._validation import float_array, shape_is

__all__ = ["linear", "linear_backward"]


def _check_x_weight(x, weight):
    x = float_array(x, "x", ndim=2)
    weight = float_array(weight, "weight", ndim=2, dtype=x.dtype)
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"x has shape {x.shape} but weight has shape {weight.shape}: "
                         f"x.shape[1] must equal weight.shape[1] (in_features)")
    return x, weight


def linear(x, weight, bias=None):
    """y = x @ weight.T + bias.  x (N, in), weight (out, in), bias (out,) or None -> y (N, out)."""
    x, weight = _check_x_weight(x, weight)
    if bias is not None:
        bias = shape_is(float_array(bias, "bias", ndim=1, dtype=x.dtype), (weight.shape[0],),
                        "bias (out_features of weight)")
    y = np.matmul(x, weight.T)
    if bias is not None:
        y += bias  # in place: no second (N, out) temporary
    return y


def linear_backward(dy, x, weight):
    """Gradients of linear given dy (N, out): (dx = dy W, dweight = dy^T x, dbias = sum_n dy).

    dbias is accumulated in float64 and returned in the input dtype, so a float32 bias
    gradient over a large batch does not lose low-order bits.
    """
    x, weight = _check_x_weight(x, weight)
    dy = float_array(dy, "dy", ndim=2, dtype=x.dtype)
    shape_is(dy, (x.shape[0], weight.shape[0]), "dy (N of x, out_features of weight)")
    dx = np.matmul(dy, weight)
    dweight = np.matmul(dy.T, x)
    dbias = np.add.reduce(dy, axis=0, dtype=np.float64).astype(x.dtype, copy=False)
    return dx, dweight, dbias
