"""cybn.data: CIFAR-10 loading (archive / folder / safe unpickling), download, augmentation, loader."""
import hashlib
import io
import json
import os
import pickle
import pickletools
import struct
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from cybn.data import (CIFAR10_CLASSES, ChecksumError, DataLoader, DownloadError,
                       augment_normalize, channel_stats, crop_flip_normalize, default_cache_dir,
                       download, download_cifar10, load_cifar10, normalize, safe_unpickle)

# ----------------------------------------------------------------------------- tiny CIFAR-10


class _Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle protocol 2 wrote for the official files: bytes as
    (SHORT_)BINSTRING, not Python 3's ``_codecs.encode`` call, and ``numpy.core.multiarray``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", "") == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)

    dispatch[type(len)] = save_global


class _Py2AllStrPickler(_Py2Pickler):
    """Also writes numpy's own str ('u1', '|') as Python 2 str, as genuine numpy-1/Python-2 files do."""

    dispatch = dict(_Py2Pickler.dispatch)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin1"))

    dispatch[str] = save_str


def py2_pickle(obj, all_str=False):
    f = io.BytesIO()
    (_Py2AllStrPickler if all_str else _Py2Pickler)(f, protocol=2).dump(obj)
    return f.getvalue()


def _batch(rng, n, label):
    return {b"batch_label": label, b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [b"img_%04d.png" % i for i in range(n)]}


@pytest.fixture(scope="module")
def tiny():
    """Batch dicts of a tiny CIFAR-10 (sizes 7,7,7,7,6 train, 5 test) and their pickles."""
    rng = np.random.default_rng(7)
    batches = {f"data_batch_{i}": _batch(rng, 7 if i < 5 else 6, b"training batch %d of 5" % i)
               for i in range(1, 6)}
    batches["test_batch"] = _batch(rng, 5, b"testing batch 1 of 1")
    files = {name: py2_pickle(d) for name, d in batches.items()}
    files["batches.meta"] = py2_pickle({b"num_cases_per_batch": 7, b"num_vis": 3072,
                                        b"label_names": [c.encode() for c in CIFAR10_CLASSES]})
    return batches, files


def write_archive(path, files):
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("cifar-10-batches-py")
        info.type = tarfile.DIRTYPE
        tf.addfile(info)
        for name, data in list(files.items()) + [("readme.html", b"<html></html>")]:
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def tiny_archive(tiny, tmp_path):
    return write_archive(tmp_path / "cifar-10-python.tar.gz", tiny[1])


@pytest.fixture
def tiny_folder(tiny, tmp_path):
    folder = tmp_path / "extracted" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, data in tiny[1].items():
        (folder / name).write_bytes(data)
    return folder


def test_tiny_pickles_look_like_the_official_ones(tiny):
    ops = {(op.name, arg) for op, arg, _ in pickletools.genops(tiny[1]["data_batch_1"])}
    assert ("GLOBAL", "numpy.core.multiarray _reconstruct") in ops
    assert not any(name == "GLOBAL" and "codecs" in arg for name, arg in ops)
    assert ("SHORT_BINSTRING", "data") in ops


def _check_tiny(data, batches):
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    assert data.train_images.shape == (34, 3, 32, 32) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (5, 3, 32, 32)
    assert data.train_labels.dtype == np.int64 and data.test_labels.dtype == np.int64
    np.testing.assert_array_equal(data.train_labels, np.concatenate([b[b"labels"] for b in train]))
    np.testing.assert_array_equal(data.test_labels, batches["test_batch"][b"labels"])
    flat = np.concatenate([b[b"data"] for b in train])
    # Row layout: 1024 red, 1024 green, 1024 blue values, each 32x32 row-major.
    np.testing.assert_array_equal(data.train_images[3, 1, 2, 5], flat[3, 1024 + 2 * 32 + 5])
    np.testing.assert_array_equal(data.train_images.reshape(34, -1), flat)
    assert data.classes == CIFAR10_CLASSES
    assert data.train_images.flags.c_contiguous


def test_load_tiny_archive(tiny, tiny_archive):
    _check_tiny(load_cifar10(tiny_archive), tiny[0])


