"""The small-initialization experiment, and the BN paper's other claims at small scale.

Claim under test: the 7-layer CNN (``cnn7``) with ``W ~ U(-0.001, 0.001)`` does not train without
BN (its pre-activations shrink layer after layer), trains with BN after every layer, and trains
with BN on the last layer only. Parts (each can be run alone; every configuration of every part
runs once per seed of ``Options.seeds``, with that seed's weights, data order and augmentation):

- ``main``: configurations (a) no BN, (b) BN everywhere, (c) BN last only — all U(±0.001) — and
  (d) the control, no BN with He init. Records per-layer pre-activation scale, loss, accuracy, time.
- ``steps``: steps to accuracy on a validation split (the last ``val_size`` training images; the
  test set chooses nothing), evaluated every ``steps_eval_every`` steps: the control (d) and BN
  everywhere at ×1, ×5, ×30 its learning rate (the paper's BN-Baseline, BN-x5, BN-x30), with He
  init and with U(±0.001); the ratio is the control's steps to its best validation accuracy over
  the BN run's steps to the same accuracy.
- ``eps``: BN's epsilon against the tiny last-layer variance, for (c), at several learning rates,
  with and without the biases of the layers below.
- ``lr``: the largest learning rate BN-everywhere and the no-BN control still train at.
- ``dropout``: where a model overfits (no augmentation, ``dropout_schedule``, no weight decay,
  ``dropout_epochs``): {no BN, BN} × {no Dropout, Dropout(``dropout``)}, He init; best and final
  test accuracy, the training accuracy (eval mode, on ``train_eval_size`` training images) and the
  train–test gap.
- ``optimizer``: (a)–(d) under Adam (``optimizer``) at each eps of ``optimizer_eps`` (Adam's default
  1e-8 and one far below the ~1e-20 gradients of the deep layers at U(±0.001)), with the per-layer
  gradient, weight and update magnitudes over the first ``probe_steps`` steps.
- ``scale``: BN's invariance to the scale of the preceding layer's weights (exact check, one seed).
Full-length runs that sit at chance for a whole epoch (mean training loss within ``chance_tol`` of
ln 10, no batch further than 0.05 from it) stop there (``chance_tol=0`` never stops); the report
names them. The default parts (``main``, ``eps``, ``scale``) are the small-init claim itself and fit
in under an hour on two cores; ``--parts all`` adds the paper's other claims.
"""
import copy
import dataclasses
import itertools
import math
import time

import numpy as np

from ..data import channel_stats
from ..nn import BatchNorm2D, Conv2D, SoftmaxCrossEntropy, cnn7
from ..train import Callback, NonFiniteError, evaluate
from ..recipe import TrainConfig, run
from .probes import ChanceStop, GradientRecorder, PeriodicEval, PreactivationRecorder
from .records import (EpsRow, LrRow, LrSweep, Results, RunGroup, RunResult, ScaleRow, StepsPart, StepsRatio,
                      StepsRow, last_preactivation)

CHANCE_LOSS = math.log(10.0)

CONFIGS = {
    "a": {"label": "(a) no BN, U(±0.001)", "bn": "none", "init": "uniform:0.001"},
    "b": {"label": "(b) BN everywhere, U(±0.001)", "bn": "all", "init": "uniform:0.001"},
    "c": {"label": "(c) BN on last layer only, U(±0.001)", "bn": "last", "init": "uniform:0.001"},
    "d": {"label": "(d) control: no BN, He init", "bn": "none", "init": "he"},
}
PARTS = ("main", "steps", "eps", "lr", "dropout", "optimizer", "scale")
DEFAULT_PARTS = ("main", "eps", "scale")
INIT_LABELS = {"he": "He", "uniform:0.001": "U(±0.001)"}


