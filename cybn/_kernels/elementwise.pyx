"""Element-wise kernels (ReLU forward/backward, the SGD update) over flat, C-contiguous data.

Callers (``cybn.functional.activation``, ``cybn.functional.optim``) flatten any rank to 1-D, so
one kernel serves every layer. These loops are memory-bound: the parallel split over cores is what buys speed, the
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


cdef extern from *:
    """
    /* One SGD update of n elements in one pass, in PyTorch's (and NumPy's) operation order and
       rounding: every product and sum rounded to T on its own (fp-contract off: an FMA would
       change bits). The flags are loop-invariant, so the compiler unswitches the loop. */
    #if defined(__GNUC__) && !defined(__clang__)
    #define CYBN_NO_CONTRACT __attribute__((optimize("fp-contract=off")))
    #else
    #define CYBN_NO_CONTRACT
    #endif
    #define CYBN_SGD(T)                                                                  \\
    CYBN_NO_CONTRACT static void cybn_sgd_##T(T* p, const T* g, T* b, ptrdiff_t n, T lr, \\
            T mu, T wd, T damp1, int decay, int momentum, int first, int dampen,         \\
            int nesterov) {                                                              \\
        for (ptrdiff_t i = 0; i < n; ++i) {                                              \\
            T d = g[i];                                                                  \\
            if (decay) { T t = p[i] * wd; d = d + t; }                                   \\
            if (momentum) {                                                              \\
                T v = d;                                                                 \\
                if (!first) {                                                            \\
                    v = b[i] * mu;                                                       \\
                    if (dampen) { T w = d * damp1; v = v + w; } else v = v + d;          \\
                }                                                                        \\
                b[i] = v;                                                                \\
                if (nesterov) { T w = v * mu; d = d + w; } else d = v;                   \\
            }                                                                            \\
            T s = d * lr;                                                                \\
            p[i] = p[i] - s;                                                             \\
        }                                                                                \\
    }
    CYBN_SGD(float)
    CYBN_SGD(double)
    """
    void cybn_sgd_float(float* p, const float* g, float* b, Py_ssize_t n, float lr, float mu,
                        float wd, float damp1, int decay, int momentum, int first, int dampen,
                        int nesterov) nogil
    void cybn_sgd_double(double* p, const double* g, double* b, Py_ssize_t n, double lr,
                         double mu, double wd, double damp1, int decay, int momentum, int first,
                         int dampen, int nesterov) nogil


# Elements per work unit of sgd_update (the split never changes a bit: each element is its own).
cdef Py_ssize_t _SGD_BLOCK = 1 << 16


def sgd_update(floating[::1] p, const floating[::1] g, floating[::1] buf, double lr,
               double momentum, double weight_decay, double one_minus_dampening, bint first,
               bint nesterov, int num_threads):
    """In place: p -= lr * d, with d = g (+ weight_decay * p if non-zero) and, when momentum is
    non-zero, buf = d on the ``first`` step, else momentum * buf + (1 - dampening) * d, and
    d = d + momentum * buf (``nesterov``) or buf. The scalars are rounded to p's dtype first, as
    NumPy does with a Python float; buf is unused (may be empty) without momentum."""
    cdef Py_ssize_t n = p.shape[0], nblk = (n + _SGD_BLOCK - 1) // _SGD_BLOCK, k, i0, m
    cdef bint decay = weight_decay != 0, use_mu = momentum != 0
    cdef bint dampen = one_minus_dampening != 1
    cdef floating* pb = &buf[0] if use_mu else NULL
    if n == 0:
        return
    for k in prange(nblk, nogil=True, num_threads=num_threads, schedule='static'):
        i0 = k * _SGD_BLOCK
        m = n - i0 if n - i0 < _SGD_BLOCK else _SGD_BLOCK
        if floating is float:
            cybn_sgd_float(&p[i0], &g[i0], pb + i0 if use_mu else NULL, m, <float>lr,
                           <float>momentum, <float>weight_decay, <float>one_minus_dampening,
                           decay, use_mu, first, dampen, nesterov)
        else:
            cybn_sgd_double(&p[i0], &g[i0], pb + i0 if use_mu else NULL, m, lr, momentum,
                            weight_decay, one_minus_dampening, decay, use_mu, first, dampen,
                            nesterov)
