"""Data-parallel training over MPI: the same model on every rank, each on its share of the batch.

The contract: R ranks training on global batches of B samples compute what one process
computes on the same batches (to float rounding; exactly the same batch statistics with
``SyncBatchNorm``). The pieces, used by ``cybn.train.Trainer`` (and usable alone):

* :func:`setup` -- the communicator (``cybn._comm.world``) and this rank's threads
  (``--threads`` > ``CYBN_NUM_THREADS`` > this machine's cores divided among its ranks);
* :class:`ShardedLoader` -- wraps a ``DataLoader``: every rank draws the SAME permutation and
  augmentation plan from the loader's seed, then builds (crop, flip, normalise) only its own
  contiguous share of each global batch (sizes differ by at most one). The loader state (seed,
  epoch, position) is the single-process one, so checkpoints are interchangeable;
* :class:`DataParallel` -- broadcasts parameters, buffers and random-layer states from rank 0,
  and reduces gradients with ONE allreduce per step over a flat buffer allocated once (grads
  of one dtype side by side, plus the step's loss and correct count in a 2-value tail).
  Weighting: each rank back-propagates ``loss_scale = local count / global count`` times its
  mean loss, so the SUM over ranks is the gradient of the global batch's mean loss for any
  split. After the reduction every rank holds identical gradients and loss, so the NaN/Inf
  check decides the same on every rank;
* :func:`check_consistency` -- ranks compare model, seed, batch size, data at start;
* :func:`evaluate` -- each rank evaluates its share of every batch, the sums are reduced;
* :func:`abort_on_error` -- an exception on one rank prints a message naming the rank and
  aborts the whole job (``MPI_Abort``), so nothing hangs in a collective.

Communication per training step: the gradient allreduce (2.7 MB for cnn7 in float32) and,
with SyncBN, two small collectives per BN layer. Plain BN layers stay per-rank (PyTorch's
semantics); their running statistics are re-broadcast from rank 0 before evaluation and
checkpoints (as PyTorch DDP's ``broadcast_buffers``), so every rank evaluates and saves the same
model. A resumed run equals an uninterrupted one.
"""
import contextlib
import os
import platform
import sys
import traceback
import zlib

import numpy as np

from . import _comm
from . import functional as F
from ._threads import ENV_VAR, get_num_threads, set_num_threads
from .data.loader import share
from .nn import Dropout, generator_state, set_generator_state

__all__ = ["DistributedError", "setup", "shard_range", "ShardedLoader", "DataParallel", "ShardedDropout",
           "check_consistency", "model_fingerprint", "data_fingerprint", "evaluate", "abort_on_error",
           "describe", "root_first"]


class DistributedError(RuntimeError):
    """Raised identically on EVERY rank (ranks disagree, or the run cannot be split): the ranks
    can all stop cleanly, no abort needed."""


def setup(threads=None, mpi=None):
    """The world communicator, with this rank's kernel/BLAS threads set; returns the communicator.

    ``threads``: an explicit count (the ``--threads`` option) wins; else ``CYBN_NUM_THREADS``;
    else, under MPI, ``_comm.threads_per_rank`` (cores of this machine divided among the ranks
    sharing them). A single process keeps the usual default (all cores).
    """
    comm = _comm.world(mpi)
    if threads is not None:
        set_num_threads(threads)
    elif comm.distributed and not os.environ.get(ENV_VAR, "").strip():
        set_num_threads(_comm.threads_per_rank(comm))
    return comm


def describe(comm=None):
    """Rank, world size, launcher, host and threads of this process (for ``cybn config``)."""
    comm = _comm.world() if comm is None else comm
    _, launcher = _comm.launcher_world_size()
    return {"rank": comm.rank, "world_size": comm.size, "launcher": launcher or "none (single process)",
            "host": platform.node(), "threads_per_rank": get_num_threads()}


