"""The ``cybn`` command line: help, clear errors, training end to end on the mini CIFAR-10, resume."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from conftest import TESTS_DIR

import cybn
from cybn.checkpoint import load_checkpoint
from cybn.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "cybn", *args], capture_output=True, text=True, cwd=TESTS_DIR)


def test_help_explains_every_option():
    r = run_cli("train", "--help")
    assert r.returncode == 0
    for option in ("--bn", "--init", "--lr", "--epochs", "--batch-size", "--threads", "--data", "--out",
                   "--resume", "--bn-eps", "--schedule", "--weight-decay", "--nan-policy"):
        assert option in r.stdout
    r = run_cli("--version")
    assert r.returncode == 0 and cybn.__version__ in r.stdout and "OpenMP" in r.stdout


@pytest.mark.parametrize("args,message", [
    (["--bn", "some"], "invalid choice"),
    (["--init", "uniform:x"], "init"),
    (["--lr", "-1"], "--lr"),
    (["--epochs", "0"], "--epochs"),
    (["--threads", "two"], "--threads"),
    (["--schedule", "wobbly"], "schedule"),
    (["--optimizer", "rmsprop"], "invalid choice"),
    (["--betas", "0.9,1.0"], "betas[1]"),
    (["--betas", "0.9"], "--betas"),
    (["--adam-eps", "-1e-8"], "--adam-eps"),
])
def test_bad_values_are_clear_errors(tmp_path, args, message, cifar_mini):
    r = run_cli("train", "--data", str(cifar_mini), "--out", str(tmp_path), *args)
    assert r.returncode == 2
    assert message in r.stderr


@pytest.mark.parametrize("args,message", [
    (["--parts", "main,wobble"], "wobble"),
    (["--configs", "a,e"], "'e'"),
    (["--seeds", "0,x"], "--seeds"),
    (["--seeds", "1", "--seed", "2"], "not allowed with"),
    (["--dropout-schedule", "wobbly"], "--dropout-schedule"),
    (["--optimizer", "sgd"], "invalid choice"),
    (["--chance-tol", "-1"], "--chance-tol"),
])
def test_bad_experiment_parts_are_clear_errors(tmp_path, args, message):
    r = run_cli("experiment", "small-init", "--out", str(tmp_path), *args)
    assert r.returncode == 2
    assert message in r.stderr


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


def test_missing_data_says_where_it_looked(tmp_path):
    missing = tmp_path / "nowhere"
    r = run_cli("train", "--data", str(missing), "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    assert str(missing) in r.stderr and "--data" in r.stderr


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
    assert (out / "metrics.csv").exists() and json.loads((out / "config.json").read_text())["bn"] == "all"
    arrays, meta = load_checkpoint(out / "checkpoint.npz")
    assert meta["step"] == 100 and "model/0.weight" in arrays


def test_resume_continues_the_run_bit_identically(tmp_path, cifar_mini):
    # A constant schedule, so "1 epoch, then extended to 2" is the same run as "2 epochs".
    common = ["--data", str(cifar_mini), "--bn", "all", "--init", "he", "--batch-size", "32",
              "--train-limit", "128", "--test-limit", "64", "--schedule", "constant", "--quiet"]
    assert main(["train", *common, "--epochs", "2", "--out", str(tmp_path / "full")]) == 0
    assert main(["train", *common, "--epochs", "1", "--out", str(tmp_path / "part")]) == 0
    assert main(["train", "--resume", str(tmp_path / "part"), "--epochs", "2", "--data", str(cifar_mini),
                 "--quiet"]) == 0
    full, full_meta = load_checkpoint(tmp_path / "full" / "checkpoint.npz")
    part, meta = load_checkpoint(tmp_path / "part" / "checkpoint.npz")
    assert meta["epoch"] == full_meta["epoch"] == 2 and meta["step"] == full_meta["step"] == 8
    assert full.keys() == part.keys()
    for k in full:
        np.testing.assert_array_equal(part[k], full[k], err_msg=k)


def test_resume_without_checkpoint_is_an_error(tmp_path):
    r = run_cli("train", "--resume", str(tmp_path))
    assert r.returncode == 2 and "checkpoint.npz" in r.stderr


@pytest.mark.parametrize("script", ["small_init.py", "train_cnn7.py"])
def test_examples_start(script):
    r = subprocess.run([sys.executable, str(TESTS_DIR.parent / "examples" / script), "--help"],
                       capture_output=True, text=True, cwd=TESTS_DIR)
    assert r.returncode == 0 and "--data" in r.stdout
