"""The ``cybn`` command line: options that reach the run, one-line errors, training end to end
on the mini CIFAR-10, resume, the examples."""
import json
import math
import subprocess
import sys
import tarfile
import urllib.error

import numpy as np
import pytest
from conftest import TESTS_DIR

import cybn
from cybn import _formats, recipe
from cybn.checkpoint import load_checkpoint
from cybn.cli import build_parser, main
from cybn.cli.train import config_from_args
from cybn.recipe import RunRecord, TrainConfig


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "cybn", *args], capture_output=True, text=True, cwd=TESTS_DIR)


def parsed_config(*options):
    return config_from_args(build_parser().parse_args(["train", *options]))


def test_defaults_make_the_default_config():
    assert parsed_config() == TrainConfig()


@pytest.mark.parametrize("options,field,value", [
    (["--bn", "last"], "bn", "last"), (["--init", "uniform:0.001"], "init", "uniform:0.001"),
    (["--bn-eps", "1e-30"], "bn_eps", 1e-30), (["--no-bias"], "bias", False),
    (["--dropout", "0.5"], "dropout", 0.5), (["--lr", "0.2"], "lr", 0.2), (["--momentum", "0"], "momentum", 0.0),
    (["--nesterov"], "nesterov", True), (["--weight-decay", "0"], "weight_decay", 0.0),
    (["--decay-bn-and-bias"], "decay_bn_and_bias", True), (["--schedule", "warmup:5+constant"], "schedule", "warmup:5+constant"),
    (["--epochs", "3"], "epochs", 3), (["--steps", "7"], "max_steps", 7), (["--batch-size", "17"], "batch_size", 17),
    (["--no-augment"], "augment", False), (["--seed", "4"], "seed", 4), (["--threads", "2"], "threads", 2),
    (["--train-limit", "100"], "train_limit", 100), (["--test-limit", "50"], "test_limit", 50),
    (["--nan-policy", "skip"], "nan_policy", "skip"), (["--checkpoint-every", "9"], "checkpoint_every", 9),
])
def test_each_option_sets_its_field(options, field, value):
    """Every option changes exactly its own field of the TrainConfig the run gets."""
    assert parsed_config(*options) == TrainConfig(**{field: value})


def test_help_and_version():
    r = run_cli("train", "--help")
    assert r.returncode == 0 and "--resume DIR" in r.stdout and "runs/<bn>-<init>" in r.stdout
    r = run_cli("--version")
    assert r.returncode == 0 and cybn.__version__ in r.stdout and "OpenMP" in r.stdout


@pytest.mark.parametrize("args,message", [
    (["--bn", "some"], "argument --bn: invalid choice: 'some'"),
    (["--init", "uniform:x"], "argument --init: bad init spec 'uniform:x'"),
    (["--lr", "-1"], "argument --lr: value must be a finite number >= 0, got -1.0"),
    (["--lr", "nan"], "argument --lr: value must be a finite number >= 0, got nan"),
    (["--epochs", "0"], "argument --epochs: value must be >= 1, got 0"),
    (["--seed", "-1"], "argument --seed: value must be >= 0, got -1"),
    (["--threads", "two"], "argument --threads: value must be an integer, got 'two'"),
    (["--schedule", "wobbly"], "argument --schedule: bad lr schedule 'wobbly'"),
    (["--dropout", "1"], "argument --dropout: value must be a finite number in [0, 1), got 1.0"),
    (["--bn-eps", "0"], "argument --bn-eps: value must be a finite number > 0, got 0.0"),
    (["--optimizer", "rmsprop"], "argument --optimizer: invalid choice: 'rmsprop'"),
    (["--betas", "0.9,1.0"], "argument --betas: betas[1] must be a finite number in [0, 1), got 1.0"),
    (["--betas", "0.9"], "argument --betas: betas must be a pair (beta1, beta2), got 1 values"),
    (["--betas", "0.9,x"], "argument --betas: betas must be two numbers B1,B2, got '0.9,x'"),
    (["--adam-eps=-1e-8"], "argument --adam-eps: value must be a finite number >= 0, got -1e-08"),
])
def test_bad_values_are_clear_errors(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", *args])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"cybn train: error: {message}")


@pytest.mark.parametrize("args,message", [
    (["--parts", "main,wobble"], "unknown part or configuration ['wobble']"),
    (["--configs", "a,e"], "unknown part or configuration ['e']"),
    (["--seeds", "0,x"], "argument --seeds: seeds must be integers like 0,1,2 or 0-4, got '0,x'"),
    (["--seeds", "1", "--seed", "2"], "argument --seed: not allowed with argument --seeds"),
    (["--dropout-schedule", "wobbly"], "argument --dropout-schedule: bad lr schedule 'wobbly'"),
    (["--optimizer", "sgd"], "argument --optimizer: invalid choice: 'sgd'"),
    (["--chance-tol", "-1"], "argument --chance-tol: value must be a finite number >= 0, got -1.0"),
    (["--optimizer-eps", "1e-8,-1"], "argument --optimizer-eps: optimizer_eps must be one or more numbers >= 0"),
])
def test_bad_experiment_parts_are_clear_errors(tmp_path, args, message):
    r = run_cli("experiment", "small-init", "--out", str(tmp_path), *args)
    assert r.returncode == 2
    last = r.stderr.splitlines()[-1]
    assert last.startswith("cybn experiment small-init: error: ") and message in last


def test_train_with_adamw_writes_its_settings(tmp_path, cifar_mini):
    out = tmp_path / "run"
    code = main(["train", "--data", str(cifar_mini), "--optimizer", "adamw", "--lr", "0.002", "--betas", "0.8,0.99",
                 "--adam-eps", "1e-7", "--weight-decay", "0.01", "--steps", "3", "--batch-size", "32",
                 "--train-limit", "96", "--test-limit", "64", "--quiet", "--out", str(out)])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["optimizer"], config["beta1"], config["beta2"], config["adam_eps"]) == ("adamw", 0.8, 0.99, 1e-7)
    arrays, _ = load_checkpoint(out / "checkpoint.npz")
    assert int(arrays["optim/step"]) == 3 and "optim/exp_avg_sq/0.weight" in arrays


