# Pieces every cybn kernel shares: the fused dtype and the C header of attribute macros and
# fixed-order sums (see _common.h). Use: ``from cybn._kernels._common cimport floating``.

ctypedef fused floating:
    float
    double

cdef extern from "_common.h":
    bint CYBN_OPENMP_ENABLED
    double CYBN_WTIME() nogil


cdef inline int threads_for(Py_ssize_t work, Py_ssize_t min_work, Py_ssize_t units,
                            int num_threads) noexcept nogil:
    """Threads worth waking: 1 below ``min_work`` (a team's wake-up costs several us), else at
    most one per work unit. Results never depend on it (work splits are shape-derived)."""
    if work < min_work or units < 2:
        return 1
    return num_threads if num_threads < units else <int>units
