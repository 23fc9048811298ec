"""Fused batch assembly: gather + random crop (zero padding) + horizontal flip + normalise.

One pass from the uint8 dataset to the float batch, so augmentation costs a fraction of a
millisecond per batch instead of several NumPy temporaries. Normalisation is a per-channel
256-entry lookup table computed in float64 by the caller, which makes the result bit-identical
to the NumPy formula. Trusts its inputs: cybn.data.loader validates them.
"""
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint8_t

from cybn._kernels._common cimport floating


def crop_flip_lut(const uint8_t[:, :, :, ::1] images, const int64_t[::1] index,
                  const int64_t[::1] oy, const int64_t[::1] ox, const uint8_t[::1] flip,
                  int padding, const floating[:, ::1] lut, floating[:, :, :, ::1] out,
                  int num_threads):
    """out[b, c, h, w] = lut[c, P[index[b], c, h + oy[b], (W-1-w if flip[b] else w) + ox[b]]]

    where P is the image zero-padded by ``padding`` on each side (padded pixels read lut[c, 0]).
    oy/ox are in [0, 2*padding] (any padding, also > H or W: the crop may hold no image pixel);
    oy = ox = padding and flip = 0 is the plain normalised image.
    """
    cdef Py_ssize_t B = out.shape[0], C = out.shape[1], H = out.shape[2], W = out.shape[3]
    cdef Py_ssize_t b, c, h, w, src, row, dx, lo, hi
    cdef bint flipped
    cdef floating zero
    for b in prange(B, num_threads=num_threads, schedule='static', nogil=True):
        src = index[b]
        flipped = flip[b] != 0
        dx = ox[b] - padding
        # Output columns whose source column lies inside the image; the rest is padding.
        # Unflipped: col = w + dx; flipped: col = W - 1 - w + dx; both need 0 <= col < W.
        if flipped:
            lo = dx if dx > 0 else 0
            hi = W + dx if dx < 0 else W
        else:
            lo = -dx if dx < 0 else 0
            hi = W - dx if dx > 0 else W
        # A shift |dx| >= W (padding > W) leaves no image column: clamp to 0 <= lo <= hi <= W,
        # so the whole row is padding instead of a span outside the row.
        if lo > W:
            lo = W
        if hi < lo:
            hi = lo
        for c in range(C):
            zero = lut[c, 0]
            for h in range(H):
                row = h + oy[b] - padding
                if row < 0 or row >= H:
                    for w in range(W):
                        out[b, c, h, w] = zero
                    continue
                for w in range(lo):
                    out[b, c, h, w] = zero
                if flipped:
                    for w in range(lo, hi):
                        out[b, c, h, w] = lut[c, images[src, c, row, W - 1 - w + dx]]
                else:
                    for w in range(lo, hi):
                        out[b, c, h, w] = lut[c, images[src, c, row, w + dx]]
                for w in range(hi, W):
                    out[b, c, h, w] = zero