@dataclasses.dataclass
class Options:
    """What the experiment runs; ``quick()`` shrinks it to a subset for tests and smoke runs."""
    # the longest that fits the hour: 4 configurations x 8 epochs + eps + scale took 52.1 min for
    # the three default seeds on 2 cores (2026-12-01; (a) and (c) stop at chance after their
    # first epoch); by its per-epoch times 9 epochs would take ~57 min and 10 ~61 min
    epochs: int = 8
    lr: float = 0.02  # the no-BN He control stays at chance at 0.05 (measured on the mini set)
    batch_size: int = 128
    weight_decay: float = 5e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    seeds: tuple = (0, 1, 2)
    threads: int = None
    train_limit: int = None
    test_limit: int = None
    parts: tuple = DEFAULT_PARTS
    configs: tuple = tuple(CONFIGS)
    record_every: int = 100
    loss_every: int = 10
    evals_per_epoch: int = 2
    chance_tol: float = 1e-3
    sweep_steps: int = 150
    sweep_train_limit: int = 10000
    eps_steps: int = 100
    eps_values: tuple = (1e-5, 1e-10, 1e-15, 1e-20, 1e-30, 1e-36)  # last-layer variance at init ~3e-30
    # 2e-6: the shared rate scaled down to the tiny weights, whose relative gradient |dW|/|W| is
    # ~1e4 when BN's epsilon is negligible (BN makes the gradient scale as 1/|W|)
    eps_lrs: tuple = (0.02, 2e-6)
    eps_biases: tuple = (True, False)
    lr_base: float = 0.01
    lr_multipliers: tuple = (1, 3, 10, 30)
    val_size: int = 5000
    steps_eval_every: int = 100
    steps_multipliers: tuple = (1, 5, 30)  # the paper's BN-Baseline, BN-x5, BN-x30
    steps_inits: tuple = ("he", "uniform:0.001")
    steps_epochs: int = None  # None: ``epochs``
    dropout: float = 0.5
    dropout_epochs: int = 20
    dropout_schedule: str = "constant"
    dropout_weight_decay: float = 0.0
    train_eval_size: int = 5000
    optimizer: str = "adam"
    optimizer_lr: float = 1e-3
    optimizer_eps: tuple = (1e-8, 1e-30)
    optimizer_epochs: int = None  # None: ``epochs``
    # L2 decay would swamp the gradients: Adam normalises g + wd * w, and wd * w ~ 3e-7 at U(±0.001)
    # is far above the 1e-15..1e-20 gradients, so every step would be ±lr from the decay alone.
    optimizer_weight_decay: float = 0.0
    probe_steps: int = 30
    scale_factors: tuple = (0.01, 0.1, 10.0, 100.0)

    @classmethod
    def quick(cls, **overrides):
        base = dict(epochs=2, seeds=(0,), train_limit=5000, test_limit=1000, record_every=20, loss_every=5,
                    sweep_steps=60, sweep_train_limit=5000, eps_steps=40, eps_values=(1e-5, 1e-20, 1e-30),
                    lr_multipliers=(1, 10, 100), val_size=1000, steps_eval_every=10, dropout_epochs=4,
                    train_eval_size=1000, probe_steps=10)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def from_json(cls, record):
        """Options from results.json's (lists back to tuples; fields unknown to this version dropped)."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(names[k].default, tuple) and v is not None else v
                      for k, v in record.items() if k in names})


def classify(losses):
    """Outcome of a run from its loss trace: diverged (NaN/Inf or above chance by far), chance
    (stays within 2% of ln 10), above chance (confident but wrong: large random logits), trains
    (ends clearly below chance) or barely (in between)."""
    if not losses or not all(math.isfinite(v) for v in losses):
        return "diverged"
    tail = float(np.mean(losses[-max(1, len(losses) // 5):]))
    if tail > 1.5 * CHANCE_LOSS:
        return "diverged"
    if abs(tail - CHANCE_LOSS) < 0.02 * CHANCE_LOSS:
        return "chance"
    if tail > CHANCE_LOSS:
        return "above chance"
    return "trains" if tail < 0.9 * CHANCE_LOSS else "barely"


class LossTrace(Callback):
    """Every step's loss (sweeps are short)."""

    def __init__(self):
        self.losses = []

    def on_step_end(self, trainer, step, loss):
        self.losses.append(float(loss))


