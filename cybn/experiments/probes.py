"""Observers for experiments: per-layer pre-activation scale, loss every N steps, periodic test eval,
per-layer gradient / weight / update magnitudes over the first steps, and the stop at chance."""
import math
import time

import numpy as np

from ..nn import BatchNorm1D, BatchNorm2D, Conv2D, Linear
from ..train import Callback, evaluate
from .records import LayerScale


def layer_names(model):
    """Readable names for the layers whose outputs are pre-activations: conv1.., fc1.., and
    ``<name>+bn`` for a batch norm that follows one of them."""
    names, counts, previous = {}, {"conv": 0, "fc": 0}, None
    for i, layer in enumerate(model):
        if isinstance(layer, Conv2D):
            counts["conv"] += 1
            previous = names[i] = f"conv{counts['conv']}"
        elif isinstance(layer, Linear):
            counts["fc"] += 1
            previous = names[i] = f"fc{counts['fc']}"
        elif isinstance(layer, (BatchNorm1D, BatchNorm2D)):
            names[i] = f"{previous}+bn"
    return names


def scale(x):
    """std and mean |x| of a layer output in float64 (pre-activations can be ~1e-11), and the
    mean over channels of the per-channel batch variance: the quantity BN divides by."""
    x64 = x.astype(np.float64, copy=False)
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    return LayerScale(std=float(x64.std()), mean_abs=float(np.abs(x64).mean()),
                      channel_var=float(x64.var(axis=axes).mean()))


class PreactivationRecorder(Callback):
    """Records each conv/linear (and BN) output's scale on the first training step and every
    ``every`` steps after it, from the training forward pass itself (no extra forward, so BN
    running statistics are untouched). Also keeps the training loss every ``loss_every`` steps."""

    def __init__(self, every=100, loss_every=10):
        self.every = every
        self.loss_every = loss_every
        self.records = []  # [{"step": s, "layers": {name: LayerScale}}]
        self.losses = []  # [(step, loss)]
        self._names = {}
        self._pending = None
        self._handle = None

    def on_fit_start(self, trainer):
        self._names = layer_names(trainer.model)
        self._handle = trainer.model.register_forward_hook(self._hook)
        self._arm(trainer.step)

    def _arm(self, step):
        self._pending = {"step": step, "layers": {}} if step % self.every == 0 else None

    def _hook(self, index, layer, output):
        if self._pending is not None and index in self._names:
            self._pending["layers"][self._names[index]] = scale(output)

    def on_step_end(self, trainer, step, loss):
        if self._pending is not None:
            self.records.append(self._pending)
        if step % self.loss_every == 0 or step == 1:
            self.losses.append((step, float(loss)))
        self._arm(step)

    def on_fit_end(self, trainer):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @property
    def at_init(self):
        return self.records[0]["layers"] if self.records and self.records[0]["step"] == 0 else {}


class PeriodicEval(Callback):
    """Test accuracy every ``every`` steps (for steps-to-accuracy comparisons); the time it
    takes is kept apart so throughput figures exclude it."""

    def __init__(self, loader, every):
        self.loader = loader
        self.every = every
        self.points = []  # [(step, test_accuracy, test_loss)]
        self.seconds = 0.0

    def on_step_end(self, trainer, step, loss):
        if step % self.every == 0:
            start = time.perf_counter()
            m = evaluate(trainer.model, trainer.loss_fn, self.loader)
            self.seconds += time.perf_counter() - start
            self.points.append((step, m["accuracy"], m["loss"]))


class ChanceStop(Callback):
    """Ends a run that sits at chance: an epoch whose mean training loss is within ``tol`` of
    ln(classes) and in which no batch's loss left chance by more than ``batch_tol`` (batch
    composition alone moves a chance-level batch loss by ~5e-3). ``stopped_epoch`` says when."""

    def __init__(self, tol=1e-3, batch_tol=0.05, classes=10):
        self.tol = tol
        self.batch_tol = batch_tol
        self.chance = math.log(classes)
        self.stopped_epoch = None
        self._worst = 0.0

    def on_step_end(self, trainer, step, loss):
        self._worst = max(self._worst, abs(loss - self.chance)) if math.isfinite(loss) else math.inf

    def on_epoch_end(self, trainer, epoch, metrics):
        if not metrics["partial"]:
            if abs(metrics["train_loss"] - self.chance) <= self.tol and self._worst <= self.batch_tol:
                self.stopped_epoch = epoch + 1
                trainer.stop_training = True
            self._worst = 0.0


class GradientRecorder(Callback):
    """Per-layer gradient, weight and update magnitudes (RMS, float64) of every conv/linear weight
    over the first ``steps`` training steps; with Adam also the share of weights whose
    bias-corrected sqrt(v) is below the optimizer's eps (where eps, not the gradient, sets the step)
    and the share whose v underflowed to 0 although their gradient is not 0."""

    def __init__(self, steps=30):
        self.steps = steps
        self.records = []  # [{"step": s, "layers": {name: {"grad_rms", "weight_rms", "update_rms", ...}}}]
        self._names = {}
        self._previous = {}

    def on_fit_start(self, trainer):
        self._names = {i: name for i, name in layer_names(trainer.model).items() if not name.endswith("+bn")}
        self._previous = {name: trainer.model[i].params["weight"].astype(np.float64)
                          for i, name in self._names.items()}

    def on_step_end(self, trainer, step, loss):
        if step > self.steps:
            return
        opt = trainer.optimizer
        eps = getattr(opt, "eps", None)  # Adam / AdamW
        state = opt.state_dict() if eps is not None else {}
        layers = {}
        for i, name in self._names.items():
            layer = trainer.model[i]
            w = layer.params["weight"].astype(np.float64)
            g = layer.grads["weight"].astype(np.float64)
            row = {"grad_rms": _rms(g), "grad_max_abs": float(np.abs(g).max()), "weight_rms": _rms(w),
                   "update_rms": _rms(w - self._previous[name])}
            v = state.get(f"exp_avg_sq/{i}.weight")
            if v is not None:
                v_hat_sqrt = np.sqrt(v.astype(np.float64) / (1 - opt.betas[1] ** opt.step_count))
                row["sqrt_v_hat_rms"] = _rms(v_hat_sqrt)
                row["eps_dominated"] = float(np.mean(v_hat_sqrt < eps))
                # (1 - beta2) * g * g below the smallest float32 subnormal is 0: the step is then lr * m / eps
                row["v_underflow"] = float(np.mean((v == 0) & (g != 0)))
            layers[name] = row
            self._previous[name] = w
        self.records.append({"step": step, "loss": float(loss), "layers": layers})


def _rms(x):
    return float(np.sqrt(np.mean(np.square(x))))
