"""The SGD update in plain NumPy: the oracle of ``cybn.functional.sgd_update`` (same signature)."""
import numpy as np

__all__ = ["sgd_update"]


def sgd_update(param, grad, momentum_buffer, lr, momentum=0.0, weight_decay=0.0, dampening=0.0,
               nesterov=False, first_step=False):
    """In place, PyTorch's ``torch.optim.SGD`` rule for one parameter (see the functional twin)."""
    d = grad
    if weight_decay != 0:
        d = grad + param * weight_decay
    if momentum != 0:
        if first_step:
            momentum_buffer[...] = d
        else:
            momentum_buffer *= momentum
            momentum_buffer += d if dampening == 0 else d * (1.0 - dampening)
        d = d + momentum_buffer * momentum if nesterov else momentum_buffer
    param -= d * lr
