"""The training loop: a model, a loss, an optimizer and a data iterator, nothing CIFAR- or BN-specific.

``Trainer.fit`` runs epochs (or a step budget), evaluates, logs loss/accuracy/throughput per epoch
to ``metrics.csv`` and ``history.json``, writes atomic checkpoints, guards against NaN/Inf and
calls the callbacks' hooks, through which clients (the experiments) observe the run.

Under MPI (``comm`` with more than one rank, see ``cybn.distributed``) every rank runs the same
loop on its share of each global batch: the gradients (and the step's loss) are summed over the
ranks between backward and the optimizer step, so the NaN/Inf check decides alike everywhere;
rank 0 alone writes logs, metrics and checkpoints and shows the progress bar; every rank resumes
from the checkpoint rank 0 reads; evaluation is split over the ranks. Callbacks run on every
rank (``trainer.is_root`` tells the one that should write).
"""
import csv
import json
import math
import os
import time

import numpy as np

from . import distributed as _dist
from ._progress import Progress
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .nn import generator_state, set_generator_state

CHECKPOINT_FILE = "checkpoint.npz"


def _new_running():
    return {"loss_sum": 0.0, "correct": 0, "seen": 0, "train_seconds": 0.0}


class NonFiniteError(FloatingPointError):
    """The loss or a gradient became NaN/Inf; the message names the step and the parameter."""


class Callback:
    """Override any of these to observe a run; ``trainer.stop_training = True`` ends it early."""

    def on_fit_start(self, trainer):
        pass

    def on_step_end(self, trainer, step, loss):
        pass

    def on_epoch_end(self, trainer, epoch, metrics):
        pass

    def on_fit_end(self, trainer):
        pass


def evaluate(model, loss_fn, loader, progress=False):
    """Mean loss and accuracy of ``model`` in eval mode over ``loader`` (restores the mode), on the
    forward-only path (``infer``: no activations kept, large batches in chunks: 2x faster here)."""
    was_training = model.training
    model.eval()
    total_loss = 0.0
    correct = 0
    count = 0
    try:
        with Progress(len(loader), desc="evaluate", unit="batch", enabled=progress) as bar:
            for x, y in loader:
                logits = model.infer(x)
                total_loss += loss_fn.forward(logits, y) * len(y)
                correct += int(np.count_nonzero(logits.argmax(axis=1) == y))
                count += len(y)
                bar.update()
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return {"loss": total_loss / count, "accuracy": correct / count}


