"""The one thread setting of cybn.

``cybn.set_num_threads(n)`` decides how many OpenMP threads every kernel uses (each ``prange``
gets an explicit ``num_threads``) and caps the BLAS pool (numpy's matmul) at the same ``n``
through threadpoolctl, so the two pools never oversubscribe the cores. The default is the
``CYBN_NUM_THREADS`` environment variable, else the cores this process may run on.
"""
import contextlib
import numbers
import os
import warnings

from threadpoolctl import threadpool_limits

from ._kernels._openmp import openmp_enabled

ENV_VAR = "CYBN_NUM_THREADS"

_num_threads = None  # resolved on first use
_blas_limiter = None  # the threadpoolctl limit we applied, so it can be re-applied


def available_cores():
    """Cores this process may run on (respects taskset/cgroup affinity where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _validate(n, source):
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{source}: number of threads must be an integer, got {n!r}")
    n = int(n)
    if n < 1:
        raise ValueError(f"{source}: number of threads must be >= 1, got {n}")
    return n


def _default_num_threads():
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return available_cores()
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{ENV_VAR} must be a positive integer, got {value!r}") from None
    return _validate(n, ENV_VAR)


def _apply(n):
    global _num_threads, _blas_limiter
    _num_threads = n
    _blas_limiter = threadpool_limits(limits=n, user_api="blas")


def get_num_threads():
    """The thread count the kernels and the BLAS pool use."""
    if _num_threads is None:
        _apply(_default_num_threads())
    return _num_threads


def set_num_threads(n):
    """Use ``n`` threads in every cybn kernel and cap the BLAS pool at ``n`` as well."""
    n = _validate(n, "set_num_threads")
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
