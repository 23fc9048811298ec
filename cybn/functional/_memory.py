"""Output arrays recycled across training steps.

A training step allocates the same activations and gradients as the step before (tens of MB for
cnn7). Fresh large blocks come from the OS as new pages: glibc unmaps freed blocks and trims the
heap, so each step page-faults its memory in again (7,400 faults per cnn7 step, and 119 against
103 ms per 2-thread step, measured). ``empty`` instead returns a view of a pooled block whose last
user has let go of it: the smallest free block of at least the bytes asked for and at most twice
them (so blocks serve any shape, as malloc's free lists do). A block is free when the pool holds
its only reference: CPython's reference count is exact, and a view, a reshape or a layer's cache
keeps the block referenced, so live data is never handed out twice.

The pool holds at most ``limit()`` bytes (live and free blocks together); past it, the least
recently used free blocks are dropped, and when that is not enough ``empty`` falls back to a
plain ``numpy.empty``. ``release()`` drops every free block (e.g. after training). Inside
``unpooled()`` (``nn.inference_mode`` enters it) arrays are plain: forward-only inference frees
each layer's input as soon as it is consumed, and a pool would keep those blocks.
"""
import contextlib
import math
import sys
import threading

import numpy as np

from .._validation import nonnegative_int, weight_grad_out

__all__ = ["empty", "empty_like", "unpooled", "release", "set_limit", "limit", "pooled_bytes"]

# Below this a fresh block comes from malloc's free lists without page faults.
MIN_BYTES = 1 << 16
DEFAULT_LIMIT = 2 << 30
ALIGN = 64  # blocks are rounded up to a cache line, views start at the block's start

_lock = threading.Lock()
_blocks = []  # uint8 arrays, least recently used first
_sizes = []  # their sizes in bytes: the best-fit scan reads these ints, not the cold array objects
_state = {"limit": DEFAULT_LIMIT}
_local = threading.local()


def _refcount(blocks, i):
    return sys.getrefcount(blocks[i])


# A block's count while only the pool's list holds it (measured through the same code path).
_FREE_REFS = _refcount([np.empty(1, np.uint8)], 0)


def _free_blocks():
    return [i for i in range(len(_blocks)) if _refcount(_blocks, i) == _FREE_REFS]


def _best_fit(nbytes):
    """Index of the smallest free block of nbytes to 2*nbytes bytes, or -1: one pass, counting
    references only of the blocks that fit (called for every pooled array, ~47 per cnn7 step)."""
    best, best_size, most = -1, 0, 2 * nbytes
    for i, size in enumerate(_sizes):
        if nbytes <= size <= most and (best < 0 or size < best_size) \
                and _refcount(_blocks, i) == _FREE_REFS:
            best, best_size = i, size
    return best


def _evict(needed):
    """Drop free blocks, least recently used first, until ``needed`` more bytes fit the limit."""
    room = _state["limit"] - needed - pooled_bytes()
    if room >= 0:
        return True
    dropped = []
    for i in _free_blocks():
        if room >= 0:
            break
        room += _sizes[i]
        dropped.append(i)
    for i in reversed(dropped):
        del _blocks[i], _sizes[i]
    return room >= 0


def empty(shape, dtype):
    """An uninitialised C-contiguous array, like ``numpy.empty``, recycled when large."""
    dtype = np.dtype(dtype)
    shape = tuple(map(int, shape))
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES or getattr(_local, "unpooled", False):
        return np.empty(shape, dtype)
    with _lock:
        i = _best_fit(nbytes)
        if i >= 0:
            block, size = _blocks.pop(i), _sizes.pop(i)
        else:
            size = -(-nbytes // ALIGN) * ALIGN
            if not _evict(size):
                return np.empty(shape, dtype)
            block = np.empty(size, np.uint8)
        _blocks.append(block)  # most recently used last
        _sizes.append(size)
        return block[:nbytes].view(dtype).reshape(shape)


def empty_like(a):
    """``empty(a.shape, a.dtype)``."""
    if a.nbytes < MIN_BYTES:  # never pooled: plain numpy, without empty's shape arithmetic
        return np.empty(a.shape, a.dtype)
    return empty(a.shape, a.dtype)


def weight_grads(out, weight, inputs):
    """(dweight, dbias) of a backward op: the arrays of its ``out`` (``weight_grad_out``), new
    ones where it gives none."""
    dweight, dbias = weight_grad_out(out, weight, inputs)
    return (empty_like(weight) if dweight is None else dweight,
            np.empty(weight.shape[:1], weight.dtype) if dbias is None else dbias)


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
    """Drop every free block (live ones stay pooled until they are freed and dropped)."""
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
    """Bytes of the blocks the pool holds, live or free."""
    return sum(_sizes)
