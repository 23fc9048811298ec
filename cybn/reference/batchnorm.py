"""Batch normalization in plain NumPy: the readable maths and the test oracle.

For x of shape (N, C) or (N, C, H, W) every channel c is normalised over its
m = N (or N*H*W) values:

    mu_c      = (1/m) * sum x                       (batch mean)
    sigma2_c  = (1/m) * sum (x - mu_c)^2            (BIASED batch variance, used to normalise)
    x_hat     = (x - mu_c) / sqrt(sigma2_c + eps)
    y         = gamma_c * x_hat + beta_c            (gamma = 1, beta = 0 when weight/bias are None)

Statistics are computed in float64 with the two-pass formula above (never E[x^2] - E[x]^2).
m == 1 is rejected in training (the variance of one value is 0 and x_hat would be 0/0-ish
noise), as in PyTorch. Evaluation uses running estimates instead of batch statistics, so any
batch size works. See each function for its gradient / update rule.
"""
import numpy as np

from .pool import max_pool2d

__all__ = ["batch_norm_train", "batch_norm_backward", "batch_norm_eval", "batch_norm_eval_backward",
           "update_running_stats", "batch_norm_relu_train", "batch_norm_relu_backward",
           "batch_norm_relu_eval", "batch_norm_relu_pool_train", "batch_norm_relu_pool_backward",
           "batch_norm_relu_pool_eval"]


def _axes(x):
    if x.ndim not in (2, 4):
        raise ValueError(f"x must have 2 or 4 dimensions (N, C) or (N, C, H, W), got shape {x.shape}")
    return (0,) if x.ndim == 2 else (0, 2, 3)


def _per_channel(v, x):
    """Broadcast a (C,) vector against x's channel axis (axis 1)."""
    return np.asarray(v).reshape((1, -1) + (1,) * (x.ndim - 2))


def _count(x):
    return x.size // x.shape[1] if x.shape[1] else 0


def batch_norm_train(x, weight, bias, eps=1e-5, *, running_mean=None, running_var=None,
                     momentum=0.1):
    """Training-mode forward. Returns (y, mean, var); mean, var are float64 (C,), var BIASED.

    y has x's dtype. Raises ValueError when a channel has only m = N*H*W == 1 value. With
    ``running_mean`` and ``running_var``: ``update_running_stats(..., m, momentum)`` after it.
    """
    axes = _axes(x)
    m = _count(x)
    if m < 2:
        raise ValueError(f"batch_norm_train needs more than 1 value per channel (N*H*W >= 2), "
                         f"got input shape {x.shape}")
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=axes)
    centred = x64 - _per_channel(mean, x)
    var = (centred ** 2).mean(axis=axes)  # two-pass: stable for any offset
    x_hat = centred / np.sqrt(_per_channel(var, x) + eps)
    y = x_hat
    if weight is not None:
        y = y * _per_channel(weight.astype(np.float64), x)
    if bias is not None:
        y = y + _per_channel(bias.astype(np.float64), x)
    if running_mean is not None or running_var is not None:
        update_running_stats(running_mean, running_var, mean, var, m, momentum)
    return y.astype(x.dtype), mean, var


def batch_norm_backward(dy, x, weight, mean, var, eps=1e-5):
    """Gradients of batch_norm_train given dL/dy. Returns (dx, dweight, dbias) in x's dtype.

    With invstd = 1/sqrt(var + eps) and x_hat = (x - mean) * invstd, per channel:

        dbias   = sum dy
        dweight = sum dy * x_hat
        dx      = gamma * invstd * (dy - dbias/m - x_hat * dweight/m)

    (the last two terms are the gradient flowing through the batch mean and variance).
    dweight/dbias are returned even when weight is None (gradients for an implicit gamma=1,
    beta=0); callers without affine parameters simply ignore them.
    """
    axes = _axes(x)
    m = _count(x)
    if m < 2:
        raise ValueError("batch_norm_backward needs more than 1 value per channel, "
                         f"got input shape {x.shape}")
    dy64 = dy.astype(np.float64)
    invstd = 1.0 / np.sqrt(np.asarray(var, dtype=np.float64) + eps)
    mean = np.asarray(mean, dtype=np.float64)
    x_hat = (x.astype(np.float64) - _per_channel(mean, x)) * _per_channel(invstd, x)
    dbias = dy64.sum(axis=axes)
    dweight = (dy64 * x_hat).sum(axis=axes)
    gamma = np.ones(x.shape[1]) if weight is None else weight.astype(np.float64)
    dx = _per_channel(gamma * invstd, x) * (
        dy64 - _per_channel(dbias / m, x) - x_hat * _per_channel(dweight / m, x))
    return dx.astype(x.dtype), dweight.astype(x.dtype), dbias.astype(x.dtype)


def batch_norm_eval(x, weight, bias, running_mean, running_var, eps=1e-5):
    """Evaluation-mode forward: y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta.

    Works for any batch size (including 1); y has x's dtype.
    """
    _axes(x)
    rm = _per_channel(np.asarray(running_mean, dtype=np.float64), x)
    rv = _per_channel(np.asarray(running_var, dtype=np.float64), x)
    y = (x.astype(np.float64) - rm) / np.sqrt(rv + eps)
    if weight is not None:
        y = y * _per_channel(weight.astype(np.float64), x)
    if bias is not None:
        y = y + _per_channel(bias.astype(np.float64), x)
    return y.astype(x.dtype)


