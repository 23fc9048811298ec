"""What the compiler gave us (is OpenMP compiled in), and the idle-priority spinners that keep
the OpenMP team's cores awake between kernels (``_idle_spin.h`` says why)."""
from cybn._kernels._common cimport CYBN_OPENMP_ENABLED

cdef extern from "_idle_spin.h" nogil:
    int CYBN_IDLE_SPIN_AVAILABLE
    int cybn_idle_spin_touch(int k)
    int cybn_idle_spin_active()


def openmp_enabled():
    """True when the kernels were compiled with OpenMP (else every kernel runs serially)."""
    return bool(CYBN_OPENMP_ENABLED)


def idle_spin_available():
    """True where idle-priority spinners exist (Linux, compiled with OpenMP)."""
    return bool(CYBN_IDLE_SPIN_AVAILABLE and CYBN_OPENMP_ENABLED)


def idle_spin_touch(int k):
    """Keep ``k`` spinners busy for the next few milliseconds (0: let them sleep); returns the
    number of spinner threads started. Called by ``cybn._threads`` before each kernel."""
    if not CYBN_OPENMP_ENABLED:
        return 0
    return cybn_idle_spin_touch(k)


def idle_spin_active():
    """Spinners currently spinning (0 once the last kernel is a few milliseconds past)."""
    return cybn_idle_spin_active()
