#!/usr/bin/env python
"""Robustness fuzzer for cybn's public API (run in a subprocess by tests/test_fuzz.py).

    python tests/fuzz_driver.py --examples 1500 --seed 0 [--case-log FILE] [--only REGEX]

Hypothesis draws, for every target (each public function of cybn.functional, each layer of
cybn.nn incl. constructors, Sequential forward/backward, load_state_dict, cybn.data's
DataLoader and normalize), a valid call and then, most of the time, breaks it:

* ``valid``  - as the SPEC allows; must return the right shapes/dtypes, and (finite values) match
               cybn.reference within a dtype tolerance;
* ``layout`` - the valid arrays as Fortran-order / negative-stride / strided / read-only views;
               must succeed and give exactly the result of the C-contiguous call;
* ``values`` - NaN / Inf / 1e30 / denormals / ties in the data; must succeed with the right
               shapes and dtypes (no comparison);
* ``bad``    - one or two arguments replaced by something wrong (wrong dtype incl. int8/int64/
               bool/float16/complex/object, lists, None, scalars, strings, wrong rank/shape,
               zero-size dims, mixed float dtypes, negative/zero/huge/float/bool stride,
               padding and kernel sizes, out-of-range or float labels, ...). Allowed: a result
               that passes the same shape/dtype checks, or TypeError/ValueError whose message
               is non-empty and names an argument, a shape or a dtype.

Anything else (another exception type, a vague message, a wrong result, a hang, a signal death)
is recorded as a failure. Each case is described in ``--case-log`` (overwritten, flushed,
fsync'ed) *before* it runs, so when the process dies on a signal the parent can show the case
that killed it; faulthandler also prints the Python stack to stderr. A case running longer than
``--case-timeout`` seconds dumps the stacks and exits with status 3.

The last stdout line is JSON: {"cases": ..., "outcomes": {...}, "errors_by_type": {...},
"per_target": {...}, "failures": [...]}; the exit status is 0 whenever the run completed.
"""
import argparse
import collections
import copy
import faulthandler
import json
import math
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field

# cybn is imported from the environment (tests/conftest.py points PYTHONPATH at the cybn under
# test); run it by hand as: PYTHONPATH=<folder holding the built cybn> python tests/fuzz_driver.py

import numpy as np  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings, strategies as st  # noqa: E402
from hypothesis import seed as hyp_seed  # noqa: E402

import cybn  # noqa: E402
import cybn.functional as F  # noqa: E402
import cybn.reference as R  # noqa: E402
from cybn import nn  # noqa: E402
from cybn import data as D  # noqa: E402

FLOATS = (np.float32, np.float64)

# --------------------------------------------------------------------------------------------
# Describing values (for the case log and failure reports)

def describe(v, depth=0):
    if isinstance(v, np.ndarray):
        s = f"ndarray(shape={v.shape}, dtype={v.dtype}"
        if v.size and not (v.flags.c_contiguous):
            s += f", strides={v.strides}, F={v.flags.f_contiguous}"
        if not v.flags.writeable:
            s += ", readonly"
        if type(v) is not np.ndarray:
            s += f", type={type(v).__name__}"
        if v.size and v.dtype.kind == "f":
            with np.errstate(all="ignore"):
                s += f", nan={int(np.isnan(v).sum())}, inf={int(np.isinf(v).sum())}"
        if v.size <= 6 and v.dtype != object:
            s += f", values={v.ravel().tolist()}"
        return s + ")"
    if isinstance(v, (list, tuple)) and depth == 0 and len(v) > 6:
        return f"{type(v).__name__}(len={len(v)})"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k!r}: {describe(x, 1)}" for k, x in v.items()) + "}"
    r = repr(v)
    return r if len(r) < 120 else r[:117] + "..."


# --------------------------------------------------------------------------------------------
# Case model

@dataclass
class Case:
    target: str
    fn: object                       # fn(**args) -> result
    args: dict
    names: tuple = ()               # words a good error message may name
    array_args: tuple = ()          # args that are float data (layout / values mutations)
    check: object = None            # check(result, args) -> raises AssertionError if wrong
    ref: object = None              # ref(args) -> expected (compared with the result)
    ref_ok: bool = True             # the reference comparison is meaningful
    rtol32: float = 2e-3
    kind: str = "valid"
    mutated: tuple = ()
    allow: tuple = ()               # extra exception types allowed for this case (documented)
    oom_ok: bool = False
    setup: object = None            # setup() -> fresh state passed as args["_state"]
    extra: dict = field(default_factory=dict)


def _seeded(draw):
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1)))


def rand(rng, shape, dtype, flavor="normal"):
    shape = tuple(shape)
    if flavor == "ties":
        a = rng.integers(-2, 3, size=shape).astype(np.float64)
    else:
        a = rng.standard_normal(shape)
    return np.ascontiguousarray(a, dtype=dtype)