def one_line_error(capsys):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cybn: error: "), err
    return lines[0]


def test_missing_data_says_where_it_looked(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["train", "--data", str(missing), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    line = one_line_error(capsys)
    assert f"CIFAR-10 not found at {missing}" in line and "--data PATH" in line


def test_damaged_data_is_one_line(tmp_path, cifar_mini, capsys):
    damaged = tmp_path / "cifar-10-python.tar.gz"
    damaged.write_bytes(cifar_mini.read_bytes()[:5000])
    assert main(["train", "--data", str(damaged), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert f"cannot read CIFAR-10 from {damaged}" in one_line_error(capsys)
    # a valid archive without the CIFAR-10 files
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz") as tar:
        tar.add(__file__, arcname="readme.txt")
    assert main(["train", "--data", str(empty), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "archive lacks" in one_line_error(capsys)


def test_download_failure_is_one_line(tmp_path, monkeypatch, capsys):
    def offline(url, start, timeout):
        raise urllib.error.URLError("no route to host")
    monkeypatch.setattr(sys.modules["cybn.data.download"], "_open", offline)
    monkeypatch.setenv("CYBN_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["train", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    line = one_line_error(capsys)
    assert "could not download" in line and "no route to host" in line and "--data PATH" in line


TINY = ["--bn", "all", "--batch-size", "32", "--train-limit", "64", "--test-limit", "32", "--quiet"]


@pytest.fixture
def tiny_run(tmp_path, cifar_mini):
    out = tmp_path / "run"
    assert main(["train", "--data", str(cifar_mini), *TINY, "--epochs", "1", "--out", str(out)]) == 0
    return out


def resume(out, cifar_mini, *extra):
    return main(["train", "--resume", str(out), "--data", str(cifar_mini), "--quiet", *extra])


def test_resume_refuses_a_damaged_checkpoint(tiny_run, cifar_mini, capsys):
    ck = tiny_run / "checkpoint.npz"
    ck.write_bytes(ck.read_bytes()[:1000])
    capsys.readouterr()
    assert resume(tiny_run, cifar_mini, "--epochs", "2") == 2
    assert f"checkpoint {ck} is unreadable" in one_line_error(capsys)


def test_resume_refuses_a_checkpoint_of_another_model(tiny_run, cifar_mini, capsys):
    config = json.loads((tiny_run / "config.json").read_text())
    (tiny_run / "config.json").write_text(json.dumps({**config, "bn": "none"}))
    capsys.readouterr()
    assert resume(tiny_run, cifar_mini, "--epochs", "2") == 2
    line = one_line_error(capsys)
    assert "does not fit this run" in line and "missing key(s)" in line


@pytest.mark.parametrize("text,message", [
    ("{not json", "config.json is unreadable"),
    (json.dumps({"bn": "all", "wobble": 1}), "unknown fields ['wobble']"),
    (json.dumps({"bn": "sometimes"}), "bn must be one of"),
    (json.dumps({"epochs": "ten"}), "field 'epochs' must be int, got 'ten'"),
    (json.dumps([1, 2]), "expected a JSON object"),
])
def test_resume_refuses_a_bad_config(tiny_run, cifar_mini, capsys, text, message):
    (tiny_run / "config.json").write_text(text)
    capsys.readouterr()
    assert resume(tiny_run, cifar_mini) == 2
    line = one_line_error(capsys)
    assert str(tiny_run / "config.json") in line and message in line


def test_resume_without_a_run_folder_is_an_error(tmp_path):
    r = run_cli("train", "--resume", str(tmp_path))
    assert r.returncode == 2
    assert r.stderr.strip() == f"cybn: error: {tmp_path / 'config.json'} does not exist: {tmp_path} is not a cybn run folder"


def test_resume_with_other_data_is_an_error(tiny_run, cifar_mini, capsys):
    record = json.loads((tiny_run / "run.json").read_text())
    (tiny_run / "run.json").write_text(json.dumps({**record, "mean": [0.1, 0.2, 0.3]}))
    capsys.readouterr()
    assert resume(tiny_run, cifar_mini, "--epochs", "2") == 2
    assert "differs from the one" in one_line_error(capsys)


def test_a_nan_stop_is_one_line(tmp_path, cifar_mini, capsys):
    code = main(["train", "--data", str(cifar_mini), *TINY, "--bn", "none", "--lr", "1e30", "--steps", "2",
                 "--out", str(tmp_path)])
    assert code == 1
    line = one_line_error(capsys)
    assert "training stopped: step" in line and "--nan-policy skip" in line


def test_ctrl_c_keeps_its_message(tmp_path, cifar_mini, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr("cybn.cli.train.run", interrupted)
    assert main(["train", "--data", str(cifar_mini), *TINY, "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err.strip() == "cybn: interrupted (the last checkpoint, if any, is intact)"


def test_train_end_to_end_bn_cnn7_on_mini_learns(tmp_path, cifar_mini):
    """The 7-layer CNN with BN, ~100 steps on the mini CIFAR-10: training loss well below ln 10."""
    out = tmp_path / "run"
    code = main(["train", "--data", str(cifar_mini), "--bn", "all", "--init", "he", "--lr", "0.05",
                 "--batch-size", "50", "--epochs", "1", "--train-limit", "5000", "--test-limit", "500",
                 "--quiet", "--out", str(out)])
    assert code == 0
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 1 and history[0]["step"] == 100
    assert history[0]["train_loss"] < 0.8 * math.log(10)
    assert history[0]["test_accuracy"] > 0.25
    assert (out / "metrics.csv").exists()
    assert recipe.load_config(out) == TrainConfig(bn="all", init="he", lr=0.05, batch_size=50, epochs=1,
                                                  train_limit=5000, test_limit=500)
    arrays, meta = load_checkpoint(out / "checkpoint.npz")
    assert meta["step"] == 100 and "model/0.weight" in arrays


def test_the_run_record_holds_the_normalisation(tiny_run, cifar_mini):
    record = RunRecord.read(tiny_run)
    data = recipe.CifarData(cifar_mini, 64, 32, quiet=True)
    np.testing.assert_allclose(record.mean, data.mean)
    np.testing.assert_allclose(record.std, data.std)
    assert record.input_shape == [3, 32, 32] and record.classes[0] == "airplane"
    assert json.loads((tiny_run / "run.json").read_text())["format_version"] == 1


def test_options_change_the_run(tmp_path, cifar_mini):
    out = tmp_path / "run"
    assert main(["train", "--data", str(cifar_mini), *TINY, "--steps", "1", "--nan-policy", "skip",
                 "--out", str(out)]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [1] and history[0]["partial"]


def test_resume_continues_the_run_bit_identically(tmp_path, cifar_mini):
    # A constant schedule, so "1 epoch, then extended to 2" is the same run as "2 epochs".
    common = ["--data", str(cifar_mini), "--bn", "all", "--init", "he", "--batch-size", "32",
              "--train-limit", "128", "--test-limit", "64", "--schedule", "constant", "--quiet"]
    assert main(["train", *common, "--epochs", "2", "--out", str(tmp_path / "full")]) == 0
    assert main(["train", *common, "--epochs", "1", "--out", str(tmp_path / "part")]) == 0
    assert resume(tmp_path / "part", cifar_mini, "--epochs", "2") == 0
    full, full_meta = load_checkpoint(tmp_path / "full" / "checkpoint.npz")
    part, meta = load_checkpoint(tmp_path / "part" / "checkpoint.npz")
    assert meta["epoch"] == full_meta["epoch"] == 2 and meta["step"] == full_meta["step"] == 8
    assert full.keys() == part.keys()
    for k in full:
        np.testing.assert_array_equal(part[k], full[k], err_msg=k)


def test_report_only_reads_results_and_refuses_a_newer_version(tmp_path, capsys):
    assert main(["experiment", "small-init", "--report-only", "--out", str(tmp_path)]) == 2
    assert "results.json does not exist" in one_line_error(capsys)
    (tmp_path / "results.json").write_text(json.dumps({"options": {}, "format_version": 99}))
    assert main(["experiment", "small-init", "--report-only", "--no-plots", "--out", str(tmp_path)]) == 2
    line = one_line_error(capsys)
    assert "results format version 99 is newer than this cybn" in line and f"versions 1 to {_formats.RESULTS}" in line


def run_example(script, *args):
    return subprocess.run([sys.executable, str(TESTS_DIR.parent / "examples" / script), *args],
                          capture_output=True, text=True, cwd=TESTS_DIR)


def test_example_train_cnn7_trains(tmp_path, cifar_mini):
    r = run_example("train_cnn7.py", "--data", str(cifar_mini), "--epochs", "1", "--limit", "128",
                    "--batch-size", "32", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "epoch 1: train loss" in r.stdout and "total parameters" in r.stdout
    assert json.loads((tmp_path / "history.json").read_text())[0]["step"] == 4


def test_example_small_init_writes_a_report(tmp_path, cifar_mini):
    r = run_example("small_init.py", "--data", str(cifar_mini), "--quick", "--parts", "scale",
                    "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "Scale invariance" in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["scale_invariance"]