def root_first(comm, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on every rank, rank 0 before the others (e.g. a download into a
    shared cache that the other ranks then find); returns this rank's result."""
    if comm.is_root:
        result = fn(*args, **kwargs)
        comm.barrier()
        return result
    comm.barrier()
    return fn(*args, **kwargs)


shard_range = share  # [lo, hi) of a rank's share of n items (cybn.data.loader.share)


# ---------------------------------------------------------------------------------------- data

class ShardedLoader:
    """This rank's share of each global batch of ``loader`` (a ``cybn.data.DataLoader``).

    ``loader.batch_size`` is the GLOBAL batch. Iterating yields (x, y) of rank r's contiguous
    slice of every global batch, in the single-process order with the single-process crops and
    flips (the plan is drawn from the loader's seed on every rank; only the own slice is built:
    the wrapper sets ``loader.part``, so the loader itself now yields this rank's shares).
    ``shard`` is (lo, hi, n) of the batch last yielded: this rank holds samples [lo, hi) of a
    global batch of n (``DataParallel.begin_step`` takes it). Position, epoch and state are the
    wrapped loader's (``state_dict``/``load_state_dict`` delegate to it).
    """

    def __init__(self, loader, comm=None):
        self.loader = loader
        self.comm = _comm.world() if comm is None else comm
        smallest = loader.num_samples % loader.batch_size if not loader.drop_last else 0
        smallest = smallest or min(loader.batch_size, loader.num_samples)
        if smallest < self.comm.size:
            raise DistributedError(
                f"a batch of {smallest} sample(s) cannot be split over {self.comm.size} ranks "
                f"({loader.num_samples} samples in batches of {loader.batch_size}): every rank needs at "
                "least one sample; use drop_last, another batch size or fewer ranks")
        self.shard = None
        loader.part = (self.comm.rank, self.comm.size)  # the loader now builds this rank's rows only

    @property
    def global_count(self):
        """Samples in the global batch last yielded."""
        return self.shard[2] if self.shard else 0

    # The loader's position and state are the single-process ones: read them through.
    _DELEGATED = frozenset({"position", "epoch", "batch_size", "num_samples", "seed", "drop_last",
                            "state_dict", "load_state_dict", "get_state", "set_state", "set_epoch"})

    def __getattr__(self, name):
        if name in ShardedLoader._DELEGATED:
            return getattr(self.loader, name)
        raise AttributeError(f"ShardedLoader has no attribute {name!r}")

    def __len__(self):
        return len(self.loader)

    def _shard_of(self, k):
        ld = self.loader
        n = min(ld.batch_size, ld.num_samples - k * ld.batch_size)
        return share(n, self.comm.rank, self.comm.size) + (n,)

    def batch(self, epoch, k):
        """This rank's share of global batch ``k`` of ``epoch``: (x, y, (lo, hi, n))."""
        x, y = self.loader.batch(epoch, k)
        return x, y, self._shard_of(k)

    def __iter__(self):
        for x, y in self.loader:
            self.shard = self._shard_of(self.loader.position - 1)
            yield x, y


# ---------------------------------------------------------------------------------- gradients

class ShardedDropout(Dropout):
    """``Dropout`` for one rank's rows of a global batch: with ``shard = (lo, hi, n)`` it draws
    the mask of all n rows (every rank's generator is in the same state) and applies rows
    [lo, hi), so masks are those of the single-process run and the generators stay in step."""

    shard = None

    def forward(self, x):
        plain = type(x) is not np.ndarray or x.dtype not in (np.float32, np.float64)  # its errors
        if self.shard is None or not self.training or self.p in (0.0, 1.0) or plain:
            return super().forward(x)
        lo, hi, n = self.shard
        if x.shape[0] != hi - lo:
            raise ValueError(f"ShardedDropout: input of shape {x.shape} is not the {hi - lo} rows "
                             f"[{lo}, {hi}) of this rank's shard of {n}")
        # the draw of Dropout's forward, for the whole global batch
        keep = (self.rng.random((n,) + x.shape[1:], dtype=x.dtype.type) >= self.p)[lo:hi]
        scale = x.dtype.type(1.0 / (1.0 - self.p))
        y = np.multiply(x, keep)
        y *= scale
        self._save_for_backward(("sharded", keep, scale), y)
        return y

    def backward(self, dy):
        # anything but our own cache (none, Dropout's, an inference-mode marker): Dropout's backward
        # gives the answer or the clear error
        cache = self._cache[0] if type(self._cache) is tuple else None
        if not (type(cache) is tuple and cache[0] == "sharded"):
            return super().backward(dy)
        _, keep, _ = self._pop_cache(dy)
        return F.dropout_backward(dy, keep, self.p)


def _shard_dropouts(model):
    """Make every ``Dropout`` of ``model`` (a Sequential) a ShardedDropout, in place."""
    found = []
    for _, m in model.named_modules():
        for layer in getattr(m, "layers", ()):
            if type(layer) is Dropout:
                layer.__class__ = ShardedDropout
            if isinstance(layer, ShardedDropout):
                found.append(layer)
    return found


class DataParallel:
    """Gradient reduction and state broadcast for ``model`` over ``comm``.

    Construction broadcasts rank 0's parameters, buffers and random-layer (Dropout) generator
    states, so ranks start identical whatever their seeds, and makes the model's ``Dropout``
    layers :class:`ShardedDropout` (each rank draws the global batch's mask from the shared
    generator and keeps its rows: the single-process masks, not one mask repeated per rank).
    Per step: ``scale = begin_step(shard)``, forward, ``backward`` of ``scale * loss`` (i.e.
    ``loss_fn.backward(scale)``), then ``reduce_gradients(scale * loss, correct)`` makes every
    rank's grads the global batch's gradient and returns the global (loss, correct).
    """

    _TAIL = 2  # the step's weighted loss and correct count ride in the first buffer's tail

    def __init__(self, model, comm=None, broadcast=True):
        self.model = model
        self.comm = _comm.world() if comm is None else comm
        groups = {}
        for name, p, g, _ in model.named_parameters():
            groups.setdefault(p.dtype, []).append((name, p, g))
        if not groups:
            raise ValueError("DataParallel: the model has no parameters")
        self._buckets = []
        for i, (dtype, items) in enumerate(groups.items()):
            size = sum(p.size for _, p, _ in items) + (self._TAIL if i == 0 else 0)
            flat = np.zeros(size, dtype=dtype)  # allocated once, reused every step
            views, off = [], 0
            for _, p, g in items:
                views.append((p, g, flat[off:off + p.size].reshape(p.shape)))
                off += p.size
            self._buckets.append((flat, views))
        self.num_values = sum(p.size for items in groups.values() for _, p, _ in items)
        self._dropouts = _shard_dropouts(model)
        if broadcast:
            self.broadcast_state()

    @property
    def nbytes(self):
        """Bytes allreduced per step."""
        return sum(flat.nbytes for flat, _ in self._buckets)

    @staticmethod
    def loss_scale(local_count, global_count):
        """The factor for this rank's mean loss gradient (``loss_fn.backward(scale)``)."""
        return local_count / global_count

    def begin_step(self, shard):
        """Before the forward of a batch: ``shard`` = (lo, hi, n) from ``ShardedLoader.shard``.
        Tells the Dropout layers which rows of the global batch this rank holds; returns the
        loss scale ``(hi - lo) / n``."""
        for layer in self._dropouts:
            layer.shard = shard
        lo, hi, n = shard
        return self.loss_scale(hi - lo, n)

    def broadcast_state(self, root=0):
        """Make every rank's parameters, buffers and Dropout generators those of ``root``."""
        if self.comm.size == 1:
            return
        for flat, views in self._buckets:
            for p, _, v in views:
                np.copyto(v, p)
            self.comm.bcast_array(flat, root)
            for p, _, v in views:
                np.copyto(p, v)
        self.broadcast_buffers(root)
        rngs = [m for _, m in self.model.named_modules() if getattr(m, "rng", None) is not None]
        states = self.comm.bcast([generator_state(m.rng) for m in rngs], root)
        for m, state in zip(rngs, states):
            set_generator_state(m.rng, state)

    def broadcast_buffers(self, root=0):
        """Buffers (BN running statistics) of ``root`` on every rank (before eval / checkpoints:
        plain BN's statistics are per-rank)."""
        if self.comm.size == 1:
            return
        buffers = [b for _, m in self.model.named_modules() for b in m.buffers.values()]
        for b, value in zip(buffers, self.comm.bcast(buffers if self.comm.is_root else None, root)):
            b[...] = value

    def reduce_gradients(self, loss=0.0, correct=0):
        """Sum every parameter's gradient over the ranks in place (one allreduce per dtype: one
        for a single-dtype model) together with this rank's weighted ``loss`` and ``correct``;
        returns the global (loss, correct). A NaN/Inf anywhere on any rank makes the sum
        non-finite on every rank. (The loss is summed in the gradients' dtype.)"""
        first = self._buckets[0][0]
        first[-2] = loss
        first[-1] = correct
        for flat, views in self._buckets:
            for _, g, v in views:
                np.copyto(v, g)
            self.comm.allreduce(flat)
            for _, g, v in views:
                np.copyto(g, v)
        return float(first[-2]), int(round(float(first[-1])))

    def shard(self, loader):
        """``loader`` as this rank's :class:`ShardedLoader` (unchanged if it already is one)."""
        return loader if isinstance(loader, ShardedLoader) else ShardedLoader(loader, self.comm)

    def check_run(self, loader, **facts):
        """:func:`check_consistency` of the model, the loader's seed, batch size and data, and
        ``facts`` (e.g. optimizer=repr(opt)): every rank raises the same DistributedError."""
        ld = loader.loader if isinstance(loader, ShardedLoader) else loader
        check_consistency(self.comm, model=model_fingerprint(self.model), seed=ld.seed,
                          batch_size=ld.batch_size, data=data_fingerprint(ld.images, ld.labels), **facts)

    def on_root(self, fn, *args):
        """``fn(*args)`` run by rank 0 alone, its result broadcast to every rank; an exception
        there is raised again on every rank (same type when it can be rebuilt from its message),
        so e.g. a damaged checkpoint stops all ranks alike."""
        outcome = None
        if self.comm.is_root:
            try:
                outcome = (True, fn(*args))
            except Exception as e:  # re-raised below, on every rank
                outcome = (False, (type(e), str(e)))
        ok, value = self.comm.bcast(outcome)
        if ok:
            return value
        cls, message = value
        try:
            error = cls(message)
        except Exception:
            error = DistributedError(f"rank 0: {cls.__name__}: {message}")
        raise error

    def in_sync(self):
        """True when every rank holds the same parameters (a checksum per rank is compared)."""
        crc = 0
        for _, views in self._buckets:
            for p, _, _ in views:
                crc = zlib.crc32(np.ascontiguousarray(p).view(np.uint8), crc)
        return len(set(self.comm.allgather(crc))) == 1


# -------------------------------------------------------------------------------- consistency

def model_fingerprint(model):
    """Architecture and parameter layout of ``model`` (not the values: those are broadcast)."""
    layout = [(name, p.shape, str(p.dtype)) for name, p, _, _ in model.named_parameters()]
    buffers = [(prefix + k, np.shape(b), str(np.asarray(b).dtype))
               for prefix, m in model.named_modules() for k, b in m.buffers.items()]
    return f"{zlib.crc32(repr((repr(model), layout, buffers)).encode()):08x}"


def data_fingerprint(images, labels):
    """Size and CRC-32 of the images and labels (about 0.1 s for the 150 MB CIFAR-10 train set)."""
    images, labels = np.ascontiguousarray(images), np.ascontiguousarray(labels)
    crc = zlib.crc32(labels.view(np.uint8), zlib.crc32(images.view(np.uint8)))
    return f"{images.shape[0]} samples, crc32 {crc:08x}"


def check_consistency(comm=None, **facts):
    """Raise :class:`DistributedError` on every rank unless all ranks give equal ``facts``
    (e.g. model=model_fingerprint(m), seed=..., batch_size=..., data=data_fingerprint(...))."""
    comm = _comm.world() if comm is None else comm
    everyone = comm.allgather(facts)
    problems = []
    for key in sorted(set().union(*everyone)):
        values = [f.get(key, "<missing>") for f in everyone]
        odd = [r for r, v in enumerate(values) if v != values[0]]
        if odd:
            problems.append(f"{key}: rank 0 has {values[0]!r}, " +
                            ", ".join(f"rank {r} has {values[r]!r}" for r in odd[:3]) +
                            (f" (and {len(odd) - 3} more ranks)" if len(odd) > 3 else ""))
    if problems:
        raise DistributedError(f"the {comm.size} ranks disagree (every rank must run the same command on "
                               "the same data): " + "; ".join(problems))


# --------------------------------------------------------------------------------- evaluation

def evaluate(model, loss_fn, loader, comm=None):
    """Mean loss and accuracy over ``loader``'s batches, each split over the ranks, in eval mode
    (no SyncBN communication); the same result on every rank."""
    comm = _comm.world() if comm is None else comm
    shards = loader if isinstance(loader, ShardedLoader) else ShardedLoader(loader, comm)
    was_training = model.training
    model.eval()
    sums = np.zeros(3, dtype=np.float64)  # loss sum, correct, count
    try:
        for x, y in shards:
            logits = model.forward(x)
            sums += (loss_fn.forward(logits, y) * len(y), np.count_nonzero(logits.argmax(axis=1) == y), len(y))
    finally:
        model.train(was_training)
    comm.allreduce(sums)
    if sums[2] == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return {"loss": sums[0] / sums[2], "accuracy": sums[1] / sums[2]}


# ------------------------------------------------------------------------------------ failure

@contextlib.contextmanager
def abort_on_error(comm=None, file=None):
    """Run a block on every rank; an exception on ONE rank ends the whole job.

    :class:`DistributedError` (raised on every rank alike) propagates normally. Any other
    exception under MPI is printed with the rank and its traceback, then ``MPI_Abort`` ends
    every rank (mpiexec exits non-zero), so no rank waits forever in a collective. In a
    single process exceptions simply propagate.
    """
    comm = _comm.world() if comm is None else comm
    try:
        yield comm
    except DistributedError:
        raise
    except BaseException as e:
        if not comm.distributed or (isinstance(e, SystemExit) and e.code in (None, 0)):
            raise
        out = file or sys.stderr
        print(f"cybn: rank {comm.rank} of {comm.size} failed, aborting the job: "
              f"{type(e).__name__}: {e}", file=out)
        traceback.print_exc(file=out)
        comm.abort(1)
