"""No crash on bad input: property-based fuzzing of every public op, layer and data entry point.

The fuzzing itself lives in tests/fuzz_driver.py and runs in a SUBPROCESS, so a segfault, an
abort or a hang fails the test (with the case that caused it, read from the driver's case log)
instead of killing pytest. Allowed outcomes per case: a correct-looking result (right shapes and
dtypes; compared with cybn.reference for a share of the valid, finite cases) or a TypeError /
ValueError whose message names an argument, a shape or a dtype.

Bugs found by the fuzzer and reported to their owners are listed in fuzz_driver.KNOWN_BUGS; each
has a minimal reproducer below marked xfail(strict=True): when the owner fixes it the test
XPASSes, which fails, so the mark and the KNOWN_BUGS entry get removed together.

    python -m pytest tests/test_fuzz.py -q -s          # ~1,000 cases, prints the counts
    python -m pytest tests/test_fuzz.py -q -s -m slow  # 3 x 10,000 cases at 1 and 2 threads
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

import cybn.functional as F
from cybn import data as D
from cybn import nn

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DRIVER = os.path.join(HERE, "fuzz_driver.py")


def _signal_name(rc):
    try:
        return signal.Signals(-rc).name
    except (ValueError, TypeError):
        return str(-rc)


def run_fuzz_session(examples, seed, timeout, threads=None, only=None):
    """Run the driver in a subprocess; return its JSON summary or fail naming the deadly case."""
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "case.txt")
        cmd = [sys.executable, DRIVER, "--examples", str(examples), "--seed", str(seed), "--case-log", log,
               "--case-timeout", str(max(10, timeout // 3))]
        if threads:
            cmd += ["--threads", str(threads)]
        if only:
            cmd += ["--only", only]
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))

        def last_case():
            try:
                with open(log) as f:
                    return f.read().strip()[:3000]
            except OSError:
                return "(no case log)"

        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"fuzz session (seed {seed}) hung for more than {timeout} s; running case:\n"
                        f"{last_case()}\nstderr tail:\n{(e.stderr or b'')[-2000:]!r}")
        if proc.returncode < 0:
            pytest.fail(f"fuzz session (seed {seed}) was killed by signal {_signal_name(proc.returncode)}; "
                        f"the case that killed it:\n{last_case()}\nstderr tail:\n{proc.stderr[-3000:]}")
        if proc.returncode == 3 or "Timeout (" in proc.stderr:
            pytest.fail(f"a fuzz case (seed {seed}) ran past the per-case timeout:\n{last_case()}\n"
                        f"{proc.stderr[-3000:]}")
        assert proc.returncode == 0, (f"fuzz driver exited with {proc.returncode}; last case:\n{last_case()}\n"
                                      f"stderr tail:\n{proc.stderr[-3000:]}")
        lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
        assert lines, f"no JSON summary from the fuzz driver; stdout tail:\n{proc.stdout[-2000:]}"
        return json.loads(lines[-1])


def check_summary(summary, label):
    new = [f for f in summary["failures"] if f["bug"] is None]
    counts = (f"{label}: {summary['cases']} cases in {summary['seconds']} s: outcomes {summary['outcomes']}, "
              f"compared with the reference {summary['compared_with_reference']}, "
              f"errors by type {summary['errors_by_type']}, reported bugs hit {summary['known_bug_hits']}")
    print("\n" + counts)
    assert summary["cases"] > 0, counts
    details = "\n".join(f"- {f['target']} [{f['kind']}] {f['category']} x{f['count']}: {f['message'][:300]}\n"
                        f"    case: {f['case'][:700]}" for f in new[:25])
    assert not new, f"{counts}\n{len(new)} new robustness failure(s):\n{details}"


def test_fuzz_public_api():
    summary = run_fuzz_session(examples=1000, seed=0, timeout=150)
    check_summary(summary, "fuzz seed 0")


@pytest.mark.slow
@pytest.mark.parametrize("seed,threads", [(1, 1), (2, 2), (3, 2)])
def test_fuzz_public_api_long(seed, threads):
    summary = run_fuzz_session(examples=10000, seed=seed, timeout=1500, threads=threads)
    check_summary(summary, f"fuzz seed {seed}, {threads} thread(s)")


def test_driver_reports_a_signal_death_with_its_case(tmp_path):
    """The harness itself: a case killed by a signal fails with that case's description."""
    script = tmp_path / "die.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys
        sys.argv = [sys.argv[0], "--examples", "3", "--case-log", sys.argv[1], "--only", "^relu$"]
        sys.path.insert(0, {HERE!r})
        import fuzz_driver
        real = fuzz_driver.Runner.run
        def run(self, case, do_compare):
            real(self, case, do_compare)
            os.kill(os.getpid(), signal.SIGSEGV)
        fuzz_driver.Runner.run = run
        fuzz_driver.main(sys.argv[1:])
    """))
    log = tmp_path / "case.txt"
    proc = subprocess.run([sys.executable, str(script), str(log)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == -signal.SIGSEGV
    assert log.read_text().startswith("case #1: relu ")


# ---------------------------------------------------------------------------------------------
# Reproducers of the reported bugs (one per fuzz_driver.KNOWN_BUGS / KNOWN_CRASHES id).

AUGMENT_CRASH = textwrap.dedent("""
    import numpy as np
    from cybn.data import DataLoader, crop_flip_normalize
    img = np.random.default_rng(0).integers(0, 256, (64, 3, 1, 1)).astype(np.uint8)
    n = len(img)
    for i in range(50):
        try:  # rejecting padding > W with a ValueError is a fix too
            out = crop_flip_normalize(img, np.full(n, 16), np.zeros(n, np.int64), np.arange(n) % 2,
                                      [0.5] * 3, [0.25] * 3, padding=16)
            assert np.all(out == (0 - 0.5) / 0.25), "the crop must be all padding"
            for x, y in DataLoader(img, np.zeros(n, np.int64), 16, augment=True, padding=16, seed=i,
                                   mean=[0.5] * 3, std=[0.25] * 3):
                pass
        except ValueError as e:
            assert "padding" in str(e)
    print("ok")
