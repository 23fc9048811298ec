"""Read CIFAR-10 ("python version" layout) from its .tar.gz or an extracted folder, safely.

The batch files are pickles, and unpickling runs code named in the file; they are therefore
read with an Unpickler that admits only numpy's array reconstruction, so a tampered archive
cannot execute anything. The loaded content is then checked (uint8 (N, 3072) data, labels
in 0..9), because a wrong file should fail here with its name, not as NaNs 20 epochs later.
"""
import io
import os
import pickle
import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._validation import is_integer, nonnegative_int
from .download import CIFAR10_FILENAME, CIFAR10_URL, default_cache_dir, download_cifar10

__all__ = ["CIFAR10_CLASSES", "CIFAR10", "load_cifar10", "safe_unpickle"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
FOLDER = "cifar-10-batches-py"
IMAGE_SHAPE = (3, 32, 32)


def _allowed_globals():
    from numpy import dtype, ndarray
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    # The official files (numpy 1.x, Python 2) name numpy.core; numpy 2 writes numpy._core.
    # Both map to the function already imported, so no module is imported on the file's word.
    return {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy", "ndarray"): ndarray,
            ("numpy", "dtype"): dtype}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the numpy globals an ndarray pickle needs; anything else is refused."""

    def __init__(self, file, source):
        super().__init__(file, encoding="bytes")
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"{self._source}: refusing to load global '{module}.{name}' - a CIFAR-10 batch "
                f"only needs numpy arrays; this file is not a genuine CIFAR-10 pickle "
                f"(or was tampered with)") from None


def safe_unpickle(data, source="<bytes>"):
    """Unpickle ``data`` (bytes or a binary file) allowing only numpy array reconstruction."""
    f = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    return _RestrictedUnpickler(f, source).load()


def _key(d, name, source):
    """``d[name]`` for bytes (Python 2 / encoding='bytes') or str keys."""
    if not isinstance(d, dict):
        raise ValueError(f"{source}: expected a dict, got {type(d).__name__}")
    for k in (name.encode(), name):
        if k in d:
            return d[k]
    raise ValueError(f"{source}: missing key {name!r} (has {sorted(map(repr, d))})")


def _as_text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _parse_batch(raw, source):
    d = safe_unpickle(raw, source)
    data = _key(d, "data", source)
    labels = _key(d, "labels", source)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{source}: 'data' must be a uint8 array of shape (N, 3072), got {desc}")
    try:
        labels = np.asarray(labels)
    except Exception:
        raise ValueError(f"{source}: 'labels' is not a list of integers") from None
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"{source}: 'labels' must be a 1-D list of integers, "
                         f"got {labels.dtype} {labels.shape}")
    if len(labels) != len(data):
        raise ValueError(f"{source}: {len(labels)} labels for {len(data)} images")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{source}: labels must be in 0..9, found {labels.min()}..{labels.max()}")
    return data.reshape((-1,) + IMAGE_SHAPE), labels.astype(np.int64)


def _parse_meta(raw, source):
    names = _key(safe_unpickle(raw, source), "label_names", source)
    if not isinstance(names, (list, tuple)) or len(names) != 10:
        raise ValueError(f"{source}: 'label_names' must be a list of 10 names")
    return tuple(_as_text(n) for n in names)


@dataclass
class CIFAR10:
    """CIFAR-10 in memory: uint8 NCHW images (N, 3, 32, 32) and int64 labels, train and test."""
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple
    source: str

    def __repr__(self):
        return (f"CIFAR10(train={len(self.train_labels)}, test={len(self.test_labels)}, "
                f"source={self.source!r})")


def _not_found(path, looked):
    return FileNotFoundError(
        f"CIFAR-10 not found at {path} (looked for: {', '.join(map(str, looked))}). "
        f"Pass the path of the official cifar-10-python.tar.gz ({CIFAR10_URL}) or of its extracted "
        f"{FOLDER}/ folder (e.g. --data PATH), or give no path and cybn downloads it to "
        f"{default_cache_dir()}.")


def _resolve(path):
    """The archive file or the folder holding the batch files that ``path`` designates."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    candidates = [path / TRAIN_FILES[0], path / FOLDER / TRAIN_FILES[0], path / CIFAR10_FILENAME]
    if path.is_dir():
        for c in candidates[:2]:
            if c.is_file():
                return c.parent
        if candidates[2].is_file():
            return candidates[2]
    raise _not_found(path, candidates if path.is_dir() else [path])


MAX_MEMBER_BYTES = 256 * 2**20  # an official batch file is ~31 MB


def _check_size(size, source):
    """Refuse absurdly large members before reading them into memory (a tar bomb, not CIFAR)."""
    if size > MAX_MEMBER_BYTES:
        raise ValueError(f"{source} is {size} bytes; a CIFAR-10 batch file is about 31 MB")


def _read_members(location, wanted):
    """Map batch file name -> raw bytes for the names in ``wanted``, from an archive or a folder."""
    found = {}
    if location.is_dir():
        for name in wanted:
            f = location / name
            if not f.is_file():
                raise FileNotFoundError(f"{f} is missing: {location} is not a complete CIFAR-10 "
                                        f"folder (needs {', '.join(sorted(wanted))})")
            _check_size(f.stat().st_size, f)
            found[name] = f.read_bytes()
        return found
    try:
        # Stream mode: one sequential pass through the gzip, no seeking back.
        with tarfile.open(location, "r|*") as tf:
            for member in tf:
                name = posixpath.basename(member.name)
                if member.isfile() and name in wanted and name not in found:
                    _check_size(member.size, f"{location}:{member.name}")
                    found[name] = tf.extractfile(member).read()
                    if len(found) == len(wanted):
                        break
    except tarfile.TarError as exc:
        raise ValueError(f"{location} is not a readable tar archive: {exc}") from None
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise ValueError(f"{location}: archive lacks {', '.join(missing)} (expected the official "
                         f"layout {FOLDER}/data_batch_1..5, test_batch, batches.meta)")
    return found


def _limits(limit):
    if limit is None:
        return None, None
    pair = (limit, limit) if is_integer(limit) else limit
    if not isinstance(pair, (tuple, list)):
        raise TypeError(f"limit must be an int or a (train, test) pair, got {type(limit).__name__} {limit!r}")
    if len(pair) != 2:
        raise ValueError(f"limit must be an int or a (train, test) pair, got {limit!r}")
    return tuple(None if v is None else nonnegative_int(v, f"limit {limit!r}: each value") for v in pair)


def _head(a, n):
    return a if n is None or n >= len(a) else a[:n].copy()


def load_cifar10(path=None, limit=None, download=True, cache_dir=None, quiet=False):
    """Load CIFAR-10 as a :class:`CIFAR10` (uint8 NCHW images, int64 labels, class names).

    path: the cifar-10-python.tar.gz archive, the extracted ``cifar-10-batches-py`` folder, its
        parent, or a folder holding the archive. ``None`` uses the verified download in the
        cache (fetching it first when ``download``). User paths are not checksummed, so
        rebuilt or re-packed copies of the dataset load too.
    limit: keep only the first images: an int for both splits, or a (train, test) pair
        (``None`` entries = all). Only the batch files needed are unpickled.
    """
    n_train, n_test = _limits(limit)
    if path is None:
        cache = default_cache_dir() if cache_dir is None else Path(cache_dir)
        cached = cache / CIFAR10_FILENAME
        if not cached.exists() and not download:
            raise _not_found(cache, [cached])
        location = download_cifar10(cache_dir=cache, quiet=quiet)
    else:
        location = _resolve(path)
    per_file = 10000
    train_files = TRAIN_FILES
    if n_train is not None:
        # Batches hold 10000 images in the official files (fewer in cut-down copies), so this
        # is a lower bound on the files needed; the loop below adds more if a file is short.
        train_files = TRAIN_FILES[:-(-n_train // per_file)]
    wanted = set(train_files) | {META_FILE} | ({TEST_FILE} if n_test != 0 else set())
    raw = _read_members(location, wanted)
    classes = _parse_meta(raw.pop(META_FILE), f"{location}/{META_FILE}")

    train_x, train_y = [], []
    have = 0
    for i, name in enumerate(TRAIN_FILES):
        if n_train is not None and have >= n_train:
            break
        if name not in raw:  # short batch files: fetch the rest in one more pass
            raw.update(_read_members(location, set(TRAIN_FILES[i:])))
        x, y = _parse_batch(raw.pop(name), f"{location}/{name}")
        train_x.append(x)
        train_y.append(y)
        have += len(y)
    if n_test == 0:
        test_x, test_y = np.empty((0,) + IMAGE_SHAPE, np.uint8), np.empty(0, np.int64)
    else:
        test_x, test_y = _parse_batch(raw.pop(TEST_FILE), f"{location}/{TEST_FILE}")
    if train_x:
        train_x, train_y = np.concatenate(train_x), np.concatenate(train_y)
    else:
        train_x, train_y = np.empty((0,) + IMAGE_SHAPE, np.uint8), np.empty(0, np.int64)
    # Copies, so a small subset does not keep the whole 150 MB batch alive through a view.
    return CIFAR10(_head(train_x, n_train), _head(train_y, n_train), _head(test_x, n_test),
                   _head(test_y, n_test), classes, os.fspath(location))
