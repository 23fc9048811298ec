"""The one thread setting of cybn.

``cybn.set_num_threads(n)`` decides how many OpenMP threads every kernel uses (each ``prange``
gets an explicit ``num_threads``) and caps the BLAS pool (numpy's matmul) at the same ``n``
through threadpoolctl, so the two pools never oversubscribe the cores. The default is the
``CYBN_NUM_THREADS`` environment variable, else the cores this process may run on.
"""
import contextlib
import os
import warnings

from threadpoolctl import threadpool_limits

from ._kernels._openmp import openmp_enabled
from ._validation import from_text, positive_int

ENV_VAR = "CYBN_NUM_THREADS"

_num_threads = None  # resolved on first use


def available_cores():
    """Cores this process may run on (respects taskset/cgroup affinity where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _default_num_threads():
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return available_cores()
    return from_text(value, positive_int, f"{ENV_VAR} (number of threads)")


def _apply(n):
    global _num_threads
    _num_threads = n
    threadpool_limits(limits=n, user_api="blas")  # applied on construction; nothing restores it


def get_num_threads():
    """The thread count the kernels and the BLAS pool use."""
    if _num_threads is None:
        _apply(_default_num_threads())
    return _num_threads


def set_num_threads(n):
    """Use ``n`` threads in every cybn kernel and cap the BLAS pool at ``n`` as well."""
    n = positive_int(n, "set_num_threads: number of threads")
    if n > 1 and not openmp_enabled():
        warnings.warn(
            "cybn was built without OpenMP: its kernels run on one thread "
            f"(only the BLAS pool will use {n})", RuntimeWarning, stacklevel=2)
    _apply(n)


def kernel_threads():
    """The ``num_threads`` to hand a kernel: the setting, or 1 when OpenMP is not compiled in."""
    n = get_num_threads()
    return n if openmp_enabled() else 1


@contextlib.contextmanager
def num_threads(n):
    """Temporarily use ``n`` threads: ``with cybn.num_threads(1): ...``."""
    previous = get_num_threads()
    set_num_threads(n)
    try:
        yield n
    finally:
        _apply(previous)