def test_load_tiny_folder_and_parent(tiny, tiny_folder):
    _check_tiny(load_cifar10(tiny_folder), tiny[0])
    _check_tiny(load_cifar10(tiny_folder.parent), tiny[0])
    _check_tiny(load_cifar10(str(tiny_folder)), tiny[0])


def test_load_folder_holding_the_archive(tiny, tiny_archive):
    _check_tiny(load_cifar10(tiny_archive.parent), tiny[0])


def test_limit(tiny, tiny_archive):
    full = load_cifar10(tiny_archive)
    d = load_cifar10(tiny_archive, limit=10)
    assert len(d.train_labels) == 10 and len(d.test_labels) == 5
    np.testing.assert_array_equal(d.train_images, full.train_images[:10])
    d = load_cifar10(tiny_archive, limit=(3, 0))
    assert d.train_images.shape == (3, 3, 32, 32) and d.test_images.shape == (0, 3, 32, 32)
    d = load_cifar10(tiny_archive, limit=(None, 2))
    assert len(d.train_labels) == 34 and len(d.test_labels) == 2
    with pytest.raises(ValueError, match="limit"):
        load_cifar10(tiny_archive, limit=-1)


def test_cifar_mini(cifar_mini):
    d = load_cifar10(cifar_mini)
    assert d.train_images.shape == (5000, 3, 32, 32) and d.test_images.shape == (1000, 3, 32, 32)
    assert d.train_labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert d.test_labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert d.classes == CIFAR10_CLASSES
    # Published official pixels of train image 0 (exact in the rebuilt archive): R starts 59,43,50.
    assert d.train_images[0, 0, 0, :3].tolist() == [59, 43, 50]
    assert np.bincount(d.train_labels, minlength=10).sum() == 5000


# ----------------------------------------------------------------------------- safety and errors


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_rejected_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    payload = py2_pickle({b"data": _Evil(marker), b"labels": []})
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global '(posix|os|nt)\.system'"):
        safe_unpickle(payload, "evil")
    assert not marker.exists()
    for evil in (b"cbuiltins\neval\n(S'1'\ntR.", b"c__builtin__\neval\n(S'1'\ntR."):
        with pytest.raises(pickle.UnpicklingError, match="eval"):
            safe_unpickle(evil)


def test_malicious_batch_in_archive_is_rejected(tiny, tmp_path):
    marker = tmp_path / "pwned"
    files = dict(tiny[1], data_batch_1=pickle.dumps({"data": _Evil(marker)}, protocol=4))
    archive = write_archive(tmp_path / "evil.tar.gz", files)
    with pytest.raises(pickle.UnpicklingError, match="data_batch_1.*system"):
        load_cifar10(archive)
    assert not marker.exists()


@pytest.mark.parametrize("change, match", [
    (lambda d: d.update({b"data": d[b"data"].astype(np.float32)}), "uint8 array of shape"),
    (lambda d: d.update({b"data": d[b"data"][:, :100]}), r"uint8 array of shape \(N, 3072\)"),
    (lambda d: d.update({b"labels": d[b"labels"][:-1]}), "6 labels for 7 images"),
    (lambda d: d[b"labels"].__setitem__(0, 10), r"labels must be in 0\.\.9"),
    (lambda d: d.pop(b"labels"), "missing key 'labels'"),
])
def test_bad_content_names_the_file(tiny, tmp_path, change, match):
    d = {k: (v.copy() if hasattr(v, "copy") else v) for k, v in tiny[0]["data_batch_1"].items()}
    change(d)
    archive = write_archive(tmp_path / "bad.tar.gz", dict(tiny[1], data_batch_1=py2_pickle(d)))
    with pytest.raises(ValueError, match=f"data_batch_1.*{match}"):
        load_cifar10(archive)


def test_str_keys_load(tiny, tmp_path):
    """Re-pickled files with str keys (e.g. loaded with latin1 and saved again) are fine."""
    files = dict(tiny[1])
    d = tiny[0]["data_batch_1"]
    files["data_batch_1"] = pickle.dumps({"data": d[b"data"], "labels": d[b"labels"]}, protocol=4)
    data = load_cifar10(write_archive(tmp_path / "s.tar.gz", files))
    np.testing.assert_array_equal(data.train_labels[:7], d[b"labels"])