def spoil_values(rng, a, flavor):
    """Same shape/dtype, extreme values: NaN/Inf sprinkled, huge, denormal, all-equal."""
    a = np.array(a, copy=True)
    if a.size == 0:
        return a
    if flavor == "special":
        k = max(1, a.size // 4)
        idx = rng.integers(0, a.size, k)
        a.flat[idx] = rng.choice(np.array([np.nan, np.inf, -np.inf]), k).astype(a.dtype)
    elif flavor == "huge":
        a *= a.dtype.type(1e30 if a.dtype == np.float32 else 1e300)
    elif flavor == "tiny":
        a *= a.dtype.type(1e-42 if a.dtype == np.float32 else 1e-310)
    elif flavor == "constant":
        a[...] = a.flat[0]
    elif flavor == "allnan":
        a[...] = np.nan
    return a


def relayout(rng, a, how):
    """The same values in another memory layout (a new buffer, so the original stays intact)."""
    if not isinstance(a, np.ndarray) or a.ndim == 0:
        return a
    if how == "fortran":
        return np.asfortranarray(a)
    if how == "negative":
        axes = tuple(range(a.ndim))
        flipped = np.ascontiguousarray(np.flip(a, axes))
        return np.flip(flipped, axes)          # negative strides on every axis
    if how == "strided":
        big = np.zeros(tuple(2 * s + 1 for s in a.shape), dtype=a.dtype)
        view = big[tuple(slice(1, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if how == "readonly":
        b = a.copy()
        b.setflags(write=False)
        return b
    if how == "transposed-copy":
        b = np.ascontiguousarray(a.T).T        # a transposed view of a C array
        return b
    return a


LAYOUTS = ("fortran", "negative", "strided", "readonly", "transposed-copy")
VALUE_FLAVORS = ("special", "huge", "tiny", "constant", "allnan", "ties")


def bad_array_values(a, rng):
    """Replacements for an array argument; every one is wrong in some way (or exotic)."""
    if not isinstance(a, np.ndarray):
        a = np.asarray(a)
    out = [
        ("None", None), ("float", 1.5), ("int", 3), ("str", "x"), ("list", a.tolist()),
        ("tuple", tuple(np.atleast_1d(a).tolist())), ("0-d", np.array(1.0, a.dtype if a.dtype.kind == "f" else None)),
        ("np.float64 scalar", np.float64(1.0)),
        ("rank+1", a[None]), ("rank-1", a[..., 0] if a.ndim and a.shape[-1] else a.reshape(-1)),
        ("flat", a.reshape(-1)),
        ("object", a.astype(object)),
        ("empty", np.empty((0,), a.dtype)),
    ]
    for dt in (np.int8, np.int64, np.bool_, np.float16, np.complex64, np.complex128,
               np.float32, np.float64, np.uint8, np.uint64):
        if np.dtype(dt) != a.dtype:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    out.append((f"astype {np.dtype(dt)}", a.astype(dt)))
                except (OverflowError, TypeError, ValueError):  # an object array from an earlier mutation
                    pass
    if a.ndim:
        ax = int(rng.integers(a.ndim))
        for delta in (1, -1):
            shape = list(a.shape)
            shape[ax] = max(0, shape[ax] + delta)
            out.append((f"shape {tuple(shape)}", rand(rng, shape, a.dtype if a.dtype.kind == "f" else np.float64)))
        shape = list(a.shape)
        shape[ax] = 0
        out.append((f"zero-size {tuple(shape)}", np.zeros(shape, a.dtype)))
        shape = list(a.shape)
        shape[ax] = 1
        out.append((f"one {tuple(shape)}", rand(rng, shape, a.dtype if a.dtype.kind == "f" else np.float64)))
    if a.ndim == 4:  # huge-but-cheap spatial dims (kernels larger than the input, long thin planes)
        fd = a.dtype if a.dtype.kind == "f" else np.float64
        out.append(("tall (.., 41, 1)", rand(rng, a.shape[:2] + (41, 1), fd)))
        out.append(("wide (.., 1, 3000)", rand(rng, a.shape[:2] + (1, 3000), fd)))
        out.append(("empty plane (.., 0, 0)", np.zeros(a.shape[:2] + (0, 0), fd)))
    if a.ndim == 2:
        out.append(("matrix", np.asmatrix(a)))
    out.append(("masked", np.ma.masked_array(a)))
    out.append(("broadcast view", np.broadcast_to(np.ones((1,) * a.ndim, a.dtype if a.dtype.kind == "f" else np.float64), a.shape)))
    return out


BAD_INTS = [0, -1, -3, 2**31 - 1, 2**31, 2**40, 2**63, -(2**63), 10**30, 1.5, 2.0, float("nan"),
            float("inf"), True, False, None, "2", b"2", 1j, (1,), (1, 2, 3), (0, 1), (2, -1),
            [2, 2**40], (2**31, 1), (1.0, 1), np.int64(2), np.uint8(2), np.int32(-1), np.float64(2.0),
            np.array(2), np.array([2, 2]), (np.int64(1), np.int64(2)), (None, 1), object()]
BAD_FLOATS = [0, 0.0, -1e-5, float("nan"), float("inf"), -float("inf"), None, "1e-5", 1j, True,
              np.float32(1e-5), np.array(1e-5), np.array([1e-5, 1e-5]), 1e308, 1e-320, 10**400,
              -0.0, [1e-5], object()]


# --------------------------------------------------------------------------------------------
# Checks

def _is_float_array(a, dtype=None, shape=None, what="output", exact=True):
    assert isinstance(a, np.ndarray) and (type(a) is np.ndarray or not exact), f"{what} is {type(a).__name__}, not ndarray"
    if dtype is not None:
        assert a.dtype == np.dtype(dtype), f"{what} has dtype {a.dtype}, expected {np.dtype(dtype)}"
    if shape is not None:
        assert a.shape == tuple(shape), f"{what} has shape {a.shape}, expected {tuple(shape)}"


def assert_close(got, want, dtype, what, rtol32=2e-3):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs reference {want.shape}"
    if got.size == 0:
        return
    tol = 1e-9 if np.dtype(dtype) == np.float64 else rtol32
    scale = max(1.0, float(np.nanmax(np.abs(want))) if np.isfinite(want).any() else 1.0)
    same_nan = np.array_equal(np.isnan(got), np.isnan(want))
    fin = np.isfinite(want) & np.isfinite(got)
    err = float(np.max(np.abs(got[fin] - want[fin]))) if fin.any() else 0.0
    assert same_nan and err <= tol * scale and np.array_equal(np.isinf(got), np.isinf(want)), (
        f"{what}: max abs error {err:.3g} vs tolerance {tol * scale:.3g} (dtype {np.dtype(dtype)}); "
        f"NaN pattern equal: {same_nan}")


def assert_identical(a, b, what="result"):
    """Exact equality (NaN == NaN) of nested results."""
    if isinstance(a, (tuple, list)):
        assert isinstance(b, (tuple, list)) and len(a) == len(b), f"{what}: structure differs"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{what}[{i}]")
        return
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), f"{what}: type differs"
        assert a.shape == b.shape and a.dtype == b.dtype, f"{what}: {a.shape}/{a.dtype} vs {b.shape}/{b.dtype}"
        assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), f"{what}: values differ from the C-contiguous call"
        return
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return
    if a is None or isinstance(a, (bool, int, float, str, np.generic)):
        assert a == b, f"{what}: {a!r} vs {b!r}"
    # other objects (a layer, a loader) are compared through the arrays returned next to them


def message_ok(msg, names):
    if not msg or not msg.strip():
        return False
    low = msg.lower()
    if any(k in low for k in ("shape", "dtype", "data type")):
        return True
    for n in names:
        if re.search(r"(?<![A-Za-z0-9_])" + re.escape(n.lower()) + r"(?![A-Za-z0-9_])", low):
            return True
    return False


# --------------------------------------------------------------------------------------------
# Strategies for the geometry

def dt(draw):
    return draw(st.sampled_from(FLOATS))


def int_or_pair(draw, lo, hi):
    if draw(st.booleans()):
        return draw(st.integers(lo, hi))
    return (draw(st.integers(lo, hi)), draw(st.integers(lo, hi)))


def as_pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def flavor_of(draw):
    return draw(st.sampled_from(("normal", "normal", "normal", "ties")))


# --------------------------------------------------------------------------------------------
# Builders: each returns a valid Case (the generic mutator then breaks it)

def b_batch_norm_train(draw, rng):
    d = dt(draw)
    four = draw(st.booleans())
    N = draw(st.integers(1, 4))
    C = draw(st.integers(1, 10))
    shape = (N, C, draw(st.integers(1, 5)), draw(st.integers(1, 5))) if four else (N, C)
    if int(np.prod(shape)) // C < 2:
        shape = (2,) + shape[1:]
    fl = flavor_of(draw)
    args = dict(x=rand(rng, shape, d, fl), weight=rand(rng, (C,), d) if draw(st.booleans()) else None,
                bias=rand(rng, (C,), d) if draw(st.booleans()) else None, eps=draw(st.sampled_from([1e-5, 1e-3, 0.1])))

    def check(r, a):
        x = a["x"]
        y, m, v = r
        _is_float_array(y, x.dtype, x.shape, "y")
        _is_float_array(m, np.float64, (x.shape[1],), "mean")
        _is_float_array(v, np.float64, (x.shape[1],), "var")

    return Case("batch_norm_train", F.batch_norm_train, args, ("x", "weight", "bias", "eps"),
                ("x", "weight", "bias"), check, lambda a: R.batch_norm_train(**a))


def b_batch_norm_backward(draw, rng):
    c = b_batch_norm_train(draw, rng)
    x = c.args["x"]
    _, mean, var = R.batch_norm_train(x, None, None)
    if draw(st.booleans()):
        mean, var = mean.astype(np.float32), var.astype(np.float32)
    args = dict(dy=rand(rng, x.shape, x.dtype), x=x, weight=c.args["weight"], mean=mean, var=var,
                eps=c.args["eps"])

    def check(r, a):
        x = a["x"]
        dx, dw, db = r
        _is_float_array(dx, x.dtype, x.shape, "dx")
        _is_float_array(dw, x.dtype, (x.shape[1],), "dweight")
        _is_float_array(db, x.dtype, (x.shape[1],), "dbias")

    return Case("batch_norm_backward", F.batch_norm_backward, args,
                ("dy", "x", "weight", "mean", "var", "eps"), ("dy", "x", "weight"), check,
                lambda a: R.batch_norm_backward(**a), rtol32=5e-3)


def b_batch_norm_eval(draw, rng):
    d = dt(draw)
    four = draw(st.booleans())
    N, C = draw(st.integers(1, 4)), draw(st.integers(1, 10))
    shape = (N, C, draw(st.integers(1, 5)), draw(st.integers(1, 5))) if four else (N, C)
    sd = draw(st.sampled_from(FLOATS))
    args = dict(x=rand(rng, shape, d, flavor_of(draw)), weight=rand(rng, (C,), d) if draw(st.booleans()) else None,
                bias=rand(rng, (C,), d) if draw(st.booleans()) else None,
                running_mean=rand(rng, (C,), sd), running_var=np.abs(rand(rng, (C,), sd)) + 0.5,
                eps=1e-5)

    def check(r, a):
        _is_float_array(r, a["x"].dtype, a["x"].shape, "y")

    return Case("batch_norm_eval", F.batch_norm_eval, args,
                ("x", "weight", "bias", "running_mean", "running_var", "eps"), ("x", "weight", "bias"),
                check, lambda a: R.batch_norm_eval(**a))


def b_batch_norm_eval_backward(draw, rng):
    c = b_batch_norm_eval(draw, rng)
    args = dict(dy=rand(rng, c.args["x"].shape, c.args["x"].dtype))
    args.update((k, v) for k, v in c.args.items() if k != "bias")

    def check(r, a):
        x = a["x"]
        for got, shape, what in zip(r, (x.shape, (x.shape[1],), (x.shape[1],)), ("dx", "dweight", "dbias")):
            _is_float_array(got, x.dtype, shape, what)

    return Case("batch_norm_eval_backward", F.batch_norm_eval_backward, args,
                ("dy", "x", "weight", "running_mean", "running_var", "eps"), ("dy", "x", "weight"), check,
                lambda a: R.batch_norm_eval_backward(**a))


def b_update_running_stats(draw, rng):
    C = draw(st.integers(1, 8))
    rd, sd = dt(draw), dt(draw)
    args = dict(running_mean=rand(rng, (C,), rd), running_var=np.abs(rand(rng, (C,), rd)) + 0.1,
                mean=rand(rng, (C,), sd), var=np.abs(rand(rng, (C,), sd)),
                count=draw(st.integers(2, 10**6)), momentum=draw(st.sampled_from([0.0, 0.1, 0.5, 1.0])))

    def run(**a):
        F.update_running_stats(**a)
        return a["running_mean"], a["running_var"]

    def ref(a):
        a = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in a.items()}
        R.update_running_stats(**a)
        return a["running_mean"], a["running_var"]

    def check(r, a):
        # updated in place: the caller's own object (an ndarray subclass stays one)
        _is_float_array(r[0], a["running_mean"].dtype, (a["running_mean"].shape[0],), "running_mean", exact=False)

    return Case("update_running_stats", run, args,
                ("running_mean", "running_var", "mean", "var", "count", "momentum"),
                ("running_mean", "running_var", "mean"), check, ref)


def _logits(draw, rng):
    d = dt(draw)
    N, C = draw(st.integers(1, 6)), draw(st.integers(1, 12))
    return rand(rng, (N, C), d, flavor_of(draw) if draw(st.booleans()) else "normal") * d(draw(st.sampled_from([1.0, 10.0])))


def b_softmax(draw, rng, name="softmax"):
    x = _logits(draw, rng)
    fn, ref = getattr(F, name), getattr(R, name)

    def check(r, a):
        _is_float_array(r, a["x"].dtype, a["x"].shape, name)

    return Case(name, fn, dict(x=x), ("x", "logits"), ("x",), check, lambda a: ref(**a))


def b_log_softmax(draw, rng):
    return b_softmax(draw, rng, "log_softmax")


def _labels(draw, rng, N, C):
    ldt = draw(st.sampled_from([np.int64, np.int32, np.int8, np.uint8, np.int16, np.uint32, np.intp]))
    return rng.integers(0, C, N).astype(ldt)


def b_softmax_cross_entropy(draw, rng):
    x = _logits(draw, rng)
    args = dict(logits=x, labels=_labels(draw, rng, *x.shape))

    def check(r, a):
        loss, p = r
        assert isinstance(loss, float), f"loss is {type(loss).__name__}, not float"
        _is_float_array(p, a["logits"].dtype, a["logits"].shape, "probs")

    return Case("softmax_cross_entropy", F.softmax_cross_entropy, args, ("logits", "labels"),
                ("logits",), check, lambda a: R.softmax_cross_entropy(**a))


def b_softmax_cross_entropy_backward(draw, rng):
    x = _logits(draw, rng)
    probs = R.softmax(x.astype(np.float64)).astype(x.dtype)
    args = dict(probs=probs, labels=_labels(draw, rng, *x.shape),
                grad=draw(st.sampled_from([1.0, 0.5, -2.0, 0.0, 3])))

    def check(r, a):
        _is_float_array(r, a["probs"].dtype, a["probs"].shape, "dlogits")

    return Case("softmax_cross_entropy_backward", F.softmax_cross_entropy_backward, args,
                ("probs", "labels", "grad"), ("probs",), check,
                lambda a: R.softmax_cross_entropy_backward(**a))


def _conv_geometry(draw):
    if draw(st.integers(0, 3)) == 0:
        # the Winograd F(2x2, 3x3) path of functional/conv.py: 3x3, stride 1, >= 16 channels
        N, C, Fo = draw(st.integers(1, 3)), draw(st.integers(16, 20)), draw(st.integers(16, 20))
        padding = int_or_pair(draw, 0, 2)
        ph, pw = as_pair(padding)
        H = draw(st.integers(max(1, 3 - 2 * ph), 9))
        W = draw(st.integers(max(1, 3 - 2 * pw), 9))
        return N, C, Fo, H, W, 3, 3, draw(st.sampled_from([1, (1, 1)])), padding
    N, C, Fo = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    H, W = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    stride = int_or_pair(draw, 1, 3)
    padding = int_or_pair(draw, 0, 2)
    ph, pw = as_pair(padding)
    kh = draw(st.integers(1, H + 2 * ph))
    kw = draw(st.integers(1, W + 2 * pw))
    return N, C, Fo, H, W, kh, kw, stride, padding


def _conv_out(a):
    x, w = a["x"], a["weight"]
    sh, sw = as_pair(a.get("stride", 1))
    ph, pw = as_pair(a.get("padding", 0))
    return (x.shape[0], w.shape[0], (x.shape[2] + 2 * ph - w.shape[2]) // sh + 1,
            (x.shape[3] + 2 * pw - w.shape[3]) // sw + 1)


def _conv_oom(a):
    try:
        return int(np.prod([int(v) for v in _conv_out(a)], dtype=object)) > 10**8
    except Exception:
        return False


def b_conv2d(draw, rng):
    d = dt(draw)
    N, C, Fo, H, W, kh, kw, stride, padding = _conv_geometry(draw)
    fl = flavor_of(draw)
    args = dict(x=rand(rng, (N, C, H, W), d, fl), weight=rand(rng, (Fo, C, kh, kw), d, fl),
                bias=rand(rng, (Fo,), d) if draw(st.booleans()) else None, stride=stride, padding=padding)

    def check(r, a):
        _is_float_array(r, a["x"].dtype, _conv_out(a), "y")

    c = Case("conv2d", F.conv2d, args, ("x", "weight", "bias", "stride", "padding", "kernel"),
             ("x", "weight", "bias"), check, lambda a: R.conv2d(**a))
    c.extra["oom"] = _conv_oom
    return c


def b_conv2d_backward(draw, rng):
    d = dt(draw)
    N, C, Fo, H, W, kh, kw, stride, padding = _conv_geometry(draw)
    args = dict(x=rand(rng, (N, C, H, W), d), weight=rand(rng, (Fo, C, kh, kw), d), stride=stride,
                padding=padding, compute_dx=draw(st.booleans()))
    args["dy"] = rand(rng, _conv_out(args), d)

    def check(r, a):
        dx, dw, db = r
        if a["compute_dx"]:
            _is_float_array(dx, a["x"].dtype, a["x"].shape, "dx")
        else:
            assert dx is None, "dx must be None when compute_dx=False"
        _is_float_array(dw, a["x"].dtype, a["weight"].shape, "dweight")
        _is_float_array(db, a["x"].dtype, (a["weight"].shape[0],), "dbias")

    c = Case("conv2d_backward", F.conv2d_backward, args,
             ("dy", "x", "weight", "stride", "padding", "kernel", "compute_dx"), ("dy", "x", "weight"),
             check, lambda a: R.conv2d_backward(**a))
    c.extra["oom"] = _conv_oom
    return c


def b_linear(draw, rng):
    d = dt(draw)
    N, I, O = draw(st.integers(1, 5)), draw(st.integers(1, 7)), draw(st.integers(1, 6))
    args = dict(x=rand(rng, (N, I), d, flavor_of(draw)), weight=rand(rng, (O, I), d),
                bias=rand(rng, (O,), d) if draw(st.booleans()) else None)

    def check(r, a):
        _is_float_array(r, a["x"].dtype, (a["x"].shape[0], a["weight"].shape[0]), "y")

    return Case("linear", F.linear, args, ("x", "weight", "bias", "in_features"), ("x", "weight", "bias"),
                check, lambda a: R.linear(**a))


def b_linear_backward(draw, rng):
    d = dt(draw)
    N, I, O = draw(st.integers(1, 5)), draw(st.integers(1, 7)), draw(st.integers(1, 6))
    args = dict(dy=rand(rng, (N, O), d), x=rand(rng, (N, I), d), weight=rand(rng, (O, I), d))

    def check(r, a):
        dx, dw, db = r
        _is_float_array(dx, a["x"].dtype, a["x"].shape, "dx")
        _is_float_array(dw, a["x"].dtype, a["weight"].shape, "dweight")
        _is_float_array(db, a["x"].dtype, (a["weight"].shape[0],), "dbias")

    return Case("linear_backward", F.linear_backward, args, ("dy", "x", "weight", "in_features"),
                ("dy", "x", "weight"), check, lambda a: R.linear_backward(**a))


def _pool_geometry(draw):
    N, C = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    H, W = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    kh = draw(st.integers(1, H + 1))
    kw = draw(st.integers(1, W + 1))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    if kh > H + 2 * ph:
        kh = H + 2 * ph
    if kw > W + 2 * pw:
        kw = W + 2 * pw
    ph, pw = min(ph, kh // 2), min(pw, kw // 2)
    k = (kh, kw) if (kh != kw or draw(st.booleans())) else kh
    stride = draw(st.sampled_from([None, 1, 2, 3, (1, 2), (2, 1)]))
    padding = (ph, pw) if (ph != pw or draw(st.booleans())) else ph
    return N, C, H, W, k, stride, padding


def _pool_out(a):
    x = a["x"]
    kh, kw = as_pair(a["kernel_size"])
    sh, sw = as_pair(a["kernel_size"] if a.get("stride") is None else a["stride"])
    ph, pw = as_pair(a.get("padding", 0))
    return (x.shape[0], x.shape[1], (x.shape[2] + 2 * ph - kh) // sh + 1, (x.shape[3] + 2 * pw - kw) // sw + 1)


def b_max_pool2d(draw, rng):
    d = dt(draw)
    N, C, H, W, k, stride, padding = _pool_geometry(draw)
    args = dict(x=rand(rng, (N, C, H, W), d, flavor_of(draw)), kernel_size=k, stride=stride, padding=padding)

    def check(r, a):
        y, idx = r
        shape = _pool_out(a)
        _is_float_array(y, a["x"].dtype, shape, "y")
        _is_float_array(idx, np.int64, shape, "indices")
        H, W = a["x"].shape[2:]
        assert idx.size == 0 or (idx.min() >= 0 and idx.max() < H * W), "indices out of the input plane"

    return Case("max_pool2d", F.max_pool2d, args, ("x", "kernel_size", "stride", "padding", "kernel"),
                ("x",), check, lambda a: R.max_pool2d(**a))


def b_max_pool2d_backward(draw, rng):
    d = dt(draw)
    N, C, H, W, k, stride, padding = _pool_geometry(draw)
    x = rand(rng, (N, C, H, W), d)
    _, idx = R.max_pool2d(x, k, stride, padding)
    if draw(st.booleans()):
        idx = idx.astype(draw(st.sampled_from([np.int32, np.uint16, np.int16])))
    shape = x.shape if draw(st.booleans()) else list(x.shape)
    args = dict(dy=rand(rng, idx.shape, d), indices=idx, input_shape=tuple(shape) if isinstance(shape, tuple) else shape)

    def check(r, a):
        _is_float_array(r, a["dy"].dtype, tuple(a["input_shape"]), "dx")

    def oom(a):
        try:
            return int(np.prod([int(v) for v in a["input_shape"]], dtype=object)) > 10**8
        except Exception:
            return False

    c = Case("max_pool2d_backward", F.max_pool2d_backward, args, ("dy", "indices", "input_shape"),
             ("dy",), check, lambda a: R.max_pool2d_backward(**a))
    c.extra["oom"] = oom
    return c


def _any_shape(draw):
    nd = draw(st.integers(0, 5))
    return tuple(draw(st.integers(0 if draw(st.integers(0, 9)) == 0 else 1, 5)) for _ in range(nd))


def b_relu(draw, rng):
    args = dict(x=rand(rng, _any_shape(draw), dt(draw), flavor_of(draw)))

    def check(r, a):
        _is_float_array(r, a["x"].dtype, a["x"].shape, "y")

    return Case("relu", F.relu, args, ("x",), ("x",), check, lambda a: R.relu(**a))


def b_relu_backward(draw, rng):
    d = dt(draw)
    shape = _any_shape(draw)
    args = dict(dy=rand(rng, shape, d), y=R.relu(rand(rng, shape, d, flavor_of(draw))))

    def check(r, a):
        _is_float_array(r, a["dy"].dtype, a["dy"].shape, "dx")

    return Case("relu_backward", F.relu_backward, args, ("dy", "y"), ("dy", "y"), check,
                lambda a: R.relu_backward(**a))


# ---- layers ---------------------------------------------------------------------------------

def b_conv2d_layer(draw, rng):
    d = dt(draw)
    N, C, Fo, H, W, kh, kw, stride, padding = _conv_geometry(draw)
    bias = draw(st.booleans())
    args = dict(in_channels=C, out_channels=Fo, kernel_size=(kh, kw) if kh != kw else kh, stride=stride,
                padding=padding, bias=bias, dtype=d, x=rand(rng, (N, C, H, W), d))
    args["dy"] = rand(rng, _conv_out(dict(x=args["x"], weight=np.empty((Fo, C, kh, kw)), stride=stride, padding=padding)), d)
    first = draw(st.booleans())

    def run(x, dy, **kw):
        layer = nn.Conv2D(**kw, rng=0)
        layer.needs_input_grad = not first
        y = layer.forward(x)
        dx = layer.backward(dy)
        return y, dx, layer.grads["weight"], layer.grads.get("bias"), layer

    def check(r, a):
        y, dx, gw, gb, layer = r
        w = layer.params["weight"]
        _is_float_array(y, layer.dtype, _conv_out(dict(x=a["x"], weight=w, stride=layer.stride, padding=layer.padding)), "y")
        if first:
            assert dx is None, "dx must be None with needs_input_grad=False"
        else:
            _is_float_array(dx, layer.dtype, a["x"].shape, "dx")
        _is_float_array(gw, layer.dtype, w.shape, "grad weight")

    def ref(a):
        layer = nn.Conv2D(**{k: v for k, v in a.items() if k not in ("x", "dy")}, rng=0)
        w, b = layer.params["weight"], layer.params.get("bias")
        y = R.conv2d(a["x"], w, b, layer.stride, layer.padding)
        dx, dw, db = R.conv2d_backward(a["dy"], a["x"], w, layer.stride, layer.padding)
        return y, (None if first else dx), dw, (db if b is not None else None)

    c = Case("Conv2D.forward_backward", run, args,
             ("in_channels", "out_channels", "kernel_size", "stride", "padding", "bias", "dtype",
              "x", "dy", "conv2d", "input", "kernel", "channels", "weight"),
             ("x", "dy"), check, ref)
    c.extra["ref_select"] = (0, 1, 2, 3)
    def oom(a):
        if _layer_oom(a):
            return True
        try:
            return _conv_oom(dict(x=a["x"], weight=np.empty((1, 1, 1, 1)), stride=a["stride"],
                                  padding=a["padding"]))
        except Exception:
            return False

    c.extra["oom"] = oom
    return c


def b_linear_layer(draw, rng):
    d = dt(draw)
    N, I, O = draw(st.integers(1, 5)), draw(st.integers(1, 7)), draw(st.integers(1, 6))
    args = dict(in_features=I, out_features=O, bias=draw(st.booleans()), dtype=d,
                x=rand(rng, (N, I), d), dy=rand(rng, (N, O), d))

    def run(x, dy, **kw):
        layer = nn.Linear(**kw, rng=0)
        y = layer.forward(x)
        return y, layer.backward(dy), layer.grads["weight"], layer

    def check(r, a):
        y, dx, gw, layer = r
        _is_float_array(y, layer.dtype, (a["x"].shape[0], layer.out_features), "y")
        _is_float_array(dx, layer.dtype, a["x"].shape, "dx")
        _is_float_array(gw, layer.dtype, layer.params["weight"].shape, "grad weight")

    def ref(a):
        layer = nn.Linear(**{k: v for k, v in a.items() if k not in ("x", "dy")}, rng=0)
        w, b = layer.params["weight"], layer.params.get("bias")
        dx, dw, _ = R.linear_backward(a["dy"], a["x"], w)
        return R.linear(a["x"], w, b), dx, dw

    c = Case("Linear.forward_backward", run, args,
             ("in_features", "out_features", "bias", "dtype", "x", "dy", "linear", "input", "features", "weight"),
             ("x", "dy"), check, ref)
    c.extra["ref_select"] = (0, 1, 2)
    c.extra["oom"] = _layer_oom
    return c


def _bn_layer(draw, rng, cls):
    d = dt(draw)
    N, C = draw(st.integers(2, 4)), draw(st.integers(1, 9))
    shape = (N, C, draw(st.integers(1, 4)), draw(st.integers(1, 4))) if cls is nn.BatchNorm2D else (N, C)
    training = draw(st.booleans())
    args = dict(num_features=C, eps=draw(st.sampled_from([1e-5, 1e-3])), momentum=draw(st.sampled_from([0.1, None, 0.0, 1.0])),
                affine=draw(st.booleans()), dtype=d, x=rand(rng, shape, d), dy=rand(rng, shape, d))

    def run(x, dy, **kw):
        layer = cls(**kw)
        layer.train(training)
        y = layer.forward(x)
        return y, layer.backward(dy), layer

    def check(r, a):
        y, dx, layer = r
        _is_float_array(y, layer.dtype, a["x"].shape, "y")
        _is_float_array(dx, layer.dtype, a["x"].shape, "dx")
        for k, g in layer.grads.items():
            _is_float_array(g, layer.dtype, (layer.num_features,), f"grad {k}")
        for k in ("running_mean", "running_var"):
            _is_float_array(layer.buffers[k], layer.dtype, (layer.num_features,), k)

    def ref(a):
        x, dy = a["x"], a["dy"]
        C = x.shape[1]
        ones = np.ones(C, x.dtype) if a["affine"] else None
        zeros = np.zeros(C, x.dtype) if a["affine"] else None
        if training:
            y, mean, var = R.batch_norm_train(x, ones, zeros, a["eps"])
            dx = R.batch_norm_backward(dy, x, ones, mean, var, a["eps"])[0]
        else:
            y = R.batch_norm_eval(x, ones, zeros, np.zeros(C), np.ones(C), a["eps"])
            dx = dy / np.sqrt(1 + a["eps"])
        return y, dx

    c = Case(f"{cls.__name__}.forward_backward", run, args,
             ("num_features", "eps", "momentum", "affine", "dtype", "x", "dy", cls.__name__, "input", "channels",
              "weight", "mean", "var"), ("x", "dy"), check, ref, rtol32=5e-3)
    c.extra["ref_select"] = (0, 1)
    c.extra["oom"] = _layer_oom
    return c


def b_bn2d_layer(draw, rng):
    return _bn_layer(draw, rng, nn.BatchNorm2D)


def b_bn1d_layer(draw, rng):
    return _bn_layer(draw, rng, nn.BatchNorm1D)


def b_relu_layer(draw, rng):
    shape = _any_shape(draw)
    d = dt(draw)
    args = dict(x=rand(rng, shape, d), dy=rand(rng, shape, d))

    def run(x, dy):
        layer = nn.ReLU()
        return layer.forward(x), layer.backward(dy)

    def check(r, a):
        _is_float_array(r[0], a["x"].dtype, a["x"].shape, "y")
        _is_float_array(r[1], a["x"].dtype, a["x"].shape, "dx")

    return Case("ReLU.forward_backward", run, args, ("x", "dy", "y", "ReLU", "input"), ("x", "dy"), check,
                lambda a: (R.relu(a["x"]), R.relu_backward(a["dy"], R.relu(a["x"]))))


def b_maxpool_layer(draw, rng):
    d = dt(draw)
    N, C, H, W, k, stride, padding = _pool_geometry(draw)
    args = dict(kernel_size=k, stride=stride, padding=padding, x=rand(rng, (N, C, H, W), d))
    args["dy"] = rand(rng, _pool_out(args), d)

    def run(x, dy, **kw):
        layer = nn.MaxPool2D(**kw)
        return layer.forward(x), layer.backward(dy)

    def check(r, a):
        _is_float_array(r[0], a["x"].dtype, _pool_out(a), "y")
        _is_float_array(r[1], getattr(a["dy"], "dtype", None), a["x"].shape, "dx")  # no params: dy's dtype

    def ref(a):
        y, idx = R.max_pool2d(a["x"], a["kernel_size"], a["stride"], a["padding"])
        return y, R.max_pool2d_backward(a["dy"], idx, a["x"].shape)

    return Case("MaxPool2D.forward_backward", run, args,
                ("kernel_size", "stride", "padding", "x", "dy", "indices", "input_shape", "MaxPool2D", "input", "kernel"),
                ("x", "dy"), check, ref)


def b_flatten_layer(draw, rng):
    shape = _any_shape(draw)
    if not shape:
        shape = (2,)
    d = dt(draw)
    args = dict(x=rand(rng, shape, d), dy=rand(rng, (shape[0], int(np.prod(shape[1:], dtype=np.int64))), d))

    def run(x, dy):
        layer = nn.Flatten()
        return layer.forward(x), layer.backward(dy)

    def check(r, a):  # Flatten is a reshape: any dtype passes through
        x, dy = a["x"], a["dy"]
        _is_float_array(r[0], x.dtype, (x.shape[0], int(np.prod(x.shape[1:], dtype=np.int64))), "y")
        _is_float_array(r[1], getattr(dy, "dtype", None), x.shape, "dx")

    return Case("Flatten.forward_backward", run, args, ("x", "dy", "Flatten", "input", "batch"), ("x", "dy"), check,
                lambda a: (a["x"].reshape(a["x"].shape[0], int(np.prod(a["x"].shape[1:], dtype=np.int64))),
                           a["dy"].reshape(a["x"].shape)))


def b_dropout_layer(draw, rng):
    shape = _any_shape(draw)
    d = dt(draw)
    training = draw(st.booleans())
    args = dict(p=draw(st.sampled_from([0.0, 0.25, 0.5, 1.0])), x=rand(rng, shape, d), dy=rand(rng, shape, d))

    def run(x, dy, **kw):
        layer = nn.Dropout(**kw, rng=1)
        layer.train(training)
        y = layer.forward(x)
        return y, layer.backward(dy)

    def check(r, a):
        _is_float_array(r[0], a["x"].dtype, a["x"].shape, "y")
        _is_float_array(r[1], a["x"].dtype, a["x"].shape, "dx")

    return Case("Dropout.forward_backward", run, args, ("p", "x", "dy", "Dropout", "input", "probability"),
                ("x", "dy"), check)


def _fresh(rng):
    """A Generator passed to an op is consumed: every call of a case draws from its own copy, so a
    layout twin sees the same stream (anything else goes to the op unchanged, to be rejected)."""
    return copy.deepcopy(rng) if isinstance(rng, np.random.Generator) else rng


def b_dropout(draw, rng):
    shape = _any_shape(draw)
    d = dt(draw)
    args = dict(x=rand(rng, shape, d), p=draw(st.sampled_from([0.0, 0.25, 0.5, 1.0])),
                rng=np.random.default_rng(draw(st.integers(0, 2**32))))

    def run(x, p, rng):
        return F.dropout(x, p, _fresh(rng))

    def check(r, a):
        _is_float_array(r[0], a["x"].dtype, a["x"].shape, "y")
        assert isinstance(r[1], np.ndarray) and r[1].dtype == np.bool_ and r[1].shape == a["x"].shape, "mask"

    return Case("dropout", run, args, ("x", "p", "rng", "probability"), ("x",), check,
                lambda a: R.dropout(a["x"].astype(d), a["p"], _fresh(a["rng"])))  # the mask is drawn in x's dtype


def b_dropout_backward(draw, rng):
    shape = _any_shape(draw)
    p = draw(st.sampled_from([0.0, 0.25, 0.5, 1.0]))
    dy = rand(rng, shape, dt(draw))  # (rand makes a 0-d shape (1,))
    args = dict(dy=dy, mask=np.asarray(rng.random(dy.shape) >= p), p=p)

    def check(r, a):
        _is_float_array(r, a["dy"].dtype, a["dy"].shape, "dx")

    return Case("dropout_backward", F.dropout_backward, args, ("dy", "mask", "p", "probability"), ("dy",),
                check, lambda a: R.dropout_backward(**a))


def b_xent_layer(draw, rng):
    x = _logits(draw, rng)
    args = dict(logits=x, labels=_labels(draw, rng, *x.shape), grad=draw(st.sampled_from([1.0, 0.5])))

    def run(logits, labels, grad):
        loss_fn = nn.SoftmaxCrossEntropy()
        loss = loss_fn.forward(logits, labels)
        return loss, loss_fn.backward(grad)

    def check(r, a):
        assert isinstance(r[0], float), "loss is not a float"
        _is_float_array(r[1], a["logits"].dtype, a["logits"].shape, "dlogits")

    def ref(a):
        loss, p = R.softmax_cross_entropy(a["logits"], a["labels"])
        return loss, R.softmax_cross_entropy_backward(p, a["labels"], a["grad"])

    return Case("SoftmaxCrossEntropy.forward_backward", run, args, ("logits", "labels", "grad"), ("logits",),
                check, ref)


def _small_model(d, C, classes, rng_seed=0):
    return nn.Sequential(nn.Conv2D(C, 4, 3, padding=1, dtype=d, rng=rng_seed), nn.BatchNorm2D(4, dtype=d), nn.ReLU(),
                         nn.MaxPool2D(2), nn.Flatten(), nn.Linear(4 * 2 * 2, classes, dtype=d, rng=rng_seed + 1))


def b_sequential(draw, rng):
    d = dt(draw)
    N, C, classes = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 5))
    training = draw(st.booleans()) if N > 1 else False
    args = dict(x=rand(rng, (N, C, 4, 4), d), labels=rng.integers(0, classes, N))
    input_grad = draw(st.booleans())

    def run(x, labels):
        model = _small_model(d, C, classes)
        model.needs_input_grad = input_grad
        model.train(training)
        loss_fn = nn.SoftmaxCrossEntropy()
        logits = model.forward(x)
        loss = loss_fn.forward(logits, labels)
        dx = model.backward(loss_fn.backward())
        return logits, dx, loss

    def check(r, a):
        logits, dx, loss = r
        _is_float_array(logits, d, (a["x"].shape[0], classes), "logits")
        if input_grad:
            _is_float_array(dx, d, a["x"].shape, "dx")
        else:
            assert dx is None, "Sequential.backward must return None without input_grad"
        assert isinstance(loss, float)

    return Case("Sequential.forward_backward", run, args,
                ("x", "labels", "input", "logits", "Conv2D", "BatchNorm2D", "Linear", "MaxPool2D", "Flatten", "channels",
                 "features"), ("x",), check)


def b_load_state_dict(draw, rng):
    d = dt(draw)
    model = _small_model(d, 2, 3, 7)
    state = model.state_dict()
    keys = sorted(state)
    # the mutation happens on the dict's *values* and keys here (the generic mutator handles
    # the other arguments): replace one value, drop a key or add one
    action = draw(st.sampled_from(["none", "none", "value", "drop", "add", "not-a-dict"]))
    strict = draw(st.booleans())
    kind = "valid"
    if action == "value":
        k = draw(st.sampled_from(keys))
        options = bad_array_values(np.asarray(state[k]), rng)
        label, v = options[draw(st.integers(0, len(options) - 1))]
        state[k] = v
        kind = f"bad:state[{k}]={label}"
    elif action == "drop":
        state.pop(draw(st.sampled_from(keys)))
        kind = "bad:drop"
    elif action == "add":
        state["99.weight"] = np.zeros(3, d)
        kind = "bad:add"
    elif action == "not-a-dict":
        state = draw(st.sampled_from([None, [], [("0.weight", 1)], "abc", 3, list(state.items())]))
        kind = "bad:not-a-dict"
    args = dict(state=state, strict=strict)

    def run(state, strict):
        m = _small_model(d, 2, 3, 11)
        return m.load_state_dict(state, strict=strict), m

    def check(r, a):
        missing, unexpected = r[0]
        st_ = a["state"]
        if isinstance(st_, dict) and kind == "valid":
            got = r[1].state_dict()
            for k, v in st_.items():
                assert np.array_equal(got[k], v), f"{k} was not loaded"

    c = Case("Sequential.load_state_dict", run, args,
             ("state", "state_dict", "strict", "key", "keys", "weight", "bias", "running_mean", "running_var",
              "num_batches_tracked", "mapping", "dict"), (), check)
    c.extra["preset_kind"] = kind
    # documented: missing / unexpected keys with strict=True raise ValueError listing them (no extra allowance)
    return c


def _images(draw, rng):
    N, C = draw(st.integers(1, 12)), draw(st.integers(1, 3))
    H, W = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    return rng.integers(0, 256, (N, C, H, W)).astype(np.uint8)


def b_dataloader(draw, rng):
    images = _images(draw, rng)
    N, C = images.shape[:2]
    given_stats = draw(st.booleans())
    args = dict(images=images, labels=rng.integers(0, 10, N), batch_size=draw(st.integers(1, 5)),
                shuffle=draw(st.booleans()), augment=draw(st.booleans()), seed=draw(st.integers(0, 2**32)),
                drop_last=draw(st.booleans()), dtype=dt(draw),
                mean=rng.uniform(0.2, 0.8, C) if given_stats else None,
                std=rng.uniform(0.1, 0.5, C) if given_stats else None,
                padding=draw(st.integers(0, 4)), flip=draw(st.booleans()))
    if not given_stats:
        if images[:, :, :, :].size // C < 2:  # one pixel per channel: std 0, give the stats
            args["mean"], args["std"] = rng.uniform(0.2, 0.8, C), rng.uniform(0.1, 0.5, C)
        else:
            images[0, :, 0, 0], images[-1, :, -1, -1] = 0, 255

    def run(**kw):
        loader = D.DataLoader(**kw)
        batches = [(x, y) for x, y in loader]
        return loader, batches

    def check(r, a):
        loader, batches = r
        n, b = a["images"].shape[0], a["batch_size"]
        assert len(batches) == len(loader), "batch count differs from len(loader)"
        expect = n // b if a["drop_last"] else -(-n // b)
        assert len(loader) == expect, f"len(loader) {len(loader)} != {expect}"
        for x, y in batches:
            _is_float_array(x, np.dtype(a["dtype"]), (len(y),) + a["images"].shape[1:], "batch x")
            assert isinstance(y, np.ndarray) and y.dtype == np.int64, "labels must be int64"
            assert np.isfinite(x).all(), "non-finite batch values"

    return Case("DataLoader", run, args,
                tuple(args) + ("DataLoader", "pixels", "uint8", "integers", "integer", "NCHW", "channel", "epoch"),
                (), check)


def b_normalize(draw, rng):
    images = _images(draw, rng)
    C = images.shape[1]
    args = dict(images=images, mean=rng.uniform(0.2, 0.8, C), std=rng.uniform(0.1, 0.5, C), dtype=dt(draw))

    def check(r, a):
        _is_float_array(r, np.dtype(a["dtype"]), a["images"].shape, "normalized images")

    def ref(a):
        m = np.asarray(a["mean"], np.float64).reshape(1, -1, 1, 1)
        s = np.asarray(a["std"], np.float64).reshape(1, -1, 1, 1)
        return (a["images"] / 255.0 - m) / s

    return Case("normalize", D.normalize, args, ("images", "mean", "std", "dtype", "pixels", "uint8", "NCHW", "channel"),
                (), check, ref)


def b_crop_flip_normalize(draw, rng):
    images = _images(draw, rng)
    N, C, H, W = images.shape
    padding = draw(st.integers(0, 3))
    args = dict(images=images, oy=rng.integers(0, 2 * padding + 1, N), ox=rng.integers(0, 2 * padding + 1, N),
                flips=rng.integers(0, 2, N), mean=rng.uniform(0.2, 0.8, C), std=rng.uniform(0.1, 0.5, C),
                padding=padding, dtype=dt(draw))

    def check(r, a):
        _is_float_array(r, np.dtype(a["dtype"]), a["images"].shape, "augmented images")

    def ref(a):
        p = a["padding"]
        img = np.pad(a["images"].astype(np.float64), ((0, 0), (0, 0), (p, p), (p, p)))
        out = np.empty(a["images"].shape)
        for i in range(N):
            crop = img[i, :, a["oy"][i]:a["oy"][i] + H, a["ox"][i]:a["ox"][i] + W]
            out[i] = crop[:, :, ::-1] if a["flips"][i] else crop
        m = np.asarray(a["mean"]).reshape(1, -1, 1, 1)
        s = np.asarray(a["std"]).reshape(1, -1, 1, 1)
        return (out / 255.0 - m) / s

    return Case("crop_flip_normalize", D.crop_flip_normalize, args,
                ("images", "oy", "ox", "flips", "mean", "std", "padding", "dtype", "pixels", "uint8", "NCHW",
                 "channel", "integers"), (), check, ref)


def b_crop_flip_lut(draw, rng):
    images = _images(draw, rng)
    N, C = images.shape[:2]
    B = draw(st.integers(0, 2 * N))
    padding = draw(st.integers(0, 3))
    args = dict(images=images, lut=rand(rng, (C, 256), dt(draw)), index=rng.integers(0, N, B),
                oy=rng.integers(0, 2 * padding + 1, B), ox=rng.integers(0, 2 * padding + 1, B),
                flips=rng.integers(0, 2, B), padding=padding)

    def check(r, a):
        _is_float_array(r, a["lut"].dtype, (len(a["index"]),) + a["images"].shape[1:], "batch")

    return Case("crop_flip_lut", F.crop_flip_lut, args,
                ("images", "lut", "index", "oy", "ox", "flips", "padding", "pixels", "uint8", "NCHW", "integer"),
                ("lut",), check, lambda a: R.crop_flip_lut(**a), rtol32=0.0)


def b_constructors(draw, rng):
    """Constructors of every layer class with their (valid) arguments (mutated generically)."""
    which = draw(st.sampled_from(["Conv2D", "Linear", "BatchNorm2D", "BatchNorm1D", "MaxPool2D", "Dropout"]))
    if which == "Conv2D":
        args = dict(in_channels=draw(st.integers(1, 4)), out_channels=draw(st.integers(1, 4)),
                    kernel_size=int_or_pair(draw, 1, 3), stride=int_or_pair(draw, 1, 3), padding=int_or_pair(draw, 0, 2),
                    bias=draw(st.booleans()), dtype=dt(draw), rng=0, init=draw(st.sampled_from(["he", "xavier"])) if False else "he")
    elif which == "Linear":
        args = dict(in_features=draw(st.integers(1, 5)), out_features=draw(st.integers(1, 5)), bias=draw(st.booleans()),
                    dtype=dt(draw), rng=0)
    elif which in ("BatchNorm2D", "BatchNorm1D"):
        args = dict(num_features=draw(st.integers(1, 5)), eps=1e-5, momentum=draw(st.sampled_from([0.1, None])),
                    affine=draw(st.booleans()), dtype=dt(draw))
    elif which == "MaxPool2D":
        args = dict(kernel_size=int_or_pair(draw, 1, 3), stride=draw(st.sampled_from([None, 1, 2])),
                    padding=draw(st.sampled_from([0, 1])))
        args["padding"] = min(args["padding"], min(as_pair(args["kernel_size"])) // 2)
    else:
        args = dict(p=draw(st.sampled_from([0.0, 0.5, 1.0])), rng=draw(st.sampled_from([None, 0, 5])))
    cls = getattr(nn, which)

    def run(**kw):
        return cls(**kw)

    def check(r, a):
        assert isinstance(r, cls)
        for k, p in r.params.items():
            assert isinstance(p, np.ndarray) and p.dtype in FLOATS, f"param {k} has dtype {getattr(p, 'dtype', None)}"
            assert np.isfinite(p).all(), f"param {k} is not finite"

    c = Case(f"{which}.__init__", run, args, tuple(args) + (which, "features", "channels", "kernel", "generator", "seed", "probability"),
                (), check)
    c.extra["oom"] = _layer_oom
    return c


def _layer_oom(a):
    """A layer whose parameters alone exceed 1e8 values may fail with MemoryError."""
    total = 1
    for k in ("in_channels", "out_channels", "in_features", "out_features", "num_features", "kernel_size"):
        v = a.get(k)
        for t in (v if isinstance(v, (tuple, list)) else (v,)):
            if isinstance(t, (int, np.integer)) and not isinstance(t, bool) and t > 0:
                total *= int(t)
    return total > 10**8


BUILDERS = {
    "batch_norm_train": b_batch_norm_train,
    "batch_norm_backward": b_batch_norm_backward,
    "batch_norm_eval": b_batch_norm_eval,
    "batch_norm_eval_backward": b_batch_norm_eval_backward,
    "update_running_stats": b_update_running_stats,
    "softmax": b_softmax,
    "log_softmax": b_log_softmax,
    "softmax_cross_entropy": b_softmax_cross_entropy,
    "softmax_cross_entropy_backward": b_softmax_cross_entropy_backward,
    "conv2d": b_conv2d,
    "conv2d_backward": b_conv2d_backward,
    "linear": b_linear,
    "linear_backward": b_linear_backward,
    "max_pool2d": b_max_pool2d,
    "max_pool2d_backward": b_max_pool2d_backward,
    "relu": b_relu,
    "relu_backward": b_relu_backward,
    "dropout": b_dropout,
    "dropout_backward": b_dropout_backward,
    "crop_flip_lut": b_crop_flip_lut,
    "Conv2D.forward_backward": b_conv2d_layer,
    "Linear.forward_backward": b_linear_layer,
    "BatchNorm2D.forward_backward": b_bn2d_layer,
    "BatchNorm1D.forward_backward": b_bn1d_layer,
    "ReLU.forward_backward": b_relu_layer,
    "MaxPool2D.forward_backward": b_maxpool_layer,
    "Flatten.forward_backward": b_flatten_layer,
    "Dropout.forward_backward": b_dropout_layer,
    "SoftmaxCrossEntropy.forward_backward": b_xent_layer,
    "Sequential.forward_backward": b_sequential,
    "Sequential.load_state_dict": b_load_state_dict,
    "layer constructors": b_constructors,
    "DataLoader": b_dataloader,
    "normalize": b_normalize,
    "crop_flip_normalize": b_crop_flip_normalize,
}

# Arguments the generic mutator treats as integer geometry / float scalars / labels.
INT_ARGS = {"stride", "padding", "kernel_size", "count", "in_channels", "out_channels", "in_features",
            "out_features", "num_features", "batch_size", "seed", "input_shape"}
SIZE_ARGS = {"count", "in_channels", "out_channels", "in_features", "out_features", "num_features",
             "batch_size"}
FLOAT_ARGS = {"eps", "momentum", "grad", "p"}
LABEL_ARGS = {"labels"}
OTHER_BAD = {"dtype": [np.int32, np.float16, "float128x", None, np.complex64, "f4", float, object, 3],
             "bias": [None, True, False, 0, "yes", np.zeros(2)],
             "affine": [None, 0, "no"], "shuffle": [None, "no"], "augment": [None, 2], "drop_last": [None],
             "flip": [None], "strict": [None, "no"], "compute_dx": [None, "no", np.array([True, False])],
             "rng": [-1, 1.5, "seed", np.random.RandomState(0), object()], "init": ["nope", 3, None],
             "mean": None, "std": None, "state": None, "images": None}


def bad_labels(a, rng, n, c):
    a = np.asarray(a)
    if a.dtype.kind not in "iu" or a.ndim != 1 or (a.size and int(a.max()) > 2**40):
        a = np.zeros(max(n, 1), np.int64)  # an earlier mutation already broke the labels
    return [("float labels", a.astype(np.float64)), ("float32 labels", a.astype(np.float32)),
            ("bool labels", a.astype(bool)), ("negative", a.astype(np.int64) - 1 - (int(a.max()) if a.size else 0)), ("== C", np.full(a.shape, min(c, 2**62), np.int64)),
            ("huge", np.full(a.shape, 2**40, np.int64)), ("uint64 max", np.full(a.shape, 2**64 - 1, np.uint64)),
            ("int8 -128", np.full(a.shape, -128, np.int8)), ("list", a.tolist()), ("None", None),
            ("2-d", a[:, None]), ("short", a[:-1]), ("long", np.concatenate([a, a[:1]])),
            ("object", a.astype(object)), ("complex", a.astype(complex)), ("scalar", 0),
            ("strided", np.repeat(a, 2)[::2]), ("negative stride", a[::-1].copy()[::-1]), ("str", "0")]


def mutate(case, draw, rng):
    """Turn a valid case into a layout / values / bad case."""
    preset = case.extra.get("preset_kind")
    if preset and preset != "valid":
        case.kind = preset
        return case
    kind = draw(st.sampled_from(["valid", "valid", "layout", "values", "bad", "bad", "bad", "bad", "bad2"]))
    case.kind = kind
    arrays = [k for k in case.array_args if isinstance(case.args.get(k), np.ndarray)]
    all_arrays = [k for k, v in case.args.items() if isinstance(v, np.ndarray)]
    if kind == "layout":
        if not all_arrays:
            case.kind = "valid"
            return case
        case.extra["contiguous_args"] = dict(case.args)
        chosen = [k for k in all_arrays if draw(st.booleans())] or [draw(st.sampled_from(all_arrays))]
        hows = []
        for k in chosen:
            how = draw(st.sampled_from(LAYOUTS))
            if how == "readonly" and case.target in ("update_running_stats",) and k.startswith("running"):
                how = "fortran"
            case.args[k] = relayout(rng, case.args[k], how)
            hows.append(f"{k}:{how}")
        case.mutated = tuple(hows)
        return case
    if kind == "values":
        if not arrays:
            case.kind = "valid"
            return case
        k = draw(st.sampled_from(arrays))
        fl = draw(st.sampled_from(VALUE_FLAVORS))
        case.args[k] = spoil_values(rng, case.args[k], fl)
        case.mutated = (f"{k}:{fl}",)
        return case
    if kind == "valid":
        return case
    n_mut = 2 if kind == "bad2" else 1
    case.kind = "bad"
    names = list(case.args)
    muts = []
    for _ in range(n_mut):
        k = draw(st.sampled_from(names))
        v = case.args[k]
        if k in LABEL_ARGS and isinstance(v, np.ndarray):
            n = v.shape[0]
            try:
                c = int(case.args.get("logits", case.args.get("probs")).shape[1])
            except Exception:  # the logits were mutated first
                c = int(v.max()) + 1 if v.size else 1
            options = bad_labels(v, rng, n, c)
        elif k in ("oy", "ox", "flips", "index") and isinstance(v, np.ndarray):
            p = case.args.get("padding") if isinstance(case.args.get("padding"), int) else 1
            n = case.args["images"].shape[0] if isinstance(case.args.get("images"), np.ndarray) else 1
            hi = {"flips": 1, "index": n - 1}.get(k, 2 * p)
            options = [("above range", np.full(v.shape, hi + 1)), ("negative", np.full(v.shape, -1)),
                       ("huge", np.full(v.shape, 2**40)), ("bool", v.astype(bool))] + bad_array_values(v, rng)
        elif k in INT_ARGS:
            pool = BAD_INTS
            if k in SIZE_ARGS:  # a huge size is a huge (legitimate) allocation: only fast-failing ones
                pool = [b for b in BAD_INTS if not (isinstance(b, int) and 2**20 < b < 2**62)
                        and not (isinstance(b, (tuple, list)) and any(isinstance(t, int) and t > 2**20 for t in b))]
            options = [(repr(b), b) for b in pool]
            if k == "input_shape" and isinstance(v, (tuple, list)) and len(v) == 4:
                options += [("input_shape H*2", tuple(v[:2]) + (v[2] * 2, v[3])), ("input_shape 3-d", tuple(v[:3])),
                            ("input_shape 0", tuple(v[:3]) + (0,)), ("input_shape huge", tuple(v[:2]) + (2**20, 2**20)),
                            ("input_shape ndarray", np.array(v)), ("input_shape floats", tuple(float(t) for t in v))]
            if k == "kernel_size":
                options += [("kernel 100", 100), ("kernel (1, 50)", (1, 50))]
            if k == "padding":
                options += [("padding 40", 40), ("padding (0, 7)", (0, 7))]
        elif k in FLOAT_ARGS:
            options = [(repr(b), b) for b in BAD_FLOATS]
        elif isinstance(v, np.ndarray):
            options = bad_array_values(v, rng)
        elif k in OTHER_BAD and OTHER_BAD[k] is not None:
            options = [(repr(b), b) for b in OTHER_BAD[k]]
        elif v is None and k in ("weight", "bias", "mean", "std"):
            like = case.args.get("x", case.args.get("images"))
            c = like.shape[1] if isinstance(like, np.ndarray) and like.ndim > 1 else 2
            options = [("(C+1,)", np.ones(c + 1)), ("(C,) float16", np.ones(c, np.float16)), ("list", [1.0] * c),
                       ("(C,) other dtype", np.ones(c, np.float32 if getattr(like, "dtype", None) == np.float64 else np.float64)),
                       ("(C,) int", np.ones(c, np.int64)), ("2-d", np.ones((1, c)))]
        else:
            options = [("None", None), ("str", "x"), ("int", 3), ("object", object())]
        label, new = options[draw(st.integers(0, len(options) - 1))]
        case.args[k] = new
        muts.append(f"{k}={label}")
    case.mutated = tuple(muts)
    return case


# --------------------------------------------------------------------------------------------
# Running

class Runner:
    def __init__(self, case_log, case_timeout, compare_fraction):
        self.case_log = case_log
        self.case_timeout = case_timeout
        self.compare_fraction = compare_fraction
        self.cases = 0
        self.outcomes = collections.Counter()
        self.errors_by_type = collections.Counter()
        self.per_target = collections.defaultdict(collections.Counter)
        self.failures = {}
        self.compared = 0
        self._log = open(case_log, "w") if case_log else None

    def log_case(self, text):
        if self._log is None:
            return
        self._log.seek(0)
        self._log.truncate()
        self._log.write(text + "\n")
        self._log.flush()
        os.fsync(self._log.fileno())

    def fail(self, case, category, message, desc):
        self.outcomes["failure"] += 1
        self.per_target[case.target]["failure"] += 1
        key = (case.target, category, re.sub(r"\d+", "#", (message or "")[:80]))
        if key not in self.failures:
            self.failures[key] = {"target": case.target, "kind": case.kind, "category": category,
                                  "message": (message or "")[:400], "case": desc, "count": 0}
        self.failures[key]["count"] += 1

    def run(self, case, do_compare):
        self.cases += 1
        desc = (f"{case.target} [{case.kind}{': ' + ', '.join(case.mutated) if case.mutated else ''}] "
                + ", ".join(f"{k}={describe(v)}" for k, v in case.args.items()))
        self.log_case(f"case #{self.cases}: {desc}")
        expected = None
        try:
            if case.kind == "layout":
                expected = case.fn(**{k: (v.copy() if isinstance(v, np.ndarray) else v)
                                      for k, v in case.extra["contiguous_args"].items()})
            elif case.kind == "valid" and do_compare and case.ref is not None:
                ref_args = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else
                                (v.copy() if isinstance(v, np.ndarray) else v)) for k, v in case.args.items()}
                expected = case.ref(ref_args)
        except (TypeError, ValueError) as e:
            if case.kind == "layout":  # the C-contiguous twin of a valid case was rejected
                self.fail(case, f"rejected valid input ({type(e).__name__})", str(e), desc)
            else:  # the reference rejected a case the driver thinks valid: a driver problem
                self.fail(case, f"driver:{type(e).__name__}", str(e), desc)
            return
        except Exception as e:
            self.fail(case, type(e).__name__ if case.kind == "layout" else f"driver:{type(e).__name__}", str(e), desc)
            return
        faulthandler.dump_traceback_later(self.case_timeout, exit=True)
        try:
            result = case.fn(**case.args)
        except (TypeError, ValueError) as e:
            msg = str(e)
            if case.kind in ("valid", "layout", "values"):
                self.fail(case, f"rejected valid input ({type(e).__name__})", msg, desc)
            elif not message_ok(msg, case.names):
                self.fail(case, f"vague {type(e).__name__} message", msg, desc)
            else:
                self.outcomes["rejected"] += 1
                self.per_target[case.target]["rejected"] += 1
                self.errors_by_type[type(e).__name__] += 1
            return
        except MemoryError as e:
            oom = case.extra.get("oom")
            if case.kind == "bad" and oom is not None and oom(case.args):
                self.outcomes["rejected"] += 1
                self.per_target[case.target]["rejected"] += 1
                self.errors_by_type["MemoryError (request > 1e8 values)"] += 1
            else:
                self.fail(case, type(e).__name__, str(e), desc)
            return
        except case.allow as e:
            self.outcomes["rejected"] += 1
            self.per_target[case.target]["rejected"] += 1
            self.errors_by_type[f"{type(e).__name__} (documented)"] += 1
            return
        except Exception as e:
            self.errors_by_type[type(e).__name__] += 1
            self.fail(case, type(e).__name__, str(e), desc)
            return
        finally:
            faulthandler.cancel_dump_traceback_later()
        try:
            if case.check is not None:
                try:
                    case.check(result, case.args)
                except AssertionError:
                    raise
                except Exception as e:  # a check that cannot even look at a "bad" case's output
                    if case.kind != "bad":
                        raise AssertionError(f"result unusable: {type(e).__name__}: {e}") from None
            if case.kind == "layout":
                assert_identical(result, expected)
            elif expected is not None:
                sel = case.extra.get("ref_select")
                got = [result[i] for i in sel] if sel else result
                want = list(expected) if isinstance(expected, tuple) else expected
                self.compared += 1
                if isinstance(got, (tuple, list)):
                    for i, (g, w) in enumerate(zip(got, want)):
                        if g is None and w is None:
                            continue
                        assert_close(g, w, self._dtype(case), f"output {i}", case.rtol32)
                else:
                    assert_close(got, want, self._dtype(case), "output", case.rtol32)
        except AssertionError as e:
            self.fail(case, "wrong result", str(e), desc)
            return
        self.outcomes["ok"] += 1
        self.per_target[case.target]["ok"] += 1

    @staticmethod
    def _dtype(case):
        if case.args.get("dtype") in FLOATS:
            return np.dtype(case.args["dtype"])
        for v in case.args.values():
            if isinstance(v, np.ndarray) and v.dtype.kind == "f":
                return v.dtype
        d = case.args.get("dtype")
        return np.dtype(d) if d is not None else np.float64

    def summary(self, seconds):
        return {"cases": self.cases, "seconds": round(seconds, 1), "outcomes": dict(self.outcomes),
                "compared_with_reference": self.compared,
                "errors_by_type": dict(self.errors_by_type),
                "per_target": {k: dict(v) for k, v in sorted(self.per_target.items())},
                "failures": sorted(self.failures.values(), key=lambda f: f["target"])}


def run_target(runner, name, builder, examples, seed, compare_fraction):
    @hyp_seed(seed)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(st.data())
    def fuzz(data):
        rng = _seeded(data.draw)
        case = builder(data.draw, rng)
        case = mutate(case, data.draw, rng)
        do_compare = rng.random() < compare_fraction
        runner.run(case, do_compare)

    fuzz()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=1500, help="total cases (split evenly over the targets)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--case-log", default=None, help="file holding the description of the running case")
    p.add_argument("--case-timeout", type=float, default=30.0)
    p.add_argument("--compare-fraction", type=float, default=0.5,
                   help="share of valid cases also compared with cybn.reference")
    p.add_argument("--only", default=None, help="regex: run only the matching targets")
    p.add_argument("--threads", type=int, default=None, help="cybn.set_num_threads for the run")
    a = p.parse_args(argv)
    warnings.simplefilter("ignore")
    np.seterr(all="ignore")
    faulthandler.enable()
    if a.threads:
        cybn.set_num_threads(a.threads)
    targets = {k: v for k, v in BUILDERS.items() if a.only is None or re.search(a.only, k)}
    per = max(1, a.examples // max(1, len(targets)))
    runner = Runner(a.case_log, a.case_timeout, a.compare_fraction)
    t0 = time.perf_counter()
    for i, (name, builder) in enumerate(targets.items()):
        try:
            run_target(runner, name, builder, per, a.seed * 1000 + i, a.compare_fraction)
        except Exception as e:  # a bug of this driver (building/mutating a case): report, go on
            import traceback
            tb = traceback.extract_tb(e.__traceback__)[-1]
            runner.fail(Case(name, None, {}), f"driver:{type(e).__name__}",
                        f"{e!r} at line {tb.lineno}: {tb.line}"[:400], "(case construction)")
    runner.log_case("finished")
    print(json.dumps(runner.summary(time.perf_counter() - t0), default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