""")


@pytest.mark.xfail(strict=True, reason=(
    "augment-heap-overflow: cybn/_kernels/augment.pyx crop_flip_lut writes outside the output row when "
    "|ox - padding| > W (padding > image width): lo = -dx > W, or hi = W + dx < 0 -> negative column. "
    "crop_flip_normalize(uint8 (64,3,1,1), oy=16, ox=0, flips, [.5]*3, [.25]*3, padding=16) or "
    "DataLoader(..., augment=True, padding=16) on 1-pixel-wide images -> heap corruption, SIGSEGV/SIGABRT"))
def test_reported_bug_augment_heap_overflow():
    proc = subprocess.run([sys.executable, "-c", AUGMENT_CRASH], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, f"exit {proc.returncode} ({_signal_name(proc.returncode)}): {proc.stderr[-500:]}"


CONV_STRIDE_CRASH = textwrap.dedent("""
    import numpy as np
    import cybn.functional as F
    x, w = np.ones((1, 1, 3, 3)), np.ones((1, 1, 1, 1))
    for stride, padding in (((1, 2**31 - 1), 2), ((2**31 - 1, 1), 2), ((1, 2**31 - 2), (0, 3))):
        try:  # rejecting such a stride with a ValueError is a fix too
            y = F.conv2d(x, w, stride=stride, padding=padding)
            F.conv2d_backward(np.ones_like(y), x, w, stride=stride, padding=padding)
        except ValueError as e:
            assert "stride" in str(e) or "padding" in str(e)
    print("ok")