def test_python2_str_dtype_fields_load(tiny, tmp_path):
    d = tiny[0]["data_batch_2"]
    files = dict(tiny[1], data_batch_2=py2_pickle(d, all_str=True))
    assert ("SHORT_BINSTRING", "u1") in {(o.name, a) for o, a, _ in pickletools.genops(files["data_batch_2"])}
    data = load_cifar10(write_archive(tmp_path / "py2.tar.gz", files))
    np.testing.assert_array_equal(data.train_images[7:14].reshape(7, -1), d[b"data"])


def test_archive_missing_member(tiny, tmp_path):
    files = {k: v for k, v in tiny[1].items() if k != "test_batch"}
    with pytest.raises(ValueError, match="lacks test_batch"):
        load_cifar10(write_archive(tmp_path / "partial.tar.gz", files))
    with pytest.raises(ValueError, match="not a readable tar archive"):
        (tmp_path / "junk.tar.gz").write_bytes(b"not a tar")
        load_cifar10(tmp_path / "junk.tar.gz")


def test_missing_path_message(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"nowhere.*--data PATH.*download"):
        load_cifar10(missing)
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py"):
        load_cifar10(tmp_path)  # exists, but holds no dataset
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "cache")):
        load_cifar10(None, download=False, cache_dir=tmp_path / "cache")


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("CYBN_CACHE_DIR", str(tmp_path / "a"))
    assert default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("CYBN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "cybn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "cybn"


# ----------------------------------------------------------------------------- download


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        srv = self.server
        srv.ranges.append(self.headers.get("Range"))
        data, start, status = srv.payload, 0, 200
        rng = self.headers.get("Range")
        if rng and srv.honour_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_after is not None:  # simulate a dropped connection
            self.wfile.write(body[:srv.cut_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    servers = []

    def start(payload, honour_range=True, cut_after=None):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        srv.payload, srv.honour_range, srv.cut_after, srv.ranges = payload, honour_range, cut_after, []
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/cifar-10-python.tar.gz", srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


PAYLOAD = bytes(np.random.default_rng(3).integers(0, 256, 300_000, dtype=np.uint8))
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


def test_download_ok(serve, tmp_path, capsys):
    url, srv = serve(PAYLOAD)
    dest = tmp_path / "c" / "file.tar.gz"
    assert download(url, dest, md5=PAYLOAD_MD5, size=len(PAYLOAD)) == dest
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "c" / "file.tar.gz.part").exists()
    assert srv.ranges == [None]
    assert "100%" in capsys.readouterr().err  # progress on stderr (not a tty: decile lines)
    download(url, tmp_path / "q", md5=PAYLOAD_MD5, quiet=True)
    assert capsys.readouterr().err == ""


def test_download_checksum_mismatch_deletes(serve, tmp_path):
    url, _ = serve(PAYLOAD)
    dest = tmp_path / "file.tar.gz"
    with pytest.raises(ChecksumError, match="MD5 checksum mismatch.*deleted"):
        download(url, dest, md5="0" * 32, quiet=True)
    assert not dest.exists() and not (tmp_path / "file.tar.gz.part").exists()
    with pytest.raises(ChecksumError, match="expected 12"):
        download(url, dest, size=12, quiet=True)
    assert not dest.exists() and not (tmp_path / "file.tar.gz.part").exists()


def test_download_resumes_part_with_range(serve, tmp_path):
    url, srv = serve(PAYLOAD)
    dest = tmp_path / "file.tar.gz"
    (tmp_path / "file.tar.gz.part").write_bytes(PAYLOAD[:123_456])
    download(url, dest, md5=PAYLOAD_MD5, size=len(PAYLOAD), quiet=True)
    assert srv.ranges == ["bytes=123456-"]
    assert dest.read_bytes() == PAYLOAD


def test_download_interrupted_then_resumed(serve, tmp_path):
    dest = tmp_path / "file.tar.gz"
    url, _ = serve(PAYLOAD, cut_after=100_000)
    with pytest.raises(DownloadError, match="call again to resume"):
        download(url, dest, md5=PAYLOAD_MD5, quiet=True, timeout=5)
    part = tmp_path / "file.tar.gz.part"
    assert not dest.exists() and part.read_bytes() == PAYLOAD[:part.stat().st_size]
    assert part.stat().st_size > 0
    url, srv = serve(PAYLOAD)
    download(url, dest, md5=PAYLOAD_MD5, quiet=True)
    assert srv.ranges == [f"bytes={100_000}-"] and dest.read_bytes() == PAYLOAD


def test_download_restarts_when_range_ignored(serve, tmp_path):
    url, srv = serve(PAYLOAD, honour_range=False)
    dest = tmp_path / "file.tar.gz"
    (tmp_path / "file.tar.gz.part").write_bytes(b"garbage that is not a prefix")
    download(url, dest, md5=PAYLOAD_MD5, quiet=True)
    assert srv.ranges == ["bytes=28-"] and dest.read_bytes() == PAYLOAD


def test_download_corrupt_part_is_caught(serve, tmp_path):
    url, _ = serve(PAYLOAD)
    dest = tmp_path / "file.tar.gz"
    (tmp_path / "file.tar.gz.part").write_bytes(b"x" * 1000)  # resumed, but not a prefix
    with pytest.raises(ChecksumError):
        download(url, dest, md5=PAYLOAD_MD5, quiet=True)
    assert not (tmp_path / "file.tar.gz.part").exists()
    download(url, dest, md5=PAYLOAD_MD5, quiet=True)  # the next call starts afresh
    assert dest.read_bytes() == PAYLOAD


def test_download_complete_part(serve, tmp_path):
    """A complete .part left by an earlier run: verified without a request (size known), or
    re-fetched from zero when the server answers 416 to the range (size unknown)."""
    url, srv = serve(PAYLOAD)
    part = tmp_path / "file.tar.gz.part"
    part.write_bytes(PAYLOAD)
    download(url, tmp_path / "file.tar.gz", md5=PAYLOAD_MD5, size=len(PAYLOAD), quiet=True)
    assert srv.ranges == [] and (tmp_path / "file.tar.gz").read_bytes() == PAYLOAD
    part.write_bytes(PAYLOAD)
    download(url, tmp_path / "other.tar.gz", md5=PAYLOAD_MD5, quiet=True)  # no .part for "other"
    (tmp_path / "other.tar.gz.part").write_bytes(PAYLOAD)
    download(url, tmp_path / "other.tar.gz", md5=PAYLOAD_MD5, quiet=True)
    assert srv.ranges == [None, f"bytes={len(PAYLOAD)}-", None]
    assert (tmp_path / "other.tar.gz").read_bytes() == PAYLOAD


def test_download_unreachable(tmp_path):
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="could not download.*--data PATH"):
        download(f"http://127.0.0.1:{port}/x.tar.gz", tmp_path / "x", quiet=True, timeout=2)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.part").exists()


def test_download_cifar10_into_cache_then_load(serve, tiny, tmp_path):
    archive = write_archive(tmp_path / "src.tar.gz", tiny[1]).read_bytes()
    url, srv = serve(archive)
    md5 = hashlib.md5(archive).hexdigest()
    cache = tmp_path / "cache"
    path = download_cifar10(cache_dir=cache, url=url, md5=md5, size=len(archive), quiet=True)
    assert path == cache / "cifar-10-python.tar.gz"
    _check_tiny(load_cifar10(path), tiny[0])
    # Cached: no second request.
    assert download_cifar10(cache_dir=cache, url=url, md5=md5, size=len(archive)) == path
    assert len(srv.ranges) == 1
    with pytest.raises(DownloadError, match="not the expected"):
        download_cifar10(cache_dir=cache, url=url, md5=md5, size=len(archive) + 1)


# ----------------------------------------------------------------------------- augmentation


def reference_augment(img, oy, ox, flip, pad, mean, std, dtype):
    """Slow, obvious version: zero-pad, crop at (oy, ox), mirror, normalise in float64."""
    _, h, w = img.shape
    padded = np.pad(img, ((0, 0), (pad, pad), (pad, pad)))
    crop = padded[:, oy:oy + h, ox:ox + w]
    if flip:
        crop = crop[:, :, ::-1]
    out = (crop / 255.0 - np.asarray(mean)[:, None, None]) / np.asarray(std)[:, None, None]
    return out.astype(dtype)


MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_crop_flip_matches_reference(rng, dtype):
    imgs = rng.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    for oy in (0, 1, 4, 7, 8):
        for ox in (0, 3, 4, 8):
            for flip in (0, 1):
                n = len(imgs)
                out = crop_flip_normalize(imgs, [oy] * n, [ox] * n, [flip] * n, MEAN, STD, 4, dtype)
                assert out.dtype == dtype and out.flags.c_contiguous
                for i in range(n):
                    np.testing.assert_array_equal(
                        out[i], reference_augment(imgs[i], oy, ox, flip, 4, MEAN, STD, dtype))


def test_crop_flip_non_square_mixed_offsets(rng):
    imgs = rng.integers(0, 256, (40, 2, 5, 7), dtype=np.uint8)
    oy, ox, fl = rng.integers(0, 7, 40), rng.integers(0, 7, 40), rng.integers(0, 2, 40)
    mean, std = (0.3, 0.6), (0.2, 0.1)
    out = crop_flip_normalize(imgs, oy, ox, fl, mean, std, padding=3, dtype=np.float64)
    for i in range(40):
        np.testing.assert_array_equal(out[i], reference_augment(imgs[i], oy[i], ox[i], fl[i], 3,
                                                                mean, std, np.float64))


def test_crop_flip_large_batch_threads_agree(rng):
    """Batches of >= 1024 images are split over threads: same bits as one thread."""
    import cybn
    imgs = rng.integers(0, 256, (1100, 3, 32, 32), dtype=np.uint8)
    oy, ox, fl = rng.integers(0, 9, 1100), rng.integers(0, 9, 1100), rng.integers(0, 2, 1100)
    outs = []
    for n in (1, 2):
        with cybn.num_threads(n):
            outs.append(crop_flip_normalize(imgs, oy, ox, fl, MEAN, STD))
    np.testing.assert_array_equal(outs[0], outs[1])
    for i in (0, 549, 550, 1099):
        np.testing.assert_array_equal(outs[1][i], reference_augment(imgs[i], oy[i], ox[i], fl[i], 4,
                                                                    MEAN, STD, np.float32))


def test_crop_flip_validation(rng):
    imgs = rng.integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"oy must lie in \[0, 8\], found 0..9"):
        crop_flip_normalize(imgs, [0, 9], [0, 0], [0, 0], MEAN, STD)
    with pytest.raises(ValueError, match=r"ox must have shape \(2,\)"):
        crop_flip_normalize(imgs, [0, 0], [0], [0, 0], MEAN, STD)
    with pytest.raises(TypeError, match="ox must have an integer dtype, got float64"):
        crop_flip_normalize(imgs, [0, 0], [0.0, 2.7], [0, 0], MEAN, STD)
    with pytest.raises(ValueError, match=r"flips must lie in \[0, 1\]"):
        crop_flip_normalize(imgs, [0, 0], [0, 0], [0, 2], MEAN, STD)
    with pytest.raises(TypeError, match="padding must be an integer, got float 2.0"):
        crop_flip_normalize(imgs, [0, 0], [0, 0], [0, 0], MEAN, STD, padding=2.0)
    with pytest.raises(TypeError, match="padding must be an integer, got bool True"):
        crop_flip_normalize(imgs, [0, 0], [0, 0], [0, 0], MEAN, STD, padding=True)
    with pytest.raises(TypeError, match="uint8"):
        normalize(imgs.astype(np.float32), MEAN, STD)
    with pytest.raises(ValueError, match="std finite and > 0"):
        normalize(imgs, MEAN, (0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="3 values"):
        normalize(imgs, (0.5,), (0.2,))
    with pytest.raises(TypeError, match="float32 or float64"):
        normalize(imgs, MEAN, STD, dtype=np.int32)


def test_normalize_and_channel_stats(rng):
    imgs = rng.integers(0, 256, (9, 3, 6, 5), dtype=np.uint8)
    mean, std = channel_stats(imgs)
    x = imgs / 255.0
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, x.std(axis=(0, 2, 3)), rtol=1e-12)
    out = normalize(imgs, mean, std, dtype=np.float32)
    expect = ((x - mean[:, None, None]) / std[:, None, None]).astype(np.float32)
    np.testing.assert_array_equal(out, expect)
    z = normalize(imgs, mean, std, dtype=np.float64)
    np.testing.assert_allclose(z.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(axis=(0, 2, 3)), 1, atol=1e-12)


