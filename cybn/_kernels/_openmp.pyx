"""What the compiler gave us: is OpenMP compiled in."""

cdef extern from *:
    """
    #ifdef _OPENMP
    #define CYBN_OPENMP_ENABLED 1
    #else
    #define CYBN_OPENMP_ENABLED 0
    #endif
    """
    bint CYBN_OPENMP_ENABLED


def openmp_enabled():
    """True when the kernels were compiled with OpenMP (else every kernel runs serially)."""
    return bool(CYBN_OPENMP_ENABLED)
