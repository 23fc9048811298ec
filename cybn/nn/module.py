"""The ``Module`` base class shared by every layer and by ``Sequential``.

Conventions (the same for all layers):

- ``params`` / ``grads``: dicts name -> ndarray with PyTorch's names (``weight``, ``bias``).
  ``grads[k]`` always has ``params[k]``'s shape and dtype and is allocated once, at construction.
- **Gradients are overwritten, not accumulated**: ``backward(dy)`` writes the gradient of the
  current batch into ``grads`` *in place* (Conv2D's and Linear's kernels write straight into them
  through the ops' ``out=``; others copy), so one forward/backward per step needs no
  ``zero_grad()``; call ``zero_grad()`` only if you want zeros. PyTorch accumulates instead; we do
  not, because SGD consumes one batch per step and accumulating would cost a pass over every grad.
  Because params and grads are only ever updated in place, an optimizer can keep references to them
  (and ``load_state_dict`` copies into them) without ever going stale.
- ``buffers``: non-trained state (BatchNorm's running statistics, ``num_batches_tracked``).
  ``copy_buffers()`` / ``restore_buffers(snapshot)`` save and put back all of a model's buffers
  (e.g. around an evaluation that must not move them), so nobody writes ``buffers`` from outside.
- ``no_weight_decay``: the names of a layer's params that an optimizer built with
  ``decay_bn_and_bias=False`` (SGD, Adam, AdamW) leaves undecayed besides every ``bias``
  (BatchNorm declares ``{"weight", "bias"}``: its gain and shift set a scale, not a fit, and
  decaying them only fights the normalisation). A class attribute,
  so a new layer opts in by declaring it; the optimizer never needs to know layer types.
- ``forward(x)`` keeps what ``backward`` needs in a cache; ``backward(dy)`` consumes it (and frees
  it), so calling ``backward`` before ``forward`` (or twice) raises ``RuntimeError``.
- ``backward(dy)`` validates ``dy`` first (``check_grad_output``: a plain ndarray with the forward
  output's shape and dtype; TypeError/ValueError otherwise, and the cache is kept for a retry).
- arrays must be plain ``numpy.ndarray``: subclasses (``np.ma.MaskedArray``, ``np.matrix``) are
  rejected with TypeError, because their extra semantics (a mask, matrix products) would be ignored.
- a layer with parameters has a ``dtype`` (float32 default, float64 for gradient checks) kept by
  params, grads and float buffers; an input of another dtype raises ``TypeError`` naming both.
"""
import threading
from collections.abc import Mapping

import numpy as np

from .._validation import flag, ndim_is, plain_array


class Recomputed:
    """A cache entry a fused forward did not store (e.g. the ReLU output inside BN -> ReLU ->
    max-pool), built by ``build()`` on first use: only when that layer's own backward runs
    instead of the fused one. Keyword arguments stay as attributes for the fused backward."""
    _UNBUILT = object()

    def __init__(self, build, **kept):
        self._build, self._value = build, self._UNBUILT
        self.__dict__.update(kept)

    def value(self):
        if self._value is self._UNBUILT:
            self._value, self._build = self._build(), None
        return self._value


# Inference mode (cybn.nn.inference): per Python thread; while on, forward keeps no
# activations and leaves this marker, so a backward that follows says why it cannot run.
_inference = threading.local()
_NO_CACHE = object()


def check_grad_output(dy, shape, dtype, owner):
    """Validate ``dy`` given to ``<owner>.backward``: a plain ndarray with exactly the forward
    output's ``shape`` and ``dtype`` (no broadcasting, no casts: a mismatch is a caller bug).
    The one place every layer's backward checks its incoming gradient."""
    what = f"{owner}.backward: dy (the gradient of the output)"
    plain_array(dy, what)
    if dy.dtype != dtype:
        raise TypeError(f"{what} has dtype {dy.dtype}, but the forward output has dtype {np.dtype(dtype)}")
    if dy.shape != tuple(shape):
        raise ValueError(f"{what} has shape {dy.shape}, but the forward output has shape {tuple(shape)}")
    return dy


