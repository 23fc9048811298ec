"""The small-initialization experiment, quick version on the mini CIFAR-10: the qualitative
findings that must hold, checked on measured numbers."""
import dataclasses
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from cybn.cli import main
from cybn.experiments.claims import claims_table
from cybn.experiments.probes import ChanceStop
from cybn.experiments.records import RunResult, StepsRatio, read_results
from cybn.experiments.report import write_report
from cybn.experiments.seeds import band, fmt, parse_seeds, summary, tally
from cybn.experiments.small_init import (Options, SmallInitExperiment, classify, steps_to_accuracy,
                                         validation_split)
from cybn.recipe import CifarData

LN10 = math.log(10)


@pytest.fixture(scope="module")
def quick_results(request):
    from conftest import SHARED_DATA
    path = SHARED_DATA / "cifar-10-mini.tar.gz"
    if not path.exists():
        pytest.skip(f"{path} not found")
    data = CifarData(path, train_limit=2560, test_limit=500, quiet=True)
    options = Options.quick(parts=("main", "scale"), configs=("a", "b"), seeds=(0, 1), epochs=2, train_limit=2560,
                            test_limit=500, batch_size=64, lr=0.01, record_every=20, evals_per_epoch=1)
    return SmallInitExperiment(data, options, log=lambda *a: None).run()


@pytest.fixture(scope="module")
def mini_data():
    from conftest import SHARED_DATA
    path = SHARED_DATA / "cifar-10-mini.tar.gz"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return CifarData(path, train_limit=1024, test_limit=300, quiet=True)


def tiny(**kw):
    return Options.quick(**{"train_limit": 512, "test_limit": 300, "batch_size": 64, "record_every": 10, **kw})


def test_every_configuration_runs_once_per_seed(quick_results):
    for key in ("a", "b"):
        assert [r.seed for r in quick_results.runs[key].seeds] == [0, 1]
        assert [r.config["seed"] for r in quick_results.runs[key].seeds] == [0, 1]
    a0, a1 = (r.preact_at_init["conv1"].std for r in quick_results.runs["a"].seeds)
    assert a0 != a1  # different weights


def test_chance_runs_stop_early_and_the_report_says_so(quick_results, tmp_path):
    # (a) sits at chance for its whole first epoch: stopped there; (b) trains on.
    assert all(r.stopped_at_chance_epoch == 1 and len(r.history) == 1 for r in quick_results.runs["a"].seeds)
    assert all(r.stopped_at_chance_epoch is None and len(r.history) == 2 for r in quick_results.runs["b"].seeds)
    text = open(write_report(quick_results, tmp_path, plots=False)).read()
    assert "2/2 seeds, after epoch 1" in text and "were stopped there" in text


def test_chance_stop_rule():
    trainer = SimpleNamespace(stop_training=False)
    stop = ChanceStop(tol=1e-3)
    for loss in (LN10 + 4e-3, LN10 - 4e-3, LN10 + 5e-4):  # batches wobble, the epoch mean is at chance
        stop.on_step_end(trainer, 0, loss)
    stop.on_epoch_end(trainer, 0, {"partial": True, "train_loss": LN10})
    assert not trainer.stop_training  # a partial epoch never decides
    stop.on_epoch_end(trainer, 0, {"partial": False, "train_loss": LN10 + 2e-4})
    assert trainer.stop_training and stop.stopped_epoch == 1
    for losses, mean in (([LN10 - 0.2, LN10 + 0.2], LN10), ([LN10, float("nan")], LN10), ([LN10] * 3, LN10 - 2e-3)):
        trainer, stop = SimpleNamespace(stop_training=False), ChanceStop(tol=1e-3)
        for loss in losses:
            stop.on_step_end(trainer, 0, loss)
        stop.on_epoch_end(trainer, 0, {"partial": False, "train_loss": mean})
        assert not trainer.stop_training, losses


def test_no_bn_small_init_stays_at_chance(quick_results):
    a = quick_results.runs["a"].seeds[0]
    scales = a.preact_at_init
    # The pre-activations shrink layer after layer, to far below 1e-8 at the last layer.
    stds = [scales[f"conv{i}"].std for i in range(1, 6)] + [scales["fc1"].std, scales["fc2"].std]
    assert all(later < earlier for earlier, later in zip(stds, stds[1:]))
    assert scales["fc2"].std < 1e-8
    # Only the last layer's bias can learn (the class prior of each batch): the loss stays at ln 10.
    losses = [v for _, v in a.losses]
    assert abs(np.mean(losses[-5:]) - LN10) < 0.02 and max(losses) < LN10 + 0.05
    assert a.outcome == "chance"
    assert max(h["test_accuracy"] for h in a.history) < 0.15


