"""Batches for training: per-channel normalisation, crop+flip augmentation, a resumable loader.

Everything random is derived from (seed, epoch) alone: epoch e uses the generator
``PCG64(SeedSequence(seed, spawn_key=(e,)))`` to draw, in this order, the permutation, the
crop offsets and the flips of all its samples. So the loader's whole state is three integers
(seed, epoch, batches already yielded) and a checkpoint can resume bit-identically, even in
the middle of an epoch, without pickling a bit generator.
"""
from collections.abc import Mapping

import numpy as np

from ..functional import crop_flip_lut
from .._validation import (MAX_INT, flag, float_dtype, generator, integer, nonnegative_int, positive_int,
                           uint8_images)

__all__ = ["channel_stats", "normalization_lut", "normalize", "crop_flip_normalize",
           "augment_normalize", "DataLoader"]


def channel_stats(images):
    """Per-channel mean and std (population) of uint8 NCHW images, in units of pixel/255.

    Computed exactly from a 256-bin histogram per channel (float64), so it is cheap and the
    same for any batch order. Use the training set's stats for every split.
    """
    images = uint8_images(images)
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
                                dtype=float_dtype(dtype))


def _int_array(a):
    """Offsets / flips given as any array-like (lists too); their checks are the op's."""
    return a if isinstance(a, np.ndarray) else np.asarray(a)


def crop_flip_normalize(images, oy, ox, flips, mean, std, padding=4, dtype=np.float32):
    """Deterministic augmentation: crop image i of its zero-padded version at (oy[i], ox[i]),
    mirror it when flips[i], normalise. oy/ox in [0, 2*padding]; the pad is black (pixel 0),
    as in torchvision's RandomCrop before Normalize."""
    images = uint8_images(images)
    lut = normalization_lut(*_mean_std(mean, std, images.shape[1]), dtype=dtype)
    return crop_flip_lut(images, lut, np.arange(images.shape[0]), _int_array(oy), _int_array(ox),
                         _int_array(flips), padding)


def normalize(images, mean, std, dtype=np.float32):
    """uint8 NCHW images -> float (x/255 - mean) / std per channel, C-contiguous."""
    images = uint8_images(images)
    n = images.shape[0]
    zeros = np.zeros(n, dtype=np.int64)
    return crop_flip_normalize(images, zeros, zeros, zeros, mean, std, padding=0, dtype=dtype)


def augment_normalize(images, mean, std, rng, padding=4, flip=True, dtype=np.float32):
    """Random crop (zero padding ``padding``) + random horizontal flip + normalise, drawing
    oy, ox (each uniform in [0, 2*padding]) and then the flips from the numpy Generator ``rng``."""
    images = uint8_images(images)
    n = images.shape[0]
    padding = nonnegative_int(padding, "padding", MAX_INT)
    flip = flag(flip, "flip")
    generator(rng)
    oy = rng.integers(0, 2 * padding + 1, n)
    ox = rng.integers(0, 2 * padding + 1, n)
    flips = rng.integers(0, 2, n) if flip else np.zeros(n, dtype=np.int64)
    return crop_flip_normalize(images, oy, ox, flips, mean, std, padding=padding, dtype=dtype)


def share(n, rank, size):
    """[lo, hi) of rank ``rank``'s share of ``n`` items split as evenly as possible over ``size``."""
    return (rank * n) // size, ((rank + 1) * n) // size


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
        self.images = uint8_images(images)
        n = self.images.shape[0]
        labels = np.asarray(labels)
        if n and labels.dtype.kind not in "iu":
            raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},) (one per image), got {labels.shape}")
        self.labels = np.ascontiguousarray(labels, dtype=np.int64)
        self.batch_size = positive_int(batch_size, "batch_size")
        self.padding = nonnegative_int(padding, "padding", MAX_INT)
        self.shuffle, self.augment = flag(shuffle, "shuffle"), flag(augment, "augment")
        self.flip, self.drop_last = flag(flip, "flip"), flag(drop_last, "drop_last")
        self.dtype = float_dtype(dtype)
        if mean is None or std is None:
            if mean is not None or std is not None:
                raise ValueError("give both mean and std, or neither")
            mean, std = channel_stats(self.images)
        self.mean, self.std = _mean_std(mean, std, self.images.shape[1])
        self._lut = normalization_lut(self.mean, self.std, self.dtype)
        if seed is None:
            seed = int(np.random.default_rng().integers(2**63))  # fits int64 / JSON
        self.seed = nonnegative_int(seed, "seed")
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
        self._epoch = nonnegative_int(epoch, "epoch")
        self._position = 0

    # ---------------------------------------------------------------- state
    def get_state(self):
        """Plain-int state (JSON-able): restoring it replays exactly the batches that follow."""
        return {"seed": self.seed, "epoch": self._epoch, "position": self._position,
                "num_samples": self.num_samples, "batch_size": self.batch_size}

    def set_state(self, state):
        """Restore a :meth:`get_state` dict (from a loader over the same data and batch size)."""
        if not isinstance(state, Mapping):
            raise TypeError(f"a DataLoader state must be the dict from get_state(), got {type(state).__name__}")
        missing = [k for k in ("seed", "epoch", "position") if k not in state]
        if missing:
            raise ValueError(f"not a DataLoader state: it lacks {missing} (got keys {sorted(map(str, state))})")
        for key, mine in (("num_samples", self.num_samples), ("batch_size", self.batch_size)):
            if key in state and nonnegative_int(state[key], f"loader state {key}") != mine:
                raise ValueError(f"loader state was saved with {key}={state[key]}, "
                                 f"this loader has {mine}")
        seed = nonnegative_int(state["seed"], "loader state seed")
        epoch = nonnegative_int(state["epoch"], "loader state epoch")
        position = nonnegative_int(state["position"], "loader state position")
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
        epoch = nonnegative_int(epoch, "epoch")
        if not 0 <= integer(k, "batch index k") < len(self):
            raise IndexError(f"batch {k} out of range: an epoch has {len(self)} batches")
        order, oy, ox, flips = self._plan(epoch)
        s = slice(k * self.batch_size, min((k + 1) * self.batch_size, self.num_samples))
        if self.part is not None:  # only this rank's rows; the plan (order, crops) stays global
            lo, hi = share(s.stop - s.start, *self.part)
            s = slice(s.start + lo, s.start + hi)
        index = order[s]
        x = crop_flip_lut(self.images, self._lut, index, oy[s], ox[s], flips[s], self.padding)
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
