"""The small-initialization experiment, and the BN paper's other claims at small scale.

Claim under test: the 7-layer CNN (``cnn7``) with ``W ~ U(-0.001, 0.001)`` does not train without
BN (its pre-activations shrink layer after layer), trains with BN after every layer, and trains
with BN on the last layer only. Parts (each can be run alone; all share one seed, data order and
schedule):

- ``main``: configurations (a) no BN, (b) BN everywhere, (c) BN last only — all U(±0.001) — and
  (d) the control, no BN with He init. Records per-layer pre-activation scale, loss, accuracy, time.
- ``steps``: (b) again at a larger learning rate (the paper's "BN-x5"), to count the steps it
  needs to reach the control (d)'s best test accuracy (needs ``main`` with (d)).
- ``eps``: BN's epsilon against the tiny last-layer variance, for (c), at several learning rates,
  with and without the biases of the layers below.
- ``lr``: the largest learning rate BN-everywhere and the no-BN control still train at.
- ``dropout``: the control with Dropout, next to BN without it (uses ``main``'s runs).
- ``scale``: BN's invariance to the scale of the preceding layer's weights (exact check).
The steps-to-accuracy ratios come from the periodic test evaluations of ``main`` and ``steps``.
The default parts (``main``, ``eps``, ``scale``) are the small-init claim itself and fit in under an
hour on two cores; ``--parts all`` adds the paper's other claims.
"""
import dataclasses
import itertools
import math
import time

import numpy as np

from ..nn import BatchNorm2D, Conv2D, SoftmaxCrossEntropy, cnn7
from ..train import Callback, NonFiniteError, evaluate
from .probes import PeriodicEval, PreactivationRecorder
from .records import EpsRow, LrRow, LrSweep, Results, RunResult, ScaleRow, StepsRatio, last_preactivation
from ..recipe import TrainConfig, run

CHANCE_LOSS = math.log(10.0)

CONFIGS = {
    "a": {"label": "(a) no BN, U(±0.001)", "bn": "none", "init": "uniform:0.001"},
    "b": {"label": "(b) BN everywhere, U(±0.001)", "bn": "all", "init": "uniform:0.001"},
    "c": {"label": "(c) BN on last layer only, U(±0.001)", "bn": "last", "init": "uniform:0.001"},
    "d": {"label": "(d) control: no BN, He init", "bn": "none", "init": "he"},
}
PARTS = ("main", "steps", "eps", "lr", "dropout", "scale")
DEFAULT_PARTS = ("main", "eps", "scale")


