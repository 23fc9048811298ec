"""Weight initializers, each drawing from an explicit ``numpy.random.Generator`` (reproducible).

Functions take ``(shape, rng, dtype)`` and return a new array. Fans follow PyTorch:
``fan_in = shape[1] * prod(shape[2:])``, ``fan_out = shape[0] * prod(shape[2:])`` (conv weights
``(C_out, C_in, kh, kw)``, linear weights ``(out, in)``).

``init_from_spec`` turns a CLI string into an ``Initializer`` (a callable ``init(shape, rng, dtype)``
for weights with a ``bias(shape, fan_in, rng, dtype)`` method). Biases start at zero for every spec
except ``torch`` (PyTorch's default layer init, bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))).
"""
import math

import numpy as np

from .._validation import float_dtype, from_text, nonnegative_float

__all__ = ["fans", "uniform", "normal", "kaiming_normal", "kaiming_uniform", "he_normal", "he_uniform",
           "glorot_uniform", "glorot_normal", "xavier_uniform", "xavier_normal", "zeros", "torch_default",
           "Initializer", "init_from_spec", "SPEC_FORMS"]

RELU_GAIN = math.sqrt(2.0)

SPEC_FORMS = ("uniform:A (U(-A, A))", "normal:STD (N(0, STD^2))", "he | kaiming | he_normal | kaiming_normal",
              "he_uniform | kaiming_uniform", "glorot | xavier | glorot_uniform | xavier_uniform",
              "glorot_normal | xavier_normal", "torch | default (PyTorch's default layer init)", "zeros")


def fans(shape):
    """(fan_in, fan_out) of a weight of ``shape`` (PyTorch's convention)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"fans need a weight with >= 2 dimensions, got shape {shape}")
    # Python ints: np.prod would wrap around in int64 for huge kernels (fan 0 -> division by zero)
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def uniform(shape, a, rng, dtype=np.float32):
    """U(-a, a): the small-initialization experiment's weights."""
    a = nonnegative_float(a, "uniform bound a")
    return rng.uniform(-a, a, size=shape).astype(float_dtype(dtype))


def normal(shape, std, rng, dtype=np.float32):
    """N(0, std^2)."""
    std = nonnegative_float(std, "normal std")
    return (rng.standard_normal(size=shape) * std).astype(float_dtype(dtype))


def _fan(shape, mode):
    fan_in, fan_out = fans(shape)
    if mode == "fan_in":
        return fan_in
    if mode == "fan_out":
        return fan_out
    raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")


def kaiming_normal(shape, rng, dtype=np.float32, mode="fan_in", gain=RELU_GAIN):
    """He et al. (2015): N(0, gain^2 / fan), gain sqrt(2) for ReLU."""
    return normal(shape, gain / math.sqrt(_fan(shape, mode)), rng, dtype)


def kaiming_uniform(shape, rng, dtype=np.float32, mode="fan_in", gain=RELU_GAIN):
    """He uniform: U(-b, b) with b = gain * sqrt(3 / fan) (same variance as ``kaiming_normal``)."""
    return uniform(shape, gain * math.sqrt(3.0 / _fan(shape, mode)), rng, dtype)


he_normal = kaiming_normal
he_uniform = kaiming_uniform


def glorot_uniform(shape, rng, dtype=np.float32, gain=1.0):
    """Glorot & Bengio (2010): U(-b, b), b = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(shape)
    return uniform(shape, gain * math.sqrt(6.0 / (fan_in + fan_out)), rng, dtype)


def glorot_normal(shape, rng, dtype=np.float32, gain=1.0):
    """N(0, gain^2 * 2 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(shape)
    return normal(shape, gain * math.sqrt(2.0 / (fan_in + fan_out)), rng, dtype)


xavier_uniform = glorot_uniform
xavier_normal = glorot_normal


def zeros(shape, rng=None, dtype=np.float32):
    return np.zeros(shape, dtype=float_dtype(dtype))


def torch_default(shape, rng, dtype=np.float32):
    """PyTorch's default Conv2d/Linear weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return uniform(shape, 1.0 / math.sqrt(fans(shape)[0]), rng, dtype)


class Initializer:
    """A named weight initializer: ``init(shape, rng, dtype)`` -> array; ``init.bias(...)`` for biases."""

    def __init__(self, spec, weight_fn, bias_fn=None):
        self.spec = spec
        self._weight_fn = weight_fn
        self._bias_fn = bias_fn

    def __call__(self, shape, rng, dtype=np.float32):
        return self._weight_fn(shape, rng, dtype)

    def bias(self, shape, fan_in, rng, dtype=np.float32):
        if self._bias_fn is None:
            return zeros(shape, dtype=dtype)
        return self._bias_fn(shape, fan_in, rng, dtype)

    def __repr__(self):
        return f"Initializer({self.spec!r})"


def _torch_bias(shape, fan_in, rng, dtype):
    return uniform(shape, 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0, rng, dtype)


_NAMED = {
    "he": kaiming_normal, "kaiming": kaiming_normal,
    "he_normal": kaiming_normal, "kaiming_normal": kaiming_normal,
    "he_uniform": kaiming_uniform, "kaiming_uniform": kaiming_uniform,
    "glorot": glorot_uniform, "xavier": glorot_uniform, "glorot_uniform": glorot_uniform,
    "xavier_uniform": glorot_uniform, "glorot_normal": glorot_normal, "xavier_normal": glorot_normal,
    "zeros": zeros,
}


def _bad_spec(spec, why):
    return ValueError(f"bad init spec {spec!r} ({why}); allowed forms: " + ", ".join(SPEC_FORMS))


def init_from_spec(spec):
    """Parse "uniform:0.001", "normal:0.01", "he", "kaiming", "glorot", "xavier", "torch", ...

    An ``Initializer`` is returned unchanged; a plain callable ``fn(shape, rng, dtype)`` is wrapped
    (zero biases). A bad string raises ValueError naming the allowed forms; anything else
    TypeError.
    """
    if isinstance(spec, Initializer):
        return spec
    if callable(spec):
        return Initializer(getattr(spec, "__name__", repr(spec)), spec)
    if not isinstance(spec, str):
        raise TypeError(f"init spec must be a string (allowed forms: {', '.join(SPEC_FORMS)}) or a "
                        f"callable, got {type(spec).__name__}")
    text = spec.strip().lower()
    kind, sep, arg = text.partition(":")
    if kind in ("uniform", "normal"):
        if not sep or not arg:
            raise _bad_spec(spec, f"{kind} needs a number, e.g. {kind}:0.001")
        try:
            value = from_text(arg, nonnegative_float, "the " + ("bound" if kind == "uniform" else "std"))
        except ValueError as e:
            raise _bad_spec(spec, str(e)) from None
        fn = uniform if kind == "uniform" else normal
        return Initializer(f"{kind}:{arg}", lambda shape, rng, dtype=np.float32: fn(shape, value, rng, dtype))
    if sep:
        raise _bad_spec(spec, f"{kind!r} takes no argument")
    if kind in ("torch", "default"):
        return Initializer(kind, torch_default, _torch_bias)
    if kind in _NAMED:
        return Initializer(kind, _NAMED[kind])
    raise _bad_spec(spec, f"unknown initializer {kind!r}")