def test_bn_everywhere_small_init_learns(quick_results):
    b = quick_results.runs["b"].seeds[0]
    # The same tiny weights, but BN restores unit scale after every layer, so nothing shrinks.
    assert all(v.std > 1e-4 for v in b.preact_at_init.values())
    assert all(v.std > 0.5 for name, v in b.preact_at_init.items() if name.endswith("+bn"))
    losses = [v for _, v in b.losses]
    assert np.mean(losses[-5:]) < 0.9 * LN10
    assert b.history[-1]["test_accuracy"] > 0.2


def test_validation_split_holds_out_the_last_training_images(mini_data):
    split = validation_split(mini_data, 200)
    raw = mini_data.raw
    assert len(split.raw.train_labels) == 824
    np.testing.assert_array_equal(split.raw.test_images, raw.train_images[-200:])
    np.testing.assert_array_equal(split.raw.train_images, raw.train_images[:-200])
    assert not np.array_equal(split.mean, mini_data.mean)  # normalised with the remaining images only
    assert mini_data.raw is raw and len(raw.train_labels) == 1024  # the original is untouched
    with pytest.raises(ValueError, match="val_size"):
        validation_split(mini_data, 1024)


def test_steps_part_counts_on_the_validation_split(mini_data):
    options = tiny(parts=("steps",), epochs=1, val_size=128, steps_eval_every=2, steps_multipliers=(1, 5),
                   steps_inits=("he",))
    results = SmallInitExperiment(mini_data, options, log=lambda *a: None).run()
    runs, rows = results.runs, results.steps.rows
    assert set(runs) == {"steps_control", "steps_bn_he_x1", "steps_bn_he_x5"}
    assert runs["steps_bn_he_x5"].seeds[0].config["lr"] == pytest.approx(5 * options.lr)
    control = runs["steps_control"].seeds[0]
    assert [p[0] for p in control.test_points] == [2, 4, 6, 8]  # train_limit 512 of the 896 left: 8 steps
    assert control.history and "test_accuracy" not in control.history[0]  # the test set is not used
    best_step, best_acc, _ = max(control.test_points, key=lambda p: (p[1], -p[0]))
    for row in rows:
        assert (row.control_steps, row.control_best_accuracy) == (best_step, best_acc)
        if row.bn_steps is not None:
            assert row.ratio == best_step / row.bn_steps
    assert [r.multiplier for r in rows] == [1, 5]
    # the claim's command reruns this length whatever the defaults are
    (claim,) = [row for row in claims_table(results) if "fewer steps" in row[0]]
    assert "--parts steps --seeds 0 --steps-epochs 1" in claim[4]


def test_dropout_part_overfits_and_reports_the_gap(mini_data, tmp_path):
    options = tiny(parts=("dropout",), dropout_epochs=3, train_limit=320, train_eval_size=320, test_limit=200, lr=0.02)
    results = SmallInitExperiment(mini_data, options, log=lambda *a: None).run()
    runs = results.runs
    assert set(runs) == {"dropout_none_0", "dropout_none_0.5", "dropout_all_0", "dropout_all_0.5"}
    for entry in runs.values():
        rec = entry.seeds[0]
        assert rec.config["augment"] is False and rec.config["schedule"] == "constant"
        assert rec.config["weight_decay"] == 0 and rec.config["init"] == "he"
        assert len(rec.test_points) == 3  # training accuracy (eval mode) at each epoch's end
    assert runs["dropout_all_0.5"].seeds[0].config["dropout"] == 0.5
    # 320 images, no augmentation: BN without Dropout fits the training images far better than the test set.
    bn = runs["dropout_all_0"].seeds[0]
    assert bn.test_points[-1][1] > bn.history[-1]["test_accuracy"] + 0.1
    text = open(write_report(results, tmp_path, plots=False)).read()
    assert "BN reduces the need for Dropout" in text and "train–test gap" in text


