"""Synchronized Batch Normalization: training statistics of the GLOBAL batch split over MPI ranks.

``SyncBatchNorm2D`` / ``SyncBatchNorm1D`` are ``BatchNorm2D`` / ``BatchNorm1D`` whose training
forward normalises with the statistics of the union of every rank's batch, and whose backward
uses the union's two per-channel sums. Per training step and layer, two collectives:

* forward: one allgather of this rank's packed (count, mean, var) per channel (3C float64),
  merged with Chan's pairwise formula in rank order (``functional.batch_norm_gather_stats``).
  Unequal counts are weighted exactly, there is no E[x^2] - E[x]^2 cancellation, and every rank
  merges the same rows in the same order, so batch and running statistics are bit-identical on
  every rank. (An MPI SUM cannot merge (mean, M2) pairs; a user-defined MPI op would run a
  Python callback inside MPI with an unspecified reduction order.) The running statistics use
  the unbiased variance with the global count;
* backward: one allreduce of the packed (sum dy, sum dy*(x - mean)) (2C float64) for dx.
  ``grads`` keep this rank's OWN share of dweight/dbias, because the data-parallel gradient
  reduction (``cybn.distributed``) sums every parameter's gradient over the ranks afterwards.

The incoming ``dy`` must be the gradient of the global loss (``cybn.distributed`` scales each
rank's loss gradient by local count / global count), so sums over ranks are meaningful.

Eval mode is plain BN with the running statistics: no communication at all (a rank evaluating
alone cannot hang). On one rank (no MPI) the layer computes exactly what plain BN computes.
"""
import numpy as np

from .. import _comm
from .. import functional as F
from ..functional import sync_batchnorm as FS
from .container import Sequential
from .layers import BatchNorm1D, BatchNorm2D, _BatchNorm

__all__ = ["SyncBatchNorm1D", "SyncBatchNorm2D", "convert_sync_batchnorm"]


class _SyncBatchNorm(_BatchNorm):
    """Shared by the 1-D and 2-D layers. ``comm``: a ``cybn._comm`` communicator (default: the
    process's world, looked up at the first training forward)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, dtype=np.float32, comm=None):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine, dtype=dtype)
        self.comm = comm
        self._gathered = None  # (R, 3, C) float64, reused every step

    def _world(self):
        if self.comm is None:
            self.comm = _comm.world()
        return self.comm

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        self._check_channels(x)
        comm = self._world()
        count, mean, var = FS.batch_norm_stats(x)
        C = self.num_features
        if self._gathered is None or self._gathered.shape[0] != comm.size:
            self._gathered = np.empty((comm.size, 3, C), dtype=np.float64)
        packed = np.empty((3, C), dtype=np.float64)
        packed[0], packed[1], packed[2] = count, mean, var
        comm.allgather_array(packed, self._gathered)
        total, mean, var = FS.batch_norm_gather_stats(self._gathered)
        if total < 2:  # the same on every rank, so every rank raises (no hang)
            raise ValueError(f"{type(self).__name__}: expected more than 1 value per channel in training "
                             f"over all {comm.size} rank(s), got {total} (this rank's input shape {x.shape})")
        w, b = self.params.get("weight"), self.params.get("bias")
        # Normalising with given statistics is exactly the eval-mode kernel.
        y = F.batch_norm_eval(x, w, b, mean, var, self.eps)
        self._track(mean, var, total)
        self._save_for_backward(("sync", x, mean, var, total), y)
        return y

    def backward(self, dy):
        if self._cached_mode() != "sync":
            return super().backward(dy)
        _, x, mean, var, total = self._pop_cache(dy)
        sum_dy, sum_dyxc = FS.batch_norm_backward_reduce(dy, x, mean)
        packed = np.stack([sum_dy, sum_dyxc])
        self._world().allreduce(packed)
        dx = FS.batch_norm_backward_elemt(dy, x, self.params.get("weight"), mean, var, packed[0], packed[1],
                                          total, self.eps)
        if self.affine:
            invstd = 1.0 / np.sqrt(var + self.eps)
            np.copyto(self.grads["weight"], sum_dyxc * invstd, casting="unsafe")
            np.copyto(self.grads["bias"], sum_dy, casting="unsafe")
        return dx


class SyncBatchNorm2D(_SyncBatchNorm):
    """``BatchNorm2D`` over (N, C, H, W) with the statistics of the batch of every rank."""
    _ndim = 4


class SyncBatchNorm1D(_SyncBatchNorm):
    """``BatchNorm1D`` over (N, C) with the statistics of the batch of every rank."""
    _ndim = 2


_SYNC = {BatchNorm2D: SyncBatchNorm2D, BatchNorm1D: SyncBatchNorm1D}


def _convert(layer, comm):
    cls = _SYNC.get(type(layer))
    if cls is None:
        return layer
    new = cls.__new__(cls)
    # Adopt the very arrays (params, grads, buffers) and settings: an optimizer built on the
    # plain model keeps valid references.
    new.__dict__.update(layer.__dict__)
    new.comm = comm
    new._gathered = None
    return new


def convert_sync_batchnorm(model, comm=None):
    """Replace every ``BatchNorm2D``/``BatchNorm1D`` of ``model`` (a ``Sequential``, nested ones
    included, or a single BN layer) by its synchronized twin, in place; returns the model.

    The new layers share the old ones' parameter, gradient and buffer arrays, so the state dict
    (same keys) and an existing optimizer stay valid. ``comm``: the communicator (default: the
    process's world at the first training step). Subclasses of the BN layers are left alone.
    """
    if isinstance(model, Sequential):
        model.layers = [convert_sync_batchnorm(layer, comm) if isinstance(layer, Sequential)
                        else _convert(layer, comm) for layer in model.layers]
        return model
    if isinstance(model, _BatchNorm):
        return _convert(model, comm)
    raise TypeError(f"convert_sync_batchnorm expects a cybn Sequential or BatchNorm layer, "
                    f"got {type(model).__name__}")
