# Pieces every cybn kernel shares: the fused dtype and the C header of attribute macros and
# fixed-order sums (see _common.h). Use: ``from cybn._kernels._common cimport floating``.

ctypedef fused floating:
    float
    double

cdef extern from "_common.h":
    bint CYBN_OPENMP_ENABLED
    double CYBN_WTIME() nogil
    void CYBN_PREFETCH_AHEAD(const void* p, Py_ssize_t bytes) noexcept nogil
    ctypedef struct cybn_team:
        int flag
    void cybn_team_init(cybn_team* t) noexcept nogil
    bint cybn_claim(cybn_team* t, int phase, Py_ssize_t n, Py_ssize_t* lo,
                    Py_ssize_t* hi) noexcept nogil
    Py_ssize_t cybn_claim1(cybn_team* t, int phase, Py_ssize_t n) noexcept nogil
    void cybn_team_flag(cybn_team* t) noexcept nogil
    void cybn_team_barrier(cybn_team* t) noexcept nogil
    void cybn_team_end(cybn_team* t) noexcept nogil