def test_optimizer_part_adam_eps_decides_whether_small_weights_move(mini_data):
    """(a) at U(±0.001): gradients ~1e-15 on this set. At Adam's eps 1e-8 the step is ~lr * g / eps,
    so the weights barely move; at eps 1e-30, sqrt(v) sets the step and the weights move by ~lr,
    except where (1 - beta2) * g * g underflows float32 (the deep layers' tiniest gradients): there v = 0 and
    the step is lr * g / eps, far above lr."""
    options = tiny(parts=("optimizer",), configs=("a", "b"), epochs=1, train_limit=320, probe_steps=4)
    results = SmallInitExperiment(mini_data, options, log=lambda *a: None).run()
    runs = results.runs
    assert set(runs) == {"adam_1e-08_a", "adam_1e-08_b", "adam_1e-30_a", "adam_1e-30_b"}
    for key, entry in runs.items():
        rec = entry.seeds[0]
        assert rec.config["optimizer"] == "adam" and rec.config["lr"] == 1e-3
        assert [g["step"] for g in rec.gradients] == [1, 2, 3, 4]
    first = {k: runs[k].seeds[0].gradients[0]["layers"] for k in runs}
    assert all(v["grad_rms"] < 1e-10 for v in first["adam_1e-08_a"].values())
    assert all(v["grad_rms"] > 1e-4 for v in first["adam_1e-08_b"].values())
    for name in ("conv3", "fc1"):
        small = first["adam_1e-08_a"][name]
        assert small["update_rms"] < 1e-3 * small["weight_rms"] and small["eps_dominated"] == 1.0
    tiny_eps = first["adam_1e-30_a"]
    for name, layer in tiny_eps.items():
        if layer["v_underflow"] == 0:  # sqrt(v) sets the step: every weight moves by ~lr
            assert 0.5e-3 < layer["update_rms"] < 1.01e-3, name
        else:  # the few weights with v = 0 jump by lr * g / eps, ~1e4
            assert layer["update_rms"] > 1.0, name
    assert tiny_eps["conv1"]["v_underflow"] == 0  # the largest gradients
    assert tiny_eps["fc1"]["v_underflow"] > 0  # the smallest
    commands = {row[4] for row in claims_table(results) if "optimizer" in row[0]}
    assert commands == {"`cybn experiment small-init --parts main,optimizer --seeds 0 --epochs 1 "
                        "--optimizer-epochs 1`"}


def test_bn_last_trains_with_tiny_eps_only_without_biases(cifar_mini):
    """(c)'s mechanism: with epsilon below the last layer's variance, BN's backward gain (~1e15)
    reaches the biases below it unnormalised, and one step swamps the 1e-11 signal; without biases,
    at a rate scaled to the tiny weights, the same network trains."""
    data = CifarData(cifar_mini, train_limit=2560, test_limit=100, quiet=True)
    options = Options.quick(parts=("eps",), eps_values=(1e-5, 1e-30), eps_lrs=(2e-6,), eps_steps=40,
                            sweep_train_limit=2560)
    rows = SmallInitExperiment(data, options, log=lambda *a: None).run().eps_sweep
    outcome = {(r.bias, r.eps): r for r in rows}
    assert all(r.last_layer_var_at_init < 1e-26 for r in rows)
    assert outcome[False, 1e-30].outcome == "trains"
    assert outcome[True, 1e-30].outcome in ("diverged", "above chance")
    for bias in (True, False):  # epsilon >> variance: x-hat ~ 1e-12, the logits are just beta
        assert outcome[bias, 1e-5].outcome == "chance"


def test_scale_invariance_identity(quick_results):
    for row in quick_results.scale_invariance:
        if row.init == "he" and row.k > 1:  # variance >> eps: invariant up to eps/var ~ 1e-5
            assert row.output_rel_change < 1e-4
            assert row.grad_ratio == pytest.approx(1 / row.k, rel=1e-3)


def test_report_tables_carry_the_numbers(quick_results, tmp_path):
    text = open(write_report(quick_results, tmp_path, plots=False)).read()
    scales = [r.preact_at_init["fc2"].std for r in quick_results.runs["a"].seeds]
    assert f"{np.mean(scales):.2e} ± {np.std(scales, ddof=1):.2e} ({min(scales):.2e}–{max(scales):.2e})" in text
    assert "(b) BN everywhere" in text
    claims = {row[0]: row for row in claims_table(quick_results)}
    a = claims["(a) no BN with U(±0.001) does not train"]
    assert a[2] == "reproduced" and "--parts main --seeds 0,1 --configs a --epochs 2" in a[4]
    assert text.index("## Claims") < text.index("## Configurations")


