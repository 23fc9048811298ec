"""Tooling after install: an unbuilt source tree says how to build; the benchmarks import the
checkout's in-place build when there is one, else the installed cybn."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cybn

INSTALLED = Path(cybn.__file__).resolve().parents[1]  # the cybn under test (installed or built in place)
REPO = Path(__file__).resolve().parents[1]


def _python(code, cwd, pythonpath):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env["PYTHONPATH"] = os.fspath(pythonpath)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env)


@pytest.fixture
def source_tree(tmp_path):
    """A copy of the checkout's cybn/ without compiled modules, and benchmarks/harness.py."""
    src = tmp_path / "src"
    shutil.copytree(INSTALLED / "cybn", src / "cybn",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "*.c", "__pycache__"))
    (src / "benchmarks").mkdir()
    shutil.copy(REPO / "benchmarks" / "harness.py", src / "benchmarks")
    return src


def test_an_unbuilt_source_tree_says_how_to_build(source_tree):
    r = _python("import cybn", cwd=source_tree, pythonpath=source_tree)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: cybn's compiled kernels (") and "_openmp" in last
    assert "pip install -e ." in last and "python setup.py build_ext --inplace" in last
    assert str(source_tree / "cybn" / "_kernels") in last


def _cybn_seen_by_harness(src, cwd):
    code = (f"import sys; sys.path.insert(0, {str(src / 'benchmarks')!r}); import harness, cybn; "
            "print(cybn.__file__)")
    r = _python(code, cwd=cwd, pythonpath=INSTALLED)
    assert r.returncode == 0, r.stderr
    return Path(r.stdout.strip()).resolve()


def test_benchmarks_use_the_installed_cybn_or_an_inplace_build(source_tree):
    # An unbuilt checkout: the harness keeps it off sys.path (even as the current folder, which
    # `python -c` / `python -m` put first) and imports the installed cybn.
    installed = (INSTALLED / "cybn" / "__init__.py").resolve()
    assert _cybn_seen_by_harness(source_tree, cwd=source_tree / "benchmarks") == installed
    assert _cybn_seen_by_harness(source_tree, cwd=source_tree) == installed
    # Built in place: the checkout's own cybn.
    for so in (INSTALLED / "cybn" / "_kernels").iterdir():
        if so.suffix in (".so", ".pyd"):
            shutil.copy(so, source_tree / "cybn" / "_kernels")
    for cwd in (source_tree / "benchmarks", source_tree):
        assert _cybn_seen_by_harness(source_tree, cwd) == (source_tree / "cybn" / "__init__.py").resolve()


def test_harness_steal_share(tmp_path):
    # The benchmarks' steal figure: ticks from /proc/stat (None off Linux), and their share.
    code = (f"import sys; sys.path.insert(0, {str(REPO / 'benchmarks')!r}); import harness; "
            "t = harness.cpu_ticks(); print(t is None or 0 <= t[0] <= t[1]); "
            "print(harness.steal_share((10, 1000), (30, 2000)), harness.steal_share(None, (1, 2)), "
            "harness.steal_share((5, 10), (5, 10)))")
    r = _python(code, cwd=tmp_path, pythonpath=INSTALLED)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "0.02", "None", "None"]