class Trainer:
    """Runs ``model`` (a ``cybn.Sequential``) with ``loss_fn``, ``optimizer`` and an LR ``schedule``.

    nan_policy: "stop" raises NonFiniteError at the first non-finite loss or gradient (no checkpoint
    is written after it, so the last good one stays); "skip" drops that step's update and goes on.
    """

    def __init__(self, model, loss_fn, optimizer, schedule=None, callbacks=(), nan_policy="stop",
                 progress=True, out_dir=None, checkpoint_every=None, comm=None):
        if nan_policy not in ("stop", "skip"):
            raise ValueError(f"nan_policy must be 'stop' or 'skip', got {nan_policy!r}")
        if checkpoint_every is not None and checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1 step, got {checkpoint_every}")
        self.model = model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.schedule = schedule
        self.callbacks = list(callbacks)
        self.nan_policy = nan_policy
        self.progress = progress
        self.out_dir = out_dir
        self.checkpoint_every = checkpoint_every
        self.step = 0
        self.epoch = 0
        self.skipped_steps = 0
        self.history = []
        self._running = _new_running()
        self.stop_training = False
        # Data-parallel training (cybn.distributed): None in a single process.
        self.dist = _dist.DataParallel(model, comm) if comm is not None and comm.distributed else None
        self._last_counts = (0, 0)

    @property
    def is_root(self):
        """Whether this process writes logs and checkpoints (rank 0; always in a single process)."""
        return self.dist is None or self.dist.comm.is_root

    # ----------------------------------------------------------------- checkpoints
    @property
    def checkpoint_path(self):
        return None if self.out_dir is None else os.path.join(self.out_dir, CHECKPOINT_FILE)

    def save_checkpoint(self, loader, path=None):
        """Model, optimizer buffers, BN statistics, data-order state, epoch/step and history."""
        path = path or self.checkpoint_path
        if self.dist is not None:
            self.dist.broadcast_buffers()  # plain BN's per-rank statistics: rank 0's are saved, and kept
            if not self.is_root:
                return
        arrays = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        arrays.update({f"optim/{k}": v for k, v in self.optimizer.state_dict().items()})
        # Layers that draw random numbers (Dropout) resume with the same stream.
        arrays.update({f"rng/{name}": generator_state(m.rng) for name, m in self._random_layers()})
        meta = {"epoch": self.epoch, "step": self.step, "skipped_steps": self.skipped_steps,
                "history": self.history, "running": self._running, "loader": loader.state_dict()}
        save_checkpoint(path, arrays, meta)

    def _random_layers(self):
        return [(name, m) for name, m in self.model.named_modules() if getattr(m, "rng", None) is not None]

    def load_checkpoint(self, loader, path=None):
        """Restore everything ``save_checkpoint`` wrote, so training continues bit-identically.
        CheckpointError if the file is damaged or holds another model, optimizer or data order."""
        path = path or self.checkpoint_path
        arrays, meta = load_checkpoint(path) if self.dist is None else self.dist.on_root(load_checkpoint, path)
        model = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
        optim = {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")}
        try:
            self.model.load_state_dict(model)
            self.optimizer.load_state_dict(optim)
            for name, m in self._random_layers():
                set_generator_state(m.rng, arrays[f"rng/{name}"])
            loader.load_state_dict(meta["loader"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {path} does not fit this run (another model, optimizer or "
                                  f"data set?): {e}") from e
        self.epoch = meta["epoch"]
        self.step = meta["step"]
        self.skipped_steps = meta["skipped_steps"]
        self.history = meta["history"]
        self._running = meta["running"]

    # ----------------------------------------------------------------- the loop
    def _check_finite(self, loss):
        if not math.isfinite(loss):
            return f"step {self.step}: the loss is {loss}"
        for name, _, grad, layer in self.model.named_parameters():
            if not np.isfinite(grad).all():
                return (f"step {self.step}: the gradient of parameter {name!r} (layer {layer!r}) "
                        "has NaN/Inf values")
        return None

    def train_step(self, x, y, shard=None):
        """One SGD step; returns (loss, logits) (the update is skipped or raised on NaN/Inf).

        Distributed: (x, y) are this rank's rows ``shard = (lo, hi, n)`` of a global batch of n
        (``ShardedLoader.shard``); the returned loss is the global batch's."""
        shard = shard if shard is not None else (0, len(y), len(y))
        scale = 1.0 if self.dist is None else self.dist.begin_step(shard)
        if self.schedule is not None:
            self.optimizer.lr = self.schedule.lr_at(self.step)
        # Buffers (BN running statistics) are tiny: keep a copy so a bad batch cannot poison them.
        saved = self.model.copy_buffers()
        logits = self.model.forward(x)
        loss = self.loss_fn.forward(logits, y)
        self.model.backward(self.loss_fn.backward() if self.dist is None else self.loss_fn.backward(scale))
        correct = int(np.count_nonzero(logits.argmax(axis=1) == y))
        if self.dist is not None:  # sums over the ranks: the global batch's gradient, loss, correct
            loss, correct = self.dist.reduce_gradients(loss * scale, correct)
        self._last_counts = (shard[2], correct)
        problem = self._check_finite(loss)
        if problem is None:
            self.optimizer.step()
        else:
            self.model.restore_buffers(saved)
            if self.nan_policy == "stop":
                raise NonFiniteError(problem)
            self.skipped_steps += 1
        self.step += 1
        return loss, logits

    def fit(self, train_loader, epochs=1, eval_loader=None, max_steps=None, resume=False):
        """Train for ``epochs`` epochs (or until ``max_steps`` steps); returns the history.

        The history holds one dict per epoch: train loss and accuracy, test loss and accuracy
        (when ``eval_loader`` is given), images/s, wall time and the learning rate. An epoch cut
        short by ``max_steps`` is logged with ``"partial": True`` and continues on resume.
        """
        if self.dist is not None:
            train_loader = self.dist.shard(train_loader)
            self.dist.check_run(train_loader, optimizer=repr(self.optimizer), schedule=repr(self.schedule),
                                epochs=epochs, max_steps=max_steps, resume=bool(resume))
        if resume:
            self.load_checkpoint(train_loader)
        if self.out_dir is not None and self.is_root:
            os.makedirs(self.out_dir, exist_ok=True)
        self.stop_training = False
        self.model.train()
        for cb in self.callbacks:
            cb.on_fit_start(self)
        while self.epoch < epochs and not self.stop_training:
            if max_steps is not None and self.step >= max_steps:
                break
            metrics = self._run_epoch(train_loader, max_steps)
            if eval_loader is not None:
                test = self._evaluate(eval_loader)
                metrics.update(test_loss=test["loss"], test_accuracy=test["accuracy"])
            self.history.append(metrics)
            if not metrics["partial"]:
                self.epoch += 1
                self._running = _new_running()
            self._write_logs()
            if self.out_dir is not None:
                self.save_checkpoint(train_loader)
            for cb in self.callbacks:
                cb.on_epoch_end(self, metrics["epoch"] - 1, metrics)
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return self.history

    def _evaluate(self, loader):
        if self.dist is None:
            return evaluate(self.model, self.loss_fn, loader, progress=self.progress)
        self.dist.broadcast_buffers()  # every rank evaluates rank 0's model
        return _dist.evaluate(self.model, self.loss_fn, loader, self.dist.comm)

    def _run_epoch(self, loader, max_steps):
        """Run the rest of the current epoch; its running sums live in ``self._running`` so a
        checkpoint taken mid-epoch resumes with the same epoch figures."""
        run = self._running
        bar = Progress(len(loader) - loader.position, desc=f"epoch {self.epoch + 1}", unit="batch",
                       enabled=self.progress and self.is_root)
        partial = False
        with bar:
            step_start = time.perf_counter()
            for x, y in loader:
                loss, _ = self.train_step(x, y, getattr(loader, "shard", None))
                count, correct = self._last_counts  # of the global batch
                run["loss_sum"] += loss * count
                run["correct"] += correct
                run["seen"] += count
                run["train_seconds"] += time.perf_counter() - step_start
                bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
                bar.update()
                # Callbacks and checkpoints are excluded from the throughput figure.
                for cb in self.callbacks:
                    cb.on_step_end(self, self.step, loss)
                if self.checkpoint_every and self.out_dir and self.step % self.checkpoint_every == 0:
                    self.save_checkpoint(loader)
                step_start = time.perf_counter()
                if self.stop_training or (max_steps is not None and self.step >= max_steps):
                    partial = loader.position < len(loader)
                    break
        seen, seconds = max(run["seen"], 1), run["train_seconds"]
        return {"epoch": self.epoch + 1, "step": self.step, "lr": self.optimizer.lr,
                "train_loss": run["loss_sum"] / seen, "train_accuracy": run["correct"] / seen,
                "images_per_s": run["seen"] / seconds if seconds > 0 else 0.0, "train_seconds": seconds,
                "skipped_steps": self.skipped_steps, "partial": partial}

    def _write_logs(self):
        if self.out_dir is None or not self.history or not self.is_root:
            return
        fields = list(self.history[-1])
        for row in self.history:
            fields += [k for k in row if k not in fields]
        with open(os.path.join(self.out_dir, "metrics.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.history)
        with open(os.path.join(self.out_dir, "history.json"), "w") as f:
            json.dump(self.history, f, indent=1)
