"""Fetch the official CIFAR-10 archive into a user cache, safely and resumably (urllib only).

The file is written to ``<name>.part`` and renamed into place only once its size and MD5
match, so a cached file is always a verified one; an interrupted transfer keeps the
``.part`` and the next call resumes it with an HTTP Range request (or restarts when the
server ignores ranges). A checksum mismatch deletes the download and raises ChecksumError.
"""
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from .._progress import Progress
from .._validation import nonnegative_int, positive_float

__all__ = ["CIFAR10_URL", "CIFAR10_MD5", "CIFAR10_SIZE", "CIFAR10_FILENAME", "DownloadError",
           "ChecksumError", "default_cache_dir", "download", "download_cifar10"]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # published on https://www.cs.toronto.edu/~kriz/cifar.html
CIFAR10_SIZE = 170498071
CIFAR10_FILENAME = "cifar-10-python.tar.gz"

_CHUNK = 1 << 20


class DownloadError(OSError):
    """The download failed (network, HTTP status); a partial file, if any, is kept for resuming."""


class ChecksumError(DownloadError):
    """The downloaded bytes are not the expected file (wrong size or MD5); the file was deleted."""


def default_cache_dir():
    """Where downloads are cached: $CYBN_CACHE_DIR, else $XDG_CACHE_HOME/cybn, else ~/.cache/cybn."""
    env = os.environ.get("CYBN_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "cybn"
    return Path.home() / ".cache" / "cybn"


def _mib(n):
    return f"{n / 2**20:.1f} MiB"


def _md5_of_file(path, hasher):
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            hasher.update(block)
    return hasher


def _open(url, start, timeout):
    headers = {"User-Agent": "cybn-data/1 (urllib)"}
    if start > 0:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _resumed_ok(response, start):
    """True when the server honoured our Range: a 206 whose Content-Range starts at ``start``."""
    if start == 0 or response.status != 206:
        return False
    content_range = response.headers.get("Content-Range", "")
    return content_range.replace("bytes ", "").split("-")[0].strip() == str(start)


def _total_from(response, start, resumed):
    if resumed:
        total = response.headers.get("Content-Range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def download(url, dest, md5=None, size=None, quiet=False, timeout=60.0):
    """Download ``url`` to ``dest`` via ``dest + '.part'``; verify ``size``/``md5``; return ``dest``.

    Resumes an existing ``.part`` with an HTTP Range request and restarts from zero when the
    server answers with the whole file instead. Progress goes to stderr unless ``quiet``.
    """
    size = None if size is None else nonnegative_int(size, "size")
    timeout = positive_float(timeout, "timeout")
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    start = part.stat().st_size if part.exists() else 0
    if size is not None and start > size:  # longer than the real file: cannot be a prefix of it
        part.unlink()
        start = 0
    hasher = hashlib.md5()
    if size is None or start < size:
        try:
            try:
                response = _open(url, start, timeout)
            except urllib.error.HTTPError as exc:
                if exc.code != 416 or start == 0:  # 416: our range is unusable -> start over
                    raise
                start = 0
                response = _open(url, 0, timeout)
            with response:
                resumed = _resumed_ok(response, start)
                if not resumed:
                    start = 0
                total = _total_from(response, start, resumed) or size
                if resumed:
                    _md5_of_file(part, hasher)
                progress = Progress(total, desc=dest.name, unit="MiB", scale=2**20, enabled=not quiet,
                                    initial=start)
                if not quiet:
                    how = f"resuming at {_mib(start)}" if resumed else "downloading"
                    sys.stderr.write(f"cybn: {how} {url} -> {dest}\n")
                length = response.headers.get("Content-Length")
                expected = int(length) if length and length.isdigit() else None
                received = 0
                with open(part, "ab" if resumed else "wb") as f:
                    try:
                        for block in iter(lambda: response.read(_CHUNK), b""):
                            f.write(block)
                            hasher.update(block)
                            received += len(block)
                            progress.update(len(block))
                    finally:
                        progress.close()
                    f.flush()
                    os.fsync(f.fileno())
                # http.client returns short data instead of raising when a connection drops.
                if expected is not None and received < expected:
                    raise http.client.IncompleteRead(b"", expected - received)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            if isinstance(exc, DownloadError):
                raise
            kept = part.stat().st_size if part.exists() else 0
            if isinstance(exc, http.client.IncompleteRead):
                reason = f"the connection closed early ({exc.expected} bytes missing)"
            else:
                reason = getattr(exc, "reason", None) or exc
            raise DownloadError(
                f"could not download {url}: {reason}. "
                + (f"{_mib(kept)} kept in {part}; call again to resume. " if kept else "")
                + "Without internet, download the file elsewhere and pass its path "
                "(e.g. --data PATH).") from exc
    else:
        _md5_of_file(part, hasher)  # a complete .part from an earlier run that stopped before verifying
    got_size = part.stat().st_size
    if size is not None and got_size != size:
        part.unlink()
        raise ChecksumError(f"downloaded {url} has {got_size} bytes, expected {size}; "
                            f"the file was deleted, call again to re-download")
    if md5 is not None and hasher.hexdigest() != md5.lower():
        part.unlink()
        raise ChecksumError(f"MD5 checksum mismatch for {url}: expected {md5.lower()}, got "
                            f"{hasher.hexdigest()} ({got_size} bytes); the corrupt file was deleted, "
                            f"call again to re-download")
    os.replace(part, dest)  # atomic: dest is either absent or complete and verified
    return dest


def download_cifar10(cache_dir=None, quiet=False, url=None, md5=None, size=None):
    """Return the path of the verified official CIFAR-10 archive, downloading it once into the cache.

    ``url``/``md5``/``size`` default to the official file (overridable for mirrors and tests).
    A cached file was verified when downloaded; here only its size is checked (MD5 of 170 MB
    on every run would cost ~0.3 s for nothing).
    """
    url = CIFAR10_URL if url is None else url
    md5 = CIFAR10_MD5 if md5 is None else md5
    size = CIFAR10_SIZE if size is None else size
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    dest = cache_dir / CIFAR10_FILENAME
    if dest.exists():
        got = dest.stat().st_size
        if size is not None and got != size:
            raise DownloadError(f"{dest} has {got} bytes, not the expected {size}: it is not the "
                                f"official archive. Delete it to re-download, or pass it explicitly "
                                f"as a data path (e.g. --data {dest}).")
        return dest
    return download(url, dest, md5=md5, size=size, quiet=quiet)
