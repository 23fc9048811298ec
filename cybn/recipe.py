"""The CIFAR-10 training recipe shared by ``cybn train`` and the experiments.

It wires the pieces: CIFAR-10 loading and augmentation (``cybn.data``), the cnn7 model, SGD, Adam
or AdamW with a learning-rate schedule (``cybn.nn``) and the ``Trainer`` (``cybn.train``). A run folder holds

- ``config.json``: the ``TrainConfig`` (rebuilds the model: ``build_model(load_config(dir))``);
- ``run.json``: the run record (``RunRecord``, versioned): the normalisation the run was trained
  with, the input shape and class names, which inference needs;
- ``checkpoint.npz``, ``metrics.csv``, ``history.json``: written by the Trainer.
"""
import dataclasses
import json
import os
import pickle

import numpy as np

from . import _formats
from . import distributed as _dist
from ._validation import positive_int_arg
from .data import CIFAR10_CLASSES, DataLoader, channel_stats, load_cifar10
from .nn import SGD, Adam, AdamW, SoftmaxCrossEntropy, cnn7, convert_sync_batchnorm, init_from_spec, schedule_from_spec
from .train import CHECKPOINT_FILE, Trainer

CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
BN_CHOICES = ("none", "all", "last")
NAN_POLICIES = ("stop", "skip")
OPTIMIZERS = ("sgd", "adam", "adamw")


