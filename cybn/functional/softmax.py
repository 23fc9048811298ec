"""Softmax, log-softmax and fused softmax cross-entropy on (N, C) arrays (Cython kernels).

``softmax_cross_entropy`` computes the row max, the log-sum-exp, the row's loss and the
probabilities in one pass per row; the loss is the mean of the per-row losses summed in row
order (deterministic for any thread count). The probabilities are what the backward needs:
``softmax_cross_entropy_backward(probs, labels, grad)`` = grad * (probs - onehot) / N.
Validation follows the ``cybn._validation`` policy (TypeError for non-arrays / wrong dtypes,
ValueError naming shapes, non-contiguous input copied) and is lean: the label range is checked
in one compiled pass instead of NumPy min/max/mask temporaries. Rows go to one thread below
``_dispatch.PARALLEL_MIN`` elements per thread (the rule every elementwise op follows).
Measured at (128, 10): ~1 us of validation in a ~7 us forward.
"""
import numpy as np

from .._kernels import softmax as _k
from .._validation import check_float_array, finite_float
from ._dispatch import threads_for
from . import _memory

__all__ = ["softmax", "log_softmax", "softmax_cross_entropy", "softmax_cross_entropy_backward"]

_INT64 = np.dtype(np.int64)


def _by_dtype(fused):
    """dtype -> the kernel's float/double specialisation. Calling it directly skips Cython's
    fused-type dispatch, which costs more (~5 us) than the whole (128, 10) computation."""
    return {np.dtype(np.float32): fused["float"], np.dtype(np.float64): fused["double"]}


_SOFTMAX = _by_dtype(_k.softmax_rows)
_LOG_SOFTMAX = _by_dtype(_k.log_softmax_rows)
_XENT_FORWARD = _by_dtype(_k.xent_forward)
_XENT_BACKWARD = _by_dtype(_k.xent_backward)


def _matrix(x, name):
    """x as a C-contiguous float32/float64 (N >= 1, C >= 1) array, or raise naming the problem."""
    check_float_array(x, name)
    if x.ndim != 2:
        raise ValueError(f"{name} must have 2 dimensions (N, C), got shape {x.shape}")
    n, c = x.shape
    if n == 0 or c == 0:
        raise ValueError(f"{name} must have N >= 1 rows and C >= 1 classes, got shape {x.shape}")
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    return x, n, c


def _labels(labels, n, c):
    """labels as contiguous int64 (n,) with every value in [0, c) (checked in one compiled pass)."""
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"labels must be a numpy.ndarray, got {type(labels).__name__}")
    original = labels  # for the message: uint64 values >= 2**63 wrap negative in int64
    if type(labels) is not np.ndarray:
        labels = np.asarray(labels)
    if labels.dtype != _INT64:
        if labels.dtype.kind not in "iu":
            raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
        labels = labels.astype(_INT64)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match the batch, got {labels.shape}")
    if not labels.flags.c_contiguous:
        labels = np.ascontiguousarray(labels)
    bad = _k.first_bad_label(labels, c)
    if bad >= 0:
        raise ValueError(f"labels must lie in [0, {c}), found {original[bad]} at index {bad}")
    return labels


def softmax(x):
    """Row-wise softmax of a (N, C) array."""
    x, n, c = _matrix(x, "x")
    out = _memory.empty_like(x)
    _SOFTMAX[x.dtype](x, out, threads_for(x.size, units=n))
    return out


def log_softmax(x):
    """Row-wise log-softmax of a (N, C) array (finite for any finite logits)."""
    x, n, c = _matrix(x, "x")
    out = _memory.empty_like(x)
    _LOG_SOFTMAX[x.dtype](x, out, threads_for(x.size, units=n))
    return out


def softmax_cross_entropy(logits, labels):
    """(loss, probs): loss = mean_i -log softmax(logits)_{i, labels_i} (Python float)."""
    logits, n, c = _matrix(logits, "logits")
    labels = _labels(labels, n, c)
    probs = _memory.empty_like(logits)
    loss = _XENT_FORWARD[logits.dtype](logits, labels, probs, threads_for(logits.size, units=n))
    return loss, probs


def softmax_cross_entropy_backward(probs, labels, grad=1.0):
    """dlogits = grad * (probs - onehot(labels)) / N, in probs' dtype."""
    probs, n, c = _matrix(probs, "probs")
    labels = _labels(labels, n, c)
    grad = finite_float(grad, "grad")
    dx = _memory.empty_like(probs)
    _XENT_BACKWARD[probs.dtype](probs, labels, dx, grad / n, threads_for(probs.size, units=n))
    return dx
