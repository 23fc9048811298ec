"""The communicator: one process by default, MPI (through mpi4py) when launched by mpiexec/srun.

``world()`` returns the process-wide communicator. In a plain ``python``/``cybn`` run it is a
:class:`SelfComm` (rank 0 of 1, every collective a no-op) and **mpi4py is never imported**, so
the single-process path needs no MPI installed. Under a launcher (``mpiexec``, ``srun``) the
world size is read from the environment the launcher sets (Open MPI, MPICH/Intel MPI/Hydra,
PMIx, Slurm) and, when it is above 1, mpi4py is imported lazily and :class:`MPIComm` wraps
``MPI.COMM_WORLD``. ``world(mpi=True)`` forces MPI even for one rank; a missing mpi4py then
raises ImportError saying how to install it.

Collectives (every rank must call them, in the same order):

* ``allreduce(a)``: in-place elementwise sum of a C-contiguous numpy array (float or int);
* ``bcast_array(a, root)``: in-place broadcast of a numpy array;
* ``allgather_array(a, out)``: rank r's ``a`` into ``out[r]``;
* ``bcast(obj)`` / ``allgather(obj)``: small picklable Python objects;
* ``barrier()``; ``abort(code)`` ends the whole job (every rank), not a collective.
"""
import os
import sys

import numpy as np

from ._validation import in_place

__all__ = ["Comm", "SelfComm", "MPIComm", "world", "current", "launcher_world_size", "threads_per_rank", "INSTALL_HINT"]

INSTALL_HINT = 'pip install "cybn[mpi]"  (mpi4py and the Open MPI wheel)'

# (variable, launcher): the first one set gives the world size. Slurm's SLURM_NTASKS is also
# set inside a batch script that was not started by srun, so only the step's task count counts.
_SIZE_VARS = (("OMPI_COMM_WORLD_SIZE", "Open MPI"), ("PMI_SIZE", "MPICH/Hydra/Intel MPI"),
              ("PMIX_SIZE", "PMIx"), ("SLURM_STEP_NUM_TASKS", "Slurm"))


def launcher_world_size(environ=None):
    """(size, launcher) from the launcher's environment, or (1, None) outside a launcher."""
    environ = os.environ if environ is None else environ
    for var, launcher in _SIZE_VARS:
        value = environ.get(var, "").strip()
        if value.isdigit() and int(value) >= 1:
            return int(value), f"{launcher} ({var}={value})"
    return 1, None


class Comm:
    """Interface shared by :class:`SelfComm` and :class:`MPIComm`."""

    rank = 0
    size = 1
    distributed = False

    def __repr__(self):
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"

    @property
    def is_root(self):
        return self.rank == 0


def _contiguous(a, name):
    if type(a) is not np.ndarray:
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    return in_place(a, name)


class SelfComm(Comm):
    """The single-process world: rank 0 of 1; collectives return their input."""

    def allreduce(self, a):
        return _contiguous(a, "allreduce buffer")

    def bcast_array(self, a, root=0):
        return _contiguous(a, "bcast buffer")

    def allgather_array(self, a, out):
        out[0] = a
        return out

    def bcast(self, obj, root=0):
        return obj

    def allgather(self, obj):
        return [obj]

    def barrier(self):
        pass

    def abort(self, code=1):
        sys.stderr.flush()
        os._exit(code)

    def local_peers(self):
        """(this rank's CPU set, CPU sets of the other ranks on this machine)."""
        return _affinity(), []


def _affinity():
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return frozenset(range(os.cpu_count() or 1))


class MPIComm(Comm):
    """``MPI.COMM_WORLD`` (or ``comm``) through mpi4py's buffer interface (no pickling of arrays)."""

    distributed = True

    def __init__(self, comm=None):
        MPI = _import_mpi4py()
        self._MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        if self.size > 1:
            _abort_on_uncaught(self)

    def allreduce(self, a):
        a = _contiguous(a, "allreduce buffer")
        if a.size:
            self.comm.Allreduce(self._MPI.IN_PLACE, a, op=self._MPI.SUM)
        return a

    def bcast_array(self, a, root=0):
        a = _contiguous(a, "bcast buffer")
        if a.size:
            self.comm.Bcast(a, root=root)
        return a

    def allgather_array(self, a, out):
        a = np.ascontiguousarray(a)
        out = _contiguous(out, "allgather output")
        if out.shape != (self.size,) + a.shape or out.dtype != a.dtype:
            raise ValueError(f"allgather output must be {(self.size,) + a.shape} {a.dtype}, "
                             f"got {out.shape} {out.dtype}")
        self.comm.Allgather(a, out)
        return out

    def bcast(self, obj, root=0):
        return self.comm.bcast(obj, root=root)

    def allgather(self, obj):
        return self.comm.allgather(obj)

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code=1):
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)

    def local_peers(self):
        """(this rank's CPU set, CPU sets of the other ranks on this machine)."""
        mine = _affinity()
        host = self._MPI.Get_processor_name()
        everyone = self.allgather((host, mine))
        others = [cpus for r, (h, cpus) in enumerate(everyone) if h == host and r != self.rank]
        return mine, others


def _abort_on_uncaught(comm):
    """An uncaught exception on one rank ends the job: otherwise that rank would wait in
    MPI_Finalize at exit and the others in their next collective, forever."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        print(f"cybn: rank {comm.rank} of {comm.size}: uncaught {kind.__name__}, aborting the job",
              file=sys.stderr)
        previous(kind, value, tb)
        comm.abort(1)

    sys.excepthook = hook


def _import_mpi4py():
    try:
        import mpi4py
        mpi4py.rc.thread_level = "funneled"  # only the main thread calls MPI (kernels use OpenMP)
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f"distributed training needs mpi4py and an MPI library: {INSTALL_HINT} "
                          f"({e})") from None
    return MPI


_world = None


def current():
    """The world if ``world()`` already made it, else None (never initialises MPI)."""
    return _world


def world(mpi=None):
    """The process-wide communicator, created on first use.

    ``mpi=None`` (default): MPI when the launcher's environment says the world has more than one
    rank, else the single-process world (no mpi4py import). ``mpi=True``: MPI even for one rank
    (ImportError naming ``pip install "cybn[mpi]"`` when mpi4py is missing). ``mpi=False``: the
    single-process world (ValueError under a launcher with more than one rank: the ranks would
    each train alone and overwrite each other's files).
    """
    global _world
    size, launcher = launcher_world_size()
    if mpi is False and size > 1:
        raise ValueError(f"a single-process run was asked for, but this process is one of {size} ranks "
                         f"started by {launcher}")
    if _world is None or (mpi and not _world.distributed):
        _world = MPIComm() if (mpi or size > 1) else SelfComm()
        if _world.distributed and size > 1 and _world.size != size:
            raise RuntimeError(f"{launcher} started {size} ranks but MPI reports a world of {_world.size}: "
                               "mpi4py is linked against a different MPI than the launcher's (use the "
                               "mpiexec of the MPI mpi4py was built with)")
    return _world


def threads_per_rank(comm=None):
    """Default threads for this rank: its CPUs divided among the ranks of this machine sharing them.

    Ranks the launcher bound to disjoint cores (``--bind-to core`` / ``socket``) keep all of
    their own CPUs; unbound ranks split the machine's (``cores // local ranks``). At least 1.
    """
    comm = world() if comm is None else comm
    mine, others = comm.local_peers()
    sharing = 1 + sum(1 for cpus in others if cpus & mine)
    return max(1, len(mine) // sharing)
