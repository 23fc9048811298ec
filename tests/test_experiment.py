"""The small-initialization experiment, quick version on the mini CIFAR-10: the qualitative
findings that must hold, checked on measured numbers."""
import math

import numpy as np
import pytest

from cybn.experiments.recipe import CifarData
from cybn.experiments.report import write_report
from cybn.experiments.small_init import Options, SmallInitExperiment, classify

LN10 = math.log(10)


@pytest.fixture(scope="module")
def quick_results(request):
    from conftest import SHARED_DATA
    path = SHARED_DATA / "cifar-10-mini.tar.gz"
    if not path.exists():
        pytest.skip(f"{path} not found")
    data = CifarData(path, train_limit=2560, test_limit=500, quiet=True)
    options = Options.quick(parts=("main", "scale"), configs=("a", "b"), epochs=2, train_limit=2560,
                            test_limit=500, batch_size=64, lr=0.01, record_every=20, evals_per_epoch=1)
    return SmallInitExperiment(data, options, log=lambda *a: None).run()


def test_no_bn_small_init_stays_at_chance(quick_results):
    a = quick_results["runs"]["a"]
    scales = a["preact_at_init"]
    # The pre-activations shrink layer after layer, to far below 1e-8 at the last layer.
    stds = [scales[f"conv{i}"]["std"] for i in range(1, 6)] + [scales["fc1"]["std"], scales["fc2"]["std"]]
    assert all(later < earlier for earlier, later in zip(stds, stds[1:]))
    assert scales["fc2"]["std"] < 1e-8
    # Only the last layer's bias can learn (the class prior of each batch): the loss stays at ln 10.
    losses = [v for _, v in a["losses"]]
    assert abs(np.mean(losses[-5:]) - LN10) < 0.02 and max(losses) < LN10 + 0.05
    assert a["outcome"] == "chance"
    assert max(h["test_accuracy"] for h in a["history"]) < 0.15


def test_bn_everywhere_small_init_learns(quick_results):
    b = quick_results["runs"]["b"]
    # The same tiny weights, but BN restores unit scale after every layer, so nothing shrinks.
    assert all(v["std"] > 1e-4 for v in b["preact_at_init"].values())
    assert all(v["std"] > 0.5 for name, v in b["preact_at_init"].items() if name.endswith("+bn"))
    losses = [v for _, v in b["losses"]]
    assert np.mean(losses[-5:]) < 0.9 * LN10
    assert b["history"][-1]["test_accuracy"] > 0.2


def test_scale_invariance_identity(quick_results):
    for row in quick_results["scale_invariance"]:
        if row["init"] == "he" and row["k"] > 1:  # variance >> eps: invariant up to eps/var ~ 1e-5
            assert row["output_rel_change"] < 1e-4
            assert row["grad_ratio"] == pytest.approx(1 / row["k"], rel=1e-3)


def test_report_tables_carry_the_numbers(quick_results, tmp_path):
    report = write_report(quick_results, tmp_path, plots=False)
    text = open(report).read()
    a_scale = quick_results["runs"]["a"]["preact_at_init"]["fc2"]["std"]
    assert f"{a_scale:.2e}" in text
    assert "(b) BN everywhere" in text


@pytest.mark.parametrize("losses,outcome", [
    ([2.3026] * 20, "chance"), ([2.3, 2.0, 1.5, 1.2, 1.1], "trains"), ([2.3, float("nan")], "diverged"),
    ([2.3, 9.0, 12.0, 15.0, 20.0], "diverged"), ([], "diverged")])
def test_classify(losses, outcome):
    assert classify(losses) == outcome
