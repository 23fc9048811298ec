"""Input validation shared by every public op.

Kernels run with bounds checks off, so nothing reaches them unchecked. Policy:
- arrays must be numpy ndarrays of float32 or float64 (TypeError otherwise; no silent casts,
  because a float64 model fed float32 data, or ints, is almost always a bug);
- all float operands of one call share one dtype (TypeError naming both);
- non-contiguous input (views, negative strides, Fortran order) is **copied** to C order,
  never rejected: the result is the same, only a copy slower;
- ndarray subclasses (np.matrix, np.ma.MaskedArray, memmap-like wrappers, ...) are **rejected**
  (TypeError naming the type): the kernels would silently ignore what makes them special (a
  MaskedArray's mask, np.matrix's 2-D semantics), and outputs are always plain ndarrays. Call
  ``np.asarray(x)`` (or fill masked values) first. The same rule holds in nn layers;
- shapes are checked against each other and reported in the message (ValueError);
- integer geometry (kernel size, stride, padding) must be <= MAX_INT = 2**31 - 1, because the
  kernels do their index arithmetic in C int; ops also bound the sizes derived from it.
"""
import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Largest kernel size / stride / padding (and derived per-plane sizes) the C-int kernels accept.
MAX_INT = 2**31 - 1


def float_array(x, name, ndim=None, dtype=None):
    """Return ``x`` as a C-contiguous float32/float64 ndarray, or raise naming the problem.

    ``ndim`` may be an int or a tuple of allowed ranks; ``dtype`` (if given) is the dtype the
    other operands already have.
    """
    if type(x) is not np.ndarray:
        if isinstance(x, np.ndarray):
            raise TypeError(f"{name} must be a plain numpy.ndarray, got the subclass "
                            f"{type(x).__name__} (convert it with np.asarray first)")
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but the other operands are {np.dtype(dtype)}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name} must have {want} dimensions, got shape {x.shape}")
    return np.ascontiguousarray(x)


def shape_is(x, shape, name):
    """Raise ValueError unless ``x.shape == shape``."""
    if x.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {x.shape}")
    return x


def label_array(labels, n, num_classes, name="labels"):
    """Integer class labels of shape (n,), each in [0, num_classes), as a contiguous int64 array."""
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(labels).__name__}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{name} must have an integer dtype, got {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the batch, got {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise ValueError(f"{name} must lie in [0, {num_classes}), found {bad}")
    return np.ascontiguousarray(labels, dtype=np.int64)


def positive_int(v, name, maximum=None):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {v!r}")
    if v < 1:
        raise ValueError(f"{name} must be >= 1, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {v}")
    return int(v)


def nonnegative_int(v, name, maximum=None):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {v!r}")
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {v}")
    return int(v)


def pair(v, name, check=positive_int, maximum=MAX_INT):
    """An int or a 2-sequence of ints, as a validated (h, w) tuple, each <= ``maximum``
    (geometry: the kernels index in C int)."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair (h, w), got {v!r}")
        return check(v[0], name, maximum), check(v[1], name, maximum)
    v = check(v, name, maximum)
    return v, v


def finite_float(v, name, positive=False):
    """A real number (not NaN/Inf); ``positive`` requires > 0."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {v!r}")
    try:
        v = float(v)
    except OverflowError:  # a Python int beyond the float range (10**400)
        raise ValueError(f"{name} must be a finite{' positive' if positive else ''} number, "
                         f"got an integer too large for a float") from None
    if not np.isfinite(v) or (positive and v <= 0):
        raise ValueError(f"{name} must be a finite{' positive' if positive else ''} number, got {v}")
    return v
