"""Output arrays recycled across training steps.

A training step allocates the same activations and gradients as the step before (tens of MB for
cnn7). Fresh large blocks come from the OS as new pages: glibc unmaps freed blocks and trims the
heap, so each step page-faults its memory in again (7,400 faults and 19 of 202 ms of a 1-thread
cnn7 step, measured). ``empty`` instead returns a pooled array of the same shape and dtype whose
last user has let go of it. An array is free when the pool holds its only reference: CPython's
reference count is exact, and a view or a cache keeps its base referenced, so live data is never
handed out twice.

The pool holds at most ``limit()`` bytes (live and free arrays together); past it, free arrays
of the least recently used shapes are dropped, and when none are free ``empty`` falls back to a
plain ``numpy.empty``. ``release()`` drops every free array (e.g. after training). Inside
``unpooled()`` (``nn.inference_mode`` enters it) arrays are plain: a pool keeps one array per
distinct shape, while forward-only inference must free each layer's input once it is consumed.
"""
import collections
import contextlib
import math
import sys
import threading

import numpy as np

from .._validation import nonnegative_int

__all__ = ["empty", "empty_like", "unpooled", "release", "set_limit", "limit", "pooled_bytes"]

# Below this a fresh block comes from malloc's free lists without page faults.
MIN_BYTES = 1 << 16
DEFAULT_LIMIT = 2 << 30

_lock = threading.Lock()
_pool = collections.OrderedDict()  # (shape, dtype) -> [arrays], least recently used first
_state = {"bytes": 0, "limit": DEFAULT_LIMIT}
_local = threading.local()


def _refs_when_free():
    """References to a pooled array while only the pool holds it, seen from ``_take``'s loop."""
    arrays = [np.empty(1)]
    for a in arrays:
        return sys.getrefcount(a)


_FREE_REFS = _refs_when_free()


def _take(arrays):
    for a in arrays:
        if sys.getrefcount(a) == _FREE_REFS:
            return a
    return None


def _evict(needed):
    """Drop free arrays, least recently used shapes first, until ``needed`` more bytes fit."""
    for key in list(_pool):
        if _state["bytes"] + needed <= _state["limit"]:
            return True
        arrays = _pool[key]
        while True:
            a = _take(arrays)
            if a is None:
                break
            arrays.remove(a)
            _state["bytes"] -= a.nbytes
            del a
        if not arrays:
            del _pool[key]
    return _state["bytes"] + needed <= _state["limit"]


def empty(shape, dtype):
    """An uninitialised C-contiguous array, like ``numpy.empty``, recycled when large."""
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in shape)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES or getattr(_local, "unpooled", False):
        return np.empty(shape, dtype)
    key = (shape, dtype)
    with _lock:
        arrays = _pool.get(key)
        if arrays is not None:
            _pool.move_to_end(key)
            a = _take(arrays)
            if a is not None:
                return a
        if not _evict(nbytes):
            return np.empty(shape, dtype)
        a = np.empty(shape, dtype)
        _pool.setdefault(key, []).append(a)
        _pool.move_to_end(key)
        _state["bytes"] += nbytes
        return a


def empty_like(a):
    """``empty(a.shape, a.dtype)``."""
    return empty(a.shape, a.dtype)


@contextlib.contextmanager
def unpooled():
    """Within the block (in this Python thread), ``empty`` returns plain ``numpy.empty`` arrays."""
    previous = getattr(_local, "unpooled", False)
    _local.unpooled = True
    try:
        yield
    finally:
        _local.unpooled = previous


def release():
    """Drop every free pooled array (live ones stay pooled until they are freed and dropped)."""
    with _lock:
        _evict(_state["limit"] + 1)


def set_limit(nbytes):
    """Cap the pool at ``nbytes`` (0 turns recycling off); returns the previous cap."""
    nbytes = nonnegative_int(nbytes, "nbytes")
    with _lock:
        previous, _state["limit"] = _state["limit"], nbytes
        _evict(0)
    return previous


def limit():
    return _state["limit"]


def pooled_bytes():
    """Bytes of the arrays the pool holds, live or free."""
    return _state["bytes"]
