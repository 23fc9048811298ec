"""Element-wise kernels (ReLU forward/backward) over flat, C-contiguous data.

Callers (``cybn.functional.activation``) flatten any rank to 1-D, so one kernel serves every
layer. These loops are memory-bound: the parallel split over cores is what buys speed, the
branch-free select lets the compiler vectorise them.
"""
from cython.parallel cimport prange

from cybn._kernels._common cimport floating


def relu_forward(const floating[::1] x, floating[::1] y, int num_threads):
    """y = max(x, 0) with NaN propagating (PyTorch semantics).

    Written as ``0 if v <= 0 else v``: a NaN fails ``<=`` and is passed through, whereas
    ``v > 0 ? v : 0`` or fmax would silently turn it into 0 and hide a diverged model.
    """
    cdef Py_ssize_t i, n = x.shape[0]
    cdef floating v
    for i in prange(n, nogil=True, num_threads=num_threads, schedule='static'):
        v = x[i]
        y[i] = 0 if v <= 0 else v


def relu_backward(const floating[::1] dy, const floating[::1] y, floating[::1] dx, int num_threads):
    """dx = dy where y > 0 else 0 (a select, not a product: dy = NaN/inf under a dead unit gives 0)."""
    cdef Py_ssize_t i, n = dy.shape[0]
    cdef floating g, v
    for i in prange(n, nogil=True, num_threads=num_threads, schedule='static'):
        # both loads unconditional: a load only in one arm keeps gcc from turning the select
        # into a vector blend, and the resulting branch mispredicts on every sign change (30x).
        g = dy[i]
        v = y[i]
        dx[i] = g if v > 0 else 0
