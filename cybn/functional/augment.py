"""Batch assembly for training data: gather + random crop (zero padding) + horizontal flip +
per-channel lookup-table normalisation in one pass (validated front end of ``_kernels.augment``).

The maths is in ``cybn.reference.augment``. The kernel trusts its inputs (an index or offset out
of range would read outside the images), so every one is checked here. Measured (1 thread, CPU
time, batch of 128 CIFAR images): 169 us validated vs 142 us for the kernel alone, i.e. ~25 us of
checks (mostly the eight min/max reductions), nothing against a training step.
"""
import numpy as np

from .._kernels.augment import crop_flip_lut as _crop_flip_lut
from .._validation import MAX_INT, check_float_array, nonnegative_int, plain_array, uint8_images
from ._dispatch import threads_for
from . import _memory

__all__ = ["crop_flip_lut"]

# A training batch (128 images) takes ~0.25 ms on one core: too short for a thread team to pay
# off, and on a busy machine one descheduled worker stalls the whole team for ms. So only large
# batches (evaluation) are split, with at least 512 CIFAR-sized images (3 x 32 x 32) per thread.
_GRAIN = 512 * 3072


def _ints(a, name, n, hi, kinds="iu"):
    """``a`` as contiguous int64 (n,) with values in [0, hi]."""
    plain_array(a, name)
    if a.dtype.kind not in kinds:
        raise TypeError(f"{name} must have an integer dtype, got {a.dtype}")
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one per batch slot, like index), got {a.shape}")
    if n and (a.min() < 0 or a.max() > hi):
        raise ValueError(f"{name} must lie in [0, {hi}], found {a.min()}..{a.max()}")
    return np.ascontiguousarray(a, dtype=np.int64)


def crop_flip_lut(images, lut, index, oy, ox, flips, padding):
    """out (B, C, H, W) in lut's dtype, B = len(index):

        out[b, c, h, w] = lut[c, P[index[b], c, h + oy[b], (W-1-w if flips[b] else w) + ox[b]]]

    where P is ``images`` (uint8, N x C x H x W) zero-padded by ``padding`` pixels on each side
    (padded pixels read lut[c, 0]). ``lut`` (C, 256) float32/float64; ``index`` in [0, N);
    ``oy``, ``ox`` in [0, 2*padding] (oy = ox = padding is the uncropped image); ``flips`` 0/1 or
    bool. Any padding works, also one larger than the image (the crop then holds only padding).
    """
    images = uint8_images(images)
    n, c, h, w = images.shape
    check_float_array(lut, "lut", ndim=2)
    if lut.shape != (c, 256):
        raise ValueError(f"lut must have shape ({c}, 256) (one table per channel of images "
                         f"{images.shape}), got {lut.shape}")
    lut = np.ascontiguousarray(lut)
    padding = nonnegative_int(padding, "padding", MAX_INT)
    plain_array(index, "index")
    if index.ndim != 1:
        raise ValueError(f"index must have 1 dimension (B,), got shape {index.shape}")
    b = index.shape[0]
    if b and n == 0:
        raise ValueError(f"index selects {b} images from an empty images array {images.shape}")
    index = _ints(index, "index", b, n - 1)
    oy = _ints(oy, "oy", b, 2 * padding)
    ox = _ints(ox, "ox", b, 2 * padding)
    flips = _ints(flips, "flips", b, 1, kinds="iub").astype(np.uint8)
    out = _memory.empty((b, c, h, w), lut.dtype)
    if out.size:
        _crop_flip_lut(images, index, oy, ox, flips, padding, lut, out, threads_for(out.size, _GRAIN))
    return out
