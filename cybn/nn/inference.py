"""Forward-only inference: eval-mode outputs without keeping anything for a backward.

A training forward keeps every layer's input (or output) for ``backward``, so its memory is the
sum of all activations. Under ``inference_mode()`` layers keep nothing, so a layer's input is
freed as soon as the next layer has consumed it: memory is one layer's input plus its output.
``infer`` goes one step further and runs a large batch through the whole network in chunks of
images, so that in + out of the largest layer stay within ``max_chunk_bytes`` whatever the
batch size; the chunks run on the same kernels as a whole batch.
"""
import contextlib
import math

import numpy as np

from .. import functional as F
from .._validation import plain_array, positive_int
from .module import _inference

__all__ = ["inference_mode", "infer", "DEFAULT_CHUNK_BYTES"]

# Bytes of (input + output) of the largest layer per chunk. Chunks of this size cost no speed
# (cnn7, batch 500, 1 thread: see benchmarks/bench_inference.py --chunks) and bound the memory.
DEFAULT_CHUNK_BYTES = 16 << 20


@contextlib.contextmanager
def inference_mode():
    """Within the block (in this Python thread), forward keeps no activations; a ``backward``
    after such a forward raises RuntimeError, and ops allocate plain arrays (the output pool keeps
    the blocks it hands out, so it would hold every layer's output). Does not change train/eval
    mode."""
    previous = getattr(_inference, "on", False)
    _inference.on = True
    try:
        with F.unpooled_outputs():
            yield
    finally:
        _inference.on = previous


def _peak_elements(module, shape):
    """(output shape, largest input + output element count of one leaf layer) for ``shape``;
    children are taken to run in order (``Sequential``)."""
    children = list(module.children())
    if not children:
        out = tuple(module.output_shape(shape))
        return out, math.prod(shape) + math.prod(out)
    peak = 0
    for child in children:
        shape, p = _peak_elements(child, shape)
        peak = max(peak, p)
    return shape, peak


def _chunk_size(model, x, max_chunk_bytes):
    """Images per chunk so that the largest layer's input + output fit ``max_chunk_bytes``."""
    try:
        _, per_image = _peak_elements(model, (1,) + x.shape[1:])
    except (ValueError, TypeError, IndexError):
        return len(x)  # shapes the layers reject: one pass, so forward reports the error itself
    return max(1, min(len(x), max_chunk_bytes // max(1, per_image * x.itemsize)))


def infer(model, x, max_chunk_bytes=DEFAULT_CHUNK_BYTES):
    """``model``'s eval-mode output for the batch ``x``, keeping no activations.

    The batch runs in chunks of whole images sized so that the input + output of the largest
    layer stay within ``max_chunk_bytes`` (None: the whole batch at once); peak memory is then
    the output plus about ``max_chunk_bytes``, for any batch size. The result equals
    ``model.eval().forward(x)`` up to float rounding (GEMM blocking can depend on the batch
    size). Modules in training mode are switched to eval mode for the call and back (do not
    train the model from another thread meanwhile; an eval-mode model is left untouched, so
    concurrent ``infer`` calls on it are safe). Forward hooks see each chunk.
    """
    plain_array(x, "infer: x")
    if x.ndim < 1:
        raise ValueError(f"infer: x must have a batch axis, got a 0-d array (shape {x.shape})")
    if max_chunk_bytes is None:
        chunk = len(x)
    else:  # (one image needs no shape walk)
        budget = positive_int(max_chunk_bytes, "max_chunk_bytes")
        chunk = _chunk_size(model, x, budget) if len(x) > 1 else len(x)
    # only modules in training mode are switched (and back): an eval-mode model is never
    # written to, so several Python threads may run infer on it at once
    training = [m for _, m in model.named_modules() if m.training]
    for m in training:
        m.training = False
    try:
        with inference_mode():
            if chunk >= len(x):
                return model.forward(x)
            y = model.forward(x[:chunk])
            out = np.empty((len(x),) + y.shape[1:], dtype=y.dtype)
            out[:chunk] = y
            del y
            for i in range(chunk, len(x), chunk):
                out[i:i + chunk] = model.forward(x[i:i + chunk])
            return out
    finally:
        for m in training:
            m.training = True