def test_results_round_trip_through_report_only(quick_results, tmp_path):
    first = open(write_report(quick_results, tmp_path, plots=False)).read()
    assert main(["experiment", "small-init", "--report-only", "--no-plots", "--out", str(tmp_path)]) == 0
    assert open(tmp_path / "report.md").read() == first
    back = read_results(tmp_path / "results.json")
    assert (back.runs, back.scale_invariance) == (quick_results.runs, quick_results.scale_invariance)
    options = json.loads((tmp_path / "results.json").read_text())["options"]
    assert Options.from_json(options) == Options(**quick_results.options)


def test_seed_figures():
    assert parse_seeds("0,1,2") == (0, 1, 2) and parse_seeds("3-5,1,3") == (3, 4, 5, 1)
    for bad in ("", "a", "-1", "2-x"):
        with pytest.raises(ValueError, match="seeds"):
            parse_seeds(bad)
    s = summary([0.5, 0.7, None, float("nan"), 0.6])
    assert s == pytest.approx({"mean": 0.6, "std": 0.1, "min": 0.5, "max": 0.7, "n": 3})
    assert summary([None]) is None and fmt([None]) == "—"
    assert fmt([0.5, 0.7], ".2f", 100, " %") == "60.00 % ± 14.14 (50.00 %–70.00 %)"
    assert fmt([3, 3]) == "3"
    assert tally(["trains"] * 3) == "trains" and tally(["chance", "trains", "chance"]) == "chance ×2, trains ×1"
    xs, mean, lo, hi = band([([1, 2, 3], [1.0, 2.0, 3.0]), ([1, 2], [3.0, 4.0])])
    assert xs == [1, 2, 3]
    np.testing.assert_array_equal(mean, [2.0, 3.0, 3.0])
    np.testing.assert_array_equal(lo, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(hi, [3.0, 4.0, 3.0])


@pytest.mark.parametrize("losses,outcome", [
    ([2.3026] * 20, "chance"), ([2.3, 2.0, 1.5, 1.2, 1.1], "trains"), ([2.3, float("nan")], "diverged"),
    ([2.3, 9.0, 12.0, 15.0, 20.0], "diverged"), ([], "diverged"), ([2.3, 2.6, 2.55, 2.6, 2.5], "above chance"),
    ([2.3, 2.2, 2.15, 2.1, 2.1], "barely")])
def test_classify(losses, outcome):
    assert classify(losses) == outcome


def _run_with_test_points(points):
    return RunResult(label="", config={}, test_points=[(step, acc, 0.0) for step, acc in points])


def test_steps_to_accuracy_counts_the_first_evaluation_at_the_controls_best():
    control = _run_with_test_points([(100, 0.30), (200, 0.50), (300, 0.50), (400, 0.45)])
    bn = _run_with_test_points([(100, 0.40), (200, 0.55), (300, 0.60)])
    # The control's best is its earliest evaluation at the top accuracy: step 200, not 300.
    assert steps_to_accuracy(bn, control) == StepsRatio(control_best_accuracy=0.50, control_steps=200,
                                                        bn_steps=200, ratio=1.0)
    slow = _run_with_test_points([(100, 0.20), (200, 0.49)])
    assert steps_to_accuracy(slow, control).ratio is None
    assert steps_to_accuracy(bn, _run_with_test_points([])) is None


def test_default_runs_three_seeds_and_quick_one():
    # the default fits the hour with three seeds (measured); --quick stays a one-seed smoke run
    assert Options().seeds == (0, 1, 2)
    assert Options.quick().seeds == (0,)
    assert Options.quick(seeds=(4,)).seeds == (4,)


def test_the_c_claim_says_when_the_eps_sweep_was_not_run(quick_results):
    results = dataclasses.replace(quick_results, runs=dict(quick_results.runs, c=quick_results.runs["a"]),
                                  eps_sweep=[])
    c = {row[0]: row for row in claims_table(results)}["(c) BN on the last layer alone trains from U(±0.001)"]
    assert c[2] == "not reproduced at BN ε=1e-05 (the ε sweep was not run: --parts eps)"
