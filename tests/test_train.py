"""Trainer: learning, logs, exact resume from checkpoints, repeatability, the NaN guard."""
import json
import math
import re

import numpy as np
import pytest

from cybn.checkpoint import CheckpointError, load_checkpoint
from cybn.data import DataLoader
from cybn.nn import (SGD, BatchNorm2D, Conv2D, Dropout, Flatten, Linear, MaxPool2D, ReLU, Sequential,
                     SoftmaxCrossEntropy, schedule_from_spec)
from cybn.train import Callback, NonFiniteError, Trainer, evaluate


def toy_data(n=96, seed=0):
    """Images whose class is written in their mean colour, so a tiny CNN learns it fast."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    images = rng.integers(0, 100, (n, 3, 8, 8)) + 40 * labels[:, None, None, None]
    return images.astype(np.uint8), labels


def toy_model(seed=0, dropout=0.0):
    return Sequential(Conv2D(3, 6, 3, padding=1, rng=seed), BatchNorm2D(6), ReLU(), MaxPool2D(2),
                      Flatten(), Dropout(dropout, rng=seed + 2), Linear(6 * 4 * 4, 4, rng=seed + 1))


def make_trainer(out_dir=None, seed=0, checkpoint_every=None, nan_policy="stop", lr=0.05, dropout=0.0):
    model = toy_model(seed, dropout)
    opt = SGD(model, lr=lr, momentum=0.9, weight_decay=1e-4)
    return Trainer(model, SoftmaxCrossEntropy(), opt, schedule=schedule_from_spec("cosine", lr, 40),
                   progress=False, out_dir=out_dir, checkpoint_every=checkpoint_every, nan_policy=nan_policy)


def make_loader(seed=0):
    x, y = toy_data()
    return DataLoader(x, y, batch_size=10, augment=True, padding=1, seed=seed)


def weights(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_learns_and_logs(tmp_path):
    trainer = make_trainer(out_dir=tmp_path)
    loader = make_loader()
    history = trainer.fit(loader, epochs=4, eval_loader=make_loader())
    assert len(history) == 4 and trainer.step == 40
    assert history[-1]["train_loss"] < 0.7 * math.log(4)
    assert history[-1]["test_accuracy"] > 0.6
    assert all(h["images_per_s"] > 0 for h in history)
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("epoch,")
    assert json.loads((tmp_path / "history.json").read_text()) == history
    assert (tmp_path / "checkpoint.npz").exists()


def test_same_seed_same_threads_is_bit_identical():
    runs = []
    for _ in range(2):
        trainer = make_trainer()
        trainer.fit(make_loader(), epochs=2)
        runs.append(weights(trainer.model))
    assert_same_weights(*runs)


@pytest.mark.parametrize("stop_at,dropout", [(7, 0.0), (10, 0.0), (13, 0.3)])  # mid-epoch, at an epoch end
def test_resume_is_bit_identical(tmp_path, stop_at, dropout):
    full = make_trainer(dropout=dropout)
    full.fit(make_loader(), epochs=3)

    first = make_trainer(out_dir=tmp_path, checkpoint_every=1, dropout=dropout)
    first.fit(make_loader(), epochs=3, max_steps=stop_at)
    # A different init and data seed: everything must come from the checkpoint.
    resumed = make_trainer(out_dir=tmp_path, seed=99, dropout=dropout)
    resumed.fit(make_loader(seed=5), epochs=3, resume=True)
    assert resumed.step == full.step == 30
    assert_same_weights(weights(resumed.model), weights(full.model))
    assert [h["train_loss"] for h in resumed.history if not h["partial"]] == \
        pytest.approx([h["train_loss"] for h in full.history], rel=1e-12)


def test_nan_stops_with_step_and_parameter(tmp_path):
    trainer = make_trainer(out_dir=tmp_path)
    loader = make_loader()
    trainer.fit(loader, epochs=1)
    good = weights(trainer.model)
    bad = loader.images.copy()
    x, y = next(iter(DataLoader(bad, loader.labels, 10, seed=0)))
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError, match="step 10"):
        trainer.train_step(x, y)
    assert_same_weights(weights(trainer.model), good)
    # The last good checkpoint is intact and holds the good weights.
    arrays, meta = load_checkpoint(tmp_path / "checkpoint.npz")
    assert meta["step"] == 10
    assert_same_weights({k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}, good)


def test_nan_gradient_names_the_parameter_and_layer():
    trainer = make_trainer()
    x, y = next(iter(make_loader()))
    trainer.loss_fn.backward = lambda: np.full((10, 4), np.nan, np.float32)  # finite loss, NaN grads
    with pytest.raises(NonFiniteError, match=r"step 0: the gradient of parameter '0.weight' \(layer Conv2D"):
        trainer.train_step(x, y)


def test_nan_skip_policy_keeps_going():
    trainer = make_trainer(nan_policy="skip")
    x, y = next(iter(make_loader()))
    before = weights(trainer.model)
    x = x.copy()
    x[0] = np.inf
    trainer.train_step(x, y)
    assert trainer.skipped_steps == 1 and trainer.step == 1
    # Neither the parameters nor BN's running statistics keep anything of the bad batch.
    assert_same_weights(weights(trainer.model), before)


def test_callbacks_and_evaluate():
    events = []

    class Spy(Callback):
        def on_fit_start(self, trainer):
            events.append("start")

        def on_step_end(self, trainer, step, loss):
            events.append(step)
            if step == 12:
                trainer.stop_training = True

        def on_epoch_end(self, trainer, epoch, metrics):
            events.append(("epoch", epoch))

        def on_fit_end(self, trainer):
            events.append("end")

    trainer = make_trainer()
    trainer.callbacks.append(Spy())
    trainer.fit(make_loader(), epochs=5)
    assert events == ["start"] + list(range(1, 11)) + [("epoch", 0), 11, 12, ("epoch", 1), "end"]
    assert trainer.model.training
    m = evaluate(trainer.model, trainer.loss_fn, make_loader())
    assert 0 <= m["accuracy"] <= 1 and m["loss"] > 0 and trainer.model.training


def test_bad_arguments():
    with pytest.raises(ValueError, match="nan_policy"):
        make_trainer(nan_policy="ignore")
    with pytest.raises(ValueError, match="checkpoint_every"):
        make_trainer(checkpoint_every=0)


def test_progress_in_a_log_file_is_whole_lines(capsys):
    """Outside a terminal the bars print whole lines (no carriage returns), with readable rates."""
    trainer = make_trainer()
    trainer.progress = True
    trainer.fit(make_loader(), epochs=2, eval_loader=make_loader())
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    for epoch in (1, 2):
        done = [line for line in lines if line.startswith(f"epoch {epoch}: 100%")]
        assert len(done) == 1 and "10/10" in done[0] and "batch/s" in done[0] and "loss " in done[0]
    assert any(line.startswith("evaluate: 100%") for line in lines)
    assert len(lines) <= 8  # a start and an end line per bar, nothing per step
    assert not re.search(r"\d\.\d{6,}", err)  # no raw floats


def test_no_progress_when_quiet(capsys):
    make_trainer().fit(make_loader(), epochs=1, eval_loader=make_loader())
    assert capsys.readouterr().err == ""


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    make_trainer(out_dir=tmp_path).fit(make_loader(), epochs=1)
    model = Sequential(Conv2D(3, 4, 3, padding=1, rng=0), ReLU(), Flatten(), Linear(4 * 8 * 8, 4, rng=1))
    other = Trainer(model, SoftmaxCrossEntropy(), SGD(model, lr=0.1), progress=False, out_dir=tmp_path)
    with pytest.raises(CheckpointError, match=r"checkpoint .*checkpoint.npz does not fit this run .*missing key"):
        other.fit(make_loader(), epochs=2, resume=True)
