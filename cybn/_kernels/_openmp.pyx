"""What the compiler gave us: is OpenMP compiled in."""
from cybn._kernels._common cimport CYBN_OPENMP_ENABLED


def openmp_enabled():
    """True when the kernels were compiled with OpenMP (else every kernel runs serially)."""
    return bool(CYBN_OPENMP_ENABLED)
