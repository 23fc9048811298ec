"""Batches for training: per-channel normalisation, crop+flip augmentation, a resumable loader.

Everything random is derived from (seed, epoch) alone: epoch e uses the generator
``PCG64(SeedSequence(seed, spawn_key=(e,)))`` to draw, in this order, the permutation, the
crop offsets and the flips of all its samples. So the loader's whole state is three integers
(seed, epoch, batches already yielded) and a checkpoint can resume bit-identically, even in
the middle of an epoch, without pickling a bit generator.
"""
import numbers

import numpy as np

from .._kernels.augment import crop_flip_lut
from .._threads import kernel_threads

__all__ = ["channel_stats", "normalization_lut", "normalize", "crop_flip_normalize",
           "augment_normalize", "DataLoader"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

# The kernel takes padding as a C int (and crop offsets up to 2*padding as int64).
_MAX_PADDING = 2**31 - 1


def _uint8_images(images, name="images"):
    if not isinstance(images, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8 pixels (0..255), got {images.dtype}")
    if images.ndim != 4:
        raise ValueError(f"{name} must be NCHW (4 dimensions), got shape {images.shape}")
    return np.ascontiguousarray(images)


def _float_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in _FLOATS:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def _offsets(a, n, hi, name):
    a = np.asarray(a)
    if a.shape != (n,) or a.dtype.kind not in "iub":
        raise ValueError(f"{name} must be {n} integers, got {a.dtype} {a.shape}")
    if n and (a.min() < 0 or a.max() > hi):
        raise ValueError(f"{name} must be in [0, {hi}], found {a.min()}..{a.max()}")
    return np.ascontiguousarray(a, dtype=np.int64)


def channel_stats(images):
    """Per-channel mean and std (population) of uint8 NCHW images, in units of pixel/255.

    Computed exactly from a 256-bin histogram per channel (float64), so it is cheap and the
    same for any batch order. Use the training set's stats for every split.
    """
    images = _uint8_images(images)
    if images.shape[0] == 0:
        raise ValueError("channel_stats: no images")
    channels = images.shape[1]
    counts = np.zeros((channels, 256), dtype=np.int64)
    for start in range(0, images.shape[0], 2048):  # chunks: bincount's intp copy stays small
        chunk = images[start:start + 2048]
        for c in range(channels):
            counts[c] += np.bincount(chunk[:, c].reshape(-1), minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    hist = counts / counts.sum(axis=1, keepdims=True)
    mean = hist @ values
    std = np.sqrt(np.sum(hist * (values[None, :] - mean[:, None]) ** 2, axis=1))
    return mean, std


def _real_values(v, name):
    """mean/std as a flat float64 array, or a TypeError naming ``name`` (numpy's own messages,
    e.g. "could not convert string to float", name neither). Complex values are rejected, not
    silently stripped of their imaginary part; so are strings and bools."""
    try:
        a = np.asarray(v)
        if a.dtype.kind == "O":  # mixed Python objects: numeric ones still convert
            a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        a = None
    if a is None or a.dtype.kind not in "iuf":
        what = type(v).__name__ if a is None else f"{type(v).__name__} of dtype {a.dtype}"
        raise TypeError(f"{name} must be a real number or a sequence of real numbers (one per "
                        f"channel), got {what}: {v!r:.80}")
    return a.astype(np.float64).reshape(-1)


def _mean_std(mean, std, channels):
    mean = _real_values(mean, "mean")
    std = _real_values(std, "std")
    if mean.shape != (channels,) or std.shape != (channels,):
        raise ValueError(f"mean and std need {channels} values (one per channel), "
                         f"got {mean.shape} and {std.shape}")
    if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
        raise ValueError(f"mean must be finite and std finite and > 0, got {mean}, {std}")
    return mean, std


def normalization_lut(mean, std, dtype=np.float32):
    """Table (C, 256): lut[c, v] = (v/255 - mean[c]) / std[c], computed in float64 then cast."""
    mean = _real_values(mean, "mean")
    mean, std = _mean_std(mean, std, mean.size)
    values = np.arange(256, dtype=np.float64) / 255.0
    return np.ascontiguousarray(((values[None, :] - mean[:, None]) / std[:, None]),
                                dtype=_float_dtype(dtype))


# A training batch (128 images) takes ~0.25 ms on one core: too short for a thread team to
# pay off, and on a busy machine one descheduled worker stalls the whole team for ms. So only
# large batches (evaluation) are split, with at least this many images per thread.
_IMAGES_PER_THREAD = 512


def _run(images, index, oy, ox, flips, padding, lut, dtype):
    n, c, h, w = len(index), images.shape[1], images.shape[2], images.shape[3]
    out = np.empty((n, c, h, w), dtype=dtype)
    threads = max(1, min(kernel_threads(), n * c * h * w // (_IMAGES_PER_THREAD * 3072)))
    crop_flip_lut(images, index, oy, ox, flips, int(padding), lut, out, threads)
    return out


def crop_flip_normalize(images, oy, ox, flips, mean, std, padding=4, dtype=np.float32):
    """Deterministic augmentation: crop image i of its zero-padded version at (oy[i], ox[i]),
    mirror it when flips[i], normalise. oy/ox in [0, 2*padding]; the pad is black (pixel 0),
    as in torchvision's RandomCrop before Normalize."""
    images = _uint8_images(images)
    n = images.shape[0]
    padding = _check_int(padding, "padding", 0, _MAX_PADDING)
    oy = _offsets(oy, n, 2 * padding, "oy")
    ox = _offsets(ox, n, 2 * padding, "ox")
    flips = _offsets(flips, n, 1, "flips").astype(np.uint8)
    lut = normalization_lut(*_mean_std(mean, std, images.shape[1]), dtype=dtype)
    return _run(images, np.arange(n, dtype=np.int64), oy, ox, flips, padding, lut, lut.dtype)


def normalize(images, mean, std, dtype=np.float32):
    """uint8 NCHW images -> float (x/255 - mean) / std per channel, C-contiguous."""
    images = _uint8_images(images)
    n = images.shape[0]
    zeros = np.zeros(n, dtype=np.int64)
    return crop_flip_normalize(images, zeros, zeros, zeros, mean, std, padding=0, dtype=dtype)


def augment_normalize(images, mean, std, rng, padding=4, flip=True, dtype=np.float32):
    """Random crop (zero padding ``padding``) + random horizontal flip + normalise, drawing
    oy, ox (each uniform in [0, 2*padding]) and then the flips from the numpy Generator ``rng``."""
    images = _uint8_images(images)
    n = images.shape[0]
    padding = _check_int(padding, "padding", 0, _MAX_PADDING)
    oy = rng.integers(0, 2 * padding + 1, n)
    ox = rng.integers(0, 2 * padding + 1, n)
    flips = rng.integers(0, 2, n) if flip else np.zeros(n, dtype=np.int64)
    return crop_flip_normalize(images, oy, ox, flips, mean, std, padding=padding, dtype=dtype)


def share(n, rank, size):
    """[lo, hi) of rank ``rank``'s share of ``n`` items split as evenly as possible over ``size``."""
    return (rank * n) // size, ((rank + 1) * n) // size


def _check_int(value, name, minimum, maximum=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an integer <= {maximum}, got {value!r}")
    return int(value)


class DataLoader:
    """Iterate (x, y) batches: x float C-contiguous NCHW normalised, y int64.

    images: uint8 (N, C, H, W); labels: integers (N,). mean/std: per-channel, in pixel/255
    units (default: :func:`channel_stats` of ``images`` -- give a test loader the TRAINING
    stats). augment: random crop with ``padding`` zero pixels + horizontal flip (``flip``).
    The last batch is short unless ``drop_last``. ``seed`` None draws one (see ``.seed``).

    Each ``for`` loop continues where the previous one stopped: after a complete epoch the
    next loop starts the next epoch; after a ``break`` it resumes the same epoch.
    ``get_state()``/``set_state()`` (alias ``state_dict``/``load_state_dict``) save and restore
    this position as plain ints, so a resumed run sees exactly the same batches.
    """

    def __init__(self, images, labels, batch_size, shuffle=True, augment=False, seed=None,
                 drop_last=False, dtype=np.float32, mean=None, std=None, padding=4, flip=True):
        self.images = _uint8_images(images)
        n = self.images.shape[0]
        labels = np.asarray(labels)
        if labels.shape != (n,) or (n and labels.dtype.kind not in "iu"):
            raise ValueError(f"labels must be {n} integers (one per image), "
                             f"got {labels.dtype} {labels.shape}")
        self.labels = np.ascontiguousarray(labels, dtype=np.int64)
        self.batch_size = _check_int(batch_size, "batch_size", 1)
        self.padding = _check_int(padding, "padding", 0, _MAX_PADDING)
        self.shuffle, self.augment, self.flip = bool(shuffle), bool(augment), bool(flip)
        self.drop_last = bool(drop_last)
        self.dtype = _float_dtype(dtype)
        if mean is None or std is None:
            if mean is not None or std is not None:
                raise ValueError("give both mean and std, or neither")
            mean, std = channel_stats(self.images)
        self.mean, self.std = _mean_std(mean, std, self.images.shape[1])
        self._lut = normalization_lut(self.mean, self.std, self.dtype)
        if seed is None:
            seed = int(np.random.default_rng().integers(2**63))  # fits int64 / JSON
        self.seed = _check_int(seed, "seed", 0)
        self._epoch = 0
        self._position = 0
        self._plan_cache = None
        # Data-parallel training (cybn.distributed): (rank, size) makes every batch rank's share.
        self.part = None

    # ---------------------------------------------------------------- sizes and position
    @property
    def num_samples(self):
        return self.images.shape[0]

    def __len__(self):
        """Batches per epoch."""
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    @property
    def epoch(self):
        """The epoch the next batch comes from (0-based)."""
        return self._epoch

    @property
    def position(self):
        """Batches of the current epoch already yielded."""
        return self._position

    def set_epoch(self, epoch):
        """Start epoch ``epoch`` from its first batch at the next iteration."""
        self._epoch = _check_int(epoch, "epoch", 0)
        self._position = 0

    # ---------------------------------------------------------------- state
    def get_state(self):
        """Plain-int state (JSON-able): restoring it replays exactly the batches that follow."""
        return {"seed": self.seed, "epoch": self._epoch, "position": self._position,
                "num_samples": self.num_samples, "batch_size": self.batch_size}

    def set_state(self, state):
        """Restore a :meth:`get_state` dict (from a loader over the same data and batch size)."""
        try:
            seed, epoch, position = state["seed"], state["epoch"], state["position"]
        except (KeyError, TypeError):
            raise ValueError(f"not a DataLoader state: {state!r}") from None
        for key, mine in (("num_samples", self.num_samples), ("batch_size", self.batch_size)):
            if key in state and int(state[key]) != mine:
                raise ValueError(f"loader state was saved with {key}={int(state[key])}, "
                                 f"this loader has {mine}")
        seed = _check_int(int(seed), "seed", 0)
        epoch = _check_int(int(epoch), "epoch", 0)
        position = _check_int(int(position), "position", 0)
        if position > len(self):
            raise ValueError(f"position {position} is beyond the {len(self)} batches of an epoch")
        self.seed, self._epoch, self._position = seed, epoch, position

    state_dict = get_state
    load_state_dict = set_state

    # ---------------------------------------------------------------- batches
    def _plan(self, epoch):
        """(order, oy, ox, flips) for every slot of ``epoch``, drawn from (seed, epoch) only."""
        key = (self.seed, epoch)
        if self._plan_cache is not None and self._plan_cache[0] == key:
            return self._plan_cache[1]
        n, p = self.num_samples, self.padding
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(self.seed, spawn_key=(epoch,))))
        order = rng.permutation(n) if self.shuffle else np.arange(n, dtype=np.int64)
        if self.augment:
            oy = rng.integers(0, 2 * p + 1, n)
            ox = rng.integers(0, 2 * p + 1, n)
            flips = (rng.integers(0, 2, n) if self.flip else np.zeros(n, np.int64)).astype(np.uint8)
        else:  # centred crop, no flip: the plain image
            oy = ox = np.full(n, p, dtype=np.int64)
            flips = np.zeros(n, dtype=np.uint8)
        plan = tuple(np.ascontiguousarray(a) for a in (order.astype(np.int64), oy, ox, flips))
        self._plan_cache = (key, plan)
        return plan

    def batch(self, epoch, k):
        """Batch ``k`` of epoch ``epoch`` (pure: does not move the loader)."""
        if not 0 <= k < len(self):
            raise IndexError(f"batch {k} out of range: an epoch has {len(self)} batches")
        order, oy, ox, flips = self._plan(epoch)
        s = slice(k * self.batch_size, min((k + 1) * self.batch_size, self.num_samples))
        if self.part is not None:  # only this rank's rows; the plan (order, crops) stays global
            lo, hi = share(s.stop - s.start, *self.part)
            s = slice(s.start + lo, s.start + hi)
        index = order[s]
        x = _run(self.images, index, oy[s], ox[s], flips[s], self.padding, self._lut, self.dtype)
        return x, self.labels[index]

    def __iter__(self):
        # A caller that stopped right after an epoch's last batch left it at position len(self).
        if self._position >= len(self):
            self._epoch, self._position = self._epoch + 1, 0
        epoch = self._epoch
        for k in range(self._position, len(self)):
            x, y = self.batch(epoch, k)
            # Counted before the yield: a state saved while the caller holds batch k resumes at k + 1.
            self._position = k + 1
            yield x, y
        self._epoch, self._position = epoch + 1, 0

    def __repr__(self):
        return (f"DataLoader(num_samples={self.num_samples}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, augment={self.augment}, epoch={self._epoch}, "
                f"position={self._position})")
