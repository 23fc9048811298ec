"""Use a saved run: load its model (``load_model``), evaluate it on labelled images and classify
image files.

``evaluate`` and ``predict`` run the forward-only path (``Sequential.infer``) batch by batch on
uint8 images normalised with the statistics the model was trained with; give them the fused
model (``cybn.nn.fuse_batchnorm``) for speed. ``read_images`` needs Pillow (the ``image`` extra).
"""
import dataclasses
import os

import numpy as np

from . import functional as F
from .checkpoint import CheckpointError, load_checkpoint
from .data import CIFAR10_CLASSES, normalize
from .recipe import CONFIG_FILE, RUN_FILE, RunError, RunRecord, TrainConfig, build_model, load_config
from .train import CHECKPOINT_FILE

__all__ = ["load_model", "load_run", "SavedRun", "DeployError", "Evaluation", "evaluate", "predict",
           "read_images", "IMAGE_SIZE"]

IMAGE_SIZE = (32, 32)  # (height, width) the CIFAR-10 models take


# ------------------------------------------------------------------------- loading a saved run
class DeployError(RunError):
    """A saved run, an image file or an export cannot be used as asked (the message says why)."""


@dataclasses.dataclass
class SavedRun:
    """A trained run loaded for inference: ``model`` (eval mode, the checkpoint's weights), its
    ``config`` (``TrainConfig``), ``record`` (``RunRecord``: the normalisation, classes; None for a
    run saved before run records), the run ``folder`` and the ``checkpoint`` file."""
    model: object
    config: TrainConfig
    record: object
    folder: str
    checkpoint: str

    def normalisation(self):
        """(mean, std) the run was trained with; DeployError if the run did not record them."""
        if self.record is None:
            raise DeployError(f"{os.path.join(self.folder, RUN_FILE)} does not exist: the run does not "
                              "say how its images were normalised (it predates run records); "
                              "retrain it with this cybn")
        return self.record.mean, self.record.std

    @property
    def classes(self):
        return tuple(self.record.classes) if self.record is not None else CIFAR10_CLASSES


def _listed(keys, limit=6):
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _check_state(model, state, checkpoint, config):
    """CheckpointError naming the file and every key or shape that does not fit ``model``."""
    expected = model.state_dict()
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    shapes = [f"{k} {tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} in the model"
              for k in sorted(set(expected) & set(state)) if state[k].shape != expected[k].shape]
    dtypes = [f"{k} {state[k].dtype} in the file, {expected[k].dtype} in the model"
              for k in sorted(set(expected) & set(state))
              if expected[k].dtype.kind == "f" and state[k].dtype != expected[k].dtype]
    problems = []
    if missing:
        problems.append(f"missing keys {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_listed(unexpected)}")
    if shapes:
        problems.append("shapes differ: " + "; ".join(shapes[:4]) + (" ..." if len(shapes) > 4 else ""))
    if dtypes:
        problems.append("dtypes differ: " + "; ".join(dtypes[:4]))
    if problems:
        raise CheckpointError(f"checkpoint {checkpoint} holds another architecture than the cnn7 "
                              f"(bn={config.bn!r}, bias={config.bias}, dropout={config.dropout}) its "
                              f"{CONFIG_FILE} describes: " + "; ".join(problems))


def load_run(path):
    """The run saved at ``path`` (a ``cybn train --out`` folder, or the checkpoint file in one) as
    a ``SavedRun``: the model built from the run's config.json with the checkpoint's weights.
    RunError / CheckpointError / FormatError (ValueErrors) name the missing, damaged or foreign
    file, and for another architecture the mismatching keys or shapes."""
    path = os.fspath(path)
    if os.path.isdir(path):
        folder, checkpoint = path, os.path.join(path, CHECKPOINT_FILE)
        if not os.path.exists(checkpoint):
            raise RunError(f"{path} has no {CHECKPOINT_FILE}: not a cybn run folder, or its training "
                           "has not finished an epoch (or a --checkpoint-every step) yet")
    elif os.path.exists(path):
        folder, checkpoint = os.path.dirname(path) or ".", path
    else:
        raise RunError(f"{path} does not exist (expected a run folder written by `cybn train --out`, "
                       f"or the {CHECKPOINT_FILE} in one)")
    config = load_config(folder)
    record = RunRecord.read(folder) if os.path.exists(os.path.join(folder, RUN_FILE)) else None
    arrays, _ = load_checkpoint(checkpoint)
    state = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    if not state:
        raise CheckpointError(f"checkpoint {checkpoint} holds no model (no 'model/...' arrays): "
                              "not a cybn training checkpoint")
    model = build_model(config)
    _check_state(model, state, checkpoint, config)
    model.load_state_dict(state)
    return SavedRun(model.eval(), config, record, folder, checkpoint)


def load_model(path):
    """The model of the run saved at ``path`` (a run folder or its checkpoint file), in eval
    mode; errors as ``load_run``."""
    return load_run(path).model


