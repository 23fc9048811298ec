"""Fold eval-mode BatchNorm into the convolution or linear layer before it.

At inference BN is a fixed per-channel affine map y = (z - mean) * s + beta with
s = gamma / sqrt(var + eps), so after z = W x + b it can be absorbed into the layer:
W' = W * s (per output channel), b' = (b - mean) * s + beta (b = 0 without a bias). The folded
parameters are computed in float64 and rounded once to the layer's dtype.
"""
import copy

import numpy as np

from .layers import BatchNorm1D, BatchNorm2D, Conv2D, Linear
from .module import Module

__all__ = ["fuse_batchnorm"]

# (layer type, the BN type that can follow it): the BN normalises exactly the layer's outputs
_FOLDABLE = ((Conv2D, BatchNorm2D), (Linear, BatchNorm1D))


def _foldable(layer, bn):
    return any(type(layer) is lt and type(bn) is bt for lt, bt in _FOLDABLE) \
        and bn.num_features == layer.params["weight"].shape[0] and bn.dtype == layer.dtype


def _fold(layer, bn):
    """Fold ``bn`` into ``layer`` (a copy owned by the fused model), in place."""
    w = layer.params["weight"]
    gamma = bn.params["weight"].astype(np.float64) if bn.affine else 1.0
    beta = bn.params["bias"].astype(np.float64) if bn.affine else 0.0
    scale = gamma / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
    b = layer.params["bias"].astype(np.float64) if "bias" in layer.params else 0.0
    w64 = w.astype(np.float64) * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    layer.params["weight"] = w64.astype(layer.dtype)
    layer.params["bias"] = ((b - bn.running_mean.astype(np.float64)) * scale + beta).astype(layer.dtype)
    layer.grads = {k: np.zeros_like(v) for k, v in layer.params.items()}


def _fuse_layers(layers):
    out = []
    for layer in layers:
        if layer.children():
            layer.layers = _fuse_layers(layer.children())  # a nested Sequential: fold inside it
        elif out and _foldable(out[-1], layer):
            _fold(out[-1], layer)
            continue
        out.append(layer)
    return out


def fuse_batchnorm(model):
    """An eval-mode copy of the ``Sequential`` ``model`` in which every ``BatchNorm2D`` right after
    a ``Conv2D`` and every ``BatchNorm1D`` right after a ``Linear`` is folded into that layer
    (which gains a bias if it had none). A BN with no such layer before it stays, in eval mode.
    ``model`` itself is not modified; the copy has no forward hooks. Outputs equal ``model.eval()``'s up to float rounding.

    A model with any module in training mode is refused (ValueError): training-mode BN
    normalises with each batch's own statistics, which no fixed weights can reproduce.
    """
    if not isinstance(model, Module) or not hasattr(model, "layers"):
        raise TypeError(f"fuse_batchnorm expects a cybn.nn.Sequential, got {type(model).__name__}")
    training = [prefix.rstrip(".") or "the model" for prefix, m in model.named_modules() if m.training]
    if training:
        raise ValueError(f"fuse_batchnorm needs a model in eval mode (call model.eval() first); in "
                         f"training mode ({', '.join(training[:3])}{', ...' if len(training) > 3 else ''}) "
                         "BatchNorm normalises with each batch's own statistics, which cannot be "
                         "folded into fixed weights")
    # cached activations are not copied (memo maps them to None); hooks name layer indices
    # that fusion shifts, so the copy has none
    memo = {id(m._cache): None for _, m in model.named_modules() if m._cache is not None}
    fused = copy.deepcopy(model, memo)
    fused.clear_cache()
    fused._hooks = {}
    fused.layers = _fuse_layers(fused.layers)
    # the first layer's input-gradient flag follows the container, as in Sequential.__init__
    fused.needs_input_grad = model.needs_input_grad
    return fused.eval()