def batch_norm_eval_backward(dy, x, weight, running_mean, running_var, eps=1e-5):
    """Gradients of batch_norm_eval, which is affine in x per channel (the statistics are
    constants): with invstd = 1/sqrt(running_var + eps), x_hat = (x - running_mean) * invstd,

        dx = gamma * invstd * dy,   dweight = sum dy * x_hat,   dbias = sum dy

    computed in float64, returned in x's dtype (dweight/dbias also when weight is None).
    """
    axes = _axes(x)
    dy64 = dy.astype(np.float64)
    invstd = 1.0 / np.sqrt(np.asarray(running_var, dtype=np.float64) + eps)
    x_hat = (x.astype(np.float64) - _per_channel(np.asarray(running_mean, dtype=np.float64), x)) \
        * _per_channel(invstd, x)
    gamma = np.ones(x.shape[1]) if weight is None else weight.astype(np.float64)
    dx = dy64 * _per_channel(gamma * invstd, x)
    return (dx.astype(x.dtype), (dy64 * x_hat).sum(axis=axes).astype(x.dtype),
            dy64.sum(axis=axes).astype(x.dtype))


def update_running_stats(running_mean, running_var, mean, var, count, momentum=0.1):
    """In place, PyTorch semantics (count = m values per channel in the batch, count >= 2):

        running_mean = (1 - momentum) * running_mean + momentum * mean
        running_var  = (1 - momentum) * running_var  + momentum * var * count / (count - 1)

    ``var`` is the biased batch variance; the running estimate stores the UNBIASED one.
    """
    if count < 2:
        raise ValueError(f"count must be >= 2 to unbias the variance, got {count}")
    unbiased = np.asarray(var, dtype=np.float64) * (count / (count - 1))
    mean = np.asarray(mean, dtype=np.float64)
    running_mean[...] = (1 - momentum) * running_mean.astype(np.float64) + momentum * mean
    running_var[...] = (1 - momentum) * running_var.astype(np.float64) + momentum * unbiased


def _relu(y):
    return np.where(y <= 0, 0, y).astype(y.dtype)  # NaN passes, as in reference.relu


def batch_norm_relu_train(x, weight, bias, eps=1e-5, *, running_mean=None, running_var=None,
                          momentum=0.1):
    """relu(batch_norm_train(x, weight, bias, eps, ...)): returns (y, mean, var)."""
    y, mean, var = batch_norm_train(x, weight, bias, eps, running_mean=running_mean,
                                    running_var=running_var, momentum=momentum)
    return _relu(y), mean, var


def batch_norm_relu_eval(x, weight, bias, running_mean, running_var, eps=1e-5):
    """relu(batch_norm_eval(x, weight, bias, running_mean, running_var, eps))."""
    return _relu(batch_norm_eval(x, weight, bias, running_mean, running_var, eps))


def batch_norm_relu_backward(dy, x, weight, bias, mean, var, eps=1e-5):
    """Gradients of batch_norm_relu_train given dL/dy: the BN backward of dy masked where the
    pre-activation gamma * (x - mean) / sqrt(var + eps) + beta is <= 0 (or NaN)."""
    _axes(x)
    z = (x.astype(np.float64) - _per_channel(np.asarray(mean, dtype=np.float64), x)) / np.sqrt(
        _per_channel(np.asarray(var, dtype=np.float64), x) + eps)
    if weight is not None:
        z = z * _per_channel(weight.astype(np.float64), x)
    if bias is not None:
        z = z + _per_channel(bias.astype(np.float64), x)
    return batch_norm_backward(np.where(z > 0, dy, 0).astype(dy.dtype), x, weight, mean, var, eps)


def batch_norm_relu_pool_train(x, weight, bias, eps=1e-5, *, running_mean=None, running_var=None,
                               momentum=0.1):
    """max_pool2d(batch_norm_relu_train(x, ...)[0], 2) with the pool's 2x2 windows of stride 2
    (H, W even): (y, code, mean, var); code (uint8) is the window position (0..3, row-major) of
    each maximum when it is > 0, else 4 (no gradient reaches that window through the ReLU)."""
    z, mean, var = batch_norm_relu_train(x, weight, bias, eps, running_mean=running_mean,
                                         running_var=running_var, momentum=momentum)
    y, indices = max_pool2d(z, 2)
    W = x.shape[3]
    corner = 2 * W * np.arange(y.shape[2])[:, None] + 2 * np.arange(y.shape[3])[None, :]
    offset = indices - corner  # 0, 1, W or W + 1
    position = 2 * (offset // W) + offset % W
    return y, np.where(y > 0, position, 4).astype(np.uint8), mean, var


def batch_norm_relu_pool_backward(dy, code, x, weight, bias, mean, var, eps=1e-5):
    """Gradients of batch_norm_relu_pool_train: the BN backward of the gradient that every
    pooled dy gives its window's maximum (none where code is 4)."""
    N, C, H, W = x.shape
    g = np.zeros((N, C, H // 2, 2, W // 2, 2), dtype=dy.dtype)
    for k in range(4):
        g[:, :, :, k // 2, :, k % 2] = np.where(code == k, dy, 0)
    return batch_norm_backward(g.reshape(x.shape), x, weight, mean, var, eps)


def batch_norm_relu_pool_eval(x, weight, bias, running_mean, running_var, eps=1e-5):
    """max_pool2d(batch_norm_relu_eval(x, ...), 2): the pooled output (H, W even)."""
    return max_pool2d(batch_norm_relu_eval(x, weight, bias, running_mean, running_var, eps), 2)[0]
