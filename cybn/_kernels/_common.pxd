# Pieces every cybn kernel shares: the fused dtype and the C header of attribute macros and
# fixed-order sums (see _common.h). Use: ``from cybn._kernels._common cimport floating``.

ctypedef fused floating:
    float
    double

cdef extern from "_common.h":
    bint CYBN_OPENMP_ENABLED
    double CYBN_WTIME() nogil
