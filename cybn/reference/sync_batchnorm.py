"""Synchronized-BN pieces in plain NumPy (the oracle of ``cybn.functional.sync_batchnorm``).

The merge uses the two-pass form of the law of total variance over ranks,
``mean = sum n_i mean_i / n``, ``M2 = sum (n_i var_i + n_i (mean_i - mean)^2)``, rather than the
pairwise Chan updates of the validated op: the same quantity by a different route.
"""
import numpy as np

from .batchnorm import _axes, _count, _per_channel

__all__ = ["batch_norm_stats", "batch_norm_gather_stats", "batch_norm_backward_reduce",
           "batch_norm_backward_elemt"]


def batch_norm_stats(x):
    """(count, mean, var) of this rank's values per channel; empty -> (0, zeros, zeros)."""
    axes = _axes(x)
    count = _count(x)
    if count == 0:
        return 0, np.zeros(x.shape[1]), np.zeros(x.shape[1])
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=axes)
    var = ((x64 - _per_channel(mean, x)) ** 2).mean(axis=axes)
    return count, mean, var


def batch_norm_gather_stats(stats):
    """(R, 3, C) rows (count, mean, var) -> the (count, mean, var) of the union."""
    stats = np.asarray(stats, dtype=np.float64)
    n = stats[:, 0, :]
    count = n[:, 0].sum()
    if count == 0:
        return 0, np.zeros(stats.shape[2]), np.zeros(stats.shape[2])
    mean = (n * stats[:, 1]).sum(axis=0) / count
    m2 = (n * stats[:, 2] + n * (stats[:, 1] - mean) ** 2).sum(axis=0)
    return int(count), mean, m2 / count


def batch_norm_backward_reduce(dy, x, mean):
    """(sum dy, sum dy * (x - mean)) per channel, float64."""
    axes = _axes(x)
    dy64 = dy.astype(np.float64)
    xc = x.astype(np.float64) - _per_channel(np.asarray(mean, dtype=np.float64), x)
    return dy64.sum(axis=axes), (dy64 * xc).sum(axis=axes)


def batch_norm_backward_elemt(dy, x, weight, mean, var, sum_dy, sum_dyxc, count, eps=1e-5):
    """dx = gamma * invstd * (dy - sum_dy/count - x_hat * invstd * sum_dyxc/count)."""
    invstd = 1.0 / np.sqrt(np.asarray(var, dtype=np.float64) + eps)
    x_hat = (x.astype(np.float64) - _per_channel(mean, x)) * _per_channel(invstd, x)
    gamma = np.ones(x.shape[1]) if weight is None else weight.astype(np.float64)
    dx = _per_channel(gamma * invstd, x) * (
        dy.astype(np.float64) - _per_channel(np.asarray(sum_dy) / count, x)
        - x_hat * _per_channel(invstd * np.asarray(sum_dyxc) / count, x))
    return dx.astype(x.dtype)
