"""Shared fixtures: the NumPy oracle, random generators, the CIFAR-10 archives in ../shared/data."""
import os
from pathlib import Path

import numpy as np
import pytest

import cybn

# Child Pythons started by tests must import the cybn this process tests (installed, or built in
# place), never an uncompiled source tree in the current directory: run them from the tests
# folder, (3.11+) never prepend the cwd, and put this cybn's folder first on their path.
TESTS_DIR = Path(__file__).resolve().parent
os.environ["PYTHONSAFEPATH"] = "1"
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(Path(cybn.__file__).resolve().parents[1])] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])

SHARED_DATA = Path(os.environ.get("CYBN_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    """Run a test once with 1 and once with 2 kernel threads."""
    with cybn.num_threads(request.param):
        yield request.param


@pytest.fixture
def tiny_work_threaded(monkeypatch):
    """Let even tiny inputs run on the whole thread team (the size threshold of
    ``functional._dispatch`` would give them one thread), so thread-count tests test something."""
    import cybn.functional._dispatch as dispatch
    monkeypatch.setattr(dispatch, "PARALLEL_MIN", 1)


def _shared_file(name):
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not found (the shared CIFAR-10 archives are absent)")
    return path


@pytest.fixture
def cifar_mini():
    """Path to ../shared/data/cifar-10-mini.tar.gz; the test is skipped when it is absent."""
    return _shared_file("cifar-10-mini.tar.gz")


@pytest.fixture
def cifar_full():
    return _shared_file("cifar-10-python.tar.gz")
