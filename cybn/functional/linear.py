"""Fully connected layer: y = x W^T + b, validated front end of ``_kernels.linear``.

The products are single-threaded BLAS GEMMs over fixed tiles of each output inside cybn's
OpenMP split (never numpy's BLAS pool, whose spinning workers would take the cores from the
kernels that run next), so results are bit-identical for any thread count.
"""
import numpy as np

from .._kernels import linear as _k
from .._threads import single_threaded_blas
from .._validation import MAX_INT, float_array, shape_is
from ._dispatch import threads_for
from . import _memory

__all__ = ["linear", "linear_backward"]


def _check_x_weight(x, weight):
    x = float_array(x, "x", ndim=2)
    weight = float_array(weight, "weight", ndim=2, dtype=x.dtype)
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"x has shape {x.shape} but weight has shape {weight.shape}: "
                         f"x.shape[1] must equal weight.shape[1] (in_features)")
    return x, weight


# Output panels per GEMM (see _tiles). Measured (cnn7's fc1, 128 x 2048 x 256, forward +
# backward, 1-thread CPU time, medians of 25 interleaved rounds) against one GEMM per product:
# 2 panels 1.03x, 4 panels 1.09x, 8 panels 1.18x, fixed 64 x 256 tiles 1.34x. 4 panels balance
# up to 4 threads for a few percent of one thread's time. Not part of the API.
_PANELS = 4


def _tiles(M, N):
    """The fixed tile of an (M, N) product: the longer side cut into _PANELS panels (rounded up
    to 16, the SIMD kernels' width), the other side whole. A function of the shape only."""
    def panel(size):
        return -(-size // (16 * _PANELS)) * 16  # ceil(size / _PANELS) rounded up to 16
    return (M, panel(N)) if N >= M else (panel(M), N)


# Multiply-adds per thread below which another thread does not pay off: a product under 2 * 2**20
# (~70 us on one core) runs on one thread, as waking the team costs several us. cnn7's fc2
# products (128 x 256 x 10) stay serial.
_GRAIN_FLOP = 1 << 20


def _threads(M, N, K, tile):
    """Threads for the (M, N) = (M, K) @ (K, N) product cut into ``tile``: at most one per tile."""
    tm, tn = (max(1, t) for t in tile)  # an empty side has a 0 tile
    return threads_for(M * N * K, _GRAIN_FLOP, units=-(-M // tm) * -(-N // tn))


def _check_blas_sizes(x, weight):
    # BLAS takes C int sizes and leading dimensions
    if max(x.shape + weight.shape) > MAX_INT:
        raise ValueError(f"x {x.shape} and weight {weight.shape}: every dimension must be "
                         f"<= {MAX_INT} (BLAS sizes are C int)")


def linear(x, weight, bias=None):
    """y = x @ weight.T + bias.  x (N, in), weight (out, in), bias (out,) or None -> y (N, out)."""
    x, weight = _check_x_weight(x, weight)
    if bias is not None:
        bias = shape_is(float_array(bias, "bias", ndim=1, dtype=x.dtype), (weight.shape[0],),
                        "bias (out_features of weight)")
    _check_blas_sizes(x, weight)
    y = _memory.empty((x.shape[0], weight.shape[0]), x.dtype)
    b = bias if bias is not None else np.empty(0, dtype=x.dtype)
    (N, K), F = x.shape, weight.shape[0]
    tile = _tiles(N, F)
    with single_threaded_blas:
        _k.linear_forward(x, weight, b, bias is not None, y, *tile, _threads(N, F, K, tile))
    return y


def linear_backward(dy, x, weight, *, out=None):
    """Gradients of linear given dy (N, out): (dx = dy W, dweight = dy^T x, dbias = sum_n dy).

    dbias is accumulated in float64 and returned in the input dtype, so a float32 bias
    gradient over a large batch does not lose low-order bits. ``out=(dweight, dbias)``: arrays
    (dbias may be None) the gradients are written into and returned, e.g. a layer's own
    gradient arrays (no copy afterwards).
    """
    x, weight = _check_x_weight(x, weight)
    dy = float_array(dy, "dy", ndim=2, dtype=x.dtype)
    shape_is(dy, (x.shape[0], weight.shape[0]), "dy (N of x, out_features of weight)")
    _check_blas_sizes(x, weight)
    dweight, dbias = _memory.weight_grads(out, weight, {"dy": dy, "x": x, "weight": weight})
    dx = _memory.empty_like(x)
    (N, K), F = x.shape, weight.shape[0]
    dx_tile, dw_tile = _tiles(N, K), _tiles(F, K)
    with single_threaded_blas:
        _k.linear_backward(dy, x, weight, dx, dweight, dbias, *dx_tile, *dw_tile,
                           max(_threads(N, K, F, dx_tile), _threads(F, K, N, dw_tile)))
    return dx, dweight, dbias
