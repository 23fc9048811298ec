"""How many kernel threads a call of a given size gets (the one "is threading worth it" rule).

Waking an OpenMP team costs ~3 us on an idle core and milliseconds when the other cores are
busy (one descheduled worker stalls the whole team), so each thread must get enough work to pay
for it: at least ``grain`` elements (relu, measured on the 2-core dev box, breaks even at ~32k
float32 elements per thread). The count does not change results: kernels split work in fixed,
shape-derived blocks.
"""
from .._threads import kernel_threads

# Elements of work per thread below which an extra thread does not pay off.
PARALLEL_MIN = 1 << 15


def threads_for(size, grain=None, units=None):
    """Threads for a call touching ``size`` elements: ``size // grain`` (``PARALLEL_MIN`` by
    default), at least 1 and at most ``kernel_threads()`` and ``units`` (the number of
    independent pieces the kernel splits the work into, e.g. rows, when it has that few)."""
    grain = PARALLEL_MIN if grain is None else grain  # read at call time: tests lower it
    if size < 2 * grain:  # the common small call (a loss on a batch) skips the policy lookup
        return 1
    n = min(kernel_threads(), size // grain)
    if units is not None:
        n = min(n, units)
    return max(1, n)
