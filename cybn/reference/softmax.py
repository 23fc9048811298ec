"""Softmax, log-softmax and softmax cross-entropy in plain NumPy: the readable maths.

Log-sum-exp stability: softmax is shift invariant, softmax(x) = softmax(x - m) for any m per
row. With m = max_j x_j every exponent is <= 0, so exp never overflows and the largest term
is exactly 1, so the sum lies in [1, C] and its log never sees 0. Hence

    log_softmax(x)_j = (x_j - m) - log(sum_k exp(x_k - m))

is finite for logits of any size (e.g. +-1e4, where a naive exp overflows to inf).

Cross-entropy with integer labels y: loss = mean_i -log_softmax(x_i)_{y_i}, and its gradient
with respect to the logits is d loss / d x_ij = (p_ij - [j == y_i]) / N.
"""
import numpy as np

__all__ = ["softmax", "log_softmax", "softmax_cross_entropy", "softmax_cross_entropy_backward"]


def _check_2d(x, name):
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must have 2 dimensions (N, C), got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must have N >= 1 rows and C >= 1 classes, got shape {x.shape}")
    return x


def _check_labels(labels, n, c):
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match the batch, got {labels.shape}")
    if np.any((labels < 0) | (labels >= c)):
        raise ValueError(f"labels must lie in [0, {c})")
    return labels


def log_softmax(x):
    """log p_ij = (x_ij - m_i) - log sum_k exp(x_ik - m_i), m_i = max_k x_ik."""
    x = _check_2d(x, "x")
    z = x - x.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(x):
    """p_ij = exp(x_ij - m_i) / sum_k exp(x_ik - m_i)."""
    x = _check_2d(x, "x")
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def softmax_cross_entropy(logits, labels):
    """(mean_i -log p_{i, y_i}, p): the loss as a Python float and the probabilities."""
    logits = _check_2d(logits, "logits")
    n, c = logits.shape
    labels = _check_labels(labels, n, c)
    logp = log_softmax(logits)
    loss = -logp[np.arange(n), labels].mean()
    return float(loss), softmax(logits)


def softmax_cross_entropy_backward(probs, labels, grad=1.0):
    """d(grad * loss)/d logits = grad * (p - onehot(y)) / N."""
    probs = _check_2d(probs, "probs")
    n, c = probs.shape
    labels = _check_labels(labels, n, c)
    onehot = np.zeros_like(probs)
    onehot[np.arange(n), labels] = 1
    return (grad * (probs - onehot) / n).astype(probs.dtype, copy=False)
