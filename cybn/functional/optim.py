"""The SGD update as one fused in-place pass: the optimizers' per-parameter arithmetic.

Six NumPy passes per parameter (decay, momentum, step) become one read of p, g and the momentum
buffer and one write of p and the buffer; every product and sum is rounded on its own, as in
NumPy and PyTorch, so the result is bitwise ``cybn.reference.sgd_update``'s. The maths is in
``cybn.nn.optim``'s docstring.
"""
from .._kernels import elementwise as _k
from .._validation import check_float_array, flag, in_place, nonnegative_float
from ._dispatch import threads_for

__all__ = ["sgd_update"]

# A pass over a parameter is ~0.7 ns per element, waking a second thread ~0.1 ms: below this many
# elements per thread one thread is faster. Measured (1 vs 2 threads, medians, momentum + decay):
# 2^18 elements 188 vs 194 us, 2^19 (cnn7's 2048x256 weight) 350 vs 278-302 us.
_SGD_GRAIN = 1 << 18


def _like_param(a, name, param):
    check_float_array(a, name, dtype=param.dtype)
    if a.shape != param.shape:
        raise ValueError(f"{name} must have the shape {param.shape} of param, got {a.shape}")
    return a


def sgd_update(param, grad, momentum_buffer, lr, momentum=0.0, weight_decay=0.0, dampening=0.0,
               nesterov=False, first_step=False):
    """In place: one SGD step of ``param`` (and of ``momentum_buffer`` when momentum != 0).

    d = grad + weight_decay * param; with momentum, buffer = d on the ``first_step``, else
    momentum * buffer + (1 - dampening) * d, and d = d + momentum * buffer (``nesterov``) or
    buffer; then param -= lr * d. ``momentum_buffer`` is None without momentum.
    """
    param = in_place(check_float_array(param, "param"), "param")
    grad = _like_param(grad, "grad", param)
    if not grad.flags.c_contiguous:
        raise ValueError("grad must be C-contiguous (the optimizer reads it in place)")
    lr = nonnegative_float(lr, "lr")
    momentum = nonnegative_float(momentum, "momentum")
    weight_decay = nonnegative_float(weight_decay, "weight_decay")
    dampening = nonnegative_float(dampening, "dampening")
    nesterov = flag(nesterov, "nesterov")
    first_step = flag(first_step, "first_step")
    if momentum != 0:
        if momentum_buffer is None:
            raise ValueError("momentum != 0 needs a momentum_buffer of param's shape and dtype")
        buf = in_place(_like_param(momentum_buffer, "momentum_buffer", param),
                       "momentum_buffer").reshape(-1)
        if nesterov and dampening != 0:
            raise ValueError("Nesterov momentum requires dampening = 0")
    else:
        if momentum_buffer is not None:
            raise ValueError("momentum_buffer must be None when momentum is 0")
        if nesterov:
            raise ValueError("Nesterov momentum requires momentum > 0")
        buf = param[:0].reshape(-1)
    _k.sgd_update(param.reshape(-1), grad.reshape(-1), buf, lr, momentum, weight_decay,
                  1.0 - dampening, first_step, nesterov,
                  threads_for(param.size, _SGD_GRAIN))
