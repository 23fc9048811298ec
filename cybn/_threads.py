"""The one thread policy of cybn, and the one owner of the BLAS thread limit.

One pool does the work: cybn's OpenMP team. ``cybn.set_num_threads(n)`` decides how many
OpenMP threads every kernel uses (each ``prange`` gets an explicit ``num_threads``); every GEMM
(conv and linear) is a single-threaded BLAS call (scipy.linalg.cython_blas) inside that team's
fixed work split, so no BLAS thread pool is woken during training: no pool spins on the cores
the OpenMP threads need, and the result does not depend on the thread count. The default is
the ``CYBN_NUM_THREADS`` environment variable, else the cores this process may run on.

BLAS limit: while any kernel that calls BLAS runs, ``single_threaded_blas`` holds every BLAS
library loaded at import (scipy's and numpy's OpenBLAS) at one thread; the last call to leave
restores the previous limits (``nn.Sequential`` holds it around a whole forward or backward,
so the ops inside only count: each hold and release costs 7-25 us just after a kernel).
Outside those calls, ``set_num_threads(n)`` also caps numpy's and
scipy's BLAS pools at ``n`` (cybn's own ops never use them; the cap keeps user code beside
cybn, e.g. a numpy matmul in a metric, within the same ``n`` cores the user asked for).

Idle spinners: OpenMP's idle threads sleep at once (cybn's OMP_WAIT_POLICY=PASSIVE default),
and waking them costs more than the kernel gains on a VM. So before each multi-threaded kernel
``kernel_threads`` keeps ``n`` (at most one per core) SCHED_IDLE threads spinning for the next
few milliseconds: one is there on any core a team thread leaves idle. They run only when nothing
else wants a core and yield it every microsecond, so they take next to nothing from the team or
from other processes (``_kernels/_idle_spin.h`` has the measurements).
``CYBN_IDLE_SPIN=0`` turns them off; under a cgroup CPU quota (a container's CPU limit) they are
off unless ``CYBN_IDLE_SPIN=1``, as their time would count against the quota.
"""
import contextlib
import ctypes
import itertools
import os
import threading
import warnings

# Loads the BLAS that the kernels call (scipy's), so the controller below sees it.
import scipy.linalg.cython_blas  # noqa: F401
from threadpoolctl import ThreadpoolController

from ._kernels._openmp import idle_spin_available, idle_spin_touch, openmp_enabled
from ._validation import choice, from_text, positive_int

ENV_VAR = "CYBN_NUM_THREADS"
IDLE_SPIN_VAR = "CYBN_IDLE_SPIN"

_num_threads = None  # resolved on first use
_spinners = 0  # idle spinners a multi-threaded kernel asks for (set with the thread count)
_quota_limited = None  # cpu_quota_limited() of this process, read on first need


