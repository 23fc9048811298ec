"""The pieces of batch normalization that a synchronized (multi-process) BN exchanges, validated.

Training BN over a batch split across ranks needs, per channel, the statistics of the whole
batch and, in the backward, two sums over the whole batch. These ops expose the per-rank parts
(names after PyTorch's ``torch.batch_norm_*`` primitives):

* ``batch_norm_stats(x)`` -> (count, mean, var): this rank's statistics (one read of x, the
  stable kernel of ``batch_norm_train``); any count, including 0 and 1;
* ``batch_norm_gather_stats(stats)``: merge the (count, mean, var) rows of every rank with
  Chan et al.'s pairwise formula in a fixed tree order (no E[x^2] - E[x]^2 cancellation,
  unequal counts weighted exactly; the same bits on every rank given the same rows);
* ``batch_norm_backward_reduce(dy, x, mean)`` -> (sum dy, sum dy*(x - mean)) per channel;
* ``batch_norm_backward_elemt(dy, x, weight, mean, var, sum_dy, sum_dyxc, count, eps)`` -> dx
  from the GLOBAL sums and count.

The forward normalisation with given statistics is ``batch_norm_eval(x, w, b, mean, var)``.
With one rank these compose to exactly (bit for bit) ``batch_norm_train``/``batch_norm_backward``.
"""
import numpy as np

from .._kernels import batchnorm as _k
from ._dispatch import threads_for
from .._validation import float_array, integer, shape_is
from .batchnorm import _as3, _backward_args, _count, _dy_x, _input, _split, _stat

__all__ = ["batch_norm_stats", "batch_norm_gather_stats", "batch_norm_backward_reduce",
           "batch_norm_backward_elemt"]


def batch_norm_stats(x):
    """(count, mean, var): values per channel (int), mean and BIASED variance (float64 (C,)).

    An empty batch gives count 0, mean 0, var 0 (it contributes nothing when merged).
    """
    x = _input(x)
    C, count = x.shape[1], _count(x)
    mean = np.zeros(C, dtype=np.float64)
    var = np.zeros(C, dtype=np.float64)
    if count:
        _k.batch_stats(_as3(x), mean, var, threads_for(x.size))
    return count, mean, var


def _gathered(stats):
    stats = float_array(stats, "stats", ndim=3, dtype=np.float64)
    if stats.shape[0] < 1 or stats.shape[1] != 3:
        raise ValueError(f"stats must be (ranks, 3, C) rows of (count, mean, var), got shape {stats.shape}")
    counts = stats[:, 0, 0]
    if not (np.isfinite(counts).all() and (counts >= 0).all() and (counts == np.floor(counts)).all()):
        raise ValueError(f"stats counts must be integers >= 0, got {counts}")
    if np.any(stats[:, 0, :] != stats[:, 0, :1]):
        raise ValueError("stats: a rank's count must be the same for every channel")
    return stats


def batch_norm_gather_stats(stats):
    """Merge per-rank statistics: ``stats`` (R, 3, C) float64 rows (count, mean, var) -> (count, mean, var).

    Pairwise tree (rank 0 with 1, 2 with 3, ...; then the pairs), Chan et al.:
    ``n = na + nb, d = mean_b - mean_a, mean = mean_a + d * nb / n,
    M2 = M2_a + M2_b + d^2 * na * nb / n`` with ``M2 = var * count``. One rank returns its row
    unchanged.
    """
    stats = _gathered(stats)
    if stats.shape[0] == 1:
        return int(stats[0, 0, 0]), stats[0, 1].copy(), stats[0, 2].copy()
    n = stats[:, 0, :1].copy()  # (R, 1): broadcasts over channels
    mean = stats[:, 1].copy()
    m2 = stats[:, 2] * n
    while len(n) > 1:
        half = len(n) // 2
        na, nb = n[0:2 * half:2], n[1:2 * half:2]
        ma, mb = mean[0:2 * half:2], mean[1:2 * half:2]
        total = na + nb
        safe = np.where(total > 0, total, 1.0)  # two empty ranks merge to an empty one
        delta = mb - ma
        merged_mean = ma + delta * (nb / safe)
        merged_m2 = m2[0:2 * half:2] + m2[1:2 * half:2] + delta * delta * (na * nb / safe)
        if len(n) % 2:  # the odd one out moves up a level unchanged
            total, merged_mean, merged_m2 = (np.concatenate([a, b[-1:]]) for a, b in
                                             ((total, n), (merged_mean, mean), (merged_m2, m2)))
        n, mean, m2 = total, merged_mean, merged_m2
    count = float(n[0, 0])
    var = m2[0] / count if count > 0 else np.zeros_like(m2[0])
    return int(count), mean[0], var


def batch_norm_backward_reduce(dy, x, mean):
    """(sum_dy, sum_dyxc) float64 (C,): sum(dy) and sum(dy * (x - mean)) over this rank's values."""
    dy, x = _dy_x(dy, x)
    C = x.shape[1]
    mean = _stat(mean, "mean", C)
    sum_dy = np.zeros(C, dtype=np.float64)
    sum_dyxc = np.zeros(C, dtype=np.float64)
    if x.size:
        hi, lo = _split(mean, x.dtype)
        unused = np.zeros(C, x.dtype)  # the fused-ReLU operands (relu off)
        _k.backward_sums(_as3(dy), _as3(x), mean, sum_dy, sum_dyxc, hi, lo, unused, unused, False,
                         threads_for(x.size))
    return sum_dy, sum_dyxc


def batch_norm_backward_elemt(dy, x, weight, mean, var, sum_dy, sum_dyxc, count, eps=1e-5):
    """dx of BN given the statistics and the two backward sums of the WHOLE batch of ``count``
    values per channel (``count`` >= 2): ``dx = a*dy + b*(x - mean) + d`` with ``a = gamma*invstd``,
    ``b = -a * invstd^2 * sum_dyxc / count``, ``d = -a * sum_dy / count``."""
    dy, x, weight, mean, var, eps = _backward_args(dy, x, weight, mean, var, eps)
    C = x.shape[1]
    sum_dy = shape_is(np.asarray(sum_dy, dtype=np.float64), (C,), "sum_dy (one value per channel)")
    sum_dyxc = shape_is(np.asarray(sum_dyxc, dtype=np.float64), (C,), "sum_dyxc (one value per channel)")
    count = integer(count, "count (values per channel in the whole batch)", minimum=2)
    dt = x.dtype
    invstd = 1.0 / np.sqrt(var + eps)
    gamma = np.ones(C) if weight is None else weight.astype(np.float64)
    a = gamma * invstd
    b = -a * invstd * invstd * sum_dyxc / count
    d = -a * sum_dy / count
    dx = np.empty_like(x)
    if x.size:
        hi, lo = _split(mean, dt)
        unused = np.zeros(C, dt)  # the fused-ReLU operands (relu off)
        _k.backward_dx(_as3(dy), _as3(x), hi, lo, a.astype(dt), b.astype(dt), d.astype(dt), _as3(dx),
                       unused, unused, False, threads_for(x.size))
    return dx
