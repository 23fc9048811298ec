"""Checkpoints that survive crashes and cannot execute code.

A checkpoint is one ``.npz`` file: named arrays (model state, optimizer buffers, ...) plus a JSON
metadata record stored as a uint8 array, and a SHA-256 over all of it. It is written to a
temporary file in the same folder, fsync'ed and renamed over the old one, so a process killed
mid-write leaves the previous checkpoint intact. Loading uses ``allow_pickle=False`` and checks
the hash, so a truncated or altered file raises ``CheckpointError`` naming it. The metadata
carries ``format_version`` (``cybn._formats.CHECKPOINT``; none, from before versioning, reads as
1); a newer one raises ``FormatError`` naming both versions.
"""
import glob
import hashlib
import json
import os
import tempfile
import zipfile

import numpy as np

from . import _formats

_META_KEY = "__meta__"
_HASH_KEY = "__sha256__"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, altered or not a cybn checkpoint."""


def _digest(arrays, meta_bytes):
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str(a.dtype.str).encode())
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    h.update(meta_bytes)
    return h.hexdigest()


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not possible on every platform (e.g. Windows); the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path, arrays, meta):
    """Atomically write ``arrays`` (name -> ndarray) and JSON-able ``meta`` to ``path``."""
    path = os.fspath(path)
    for name in arrays:
        if name in (_META_KEY, _HASH_KEY):
            raise ValueError(f"checkpoint array name {name!r} is reserved")
    if _formats.KEY in meta:
        raise ValueError(f"checkpoint metadata key {_formats.KEY!r} is reserved")
    meta_bytes = json.dumps({**meta, _formats.KEY: _formats.CHECKPOINT}, sort_keys=True).encode()
    payload = {name: np.asarray(a) for name, a in arrays.items()}
    payload[_META_KEY] = np.frombuffer(meta_bytes, dtype=np.uint8)
    payload[_HASH_KEY] = np.frombuffer(_digest(arrays, meta_bytes).encode(), dtype=np.uint8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomically(path, lambda f: np.savez(f, **payload))


def write_atomically(path, write):
    """``write(file)`` into a temporary file beside ``path``, fsync'ed and renamed over it when
    complete: ``path`` is either its old self or the whole new file. The folder must exist."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):  # else the error would name the temporary file
        raise FileNotFoundError(f"cannot write {path}: the folder {folder} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {path}: it is a folder")
    prefix = f".{os.path.basename(path)}.tmp-"
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)
    # Temporary files of earlier writes that were killed before their rename are garbage now.
    for stale in glob.glob(os.path.join(glob.escape(folder), glob.escape(prefix) + "*")):
        try:
            os.unlink(stale)
        except OSError:
            pass


def load_checkpoint(path):
    """Read and verify a checkpoint: returns ``(arrays, meta)``; raises CheckpointError if damaged."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or not a checkpoint): {e}") from e
    if _META_KEY not in arrays or _HASH_KEY not in arrays:
        raise CheckpointError(f"checkpoint {path} is not a cybn checkpoint (no metadata or hash)")
    meta_bytes = arrays.pop(_META_KEY).tobytes()
    stored = arrays.pop(_HASH_KEY).tobytes().decode("ascii", errors="replace")
    if _digest(arrays, meta_bytes) != stored:
        raise CheckpointError(f"checkpoint {path} failed its SHA-256 check: the file was altered or damaged")
    meta = json.loads(meta_bytes)
    _formats.check_version(meta.pop(_formats.KEY, None), _formats.CHECKPOINT, "checkpoint", path)
    return arrays, meta