def validation_split(data, size):
    """A copy of ``data`` whose training set lacks its last ``size`` images and whose test loader
    yields them instead, normalised with the remaining images' statistics: so choosing (the best
    step, the accuracy to reach) never looks at the test set."""
    raw = data.raw
    n = len(raw.train_labels)
    if not 0 < size < n:
        raise ValueError(f"val_size must be between 1 and {n - 1} (the training images), got {size}")
    split = copy.copy(data)
    split.raw = dataclasses.replace(raw, train_images=raw.train_images[:n - size],
                                    train_labels=raw.train_labels[:n - size],
                                    test_images=raw.train_images[n - size:], test_labels=raw.train_labels[n - size:])
    split.mean, split.std = channel_stats(split.raw.train_images)
    return split


class SmallInitExperiment:
    def __init__(self, data, options, log=print, progress=False, on_update=None):
        self.data = data
        self.o = options
        self.log = log
        self.progress = progress
        # Called with the results so far after every finished run, so a long experiment that is
        # interrupted still leaves its finished figures on disk.
        self.on_update = on_update or (lambda results: None)
        self.results = Results(options=dataclasses.asdict(options))

    # ------------------------------------------------------------------ helpers
    def _config(self, **kw):
        o = self.o
        base = dict(lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, schedule=o.schedule,
                    epochs=o.epochs, batch_size=o.batch_size, seed=o.seeds[0], threads=o.threads,
                    train_limit=o.train_limit, test_limit=o.test_limit)
        base.update(kw)
        return TrainConfig(**base)

    def _train(self, config, callbacks=(), eval_loader=True, data=None):
        """Run one configuration; a NaN/Inf stops it and is reported, not raised."""
        start = time.perf_counter()
        error = None
        trainer = None
        try:
            trainer = run(config, data or self.data, callbacks=callbacks, progress=self.progress,
                          eval_loader=eval_loader)
        except NonFiniteError as e:
            error = str(e)
        return trainer, error, time.perf_counter() - start

    def _steps_per_epoch(self):
        o = self.o
        n = len(self.data.raw.train_labels)
        return math.ceil(min(n, o.train_limit or n) / o.batch_size)

    def _full_run(self, label, config, eval_every=None, callbacks=(), data=None, eval_loader=True,
                  periodic_loader=None):
        """Train one full-length configuration, recording pre-activations, losses and (every
        ``eval_every`` steps, if given) the accuracy on ``periodic_loader`` (default: the test
        set); returns its RunResult."""
        o = self.o
        recorder = PreactivationRecorder(every=o.record_every, loss_every=o.loss_every)
        callbacks = [recorder, *callbacks]
        periodic = None
        if eval_every is not None:
            periodic = PeriodicEval(periodic_loader or self.data.test_loader(limit=o.test_limit), eval_every)
            callbacks.append(periodic)
        stop = ChanceStop(o.chance_tol) if o.chance_tol > 0 else None
        if stop:
            callbacks.append(stop)
        trainer, error, seconds = self._train(config, callbacks, eval_loader, data)
        history = trainer.history if trainer else []
        return RunResult(
            label=label, seed=config.seed, config=config.to_json(), error=error,
            history=history, losses=recorder.losses, preactivations=recorder.records,
            preact_at_init=recorder.at_init, test_points=periodic.points if periodic else [],
            seconds=seconds, eval_seconds=periodic.seconds if periodic else 0.0,
            images_per_s=float(np.mean([h["images_per_s"] for h in history])) if history else None,
            outcome=classify([v for _, v in recorder.losses]),
            stopped_at_chance_epoch=stop.stopped_epoch if stop else None)

    def _add_run(self, key, part, label, record, **varied):
        """File one seed's RunResult under ``key`` (all seeds of a configuration share its RunGroup)."""
        group = self.results.runs.setdefault(key, RunGroup(label=label, part=part, **varied))
        group.seeds.append(record)
        stopped = record.stopped_at_chance_epoch
        last_point = f", last periodic acc {record.test_points[-1][1]:.4f}" if record.test_points else ""
        self.log(f"[{part}] {label}, seed {record.seed}: {record.outcome}, train loss "
                 f"{record.final('train_loss')}, test acc {record.final('test_accuracy')}{last_point}, "
                 f"{record.seconds:.0f} s" + (f" (stopped at chance after epoch {stopped})" if stopped else ""))
        self.on_update(self.results)

    # ------------------------------------------------------------------ parts
    def run_main(self):
        o = self.o
        eval_every = max(1, self._steps_per_epoch() // max(1, o.evals_per_epoch))
        for seed, key in itertools.product(o.seeds, o.configs):
            spec = CONFIGS[key]
            self.log(f"[main] {spec['label']}, seed {seed}: {o.epochs} epochs, lr {o.lr}")
            config = self._config(bn=spec["bn"], init=spec["init"], seed=seed)
            self._add_run(key, "main", spec["label"], self._full_run(spec["label"], config, eval_every))

    def run_steps(self):
        """Steps to the control's best validation accuracy, for BN at ×1, ×5, ×30 its rate."""
        o = self.o
        split = validation_split(self.data, o.val_size)
        val = split.test_loader()
        epochs = o.steps_epochs or o.epochs
        runs = [("steps_control", CONFIGS["d"]["label"], "none", "he", 1)]
        runs += [(f"steps_bn_{init}_x{m:g}", f"BN everywhere, {INIT_LABELS.get(init, init)}, lr ×{m:g}", "all", init, m)
                 for init in o.steps_inits for m in o.steps_multipliers]
        if self.results.steps is None:
            self.results.steps = StepsPart(o.val_size, o.steps_eval_every)
        rows = self.results.steps.rows
        for seed in o.seeds:
            for key, label, bn, init, mult in runs:
                self.log(f"[steps] {label}, seed {seed}: {epochs} epochs, lr {o.lr * mult:g}")
                config = self._config(bn=bn, init=init, lr=o.lr * mult, seed=seed, epochs=epochs)
                record = self._full_run(label, config, o.steps_eval_every, data=split, eval_loader=False,
                                        periodic_loader=val)
                self._add_run(key, "steps", label, record, init=init, multiplier=mult)
            control = self.results.runs["steps_control"].seeds[-1]
            for key, label, bn, init, mult in runs[1:]:
                ratio = steps_to_accuracy(self.results.runs[key].seeds[-1], control)
                rows.append(StepsRow(seed, key, init, mult, **(dataclasses.asdict(ratio) if ratio else {})))
                self.log(f"[steps] {label}, seed {seed}: {ratio}")

    def run_eps_sweep(self):
        """(c) with BN's epsilon from far above to far below the last layer's batch variance, at
        each learning rate, with the layers' biases and without them."""
        o = self.o
        rows = self.results.eps_sweep
        for seed, bias, lr, eps in itertools.product(o.seeds, o.eps_biases, o.eps_lrs, o.eps_values):
            config = self._config(bn="last", init="uniform:0.001", bn_eps=eps, lr=lr, bias=bias,
                                  schedule="constant", epochs=10**6, max_steps=o.eps_steps,
                                  train_limit=o.sweep_train_limit, seed=seed)
            trace = LossTrace()
            recorder = PreactivationRecorder(every=10**9, loss_every=1)
            trainer, error, seconds = self._train(config, callbacks=(trace, recorder), eval_loader=False)
            _, last = last_preactivation(recorder.at_init)
            var = last.channel_var if last else float("nan")
            losses = trace.losses
            row = EpsRow(seed=seed, bias=bias, lr=lr, eps=eps, last_layer_var_at_init=var,
                         bn_gain_at_init=1.0 / math.sqrt(var + eps),
                         xhat_scale_at_init=math.sqrt(var / (var + eps)),
                         final_loss=float(np.mean(losses[-10:])) if losses else None,
                         outcome="diverged" if error else classify(losses),
                         error=error, steps=len(losses), seconds=seconds)
            rows.append(row)
            self.log(f"[eps] seed {seed}, {'biases' if bias else 'no biases'}, lr {lr:g}, eps {eps:.0e}: "
                     f"{row.outcome} (final loss {row.final_loss})")
        return rows

    def run_lr_sweep(self):
        """BN everywhere vs the no-BN control, both He-initialised, at growing learning rates."""
        o = self.o
        rows = []
        test = self.data.test_loader(limit=o.test_limit)
        for seed, bn, mult in itertools.product(o.seeds, ("all", "none"), o.lr_multipliers):
            lr = o.lr_base * mult
            config = self._config(bn=bn, init="he", lr=lr, schedule="constant", epochs=10**6,
                                  max_steps=o.sweep_steps, train_limit=o.sweep_train_limit, seed=seed)
            trace = LossTrace()
            trainer, error, seconds = self._train(config, callbacks=(trace,), eval_loader=False)
            acc = None
            if error is None:
                acc = evaluate(trainer.model, trainer.loss_fn, test)["accuracy"]
            outcome = "diverged" if error else classify(trace.losses)
            rows.append(LrRow(seed=seed, bn=bn, lr=lr, multiplier=mult, outcome=outcome, error=error,
                              final_loss=float(np.mean(trace.losses[-10:])) if trace.losses else None,
                              test_accuracy=acc, seconds=seconds))
            self.log(f"[lr] seed {seed}, bn={bn} lr {lr:g}: {outcome}, test acc {acc}")
        self.results.lr_sweep = LrSweep(rows, largest_lr_that_trains(rows))
        return rows

    def run_dropout(self):
        """{no BN, BN} x {no Dropout, Dropout} where the model overfits, He init."""
        o = self.o
        train_eval = self.data.train_loader(500, seed=0, augment=False, limit=o.train_eval_size)
        every = self._steps_per_epoch()  # the training accuracy (eval mode) at each epoch's end
        for seed, (bn, p) in itertools.product(o.seeds, itertools.product(("none", "all"), (0.0, o.dropout))):
            label = f"{'BN everywhere' if bn == 'all' else 'no BN'}, {f'Dropout({p:g})' if p else 'no Dropout'}"
            self.log(f"[dropout] {label}, seed {seed}: {o.dropout_epochs} epochs, no augmentation")
            config = self._config(bn=bn, init="he", dropout=p, seed=seed, epochs=o.dropout_epochs, augment=False,
                                  schedule=o.dropout_schedule, weight_decay=o.dropout_weight_decay)
            record = self._full_run(label, config, every, periodic_loader=train_eval)
            self._add_run(f"dropout_{bn}_{p:g}", "dropout", label, record, bn=bn, dropout=p)

    def run_optimizer(self):
        """(a)-(d) under Adam at each of ``optimizer_eps``, with the first steps' gradients."""
        o = self.o
        epochs = o.optimizer_epochs or o.epochs
        eval_every = max(1, self._steps_per_epoch() // max(1, o.evals_per_epoch))
        for seed, eps, key in itertools.product(o.seeds, o.optimizer_eps, o.configs):
            spec = CONFIGS[key]
            label = f"{spec['label']}, {o.optimizer} ε={eps:g}"
            self.log(f"[optimizer] {label}, seed {seed}: {epochs} epochs, lr {o.optimizer_lr:g}")
            config = self._config(bn=spec["bn"], init=spec["init"], seed=seed, epochs=epochs, optimizer=o.optimizer,
                                  lr=o.optimizer_lr, adam_eps=eps, weight_decay=o.optimizer_weight_decay)
            probe = GradientRecorder(o.probe_steps)
            record = self._full_run(label, config, eval_every, callbacks=(probe,))
            record.gradients = probe.records
            self._add_run(f"{o.optimizer}_{eps:g}_{key}", "optimizer", label, record, config_key=key, adam_eps=eps)

    def run_scale(self):
        rows = []
        for init in ("he", "uniform:0.001"):
            rows.extend(scale_invariance(self.data, init, self.o.scale_factors, seed=self.o.seeds[0]))
        self.results.scale_invariance = rows
        for r in rows:
            self.log(f"[scale] init {r.init} k={r.k:g}: output rel. change {r.output_rel_change:.2e}, "
                     f"grad ratio {r.grad_ratio:.6g} (ideal {1 / r.k:.6g})")
        return rows

    def run(self):
        start = time.perf_counter()
        runners = {"main": self.run_main, "steps": self.run_steps, "eps": self.run_eps_sweep,
                   "lr": self.run_lr_sweep, "dropout": self.run_dropout, "optimizer": self.run_optimizer,
                   "scale": self.run_scale}
        for part in sorted(self.o.parts, key=PARTS.index):
            part_start = time.perf_counter()
            runners[part]()
            self.results.part_seconds[part] = time.perf_counter() - part_start
            self.results.total_seconds = time.perf_counter() - start
            self.on_update(self.results)
        return self.results


def largest_lr_that_trains(rows):
    """Per BN setting, the largest rate at which every seed trains (None if there is none)."""
    largest = {}
    for bn in ("all", "none"):
        by_lr = {}
        for r in rows:
            if r.bn == bn:
                by_lr.setdefault(r.lr, []).append(r.outcome == "trains")
        ok = [lr for lr, trains in by_lr.items() if all(trains)]
        largest[bn] = max(ok) if ok else None
    return largest


def best_point(points):
    """The earliest (step, accuracy, loss) evaluation at the top accuracy."""
    return max(points, key=lambda p: (p[1], -p[0]))


def steps_to_accuracy(bn_run, control_run):
    """Steps the BN run needs to reach the control's best (validation) accuracy, and the ratio."""
    if not control_run.test_points or not bn_run.test_points:
        return None
    best_step, best_acc, _ = best_point(control_run.test_points)
    reached = next((s for s, acc, _ in bn_run.test_points if acc >= best_acc), None)
    return StepsRatio(control_best_accuracy=best_acc, control_steps=best_step, bn_steps=reached,
                      ratio=(best_step / reached) if reached else None)


def scale_invariance(data, init, factors, seed=0, batch=64):
    """Multiply conv2 (which BN follows) by k in a float64 BN-everywhere cnn7: the BN output and
    the loss should not change and conv2's weight gradient should scale by 1/k — exactly so
    only while BN's epsilon is negligible next to the conv output's variance."""
    loader = data.train_loader(batch, seed, augment=False, limit=batch)
    x, y = next(iter(loader))
    x = x.astype(np.float64)

    def forward_backward(k):
        model = cnn7(bn="all", init=init, seed=seed, dtype=np.float64)
        convs = [i for i, layer in enumerate(model) if isinstance(layer, Conv2D)]
        target = convs[1]
        assert isinstance(model[target + 1], BatchNorm2D)
        model[target].params["weight"] *= k
        outputs = {}
        handle = model.register_forward_hook(lambda i, layer, out: outputs.__setitem__(i, out.copy()))
        loss_fn = SoftmaxCrossEntropy()
        loss = loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward())
        handle.remove()
        var = float(outputs[target].var(axis=(0, 2, 3)).mean())
        return loss, outputs[target + 1], model[target].grads["weight"].copy(), var, model[target + 1].eps

    loss1, out1, grad1, var1, eps = forward_backward(1.0)
    rows = []
    for k in factors:
        loss_k, out_k, grad_k, var_k, _ = forward_backward(k)
        rows.append(ScaleRow(
            init=init, k=k, conv_output_var=var1, bn_eps=eps,
            output_rel_change=float(np.linalg.norm(out_k - out1) / np.linalg.norm(out1)),
            loss_change=float(abs(loss_k - loss1)),
            grad_ratio=float(np.vdot(grad_k, grad1) / np.vdot(grad1, grad1)),
            grad_rel_error=float(np.linalg.norm(grad_k * k - grad1) / np.linalg.norm(grad1))))
    return rows
