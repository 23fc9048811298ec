"""Argument checking for every floor of cybn: the one place the error policy lives.

Policy:
- a wrong type is a ``TypeError``, a wrong value a ``ValueError``; the message names the
  argument and what was found (its type and value, or the shape / dtype of an array);
- integers are Python or NumPy integers, never bools and never floats: ``2.7`` (or ``2.0``) is a
  TypeError, not silently truncated;
- real numbers are ints or floats (not bools, strings, complex numbers or arrays) and must be
  finite: NaN, +-inf and a Python int too large for a float (``10**400``) are ValueErrors;
- arrays must be numpy ndarrays of float32 or float64 (TypeError otherwise; no silent casts,
  because a float64 model fed float32 data, or ints, is almost always a bug);
- all float operands of one call share one dtype (TypeError naming both);
- non-contiguous input (views, negative strides, Fortran order) is **copied** to C order,
  never rejected: the result is the same, only a copy slower;
- ndarray subclasses (np.matrix, np.ma.MaskedArray, memmap-like wrappers, ...) are **rejected**
  (TypeError naming the type): the kernels would silently ignore what makes them special (a
  MaskedArray's mask, np.matrix's 2-D semantics), and outputs are always plain ndarrays. Call
  ``np.asarray(x)`` (or fill masked values) first. The same rule holds in nn layers;
- shapes are checked against each other and reported in the message (ValueError);
- integer geometry (kernel size, stride, padding) must be <= MAX_INT = 2**31 - 1, because the
  kernels do their index arithmetic in C int; ops also bound the sizes derived from it.

Command-line options and environment variables are parsed with the same checkers
(``from_text``; ``arg_type`` builds argparse types from them), so a bad value reads the same
everywhere. Imports only numpy and the standard library (base floor).
"""
import argparse
import math
import numbers

import numpy as np

__all__ = ["MAX_INT", "FLOAT_DTYPES", "is_integer", "integer", "positive_int", "nonnegative_int",
           "pair", "flag", "real", "finite_float", "nonnegative_float", "positive_float", "choice",
           "float_dtype", "plain_array", "check_float_array", "ndim_is", "float_array", "uint8_images", "shape_is",
           "generator", "as_generator", "conv_output_size", "from_text", "arg_type", "comma_list",
           "positive_int_arg", "nonnegative_float_arg", "positive_float_arg", "probability_arg", "spec_arg"]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Largest kernel size / stride / padding (and derived per-plane sizes) the C-int kernels accept.
MAX_INT = 2**31 - 1


def _found(v):
    """``v`` for a message: its type and a repr cut to a readable length."""
    if isinstance(v, np.ndarray):
        return f"{type(v).__name__} of shape {v.shape} and dtype {v.dtype}"
    r = repr(v)
    if len(r) > 40:
        r = r[:30] + f"... ({len(r)} characters)"
    return f"{type(v).__name__} {r}"


# ---- scalars -------------------------------------------------------------------------------

def is_integer(v):
    """True for a Python / NumPy integer; False for bools (``True`` is not a count) and floats."""
    if type(v) is int:  # the common case, without the ABC check (~1 us between kernels)
        return True
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def integer(v, name, minimum=None, maximum=None):
    """``v`` as a Python int within [minimum, maximum] (either bound may be None)."""
    if not is_integer(v):
        raise TypeError(f"{name} must be an integer, got {_found(v)}")
    v = int(v)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {v}")
    return v


def positive_int(v, name, maximum=None):
    """An integer >= 1 (and <= ``maximum`` if given)."""
    return integer(v, name, 1, maximum)


def nonnegative_int(v, name, maximum=None):
    """An integer >= 0 (and <= ``maximum`` if given)."""
    return integer(v, name, 0, maximum)


positive_int.parse = nonnegative_int.parse = integer.parse = int  # how from_text reads them


