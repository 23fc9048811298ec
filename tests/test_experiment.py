"""The small-initialization experiment, quick version on the mini CIFAR-10: the qualitative
findings that must hold, checked on measured numbers."""
import math

import numpy as np
import pytest

from cybn.experiments.records import RunResult, StepsRatio, read_results
from cybn.experiments.report import write_report
from cybn.experiments.small_init import Options, SmallInitExperiment, classify, steps_to_accuracy
from cybn.recipe import CifarData

LN10 = math.log(10)


@pytest.fixture(scope="module")
def quick_results(request):
    from conftest import SHARED_DATA
    path = SHARED_DATA / "cifar-10-mini.tar.gz"
    if not path.exists():
        pytest.skip(f"{path} not found")
    data = CifarData(path, train_limit=2560, test_limit=500, quiet=True)
    options = Options.quick(parts=("main", "steps", "scale"), configs=("a", "b", "d"), epochs=2, train_limit=2560,
                            test_limit=500, batch_size=64, lr=0.01, record_every=20, evals_per_epoch=1)
    return SmallInitExperiment(data, options, log=lambda *a: None).run()


def test_no_bn_small_init_stays_at_chance(quick_results):
    a = quick_results.runs["a"]
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
    b = quick_results.runs["b"]
    # The same tiny weights, but BN restores unit scale after every layer, so nothing shrinks.
    assert all(v.std > 1e-4 for v in b.preact_at_init.values())
    assert all(v.std > 0.5 for name, v in b.preact_at_init.items() if name.endswith("+bn"))
    losses = [v for _, v in b.losses]
    assert np.mean(losses[-5:]) < 0.9 * LN10
    assert b.history[-1]["test_accuracy"] > 0.2


def test_steps_part_runs_bn_at_the_larger_rate(quick_results):
    runs, ratios = quick_results.runs, quick_results.steps_to_control_best
    assert runs["b_fast"].config["lr"] == pytest.approx(5 * runs["b"].config["lr"])
    assert set(ratios) == {"b", "b_fast"}
    best_step, best_acc, _ = max(runs["d"].test_points, key=lambda p: (p[1], -p[0]))
    for key, ratio in ratios.items():
        assert (ratio.control_steps, ratio.control_best_accuracy) == (best_step, best_acc)
        if ratio.bn_steps is not None:
            assert ratio.ratio == best_step / ratio.bn_steps


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
    report = write_report(quick_results, tmp_path, plots=False)
    text = open(report).read()
    a_scale = quick_results.runs["a"].preact_at_init["fc2"].std
    assert f"{a_scale:.2e}" in text
    assert "(b) BN everywhere" in text
    back = read_results(tmp_path / "results.json")
    assert (back.runs, back.steps_to_control_best, back.scale_invariance) == \
        (quick_results.runs, quick_results.steps_to_control_best, quick_results.scale_invariance)


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


def test_steps_part_needs_the_control():
    experiment = SmallInitExperiment(None, Options.quick(parts=("steps",)), log=lambda *a: None)
    with pytest.raises(ValueError, match="control"):
        experiment.run()
