"""The CIFAR-10 training recipe shared by ``cybn train`` and the experiments.

It wires the pieces: CIFAR-10 loading and augmentation (``cybn.data``), the cnn7 model, SGD with
a learning-rate schedule (``cybn.nn``) and the ``Trainer`` (``cybn.train``).
"""
import dataclasses
import json
import os

from .. import _threads
from ..data import DataLoader, channel_stats, load_cifar10
from ..nn import SGD, SoftmaxCrossEntropy, cnn7, schedule_from_spec
from ..train import Trainer


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (saved as config.json beside its logs)."""
    bn: str = "all"
    init: str = "he"
    bn_eps: float = 1e-5
    bias: bool = True
    dropout: float = 0.0
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    decay_bn_and_bias: bool = False
    schedule: str = "cosine"
    epochs: int = 10
    max_steps: int = None
    batch_size: int = 128
    augment: bool = True
    seed: int = 0
    threads: int = None
    train_limit: int = None
    test_limit: int = None
    nan_policy: str = "stop"
    checkpoint_every: int = None

    def to_json(self):
        return dataclasses.asdict(self)


class CifarData:
    """CIFAR-10 loaded once, normalised with the training set's statistics."""

    def __init__(self, path=None, train_limit=None, test_limit=None, quiet=False):
        self.raw = load_cifar10(path, limit=(train_limit, test_limit), quiet=quiet)
        self.mean, self.std = channel_stats(self.raw.train_images)

    def train_loader(self, batch_size, seed, augment=True, limit=None):
        x, y = self.raw.train_images, self.raw.train_labels
        if limit is not None:
            x, y = x[:limit], y[:limit]
        return DataLoader(x, y, batch_size, shuffle=True, augment=augment, seed=seed,
                          mean=self.mean, std=self.std)

    def test_loader(self, batch_size=500, limit=None):
        x, y = self.raw.test_images, self.raw.test_labels
        if limit is not None:
            x, y = x[:limit], y[:limit]
        return DataLoader(x, y, batch_size, shuffle=False, augment=False, seed=0,
                          mean=self.mean, std=self.std)


def build_trainer(config, steps_per_epoch, out_dir=None, callbacks=(), progress=True):
    """Model, loss, optimizer, schedule and Trainer for ``config``."""
    model = cnn7(bn=config.bn, init=config.init, seed=config.seed, dropout=config.dropout,
                 bn_eps=config.bn_eps, bias=config.bias)
    optimizer = SGD(model, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                    weight_decay=config.weight_decay, decay_bn_and_bias=config.decay_bn_and_bias)
    total = config.max_steps or config.epochs * steps_per_epoch
    schedule = schedule_from_spec(config.schedule, config.lr, total_steps=total)
    return Trainer(model, SoftmaxCrossEntropy(), optimizer, schedule=schedule, callbacks=callbacks,
                   nan_policy=config.nan_policy, progress=progress, out_dir=out_dir,
                   checkpoint_every=config.checkpoint_every)


def run(config, data, out_dir=None, callbacks=(), progress=True, resume=False, eval_loader=True):
    """Train cnn7 on ``data`` as ``config`` says; returns the Trainer (its history holds the figures)."""
    if config.threads is not None:
        _threads.set_num_threads(config.threads)
    train = data.train_loader(config.batch_size, config.seed, config.augment, config.train_limit)
    test = data.test_loader(limit=config.test_limit) if eval_loader else None
    trainer = build_trainer(config, len(train), out_dir, callbacks, progress)
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(config.to_json(), f, indent=1)
    trainer.fit(train, epochs=config.epochs, eval_loader=test, max_steps=config.max_steps, resume=resume)
    return trainer