def test_augment_seeded(rng):
    imgs = rng.integers(0, 256, (64, 3, 32, 32), dtype=np.uint8)
    a = augment_normalize(imgs, MEAN, STD, np.random.default_rng(1))
    b = augment_normalize(imgs, MEAN, STD, np.random.default_rng(1))
    c = augment_normalize(imgs, MEAN, STD, np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Each augmented image is one of the 9*9*2 crops/flips of its source.
    for i in range(3):
        assert any(np.array_equal(a[i], reference_augment(imgs[i], oy, ox, f, 4, MEAN, STD, np.float32))
                   for oy in range(9) for ox in range(9) for f in (0, 1))


# ----------------------------------------------------------------------------- DataLoader


def _ids_loader(n=10, batch_size=4, **kw):
    """Labels = sample ids, so the batches reveal which samples they hold."""
    imgs = np.random.default_rng(0).integers(0, 256, (n, 3, 8, 8), dtype=np.uint8)
    return imgs, DataLoader(imgs, np.arange(n), batch_size, **kw)


def test_loader_batches_and_coverage():
    imgs, loader = _ids_loader(seed=3)
    assert len(loader) == 3
    batches = list(loader)
    assert [len(y) for _, y in batches] == [4, 4, 2]
    ids = np.concatenate([y for _, y in batches])
    assert sorted(ids.tolist()) == list(range(10)) and ids.tolist() != list(range(10))
    x, y = batches[0]
    assert x.dtype == np.float32 and x.flags.c_contiguous and x.shape == (4, 3, 8, 8)
    assert y.dtype == np.int64
    # No augmentation: x is the normalised image (stats of the loader's images by default).
    np.testing.assert_array_equal(x, normalize(imgs[y], *channel_stats(imgs)))
    second = np.concatenate([y for _, y in loader])
    assert sorted(second.tolist()) == list(range(10)) and second.tolist() != ids.tolist()
    assert loader.epoch == 2


def test_loader_drop_last_and_order():
    _, loader = _ids_loader(drop_last=True, shuffle=False, dtype=np.float64)
    assert len(loader) == 2
    batches = list(loader)
    assert [y.tolist() for _, y in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert batches[0][0].dtype == np.float64
    _, loader = _ids_loader(n=8, batch_size=8)
    assert len(loader) == 1 and len(next(iter(loader))[1]) == 8


def test_loader_augment_uses_given_stats():
    imgs, loader = _ids_loader(n=6, batch_size=6, augment=True, seed=5, mean=MEAN, std=STD)
    x, y = next(iter(loader))
    for i in range(6):
        assert any(np.array_equal(x[i], reference_augment(imgs[y[i]], oy, ox, f, 4, MEAN, STD, np.float32))
                   for oy in range(9) for ox in range(9) for f in (0, 1))


def _collect(loader, n_batches):
    out = []
    while len(out) < n_batches:
        for x, y in loader:
            out.append((x, y))
            if len(out) == n_batches:
                break
    return out


def test_loader_seeds():
    _, a = _ids_loader(seed=11, augment=True)
    _, b = _ids_loader(seed=11, augment=True)
    _, c = _ids_loader(seed=12, augment=True)
    for (xa, ya), (xb, yb), (xc, yc) in zip(_collect(a, 6), _collect(b, 6), _collect(c, 6)):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not all(np.array_equal(p[0], q[0]) for p, q in zip(_collect(a, 3), _collect(c, 3)))


def test_loader_state_resume_mid_epoch():
    _, ref = _ids_loader(n=23, batch_size=5, augment=True, seed=42)  # 5 batches/epoch
    expected = _collect(ref, 20)
    _, run = _ids_loader(n=23, batch_size=5, augment=True, seed=42)
    seen = []
    state = None
    for epoch in range(2):
        for x, y in run:
            seen.append(y)
            if len(seen) == 7:  # epoch 1, batch 1 done
                state = json.loads(json.dumps(run.get_state()))  # survives JSON (checkpoint meta)
    assert state == {"seed": 42, "epoch": 1, "position": 2, "num_samples": 23, "batch_size": 5}
    assert all(type(v) is int for v in state.values())
    _, resumed = _ids_loader(n=23, batch_size=5, augment=True, seed=999)
    resumed.set_state(state)
    assert len(resumed) - resumed.position == 3
    got = _collect(resumed, 13)
    for (xe, ye), (xg, yg) in zip(expected[7:], got):
        np.testing.assert_array_equal(ye, yg)
        np.testing.assert_array_equal(xe, xg)
    # state_dict/load_state_dict are the same API (used by the Trainer).
    resumed.load_state_dict(run.state_dict())
    assert resumed.get_state() == run.get_state()


def test_loader_break_resumes_same_epoch_and_set_epoch():
    _, loader = _ids_loader(n=12, batch_size=4, seed=1)
    first = []
    for x, y in loader:
        first.append(y)
        break
    assert (loader.epoch, loader.position) == (0, 1)
    rest = [y for _, y in loader]
    assert len(rest) == 2
    assert sorted(np.concatenate(first + rest).tolist()) == list(range(12))
    assert (loader.epoch, loader.position) == (1, 0)
    loader.set_epoch(0)
    np.testing.assert_array_equal(next(iter(loader))[1], first[0])
    np.testing.assert_array_equal(loader.batch(0, 1)[1], rest[0])


def test_loader_validation():
    imgs = np.zeros((4, 3, 8, 8), np.uint8)
    with pytest.raises(TypeError, match="uint8"):
        DataLoader(imgs.astype(np.float32), np.arange(4), 2)
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\) \(one per image\), got \(3,\)"):
        DataLoader(imgs, np.arange(3), 2)
    with pytest.raises(TypeError, match="labels must be integers, got dtype float64"):
        DataLoader(imgs, np.arange(4.0), 2)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        DataLoader(imgs, np.arange(4), 0)
    # a wrong type is a TypeError (it was a ValueError), a wrong value a ValueError
    for kwargs, exc, message in [(dict(batch_size=2.0), TypeError, "batch_size must be an integer, got float 2.0"),
                                 (dict(batch_size=True), TypeError, "batch_size must be an integer, got bool"),
                                 (dict(seed=-1), ValueError, "seed must be >= 0, got -1"),
                                 (dict(seed="0"), TypeError, "seed must be an integer, got str '0'"),
                                 (dict(padding=2**31), ValueError, "padding must be <= 2147483647"),
                                 (dict(augment=1), TypeError, "augment must be a bool"),
                                 (dict(dtype=np.int64), TypeError, "dtype must be float32 or float64")]:
        args = dict(batch_size=2, mean=MEAN, std=STD) | kwargs
        with pytest.raises(exc, match=message):
            DataLoader(imgs, np.arange(4), **args)
    loader = DataLoader(imgs + 1, np.arange(4), 2, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="batch_size=3"):
        loader.set_state({"seed": 0, "epoch": 0, "position": 0, "num_samples": 4, "batch_size": 3})
    with pytest.raises(ValueError, match="beyond"):
        loader.set_state({"seed": 0, "epoch": 0, "position": 3})
    with pytest.raises(ValueError, match="not a DataLoader state"):
        loader.set_state({"epoch": 0})
    with pytest.raises(TypeError, match="DataLoader state must be the dict"):
        loader.set_state([0, 0, 0])
    with pytest.raises(TypeError, match="loader state epoch must be an integer, got float 1.5"):
        loader.set_state({"seed": 0, "epoch": 1.5, "position": 0})  # not truncated to 1
    with pytest.raises(TypeError, match="batch index k must be an integer"):
        loader.batch(0, 1.0)