def pair(v, name, check=positive_int, maximum=MAX_INT):
    """An int or a 2-sequence of ints, as a validated (h, w) tuple, each <= ``maximum``
    (geometry: the kernels index in C int)."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair (h, w), got {v!r}")
        return check(v[0], name, maximum), check(v[1], name, maximum)
    v = check(v, name, maximum)
    return v, v


def flag(v, name):
    """A bool (``np.bool_`` too): anything else is a TypeError, not a truth-value guess."""
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool (True or False), got {_found(v)}")
    return bool(v)


def _interval(minimum, maximum, exclusive_minimum, exclusive_maximum):
    if minimum is not None and maximum is not None:
        return (f"in {'(' if exclusive_minimum else '['}{minimum:g}, "
                f"{maximum:g}{')' if exclusive_maximum else ']'}")
    if minimum is not None:
        return f"{'>' if exclusive_minimum else '>='} {minimum:g}"
    if maximum is not None:
        return f"{'<' if exclusive_maximum else '<='} {maximum:g}"
    return ""


def real(v, name, minimum=None, maximum=None, exclusive_minimum=False, exclusive_maximum=False):
    """A finite real number as a Python float, within the given bounds (None: unbounded)."""
    # a Python float (the common case: every optimizer step passes several) skips the ABC check
    if type(v) is not float and (isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real)):
        raise TypeError(f"{name} must be a real number, got {_found(v)}")
    try:
        f = float(v)
    except OverflowError:  # a Python int beyond the float range (10**400)
        raise ValueError(f"{name} must be {_wanted(minimum, maximum, exclusive_minimum, exclusive_maximum)}, "
                         f"got an integer too large for a float ({len(str(abs(v)))} digits)") from None
    if not math.isfinite(f) or (minimum is not None and (f <= minimum if exclusive_minimum else f < minimum)) \
            or (maximum is not None and (f >= maximum if exclusive_maximum else f > maximum)):
        raise ValueError(f"{name} must be {_wanted(minimum, maximum, exclusive_minimum, exclusive_maximum)}, "
                         f"got {f!r}")
    return f


def _wanted(*bounds):
    """What ``real`` asks for, in words (built only for the error message)."""
    return " ".join(filter(None, ("a finite number", _interval(*bounds))))


def finite_float(v, name):
    """Any finite real number."""
    return real(v, name)


def nonnegative_float(v, name):
    """A finite real number >= 0."""
    return real(v, name, minimum=0.0)


def positive_float(v, name):
    """A finite real number > 0."""
    return real(v, name, minimum=0.0, exclusive_minimum=True)


def choice(v, name, choices):
    """One of the strings ``choices``."""
    if not isinstance(v, str):
        raise TypeError(f"{name} must be one of {tuple(choices)}, got {_found(v)}")
    if v not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {v!r}")
    return v


def float_dtype(dtype, name="dtype"):
    """``dtype`` as a numpy dtype, restricted to float32/float64 (TypeError otherwise)."""
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be float32 or float64, got {_found(dtype)}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {dt}")
    return dt


def generator(rng, name="rng"):
    """A ``numpy.random.Generator`` itself (no seed: a seed would replay the same draws per call)."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{name} must be a numpy.random.Generator, got {_found(rng)}")
    return rng


def as_generator(rng, name="rng"):
    """A ``numpy.random.Generator`` from a Generator, an int seed >= 0 or None (fresh OS entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        return np.random.default_rng()
    if not is_integer(rng):
        raise TypeError(f"{name} must be a numpy.random.Generator, an int seed or None, got {_found(rng)}")
    return np.random.default_rng(nonnegative_int(rng, f"{name} (an int seed)"))


# ---- arrays --------------------------------------------------------------------------------

def plain_array(a, name):
    """``a`` itself when it is a plain ``numpy.ndarray``; TypeError for anything else, naming
    the subclass (its extra semantics, e.g. a mask, would be ignored)."""
    if type(a) is not np.ndarray:
        if isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a plain numpy.ndarray, got the subclass {type(a).__name__} "
                            "(its extra semantics, e.g. a mask, would be ignored: pass np.asarray(...) "
                            "or a filled copy)")
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    return a


def check_float_array(x, name, ndim=None, dtype=None):
    """``x`` itself after checking it is a plain float32/float64 ndarray (of rank ``ndim``, an
    int or a tuple of allowed ranks, and of ``dtype``, the other operands' dtype, when given)."""
    plain_array(x, name)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but the other operands are {np.dtype(dtype)}")
    if ndim is not None:
        ndim_is(x, ndim, name)
    return x


def ndim_is(x, ndim, name):
    """Raise ValueError unless ``x.ndim`` is ``ndim`` (an int or a tuple of allowed ranks)."""
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if x.ndim not in allowed:
        want = " or ".join(str(a) for a in allowed)
        raise ValueError(f"{name} must have {want} dimensions, got shape {x.shape}")
    return x


def in_place(a, name):
    """``a`` itself when it can be updated in place: C-contiguous and writeable (ValueError
    otherwise; a copy would silently take the update instead)."""
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} is updated in place and must be C-contiguous, got strides {a.strides}")
    if not a.flags.writeable:
        raise ValueError(f"{name} is updated in place and must be writeable")
    return a