# ------------------------------------------------------------------------- evaluation, prediction
def _logits_batches(model, images, mean, std, batch_size):
    for i in range(0, len(images), batch_size):
        yield i, model.infer(normalize(images[i:i + batch_size], mean, std, dtype=model.dtype))


@dataclasses.dataclass
class Evaluation:
    """Test figures of a model: mean cross-entropy ``loss``, ``accuracy``, ``per_class``
    accuracy, the ``confusion`` matrix (rows: true class, columns: predicted) and ``classes``."""
    loss: float
    accuracy: float
    per_class: np.ndarray
    confusion: np.ndarray
    classes: tuple

    @property
    def count(self):
        return int(self.confusion.sum())

    def table(self):
        """Per-class accuracy and the confusion matrix as text."""
        names = [str(c) for c in self.classes]
        corner = "true \\ predicted"
        w = max(len(corner), *(len(n) for n in names))
        cell = max(6, len(str(int(self.confusion.max()))) + 1)
        heads = [n[:cell - 1] for n in names]
        lines = [f"{corner:<{w}}  " + "".join(f"{h:>{cell}}" for h in heads) + f"{'accuracy':>10}"]
        for name, row, acc in zip(names, self.confusion, self.per_class):
            lines.append(f"{name:<{w}}  " + "".join(f"{int(v):>{cell}}" for v in row)
                         + ("       n/a" if np.isnan(acc) else f"{100 * acc:>9.1f}%"))
        return "\n".join(lines)

    def save_png(self, path):
        """The confusion matrix as a PNG (needs matplotlib)."""
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        n = len(self.classes)
        fig, ax = plt.subplots(figsize=(1.0 + 0.62 * n, 0.8 + 0.55 * n))
        rows = self.confusion.sum(axis=1, keepdims=True)
        share = self.confusion / np.maximum(rows, 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(self.confusion[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
        ax.set_xticks(range(n), self.classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), self.classes, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"accuracy {100 * self.accuracy:.2f} % on {self.count:,} images", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def evaluate(model, images, labels, mean, std, batch_size=500, classes=CIFAR10_CLASSES):
    """``Evaluation`` of ``model`` on uint8 NCHW ``images`` with integer ``labels``, normalised
    with the per-channel ``mean`` / ``std`` (pixel/255) the model was trained with."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"labels must have one entry per image ({len(images)}), got shape {labels.shape}")
    if len(images) == 0:
        raise ValueError("evaluate: no images")
    n = len(classes)
    confusion = np.zeros((n, n), np.int64)
    loss_sum = 0.0
    for i, logits in _logits_batches(model, images, mean, std, batch_size):
        if logits.shape[1] != n:
            raise ValueError(f"the model has {logits.shape[1]} outputs but there are {n} classes")
        y = labels[i:i + len(logits)]
        loss, _ = F.softmax_cross_entropy(logits, y)
        loss_sum += loss * len(y)
        np.add.at(confusion, (y, logits.argmax(axis=1)), 1)
    rows = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(rows > 0, np.diag(confusion) / rows, np.nan)
    return Evaluation(loss_sum / len(images), float(np.trace(confusion)) / len(images), per_class,
                      confusion, tuple(classes))


def predict(model, images, mean, std, k=3, batch_size=500):
    """Top-``k`` (class indices, probabilities), each (N, k), best first, for uint8 ``images``."""
    if not 1 <= k:
        raise ValueError(f"k must be >= 1, got {k}")
    top, probs = [], []
    for _, logits in _logits_batches(model, images, mean, std, batch_size):
        p = F.softmax(logits)
        order = np.argsort(-p, axis=1, kind="stable")[:, :k]
        top.append(order)
        probs.append(np.take_along_axis(p, order, axis=1))
    return np.concatenate(top), np.concatenate(probs)


def _import_pillow():
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ImportError('reading image files needs Pillow: pip install "cybn[image]"') from None
    return Image, UnidentifiedImageError


def read_images(paths, size=IMAGE_SIZE):
    """Image files (PNG, JPEG, anything Pillow reads) as uint8 RGB (N, 3, h, w) for ``size``
    (h, w), and per file a note saying how it was converted (None when it already fit).
    Other sizes are resized (Lanczos); grey, palette or RGBA images are converted to RGB."""
    Image, Unidentified = _import_pillow()
    h, w = size
    out = np.empty((len(paths), 3, h, w), np.uint8)
    notes = []
    for i, path in enumerate(paths):
        path = os.fspath(path)
        try:
            with Image.open(path) as im:
                im.load()
                note = []
                if im.mode != "RGB":
                    note.append(f"converted from {im.mode} to RGB")
                    im = im.convert("RGB")
                if im.size != (w, h):
                    note.append(f"resized from {im.size[0]}x{im.size[1]} to {w}x{h}")
                    im = im.resize((w, h), Image.Resampling.LANCZOS)
                out[i] = np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
        except FileNotFoundError:
            raise FileNotFoundError(f"image {path} does not exist") from None
        except (Unidentified, OSError, ValueError) as e:
            raise DeployError(f"image {path} could not be read as an image: {e}") from None
        notes.append(", ".join(note) or None)
    return out, notes

