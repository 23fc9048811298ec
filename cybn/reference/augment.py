"""Batch assembly with crop + flip + normalisation, plain NumPy (twin of cybn.functional.augment).

Image ``index[b]`` is zero-padded by ``padding`` pixels (pixel value 0, black) on each side,
cropped to its original size at offset (oy[b], ox[b]), mirrored left-right when flips[b], and
every pixel value v of channel c is replaced by lut[c, v].
"""
import numpy as np

__all__ = ["crop_flip_lut"]


def crop_flip_lut(images, lut, index, oy, ox, flips, padding):
    """out (len(index), C, H, W) in lut's dtype; see the module docstring."""
    _, C, H, W = images.shape
    p = padding
    padded = np.pad(images[np.asarray(index)], ((0, 0), (0, 0), (p, p), (p, p)))
    crops = np.stack([padded[b, :, oy[b]:oy[b] + H, ox[b]:ox[b] + W] for b in range(len(index))]) \
        if len(index) else np.zeros((0, C, H, W), images.dtype)
    mirrored = np.asarray(flips, bool)
    crops[mirrored] = crops[mirrored][..., ::-1]
    return lut[np.arange(C)[None, :, None, None], crops]