def weight_grad_out(out, weight, inputs):
    """The ``out=(dweight, dbias)`` of a backward op as (dweight, dbias), each None where not
    given (``out=None``, or ``dbias`` None): arrays the kernel writes the gradients into, so
    they must be plain ndarrays of weight's dtype (TypeError), of weight's shape and
    (weight.shape[0],), C-contiguous, writeable, and share no memory with each other or the
    ``inputs`` (a dict name -> array) the kernel reads while it writes (ValueError)."""
    if out is None:
        return None, None
    if not isinstance(out, tuple) or len(out) != 2:
        raise TypeError(f"out must be a (dweight, dbias) tuple of arrays (dbias may be None), "
                        f"got {type(out).__name__}")
    shapes = {"dweight": weight.shape, "dbias": weight.shape[:1]}
    for name, a in zip(shapes, out):
        if a is None and name == "dbias":
            continue
        plain_array(a, f"out's {name}")
        if a.dtype != weight.dtype:
            raise TypeError(f"out's {name} must have weight's dtype {weight.dtype}, got {a.dtype}")
        if a.shape != shapes[name]:
            raise ValueError(f"out's {name} must have shape {shapes[name]}, got {a.shape}")
        in_place(a, f"out's {name}")
        for other, b in inputs.items():
            if np.may_share_memory(a, b):
                raise ValueError(f"out's {name} must not share memory with {other}")
    if out[1] is not None and np.may_share_memory(*out):
        raise ValueError("out's dweight and dbias must not share memory")
    return out


def float_array(x, name, ndim=None, dtype=None):
    """``check_float_array``, then ``x`` as a C-contiguous array (copied only if it is not)."""
    return np.ascontiguousarray(check_float_array(x, name, ndim, dtype))


def uint8_images(images, name="images"):
    """``images`` as a C-contiguous uint8 NCHW array (pixels 0..255), or raise naming the problem."""
    plain_array(images, name)
    if images.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8 pixels (0..255), got {images.dtype}")
    if images.ndim != 4:
        raise ValueError(f"{name} must be NCHW (4 dimensions), got shape {images.shape}")
    return np.ascontiguousarray(images)


def shape_is(x, shape, name):
    """Raise ValueError unless ``x.shape == shape``."""
    if x.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {x.shape}")
    return x


def conv_output_size(size, kernel_size, stride=1, padding=0):
    """(Ho, Wo) of a 2-D sliding window (convolution, pooling; floor mode, as PyTorch):
    ``Ho = (H + 2*ph - kh) // sh + 1``. Each argument is an (h, w) pair or one int for both;
    the arguments are assumed validated."""
    pairs = [tuple(v) if isinstance(v, (tuple, list)) else (v, v)
             for v in (size, kernel_size, stride, padding)]
    return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(*pairs))


# ---- text (command-line options, environment variables) -------------------------------------

def from_text(text, checker, name="value", parse=None, **bounds):
    """Parse ``text`` (``parse``: ``int`` for the integer checkers, else ``float``) and run
    ``checker(value, name, **bounds)``; a ValueError in either step names ``name``."""
    if not isinstance(text, str):
        raise TypeError(f"{name} must be given as text, got {_found(text)}")
    if parse is None:
        parse = getattr(checker, "parse", float)
    try:
        value = parse(text.strip())
    except (TypeError, ValueError, OverflowError):
        what = "an integer" if parse is int else "a number"
        raise ValueError(f"{name} must be {what}, got {text!r}") from None
    try:
        return checker(value, name, **bounds)
    except TypeError as e:  # parse gave a type the checker refuses: still a bad value of text
        raise ValueError(str(e)) from None


def arg_type(checker, parse=None, name="value", **bounds):
    """An argparse ``type=`` from a checker: ``add_argument("--epochs", type=arg_type(positive_int))``.

    The returned function parses the option text and runs the checker; a bad value raises
    ``argparse.ArgumentTypeError`` with the checker's message, which argparse prints after the
    option name ("argument --epochs: value must be >= 1, got 0").
    """
    def convert(text):
        try:
            return from_text(text, checker, name, parse, **bounds)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = convert.__qualname__ = checker.__name__
    return convert


def comma_list(kind=str):
    """An argparse ``type=`` for ``"a,b,,c"`` -> ``("a", "b", "c")``, each item converted by ``kind``."""
    def parse(text):
        try:
            return tuple(kind(v) for v in text.split(",") if v)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind.__name__} values, got {text!r}") from None
    return parse


# Ready-made option types shared by the CLI and the experiments' commands.
positive_int_arg = arg_type(positive_int)
nonnegative_float_arg = arg_type(nonnegative_float)
positive_float_arg = arg_type(positive_float)
probability_arg = arg_type(real, minimum=0.0, maximum=1.0, exclusive_maximum=True)


def spec_arg(check):
    """An argparse ``type=`` for a text spec (an init or schedule string): ``check(text)`` raises
    on a bad spec; the option's value is the text itself."""
    def checker(text, name):
        check(text)
        return text
    checker.__name__ = getattr(check, "__name__", "spec")
    return arg_type(checker, parse=str)
