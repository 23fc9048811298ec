"""What the compiler gave us: is OpenMP compiled in, and how many threads would it use."""
from cybn._kernels._common cimport CYBN_OPENMP_ENABLED

cdef extern from *:
    """
    #ifdef _OPENMP
    #define CYBN_OMP_MAX_THREADS() omp_get_max_threads()
    #else
    #define CYBN_OMP_MAX_THREADS() 1
    #endif
    """
    int CYBN_OMP_MAX_THREADS() nogil


def openmp_enabled():
    """True when the kernels were compiled with OpenMP (else every kernel runs serially)."""
    return bool(CYBN_OPENMP_ENABLED)


def omp_max_threads():
    """OpenMP's own default team size (1 without OpenMP); cybn passes explicit counts instead."""
    return CYBN_OMP_MAX_THREADS()
