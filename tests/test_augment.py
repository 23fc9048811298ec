"""Batch assembly (gather + crop + flip + lookup-table normalisation): functional vs reference."""
import numpy as np
import pytest

import cybn
from cybn import data as D
from cybn import functional as F
from cybn import reference as R


def _case(rng, shape, b, padding, dtype):
    n, c, h, w = shape
    images = rng.integers(0, 256, shape).astype(np.uint8)
    lut = rng.standard_normal((c, 256)).astype(dtype)
    index = rng.integers(0, n, b)
    oy = rng.integers(0, 2 * padding + 1, b)
    ox = rng.integers(0, 2 * padding + 1, b)
    if b >= 2:
        ox[:2] = (0, 2 * padding)  # the extreme shifts
    flips = rng.integers(0, 2, b).astype(bool)
    return images, lut, index, oy, ox, flips


@pytest.mark.parametrize("shape,b,padding", [((5, 3, 8, 8), 7, 2), ((1, 1, 1, 1), 3, 0), ((4, 2, 3, 5), 4, 9),
                                             ((6, 3, 4, 7), 1, 1), ((3, 1, 2, 2), 0, 4), ((9, 3, 5, 3), 9, 3)],
                         ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_reference(shape, b, padding, dtype, threads, rng):
    args = _case(rng, shape, b, padding, dtype)
    got = F.crop_flip_lut(*args, padding)
    want = R.crop_flip_lut(*args, padding)
    assert got.dtype == dtype and got.shape == (b,) + shape[1:]
    np.testing.assert_array_equal(got, want)  # a table lookup: exact


def test_centred_crop_is_the_normalised_image(rng):
    images, lut, *_ = _case(rng, (4, 3, 6, 5), 4, 3, np.float64)
    centre = np.full(4, 3)
    out = F.crop_flip_lut(images, lut, np.arange(4), centre, centre, np.zeros(4, np.uint8), 3)
    np.testing.assert_array_equal(out, lut[np.arange(3)[None, :, None, None], images])


def test_threads_bit_identical(rng):
    args = _case(rng, (1100, 3, 8, 8), 1100, 4, np.float32)
    with cybn.num_threads(1):
        one = F.crop_flip_lut(*args, 4)
    with cybn.num_threads(2):
        two = F.crop_flip_lut(*args, 4)
    np.testing.assert_array_equal(one, two)


def test_loader_goes_through_functional(monkeypatch, rng):
    calls = []
    real = F.crop_flip_lut

    def spy(*args):
        calls.append(len(args[2]))
        return real(*args)

    import cybn.data.loader as loader_module
    monkeypatch.setattr(loader_module, "crop_flip_lut", spy)
    images = rng.integers(0, 256, (10, 3, 4, 4)).astype(np.uint8)
    batches = list(D.DataLoader(images, np.zeros(10, np.int64), 4, augment=True, seed=0))
    assert calls == [4, 4, 2] and len(batches) == 3


def test_bad_inputs(rng):
    images, lut, index, oy, ox, flips = _case(rng, (5, 3, 8, 8), 6, 2, np.float32)
    good = dict(images=images, lut=lut, index=index, oy=oy, ox=ox, flips=flips, padding=2)
    bad = [
        (dict(images=images.astype(np.float32)), TypeError, "images must be uint8"),
        (dict(images=images[0]), ValueError, r"images must be NCHW \(4 dimensions\)"),
        (dict(images=images.tolist()), TypeError, "images must be a numpy.ndarray, got list"),
        (dict(lut=lut[:2]), ValueError, r"lut must have shape \(3, 256\)"),
        (dict(lut=lut.astype(np.float16)), TypeError, "lut must have dtype float32 or float64"),
        (dict(index=np.append(index[:-1], 5)), ValueError, r"index must lie in \[0, 4\], found"),
        (dict(index=np.append(index[:-1], -1)), ValueError, r"index must lie in \[0, 4\]"),
        (dict(index=index.astype(np.float64)), TypeError, "index must have an integer dtype"),
        (dict(index=index.reshape(2, 3)), ValueError, r"index must have 1 dimension"),
        (dict(oy=oy[:5]), ValueError, r"oy must have shape \(6,\)"),
        (dict(ox=ox + 5), ValueError, r"ox must lie in \[0, 4\]"),
        (dict(flips=flips.astype(np.int64) * 2), ValueError, r"flips must lie in \[0, 1\]"),
        (dict(flips=flips.astype(np.float32)), TypeError, "flips must have an integer dtype"),
        (dict(padding=-1), ValueError, "padding must be >= 0, got -1"),
        (dict(padding=2**31), ValueError, "padding must be <= 2147483647"),
        (dict(padding=2.0), TypeError, "padding must be an integer, got float 2.0"),
        (dict(padding=np.True_), TypeError, "padding must be an integer, got bool"),
        (dict(images=images[:0]), ValueError, "from an empty images array"),
    ]
    for change, exc, message in bad:
        with pytest.raises(exc, match=message):
            F.crop_flip_lut(**(good | change))