def available_cores():
    """Cores this process may run on (respects taskset/cgroup affinity where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class SettingError(ValueError):
    """A cybn environment variable holds a value it cannot take (the CLI's one-line error)."""


def _setting(var, checker, name, **kw):
    """The environment variable ``var`` checked by ``checker``; None when unset or blank."""
    value = os.environ.get(var, "").strip()
    if not value:
        return None
    try:
        return from_text(value, checker, name, **kw)
    except ValueError as e:
        raise SettingError(str(e)) from None


def _default_num_threads():
    n = _setting(ENV_VAR, positive_int, f"{ENV_VAR} (number of threads)")
    return available_cores() if n is None else n


def cpu_quota_limited(cgroup_file="/proc/self/cgroup", root="/sys/fs/cgroup"):
    """True when this process's cgroup caps its CPU time (a container's CPU limit): spinner
    time counts against the quota there and would throttle the team itself."""
    try:
        with open(cgroup_file) as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers, path = parts[1], parts[2].lstrip("/")
        if controllers == "":  # cgroup v2: "max 100000" or "<quota> <period>"
            candidates = [(os.path.join(root, path, "cpu.max"), "max")]
        elif "cpu" in controllers.split(","):  # cgroup v1: -1 is no quota
            candidates = [(os.path.join(root, d, path, "cpu.cfs_quota_us"), "-1")
                          for d in ("cpu", "cpu,cpuacct")]
        else:
            continue
        for file, unlimited in candidates:
            try:
                with open(file) as f:
                    if f.read().split()[0] != unlimited:
                        return True
            except (OSError, IndexError):
                pass
    return False


def under_cpu_quota():
    """``cpu_quota_limited()`` of this process, read once (set_num_threads may be called often)."""
    global _quota_limited
    if _quota_limited is None:
        _quota_limited = cpu_quota_limited()
    return _quota_limited


def idle_spin_enabled():
    """Whether idle spinners are used where they exist: ``CYBN_IDLE_SPIN`` 1 or 0; unset, on
    unless the process runs under a CPU quota."""
    value = _setting(IDLE_SPIN_VAR, choice, IDLE_SPIN_VAR, parse=str, choices=("0", "1"))
    wanted = not under_cpu_quota() if value is None else value == "1"
    return wanted and idle_spin_available()


def _apply(n):
    global _num_threads, _spinners
    spinners = min(n, available_cores()) if n > 1 and idle_spin_enabled() else 0
    with _hold_lock:
        _num_threads = n
        _spinners = spinners
        held = {blas.filepath for blas in _held_blas}
        for lib in ThreadpoolController().select(user_api="blas").lib_controllers:
            if lib.filepath not in held:  # loaded after cybn
                lib.set_num_threads(n)
        if _hold_users:
            # a kernel is running with BLAS held at 1: restore to n when the last one leaves
            # (changing a held library mid-call is unsafe)
            _hold_restore[:] = [n] * len(_held_blas)
        else:
            for blas in _held_blas:
                blas.set_num_threads(n)


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
    """The ``num_threads`` to hand a kernel: the setting, or 1 when OpenMP is not compiled in.
    Every multi-threaded kernel asks here first, so this also keeps the idle spinners going."""
    n = get_num_threads()
    if _spinners:
        idle_spin_touch(_spinners)
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


class _Blas:
    """One BLAS library's thread count, set from any Python thread.

    threadpoolctl >= 3.8 lets only the first Python thread that limits a pthreads OpenBLAS
    change it later; in any other thread its ``set_num_threads`` does nothing. cybn holds BLAS
    at one thread in whichever thread runs a kernel (a server thread calling ``infer``, say),
    so for OpenBLAS it calls the library's own setter: through threadpoolctl, an ``infer`` in
    a second thread ran its GEMMs on OpenBLAS's 2-thread pool, beside cybn's OpenMP team, and
    differed from the same call in the main thread in the last bits (2026-12-03).
    """

    def __init__(self, controller):
        self.filepath = controller.filepath
        self.get_num_threads = controller.get_num_threads
        self.set_num_threads = controller.set_num_threads
        if controller.internal_api == "openblas" and controller.threading_layer != "openmp":
            dll = ctypes.CDLL(controller.filepath)  # the loaded library again (dlopen counts)
            for prefix, suffix in itertools.product(("", "scipy_"), ("", "64_", "_64")):
                setter = getattr(dll, f"{prefix}openblas_set_num_threads{suffix}", None)
                getter = getattr(dll, f"{prefix}openblas_get_num_threads{suffix}", None)
                if setter is not None and getter is not None:
                    setter.argtypes, setter.restype = [ctypes.c_int], None
                    self.set_num_threads, self.get_num_threads = setter, getter
                    break


# The BLAS libraries loaded at import (threadpoolctl's controller creation scans every loaded
# library, ~ms: done once); holding one at a thread is then one C call per library.
_held_blas = [_Blas(lib) for lib in ThreadpoolController().select(user_api="blas").lib_controllers]
_hold_lock = threading.Lock()
_hold_users = 0  # calls in flight, from any Python thread, that need BLAS at one thread
_hold_restore = []  # the limits to restore when the last of them leaves


class _SingleThreadedBlas:
    """``with single_threaded_blas:`` holds every BLAS library at one thread (OpenMP provides
    the parallelism). Reference-counted, so overlapping calls from several Python threads
    restore the limits only when the last one leaves; a ``set_num_threads`` meanwhile updates
    what is restored instead of being undone."""

    def __enter__(self):
        global _hold_users
        with _hold_lock:
            if _hold_users == 0:
                _hold_restore[:] = [lib.get_num_threads() for lib in _held_blas]
                for lib in _held_blas:
                    lib.set_num_threads(1)
            _hold_users += 1
        return self

    def __exit__(self, *exc):
        global _hold_users
        with _hold_lock:
            _hold_users -= 1
            if _hold_users == 0:
                for lib, n in zip(_held_blas, _hold_restore):
                    lib.set_num_threads(n)


single_threaded_blas = _SingleThreadedBlas()