def generator_state(rng):
    """The state of a PCG64 ``Generator`` as a uint64 array of 6 words (fits an .npz without pickle;
    e.g. to checkpoint a Dropout layer's ``rng`` so a resumed run draws the same masks)."""
    st = rng.bit_generator.state
    if st.get("bit_generator") != "PCG64":
        raise TypeError(f"only PCG64 generators are supported, got {st.get('bit_generator')}")
    m = (1 << 64) - 1
    s, inc = st["state"]["state"], st["state"]["inc"]
    return np.array([s >> 64, s & m, inc >> 64, inc & m, st["has_uint32"], st["uinteger"]], dtype=np.uint64)


def set_generator_state(rng, words):
    """Restore a state produced by ``generator_state`` into the PCG64 ``Generator`` ``rng``."""
    w = [int(v) for v in np.asarray(words, dtype=np.uint64).reshape(-1)]
    if len(w) != 6:
        raise ValueError(f"a generator state has 6 uint64 words, got {len(w)}")
    rng.bit_generator.state = {"bit_generator": "PCG64",
                               "state": {"state": (w[0] << 64) | w[1], "inc": (w[2] << 64) | w[3]},
                               "has_uint32": w[4], "uinteger": w[5]}


class Module:
    """Base class: a differentiable layer with ``forward``/``backward`` and named state."""

    # names of params exempt from weight decay under decay_bn_and_bias=False; see above
    no_weight_decay = frozenset()

    def __init__(self):
        self.params = {}
        self.grads = {}
        self.buffers = {}
        self.training = True
        # False: backward may skip the input gradient (Sequential sets it for its first layer).
        self.needs_input_grad = True
        self._cache = None

    # ---- mode -------------------------------------------------------------------------------
    def train(self, mode=True):
        """Training mode (BatchNorm uses batch statistics, Dropout drops). Returns self."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Inference mode (BatchNorm uses running statistics, Dropout is the identity). Returns self."""
        return self.train(False)

    # ---- computation --------------------------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    def _save_for_backward(self, cache, y):
        """Keep ``cache`` for ``backward`` along with the output's shape and dtype (to check dy)."""
        if getattr(_inference, "on", False):  # inference mode: no backward will come
            self._cache = _NO_CACHE
            return
        self._cache = (cache, y.shape, y.dtype)

    def _pop_cache(self, dy, resolve=True, check=True):
        """The cache saved by forward, after validating ``dy`` against the forward output
        (``check_grad_output``); the cache is consumed only when ``dy`` is valid. ``check=False``:
        a fused backward, whose ``dy`` belongs to a later layer and was validated there.
        ``resolve``: a ``Recomputed`` cache is returned built (else as it is)."""
        if self._cache is _NO_CACHE:
            raise RuntimeError(f"{type(self).__name__}.backward() after an inference forward (infer(), "
                               "predict or inference_mode keep no activations): run forward() outside "
                               "inference mode on the batch first")
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward() called before forward() "
                               "(no cached activations: run forward on the batch first; "
                               "backward consumes the cache, so it cannot run twice)")
        cache, shape, dtype = self._cache
        if check:
            check_grad_output(dy, shape, dtype, type(self).__name__)
        self._cache = None
        return cache.value() if resolve and isinstance(cache, Recomputed) else cache

    def clear_cache(self):
        """Drop the activations kept for backward (frees memory after inference)."""
        self._cache = None

    def _check_input(self, x, ndim=None):
        """TypeError unless ``x`` is an ndarray of this layer's dtype; ValueError on a wrong rank."""
        name = type(self).__name__
        plain_array(x, f"{name}'s input x")
        if x.dtype != self.dtype:
            raise TypeError(f"{name} has dtype {self.dtype} but its input has dtype {x.dtype} "
                            f"(convert the input with .astype(np.{self.dtype}) or build the layer "
                            f"with dtype=np.{x.dtype})")
        if ndim is not None:
            ndim_is(x, ndim, f"{name}'s input x")
        return x

    # ---- parameters / state -------------------------------------------------------------------
    def children(self):
        """Sub-modules (``Sequential`` has some; plain layers none)."""
        return []

    def named_modules(self, prefix=""):
        """(qualified prefix, module) for this module and every descendant."""
        yield prefix, self
        for i, child in enumerate(self.children()):
            yield from child.named_modules(f"{prefix}{i}.")

    def named_parameters(self, prefix=""):
        """Iterator of (qualified name, param, grad, layer) — e.g. ("0.weight", w, dw, conv)."""
        for module_prefix, module in self.named_modules(prefix):
            for name, p in module.params.items():
                yield module_prefix + name, p, module.grads[name], module

    def parameters(self):
        """Iterator of the parameter arrays."""
        for _, p, _, _ in self.named_parameters():
            yield p

    def num_parameters(self):
        return int(sum(p.size for p in self.parameters()))

    def zero_grad(self):
        """Fill every gradient with zeros (not needed between steps: backward overwrites)."""
        for _, module in self.named_modules():
            for g in module.grads.values():
                g.fill(0)

    def state_dict(self):
        """Copies of params then buffers under PyTorch's keys ("0.weight", "1.running_var", ...)."""
        state = {}
        for prefix, module in self.named_modules():
            for name, p in module.params.items():
                state[prefix + name] = p.copy()
            for name, b in module.buffers.items():
                state[prefix + name] = np.array(b, copy=True)
        return state

    def _buffer_targets(self):
        return {prefix + name: b for prefix, module in self.named_modules()
                for name, b in module.buffers.items()}

    def copy_buffers(self):
        """A snapshot of every buffer in the module tree (copies); opaque: hand it to
        ``restore_buffers``."""
        return {key: np.array(b, copy=True) for key, b in self._buffer_targets().items()}

    def restore_buffers(self, snapshot):
        """Copy a ``copy_buffers()`` snapshot of this model back into its buffers, in place (arrays
        held elsewhere, e.g. by an optimizer or a probe, stay valid). ValueError if the snapshot
        comes from a model with other buffers."""
        if not isinstance(snapshot, Mapping):
            raise TypeError(f"snapshot must come from copy_buffers(), got {type(snapshot).__name__}")
        targets = self._buffer_targets()
        if set(snapshot) != set(targets):
            raise ValueError(f"the snapshot holds buffers {sorted(snapshot)}, this {type(self).__name__} "
                             f"has {sorted(targets)}: it comes from another model")
        for key, target in targets.items():
            if np.shape(snapshot[key]) != target.shape:
                raise ValueError(f"snapshot buffer {key!r} has shape {np.shape(snapshot[key])}, "
                                 f"the model's has {target.shape}")
        for key, target in targets.items():
            np.copyto(target, snapshot[key], casting="unsafe")

    def _state_targets(self):
        targets = {}
        for prefix, module in self.named_modules():
            for name, p in module.params.items():
                targets[prefix + name] = p
            for name, b in module.buffers.items():
                targets[prefix + name] = b
        return targets

    def load_state_dict(self, state, strict=True):
        """Copy ``state`` (a mapping key -> array-like) into params and buffers, in place.

        Every value must have the target's shape and dtype (float tensors exactly; integer buffers
        such as ``num_batches_tracked`` accept any integer dtype) — no silent casts. ``strict``:
        missing or unexpected keys raise ``ValueError`` listing them all (bad input is always
        TypeError/ValueError). Nothing is modified unless every check passes.
        Returns ``(missing_keys, unexpected_keys)``.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping (e.g. the dict from state_dict()) of key -> array, "
                            f"got {type(state).__name__}")
        strict = flag(strict, "strict")
        targets = self._state_targets()
        missing = [k for k in targets if k not in state]
        unexpected = [k for k in state if k not in targets]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing key(s) {missing}")
            if unexpected:
                parts.append(f"unexpected key(s) {unexpected}")
            raise ValueError(f"error loading state_dict into {type(self).__name__}: " + "; ".join(parts))
        checked = []
        for key, target in targets.items():
            if key not in state:
                continue
            try:
                value = np.asarray(state[key])
            except (TypeError, ValueError) as e:
                raise TypeError(f"state_dict[{key!r}] is not an array ({type(state[key]).__name__}): {e}") from None
            if value.shape != target.shape:
                raise ValueError(f"state_dict[{key!r}] has shape {value.shape}, "
                                 f"the model expects {target.shape}")
            if target.dtype.kind == "f":
                ok = value.dtype == target.dtype
            else:
                ok = value.dtype.kind in "iu"
            if not ok:
                raise TypeError(f"state_dict[{key!r}] has dtype {value.dtype}, "
                                f"the model expects {target.dtype}")
            checked.append((target, value))
        for target, value in checked:
            np.copyto(target, value, casting="unsafe")
        return missing, unexpected

    # ---- description --------------------------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"

    def output_shape(self, input_shape):
        """Shape of the output for an input of ``input_shape`` (shape-preserving by default)."""
        return tuple(input_shape)
