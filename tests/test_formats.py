"""Versioned files: checkpoints, state-dict files, run records and experiment results carry a
format version; files from before versioning read as version 1; newer versions are refused
with a message naming both versions."""
import json

import numpy as np
import pytest

from cybn import _formats
from cybn.checkpoint import _digest, load_checkpoint, save_checkpoint
from cybn.experiments.records import LayerScale, Results, RunResult, read_results, write_results
from cybn.nn import Linear, ReLU, Sequential
from cybn.recipe import RunError, RunRecord


def test_check_version():
    assert _formats.check_version(None, 3, "thing", "f") == 1
    assert _formats.check_version(2, 3, "thing", "f") == 2
    with pytest.raises(_formats.FormatError, match=r"f: thing format version 4 is newer than this cybn .* "
                                                   r"reads \(versions 1 to 3\)"):
        _formats.check_version(4, 3, "thing", "f")
    for bad in (0, -1, "2", 2.0, True):
        with pytest.raises(_formats.FormatError, match="is not a version number"):
            _formats.check_version(bad, 3, "thing", "f")


def _write_checkpoint(path, arrays, meta):
    """A checkpoint with exactly this metadata (save_checkpoint adds the current version)."""
    meta_bytes = json.dumps(meta).encode()
    np.savez(path, **arrays, __meta__=np.frombuffer(meta_bytes, np.uint8),
             __sha256__=np.frombuffer(_digest(arrays, meta_bytes).encode(), np.uint8))


def test_checkpoints_are_versioned(tmp_path):
    path = tmp_path / "ck.npz"
    save_checkpoint(path, {"w": np.ones(3)}, {"step": 4})
    with np.load(path) as f:
        assert json.loads(f["__meta__"].tobytes())["format_version"] == _formats.CHECKPOINT
    assert load_checkpoint(path)[1] == {"step": 4}
    _write_checkpoint(path, {"w": np.ones(3)}, {"step": 4})  # written before versioning
    assert load_checkpoint(path)[1] == {"step": 4}
    _write_checkpoint(path, {"w": np.ones(3)}, {"step": 4, "format_version": _formats.CHECKPOINT + 1})
    with pytest.raises(_formats.FormatError, match=f"checkpoint format version {_formats.CHECKPOINT + 1} is newer"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(path, {}, {"format_version": 1})


def test_state_dict_files_are_versioned(tmp_path):
    model = Sequential(Linear(3, 2, rng=0), ReLU())
    path = tmp_path / "model.npz"
    model.save(path)
    with np.load(path) as f:
        assert int(f["format_version"]) == _formats.STATE_DICT
        state = {k: f[k] for k in f.files if k != "format_version"}
    other = Sequential(Linear(3, 2, rng=1), ReLU())
    other.load(path)
    np.testing.assert_array_equal(other[0].params["weight"], model[0].params["weight"])
    np.savez(path, **state)  # written before versioning
    Sequential(Linear(3, 2, rng=1), ReLU()).load(path)
    np.savez(path, **state, format_version=np.array(_formats.STATE_DICT + 1))
    with pytest.raises(_formats.FormatError, match=f"state-dict file format version {_formats.STATE_DICT + 1}"):
        other.load(path)
    np.savez(path, **state, format_version=np.array([1, 2]))
    with pytest.raises(_formats.FormatError, match="not a version number"):
        other.load(path)


def test_run_records(tmp_path):
    RunRecord(mean=[0.5] * 3, std=[0.25] * 3).write(tmp_path)
    assert RunRecord.read(tmp_path).std == [0.25] * 3
    (tmp_path / "run.json").write_text(json.dumps({"mean": [0.5], "std": [0.2], "format_version": 7}))
    with pytest.raises(_formats.FormatError, match="run record format version 7 is newer"):
        RunRecord.read(tmp_path)
    (tmp_path / "run.json").write_text("[]")
    with pytest.raises(RunError, match="not a run record"):
        RunRecord.read(tmp_path)


def _results():
    run = RunResult(label="(a)", config={"lr": 0.1}, losses=[(1, 2.3)], test_points=[(10, 0.1, 2.3)],
                    preact_at_init={"conv1": LayerScale(1.0, 0.8, 1.0), "fc2": LayerScale(1e-9, 1e-9, 1e-18)})
    return Results(options={"evals_per_epoch": 2}, runs={"a": run})


def test_results_round_trip_and_old_files(tmp_path):
    path = tmp_path / "results.json"
    write_results(_results(), path)
    assert json.loads(path.read_text())["format_version"] == _formats.RESULTS
    assert read_results(path) == _results()
    # A results.json from before versioning: the same layout without the version, and eps rows
    # from before the bias variants.
    old = _results().to_json()
    del old["format_version"]
    old["eps_sweep"] = [{"lr": 0.02, "eps": 1e-5, "last_layer_var_at_init": 1e-30, "bn_gain_at_init": 316.0,
                         "xhat_scale_at_init": 1e-12, "final_loss": 2.3, "outcome": "chance"}]
    path.write_text(json.dumps(old))
    back = read_results(path)
    assert back.runs == _results().runs and back.eps_sweep[0].bias is True
    path.write_text(json.dumps({**old, "format_version": _formats.RESULTS + 1}))
    with pytest.raises(_formats.FormatError, match="newer than this cybn"):
        read_results(path)
    path.write_text(json.dumps({"runs": {"a": {"label": "x"}}}))
    with pytest.raises(_formats.FormatError, match="not a small-init results file"):
        read_results(path)