@dataclasses.dataclass
class Options:
    """What the experiment runs; ``quick()`` shrinks it to a subset for tests and smoke runs."""
    epochs: int = 4  # 4 configurations x 4 epochs + eps + scale: 53.7 min measured on 2 cores
    lr: float = 0.02  # the no-BN He control stays at chance at 0.05 (measured on the mini set)
    batch_size: int = 128
    weight_decay: float = 5e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    seed: int = 0
    threads: int = None
    train_limit: int = None
    test_limit: int = None
    parts: tuple = DEFAULT_PARTS
    configs: tuple = tuple(CONFIGS)
    record_every: int = 100
    loss_every: int = 10
    evals_per_epoch: int = 2
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
    steps_lr_multiplier: float = 5.0  # the paper's BN-x5
    dropout: float = 0.5
    scale_factors: tuple = (0.01, 0.1, 10.0, 100.0)

    @classmethod
    def quick(cls, **overrides):
        base = dict(epochs=2, train_limit=5000, test_limit=1000, record_every=20, loss_every=5,
                    sweep_steps=60, sweep_train_limit=5000, eps_steps=40, eps_values=(1e-5, 1e-20, 1e-30),
                    lr_multipliers=(1, 10, 100))
        base.update(overrides)
        return cls(**base)


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
                    epochs=o.epochs, batch_size=o.batch_size, seed=o.seed, threads=o.threads,
                    train_limit=o.train_limit, test_limit=o.test_limit)
        base.update(kw)
        return TrainConfig(**base)

    def _train(self, config, callbacks=(), eval_loader=True):
        """Run one configuration; a NaN/Inf stops it and is reported, not raised."""
        start = time.perf_counter()
        error = None
        trainer = None
        try:
            trainer = run(config, self.data, callbacks=callbacks, progress=self.progress,
                          eval_loader=eval_loader)
        except NonFiniteError as e:
            error = str(e)
        return trainer, error, time.perf_counter() - start

    def _full_run(self, label, config, eval_every=None):
        """Train one full-length configuration, recording pre-activations, losses and (every
        ``eval_every`` steps, if given) test accuracy; returns its RunResult."""
        o = self.o
        recorder = PreactivationRecorder(every=o.record_every, loss_every=o.loss_every)
        callbacks = [recorder]
        periodic = None
        if eval_every is not None:
            periodic = PeriodicEval(self.data.test_loader(limit=o.test_limit), eval_every)
            callbacks.append(periodic)
        trainer, error, seconds = self._train(config, callbacks=callbacks)
        history = trainer.history if trainer else []
        return RunResult(
            label=label, config=config.to_json(), error=error,
            history=history, losses=recorder.losses, preactivations=recorder.records,
            preact_at_init=recorder.at_init, test_points=periodic.points if periodic else [],
            seconds=seconds, eval_seconds=periodic.seconds if periodic else 0.0,
            images_per_s=float(np.mean([h["images_per_s"] for h in history])) if history else None,
            outcome=classify([v for _, v in recorder.losses]))

    # ------------------------------------------------------------------ parts
    def run_main(self):
        o = self.o
        runs = {}
        eval_every = self._eval_every()
        for key in o.configs:
            spec = CONFIGS[key]
            self.log(f"[main] {spec['label']}: {o.epochs} epochs, lr {o.lr}")
            runs[key] = self._full_run(spec["label"], self._config(bn=spec["bn"], init=spec["init"]), eval_every)
            history = runs[key].history
            last = history[-1] if history else {}
            self.log(f"[main] {key}: outcome {runs[key].outcome}, train loss {last.get('train_loss')}, "
                     f"test acc {last.get('test_accuracy')}, {runs[key].seconds:.0f} s")
            self.results.runs[key] = runs[key]
            self.on_update(self.results)
        if "b" in runs and "d" in runs:
            self._steps_ratio("b")
        return runs

    def _eval_every(self):
        o = self.o
        steps_per_epoch = math.ceil((o.train_limit or len(self.data.raw.train_labels)) / o.batch_size)
        return max(1, steps_per_epoch // max(1, o.evals_per_epoch))

    def _steps_ratio(self, key):
        runs = self.results.runs
        self.results.steps_to_control_best[key] = steps_to_accuracy(runs[key], runs["d"])

    def run_steps(self):
        """Claim (ii): (b) at ``steps_lr_multiplier`` times the shared rate, steps to (d)'s best."""
        o = self.o
        if "d" not in self.results.runs:
            raise ValueError("part 'steps' compares with the control (d): run part 'main' with configuration d")
        lr = o.lr * o.steps_lr_multiplier
        spec = CONFIGS["b"]
        label = f"(b') BN everywhere, U(±0.001), lr ×{o.steps_lr_multiplier:g}"
        self.log(f"[steps] {label}: {o.epochs} epochs, lr {lr:g}")
        config = self._config(bn=spec["bn"], init=spec["init"], lr=lr)
        self.results.runs["b_fast"] = self._full_run(label, config, self._eval_every())
        self._steps_ratio("b_fast")
        self.log(f"[steps] {self.results.steps_to_control_best['b_fast']}")

    def run_eps_sweep(self):
        """(c) with BN's epsilon from far above to far below the last layer's batch variance, at
        each learning rate, with the layers' biases and without them."""
        o = self.o
        rows = []
        for bias, lr, eps in itertools.product(o.eps_biases, o.eps_lrs, o.eps_values):
            config = self._config(bn="last", init="uniform:0.001", bn_eps=eps, lr=lr, bias=bias,
                                  schedule="constant", epochs=10**6, max_steps=o.eps_steps,
                                  train_limit=o.sweep_train_limit)
            trace = LossTrace()
            recorder = PreactivationRecorder(every=10**9, loss_every=1)
            trainer, error, seconds = self._train(config, callbacks=(trace, recorder), eval_loader=False)
            _, last = last_preactivation(recorder.at_init)
            var = last.channel_var if last else float("nan")
            losses = trace.losses
            row = EpsRow(bias=bias, lr=lr, eps=eps, last_layer_var_at_init=var,
                         bn_gain_at_init=1.0 / math.sqrt(var + eps),
                         xhat_scale_at_init=math.sqrt(var / (var + eps)),
                         final_loss=float(np.mean(losses[-10:])) if losses else None,
                         outcome="diverged" if error else classify(losses),
                         error=error, steps=len(losses), seconds=seconds)
            rows.append(row)
            self.log(f"[eps] {'biases' if bias else 'no biases'}, lr {lr:g}, eps {eps:.0e}: "
                     f"{row.outcome} (final loss {row.final_loss})")
        self.results.eps_sweep = rows
        return rows

    def run_lr_sweep(self):
        """BN everywhere vs the no-BN control, both He-initialised, at growing learning rates."""
        o = self.o
        rows = []
        test = self.data.test_loader(limit=o.test_limit)
        for bn in ("all", "none"):
            for mult in o.lr_multipliers:
                lr = o.lr_base * mult
                config = self._config(bn=bn, init="he", lr=lr, schedule="constant", epochs=10**6,
                                      max_steps=o.sweep_steps, train_limit=o.sweep_train_limit)
                trace = LossTrace()
                trainer, error, seconds = self._train(config, callbacks=(trace,), eval_loader=False)
                acc = None
                if error is None:
                    acc = evaluate(trainer.model, trainer.loss_fn, test)["accuracy"]
                outcome = "diverged" if error else classify(trace.losses)
                rows.append(LrRow(bn=bn, lr=lr, multiplier=mult, outcome=outcome, error=error,
                                  final_loss=float(np.mean(trace.losses[-10:])) if trace.losses else None,
                                  test_accuracy=acc, seconds=seconds))
                self.log(f"[lr] bn={bn} lr {lr:g}: {outcome}, test acc {acc}")
        largest = {}
        for bn in ("all", "none"):
            ok = [r.lr for r in rows if r.bn == bn and r.outcome == "trains"]
            largest[bn] = max(ok) if ok else None
        self.results.lr_sweep = LrSweep(rows, largest)
        return rows

    def run_dropout(self):
        """The control (d) with Dropout before the last layer, for comparison with (b) and (d)."""
        o = self.o
        self.log(f"[dropout] control + Dropout({o.dropout})")
        config = self._config(bn="none", init="he", dropout=o.dropout)
        self.results.runs["d_dropout"] = self._full_run(f"(d') control + Dropout({o.dropout})", config)

    def run_scale(self):
        rows = []
        for init in ("he", "uniform:0.001"):
            rows.extend(scale_invariance(self.data, init, self.o.scale_factors, seed=self.o.seed))
        self.results.scale_invariance = rows
        for r in rows:
            self.log(f"[scale] init {r.init} k={r.k:g}: output rel. change {r.output_rel_change:.2e}, "
                     f"grad ratio {r.grad_ratio:.6g} (ideal {1 / r.k:.6g})")
        return rows

    def run(self):
        start = time.perf_counter()
        runners = {"main": self.run_main, "steps": self.run_steps, "eps": self.run_eps_sweep,
                   "lr": self.run_lr_sweep, "dropout": self.run_dropout, "scale": self.run_scale}
        for part in sorted(self.o.parts, key=PARTS.index):  # "steps" needs "main" first
            runners[part]()
            self.results.total_seconds = time.perf_counter() - start
            self.on_update(self.results)
        return self.results


def steps_to_accuracy(bn_run, control_run):
    """Steps the BN run needs to reach the control's best test accuracy, and the ratio."""
    if not control_run.test_points or not bn_run.test_points:
        return None
    best_step, best_acc, _ = max(control_run.test_points, key=lambda p: (p[1], -p[0]))
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
