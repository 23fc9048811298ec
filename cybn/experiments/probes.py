"""Observers for experiments: per-layer pre-activation scale, loss every N steps, periodic test eval."""
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