class RunError(ValueError):
    """A run cannot start or continue: its data, config.json or run.json is missing or unusable."""


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (saved as config.json beside its logs)."""
    bn: str = "all"
    init: str = "he"
    bn_eps: float = 1e-5
    bias: bool = True
    dropout: float = 0.0
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9  # SGD only, like nesterov
    nesterov: bool = False
    weight_decay: float = 5e-4  # L2 for sgd and adam, decoupled for adamw
    decay_bn_and_bias: bool = False
    beta1: float = 0.9  # Adam / AdamW only, like beta2 and adam_eps
    beta2: float = 0.999
    adam_eps: float = 1e-8
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
    sync_bn: bool = False  # under MPI: BN statistics of the global batch (cybn.distributed)

    def to_json(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record):
        """A TrainConfig from ``to_json()``'s dict; TypeError/ValueError name a bad field."""
        if not isinstance(record, dict):
            raise TypeError(f"expected a JSON object, got {type(record).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(record) - set(fields))
        if unknown:
            raise ValueError(f"unknown fields {unknown} (known: {', '.join(fields)})")
        for name, value in record.items():
            default = fields[name].default
            kind = int if default is None else type(default)  # the optional fields are counts
            if not (_is_a(kind, value) or (value is None and default is None)):
                raise TypeError(f"field {name!r} must be {kind.__name__}, got {value!r}")
        config = cls(**record)
        config.check()
        return config

    def check(self):
        """ValueError naming the field if a value cannot make a run (choices, specs, ranges)."""
        if self.bn not in BN_CHOICES:
            raise ValueError(f"bn must be one of {BN_CHOICES}, got {self.bn!r}")
        if self.nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {self.nan_policy!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.adam_eps >= 0:
            raise ValueError(f"adam_eps must be >= 0, got {self.adam_eps}")
        init_from_spec(self.init)
        schedule_from_spec(self.schedule, self.lr, total_steps=1)
        for name in ("epochs", "batch_size", "max_steps", "threads", "train_limit", "test_limit",
                     "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def _is_a(kind, value):
    """JSON value of a TrainConfig field: a bool only for bool fields, an int also for floats."""
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    return isinstance(value, (int, float) if kind is float else kind)


def load_config(run_dir):
    """The TrainConfig saved in ``run_dir``; RunError naming the file if it is missing or bad."""
    path = os.path.join(run_dir, CONFIG_FILE)
    try:
        with open(path) as f:
            record = json.load(f)
    except FileNotFoundError:
        raise RunError(f"{path} does not exist: {run_dir} is not a cybn run folder") from None
    except (OSError, ValueError) as e:  # unreadable, not UTF-8 or not JSON
        raise RunError(f"{path} is unreadable: {e}") from None
    try:
        return TrainConfig.from_json(record)
    except (TypeError, ValueError) as e:
        raise RunError(f"{path} is not a valid training config: {e}") from None


@dataclasses.dataclass
class RunRecord:
    """What a run's model needs at inference, saved as run.json (format ``_formats.RUN_RECORD``).

    ``mean`` / ``std``: per-channel normalisation in pixel/255 units (``x = (pixel/255 - mean) / std``).
    """
    mean: list
    std: list
    input_shape: list = (3, 32, 32)
    classes: list = CIFAR10_CLASSES
    model: str = "cnn7"
    dtype: str = "float32"
    cybn_version: str = ""
    format_version: int = _formats.RUN_RECORD

    @classmethod
    def read(cls, run_dir):
        path = os.path.join(run_dir, RUN_FILE)
        try:
            with open(path) as f:
                record = json.load(f)
            _formats.check_version(record.get(_formats.KEY), _formats.RUN_RECORD, "run record", path)
            record[_formats.KEY] = _formats.RUN_RECORD
            return cls(**record)
        except FileNotFoundError:
            raise RunError(f"{path} does not exist: {run_dir} is not a cybn run folder "
                           "(or was written by a cybn older than run records)") from None
        except (OSError, TypeError, ValueError, AttributeError) as e:
            if isinstance(e, _formats.FormatError):
                raise
            raise RunError(f"{path} is unreadable or not a run record: {e}") from None

    def write(self, run_dir):
        with open(os.path.join(run_dir, RUN_FILE), "w") as f:
            json.dump(dataclasses.asdict(self), f, indent=1)


class CifarData:
    """CIFAR-10 loaded once, normalised with the training set's statistics."""

    def __init__(self, path=None, train_limit=None, test_limit=None, quiet=False):
        try:
            self.raw = load_cifar10(path, limit=(train_limit, test_limit), quiet=quiet)
        except (ValueError, pickle.UnpicklingError) as e:  # damaged data; OSErrors speak for themselves
            raise RunError(f"cannot read CIFAR-10 from {path}: {e}") from None
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

    def run_record(self):
        from . import __version__
        return RunRecord(mean=[float(v) for v in self.mean], std=[float(v) for v in self.std],
                         input_shape=list(self.raw.train_images.shape[1:]),
                         classes=list(self.raw.classes), cybn_version=__version__)


def build_model(config):
    """The cnn7 that ``config`` trains (its initial weights; load a checkpoint or state into it)."""
    model = cnn7(bn=config.bn, init=config.init, seed=config.seed, dropout=config.dropout,
                 bn_eps=config.bn_eps, bias=config.bias)
    return convert_sync_batchnorm(model) if config.sync_bn else model


def build_optimizer(config, model):
    """SGD (momentum, Nesterov, L2 decay), Adam (L2 decay) or AdamW (decoupled decay) for ``config``."""
    if config.optimizer == "sgd":
        return SGD(model, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                   weight_decay=config.weight_decay, decay_bn_and_bias=config.decay_bn_and_bias)
    cls = {"adam": Adam, "adamw": AdamW}.get(config.optimizer)
    if cls is None:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {config.optimizer!r}")
    return cls(model, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.adam_eps,
               weight_decay=config.weight_decay, decay_bn_and_bias=config.decay_bn_and_bias)


def build_trainer(config, steps_per_epoch, out_dir=None, callbacks=(), progress=True, comm=None):
    """Model, loss, optimizer, schedule and Trainer for ``config``."""
    model = build_model(config)
    total = config.max_steps or config.epochs * steps_per_epoch
    schedule = schedule_from_spec(config.schedule, config.lr, total_steps=total)
    return Trainer(model, SoftmaxCrossEntropy(), build_optimizer(config, model), schedule=schedule,
                   callbacks=callbacks, nan_policy=config.nan_policy, progress=progress,
                   out_dir=out_dir, checkpoint_every=config.checkpoint_every, comm=comm)


def _check_resumable(out_dir, data):
    if not os.path.exists(os.path.join(out_dir, CHECKPOINT_FILE)):
        raise RunError(f"{out_dir} has no {CHECKPOINT_FILE} to resume from")
    if os.path.exists(os.path.join(out_dir, RUN_FILE)):
        saved = RunRecord.read(out_dir)
        if not (np.allclose(saved.mean, data.mean, rtol=1e-6) and np.allclose(saved.std, data.std, rtol=1e-6)):
            raise RunError(f"the data's normalisation (mean {np.round(data.mean, 4).tolist()}) differs "
                           f"from the one {out_dir} was trained with (mean {np.round(saved.mean, 4).tolist()}): "
                           "resume with the same --data and --train-limit")


def run(config, data, out_dir=None, callbacks=(), progress=True, resume=False, eval_loader=True):
    """Train cnn7 on ``data`` as ``config`` says; returns the Trainer (its history holds the figures).

    With ``out_dir``, the run folder gets config.json and run.json first; ``resume`` continues
    the run saved there (RunError if there is none, or if ``data`` is normalised differently)."""
    # The world (one process, or the ranks of mpiexec/srun) and this process's threads.
    comm = _dist.setup(config.threads)
    if resume:
        _check_resumable(out_dir, data)
    train = data.train_loader(config.batch_size, config.seed, config.augment, config.train_limit)
    test = data.test_loader(limit=config.test_limit) if eval_loader else None
    trainer = build_trainer(config, len(train), out_dir, callbacks, progress, comm)
    if out_dir is not None and comm.is_root:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
            json.dump(config.to_json(), f, indent=1)
        data.run_record().write(out_dir)
    trainer.fit(train, epochs=config.epochs, eval_loader=test, max_steps=config.max_steps, resume=resume)
    return trainer


def add_data_options(parser):
    """--data, --threads and --quiet: the options of every command that trains on CIFAR-10."""
    parser.add_argument("--data", metavar="PATH", default=None,
                        help="CIFAR-10 archive (cifar-10-python.tar.gz) or extracted folder; "
                             "default: download the official archive (checksum-verified) into the cache "
                             "(CYBN_CACHE_DIR, else ~/.cache/cybn)")
    parser.add_argument("--threads", type=positive_int_arg, default=None,
                        help="threads for the kernels and the BLAS pool (default: CYBN_NUM_THREADS or all cores; "
                             "under mpiexec, this machine's cores divided among its ranks)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
