"""Checkpoints: atomic writes that survive SIGKILL, hash verification, no pickle."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import TESTS_DIR

from cybn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def test_round_trip(tmp_path):
    arrays = {"model/0.weight": np.arange(12, dtype=np.float32).reshape(3, 4), "step": np.array(7)}
    meta = {"epoch": 2, "rng": {"state": 2**127 + 5}}
    path = tmp_path / "ck.npz"
    save_checkpoint(path, arrays, meta)
    got, got_meta = load_checkpoint(path)
    assert got_meta == meta
    assert set(got) == set(arrays)
    for k in arrays:
        np.testing.assert_array_equal(got[k], arrays[k])
        assert got[k].dtype == arrays[k].dtype


def test_missing_truncated_and_altered(tmp_path):
    path = tmp_path / "ck.npz"
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(path)
    save_checkpoint(path, {"w": np.ones(1000)}, {"step": 1})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)
    # Alter one array consistently (valid zip, valid npy) so only the hash can notice.
    save_checkpoint(path, {"w": np.ones(1000)}, {"step": 1})
    with np.load(path) as f:
        payload = {k: f[k] for k in f.files}
    payload["w"][3] = 2.0
    np.savez(path, **payload)
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(path)
    np.savez(path, w=np.ones(3))
    with pytest.raises(CheckpointError, match="not a cybn checkpoint"):
        load_checkpoint(path)


def test_pickled_object_arrays_are_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, w=np.array([object()], dtype=object))
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)


def test_reserved_names(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "x.npz", {"__meta__": np.ones(1)}, {})


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from cybn.checkpoint import save_checkpoint
    path = sys.argv[1]
    big = np.zeros(2_000_000)
    i = 0
    while True:
        big[:] = i
        save_checkpoint(path, {"w": big}, {"version": i})
        if i == 0:
            print("ready", flush=True)
        i += 1
""")


def test_sigkill_during_write_never_loses_the_checkpoint(tmp_path):
    """Kill a writer at random moments: the file on disk always loads and is consistent."""
    path = tmp_path / "ck.npz"
    rng = np.random.default_rng(0)
    trials = 12
    for _ in range(trials):
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                                 cwd=TESTS_DIR)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.3))
        child.send_signal(signal.SIGKILL)
        child.wait()
        arrays, meta = load_checkpoint(path)
        assert np.all(arrays["w"] == meta["version"])
    leftovers = [p for p in os.listdir(tmp_path) if p != "ck.npz"]
    save_checkpoint(path, {"w": np.zeros(1)}, {"version": -1})
    assert os.listdir(tmp_path) == ["ck.npz"], f"stale temporaries not cleaned: {leftovers}"