""")


@pytest.mark.xfail(strict=True, reason=(
    "conv-stride-int-overflow: cybn/_kernels/conv.pyx _valid_cols computes (pw - kw_j + sw - 1) // sw in "
    "C int; with stride + padding > 2**31 - 1 it wraps negative -> out-of-bounds im2col -> SIGSEGV. "
    "F.conv2d(np.ones((1,1,3,3)), np.ones((1,1,1,1)), stride=(1, 2**31 - 1), padding=2)"))
def test_reported_bug_conv_stride_int_overflow():
    proc = subprocess.run([sys.executable, "-c", CONV_STRIDE_CRASH], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, f"exit {proc.returncode} ({_signal_name(proc.returncode)}): {proc.stderr[-500:]}"


@pytest.mark.xfail(strict=True, reason=(
    "int-overflow: conv2d/conv2d_backward/max_pool2d/crop_flip_normalize pass stride/padding/kernel "
    ">= 2**31 to C int kernel arguments unchecked -> OverflowError. "
    "F.conv2d(np.ones((1,1,3,3)), np.ones((1,1,1,1)), stride=2**31); F.max_pool2d(x, 2, stride=2**31); "
    "F.max_pool2d(x, 2**40, padding=2**39)"))
def test_reported_bug_int_overflow():
    x = np.ones((1, 1, 3, 3))
    with pytest.raises(ValueError, match="stride"):
        F.conv2d(x, np.ones((1, 1, 1, 1)), stride=2**31)
    with pytest.raises(ValueError, match="stride"):
        F.max_pool2d(x, 2, stride=2**31)
    with pytest.raises(ValueError, match="kernel|padding"):
        F.max_pool2d(x, 2**40, padding=2**39)


@pytest.mark.xfail(strict=True, reason=(
    "float-overflow: functional/_checks.finite_float (and softmax_cross_entropy_backward's grad, "
    "layer float() casts) call float() on a huge int -> OverflowError. "
    "F.batch_norm_train(np.ones((4, 3)), None, None, eps=10**400); "
    "F.softmax_cross_entropy_backward(np.full((2, 3), 1/3), np.array([0, 1]), grad=10**400)"))
def test_reported_bug_float_overflow():
    with pytest.raises(ValueError, match="eps"):
        F.batch_norm_train(np.ones((4, 3)), None, None, eps=10**400)
    with pytest.raises(ValueError, match="grad"):
        F.softmax_cross_entropy_backward(np.full((2, 3), 1 / 3), np.array([0, 1]), grad=10**400)
    with pytest.raises(ValueError, match="p"):
        nn.Dropout(p=10**400)


@pytest.mark.xfail(strict=True, reason=(
    "bn-eval-backward-dy: _BatchNorm.backward in eval mode does not validate dy: "
    "bn = nn.BatchNorm2D(2).eval(); bn.forward(x (3,2,2,2) float32); bn.backward(None) -> AttributeError "
    "'NoneType' object has no attribute 'ndim'; bn.backward(dy (2,)) returns a (1,2,...) dx"))
def test_reported_bug_bn_eval_backward_dy():
    x = np.ones((3, 2, 2, 2), np.float32)
    bn = nn.BatchNorm2D(2).eval()
    bn.forward(x)
    with pytest.raises(TypeError, match="dy|ndarray"):
        bn.backward(None)
    bn.forward(x)
    with pytest.raises(ValueError, match="shape"):
        bn.backward(np.ones((3, 2, 1, 2), np.float32))
    bn.forward(x)
    with pytest.raises(TypeError, match="dtype"):
        bn.backward(np.ones(x.shape, np.float64))


@pytest.mark.xfail(strict=True, reason=(
    "flatten-dropout-unvalidated: Flatten.backward(None) -> AttributeError ('NoneType' object has no "
    "attribute 'reshape'); Dropout.backward accepts a dy of another shape/dtype (returns it broadcast/int) "
    "and Dropout.backward(None) in eval mode returns None"))
def test_reported_bug_flatten_dropout_unvalidated():
    x = np.ones((2, 3, 4), np.float32)
    fl = nn.Flatten()
    fl.forward(x)
    with pytest.raises(TypeError, match="dy|ndarray"):
        fl.backward(None)
    dr = nn.Dropout(0.5, rng=0)
    dr.forward(x)
    with pytest.raises(ValueError, match="shape"):
        dr.backward(np.ones((2, 3, 1), np.float32))
    dr.eval()
    dr.forward(x)
    with pytest.raises(TypeError):
        dr.backward(None)


@pytest.mark.xfail(strict=True, reason=(
    "flatten-empty-batch: nn.Flatten().forward(np.zeros((0, 3, 4), np.float32)) -> numpy ValueError "
    "'cannot reshape array of size 0 into shape (0,newaxis)' (x.reshape(N, -1) with N = 0); "
    "expected shape (0, 12)"))
def test_reported_bug_flatten_empty_batch():
    assert nn.Flatten().forward(np.zeros((0, 3, 4), np.float32)).shape == (0, 12)


@pytest.mark.xfail(strict=True, reason=(
    "softmax-subclass: softmax/log_softmax/softmax_cross_entropy(_backward) allocate with np.empty_like(x), "
    "which keeps an ndarray subclass: F.softmax(np.ma.masked_array(np.zeros((2, 3)), mask=...)) returns a "
    "MaskedArray computed ignoring the mask (np.matrix likewise); every other op returns a plain ndarray"))
def test_reported_bug_softmax_subclass():
    x = np.ma.masked_array(np.zeros((2, 3)), mask=[[1, 0, 0], [0, 0, 0]])
    assert type(F.softmax(x)) is np.ndarray
    assert type(F.log_softmax(np.asmatrix(np.zeros((2, 3))))) is np.ndarray


@pytest.mark.xfail(strict=True, reason=(
    "layer-args-messages: layer constructors let Python/numpy errors escape with messages naming no "
    "argument: nn.BatchNorm2D(3, eps=None) -> TypeError 'float() argument must be a string or a real "
    "number, not NoneType'; nn.Linear(2, 3, bias=np.zeros(3)) -> ValueError 'The truth value of an array "
    "... is ambiguous'; nn.Dropout(0.5, rng=-1) -> ValueError 'expected non-negative integer'; "
    "nn.Linear(2, 2**63) -> ValueError 'Maximum allowed dimension exceeded'"))
def test_reported_bug_layer_args_messages():
    with pytest.raises(TypeError, match="eps"):
        nn.BatchNorm2D(3, eps=None)
    with pytest.raises(TypeError, match="momentum"):
        nn.BatchNorm1D(3, momentum=np.array([0.1, 0.1]))
    with pytest.raises((TypeError, ValueError), match="bias"):
        nn.Linear(2, 3, bias=np.zeros(3))
    with pytest.raises((TypeError, ValueError), match="rng"):
        nn.Dropout(0.5, rng=-1)
    with pytest.raises(ValueError, match="out_features"):
        nn.Linear(2, 2**63)


@pytest.mark.xfail(strict=True, reason=(
    "init-fans-overflow: nn/init.py fans() uses np.prod over the kernel shape, which wraps int64: "
    "nn.Conv2D(3, 2, 2**40) -> ZeroDivisionError 'float division by zero' in kaiming_normal"))
def test_reported_bug_init_fans_overflow():
    with pytest.raises((ValueError, MemoryError)):
        nn.Conv2D(3, 2, 2**40)


@pytest.mark.xfail(strict=True, reason=(
    "compute-dx-truthiness: F.conv2d_backward(dy, x, w, compute_dx=np.array([True, False])) -> ValueError "
    "'The truth value of an array with more than one element is ambiguous' (bool(compute_dx))"))
def test_reported_bug_compute_dx_truthiness():
    x, w = np.ones((1, 1, 3, 3)), np.ones((1, 1, 1, 1))
    with pytest.raises((TypeError, ValueError), match="compute_dx"):
        F.conv2d_backward(np.ones((1, 1, 3, 3)), x, w, compute_dx=np.array([True, False]))


@pytest.mark.xfail(strict=True, reason=(
    "conv-huge-padding: F.conv2d(np.ones((1,1,1,7)), np.ones((1,1,2,4)), padding=2**63) -> numpy's "
    "ValueError 'Maximum allowed dimension exceeded' from np.empty (names neither padding nor a shape)"))
def test_reported_bug_conv_huge_padding():
    with pytest.raises(ValueError, match="padding|shape"):
        F.conv2d(np.ones((1, 1, 1, 7)), np.ones((1, 1, 2, 4)), padding=2**63)


@pytest.mark.xfail(strict=True, reason=(
    "pool-empty-plane: F.max_pool2d(np.zeros((1, 1, 2, 0)), (1, 2), 1, (0, 1)) returns y = -inf and "
    "indices = 0 of shape (1, 1, 2, 1): every window is padding only and index 0 lies outside the empty "
    "plane (H*W = 0); max_pool2d_backward then rejects input_shape (1, 1, 2, 0). Expected: ValueError"))
def test_reported_bug_pool_empty_plane():
    with pytest.raises(ValueError, match="shape|empty"):
        F.max_pool2d(np.zeros((1, 1, 2, 0)), (1, 2), 1, (0, 1))


@pytest.mark.xfail(strict=True, reason=(
    "load-state-dict-mapping: Module.load_state_dict(state) does not check that state is a mapping: "
    "load_state_dict(None) -> TypeError 'argument of type NoneType is not iterable'; "
    "load_state_dict('abc') -> KeyError listing unexpected keys 'a', 'b', 'c'; a list of (key, array) "
    "pairs -> TypeError 'unhashable type'"))
def test_reported_bug_load_state_dict_mapping():
    model = nn.Sequential(nn.Linear(2, 2, rng=0))
    with pytest.raises(TypeError, match="state"):
        model.load_state_dict(None)
    with pytest.raises(TypeError, match="state"):
        model.load_state_dict("abc")


@pytest.mark.xfail(strict=True, reason=(
    "mean-std-messages: cybn.data normalize/crop_flip_normalize/DataLoader convert mean/std with "
    "np.asarray(..., float64): normalize(uint8 images, 'x', [0.2]) -> ValueError 'could not convert "
    "string to float: x' (names neither mean nor std)"))
def test_reported_bug_mean_std_messages():
    images = np.zeros((1, 1, 2, 2), np.uint8)
    with pytest.raises((TypeError, ValueError), match="mean"):
        D.normalize(images, "x", [0.2])
    with pytest.raises((TypeError, ValueError), match="std"):
        D.normalize(images, [0.5], [1j])
