"""No crash on bad input: property-based fuzzing of every public op, layer and data entry point.

The fuzzing itself lives in tests/fuzz_driver.py and runs in a SUBPROCESS, so a segfault, an
abort or a hang fails the test (with the case that caused it, read from the driver's case log)
instead of killing pytest. Allowed outcomes per case: a correct-looking result (right shapes and
dtypes; compared with cybn.reference for a share of the valid, finite cases) or a TypeError /
ValueError whose message names an argument, a shape or a dtype.

Every bug the fuzzer found has a minimal regression test below (test_reported_bug_*), so it stays
fixed without the fuzzer having to hit it again.

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

        def last_case():
            try:
                with open(log) as f:
                    return f.read().strip()[:3000]
            except OSError:
                return "(no case log)"

        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=HERE)
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
    new = summary["failures"]
    counts = (f"{label}: {summary['cases']} cases in {summary['seconds']} s: outcomes {summary['outcomes']}, "
              f"compared with the reference {summary['compared_with_reference']}, "
              f"errors by type {summary['errors_by_type']}")
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
                          cwd=HERE)
    assert proc.returncode == -signal.SIGSEGV
    assert log.read_text().startswith("case #1: relu ")


# ---------------------------------------------------------------------------------------------
# Regression tests of the bugs the fuzzer found (each fixed).

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


def test_reported_bug_augment_heap_overflow():
    proc = subprocess.run([sys.executable, "-c", AUGMENT_CRASH], capture_output=True, text=True, timeout=300,
                          cwd=HERE)
    assert proc.returncode == 0, f"exit {proc.returncode} ({_signal_name(proc.returncode)}): {proc.stderr[-500:]}"


def _crop_flip_reference(img, oy, ox, flips, mean, std, padding):
    """NumPy twin of crop_flip_normalize: pad with black, crop, mirror, normalise (float64)."""
    n, c, h, w = img.shape
    p = np.pad(img, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out = np.stack([p[i, :, oy[i]:oy[i] + h, ox[i]:ox[i] + w] for i in range(n)]).astype(np.float64)
    out[flips.astype(bool)] = out[flips.astype(bool)][..., ::-1]
    return (out / 255.0 - np.asarray(mean)[None, :, None, None]) / np.asarray(std)[None, :, None, None]


@pytest.mark.parametrize("shape,padding", [((7, 2, 1, 1), 16), ((9, 3, 2, 3), 5), ((6, 1, 4, 2), 9),
                                           ((5, 2, 3, 5), 0), ((8, 3, 5, 4), 2)])
def test_crop_flip_any_padding_matches_numpy(shape, padding):
    """augment-heap-overflow regression: shifts beyond the image (padding > H or W) give pure padding."""
    rng = np.random.default_rng(padding)
    img = rng.integers(0, 256, shape).astype(np.uint8)
    n = shape[0]
    oy = rng.integers(0, 2 * padding + 1, n)
    ox = rng.integers(0, 2 * padding + 1, n)
    ox[:2] = (0, 2 * padding)  # the extreme shifts, unflipped and flipped
    flips = np.arange(n) % 2
    mean, std = [0.3] * shape[1], [0.2] * shape[1]
    got = D.crop_flip_normalize(img, oy, ox, flips, mean, std, padding=padding, dtype=np.float64)
    np.testing.assert_allclose(got, _crop_flip_reference(img, oy, ox, flips, mean, std, padding),
                               rtol=1e-12, atol=1e-12)
    for x, _ in D.DataLoader(img, np.zeros(n, np.int64), 3, augment=True, padding=padding, seed=1,
                             mean=mean, std=std):
        assert x.shape[1:] == shape[1:] and np.isfinite(x).all()


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


def test_reported_bug_conv_stride_int_overflow():
    proc = subprocess.run([sys.executable, "-c", CONV_STRIDE_CRASH], capture_output=True, text=True, timeout=300,
                          cwd=HERE)
    assert proc.returncode == 0, f"exit {proc.returncode} ({_signal_name(proc.returncode)}): {proc.stderr[-500:]}"


def test_reported_bug_int_overflow():
    x = np.ones((1, 1, 3, 3))
    with pytest.raises(ValueError, match="stride"):
        F.conv2d(x, np.ones((1, 1, 1, 1)), stride=2**31)
    with pytest.raises(ValueError, match="stride"):
        F.max_pool2d(x, 2, stride=2**31)
    with pytest.raises(ValueError, match="kernel|padding"):
        F.max_pool2d(x, 2**40, padding=2**39)
    with pytest.raises(ValueError, match="padding"):
        F.conv2d(x, np.ones((1, 1, 1, 1)), padding=(0, 2**31))
    with pytest.raises(ValueError, match="padding"):  # fits an int, the padded input does not
        F.conv2d(x, np.ones((1, 1, 1, 1)), padding=2**30)
    img = np.zeros((2, 3, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="padding"):
        D.crop_flip_normalize(img, [0, 0], [0, 0], [0, 0], [0.5] * 3, [0.25] * 3, padding=2**31)
    with pytest.raises(ValueError, match="padding"):
        D.DataLoader(img, np.zeros(2, np.int64), 1, augment=True, padding=2**31)


def test_reported_bug_float_overflow():
    with pytest.raises(ValueError, match="eps"):
        F.batch_norm_train(np.ones((4, 3)), None, None, eps=10**400)
    with pytest.raises(ValueError, match="grad"):
        F.softmax_cross_entropy_backward(np.full((2, 3), 1 / 3), np.array([0, 1]), grad=10**400)
    with pytest.raises(ValueError, match="p"):
        nn.Dropout(p=10**400)


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


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.asmatrix
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
    dr.forward(x)
    with pytest.raises(TypeError, match="dtype"):
        dr.backward(np.ones(x.shape, np.int64))
    dr.eval()
    dr.forward(x)
    with pytest.raises(TypeError):
        dr.backward(None)
    with pytest.raises(TypeError, match="MaskedArray"):
        dr.forward(np.ma.masked_array(np.ones((2, 3), np.float32)))
    with pytest.raises(TypeError, match="matrix"):
        dr.forward(np.asmatrix(np.ones((2, 3), np.float32)))


def test_reported_bug_flatten_empty_batch():
    assert nn.Flatten().forward(np.zeros((0, 3, 4), np.float32)).shape == (0, 12)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix
def test_reported_bug_softmax_subclass():
    """Policy (cybn._validation): ndarray subclasses are rejected by every op, naming the type."""
    x = np.ma.masked_array(np.zeros((2, 3)), mask=[[1, 0, 0], [0, 0, 0]])
    with pytest.raises(TypeError, match="x.*subclass MaskedArray"):
        F.softmax(x)
    with pytest.raises(TypeError, match="x.*subclass matrix"):
        F.log_softmax(np.asmatrix(np.zeros((2, 3))))
    with pytest.raises(TypeError, match="logits.*subclass MaskedArray"):
        F.softmax_cross_entropy(x, np.array([0, 1]))
    with pytest.raises(TypeError, match="x.*subclass MaskedArray"):
        F.relu(x)
    with pytest.raises(TypeError, match="weight.*subclass matrix"):
        F.linear(np.zeros((2, 3)), np.asmatrix(np.zeros((4, 3))))


def test_softmax_label_message_reports_the_real_value():
    with pytest.raises(ValueError, match="18446744073709551615"):  # not the int64 wrap-around -1
        F.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 2**64 - 1], np.uint64))
    with pytest.raises(ValueError, match="found 9223372036854775808"):
        F.softmax_cross_entropy_backward(np.full((1, 3), 1 / 3), np.array([2**63], np.uint64))


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


def test_reported_bug_init_fans_overflow():
    with pytest.raises(ValueError, match="kernel_size"):
        nn.Conv2D(3, 2, 2**40)
    with pytest.raises(ValueError, match="in_features and out_features"):
        nn.Linear(2**31 - 1, 2**31 - 1)
    assert nn.init.fans((2, 3, 2**40, 2**40)) == (3 * 2**80, 2 * 2**80)  # Python ints: no wrap-around


def test_reported_bug_compute_dx_truthiness():
    x, w = np.ones((1, 1, 3, 3)), np.ones((1, 1, 1, 1))
    with pytest.raises((TypeError, ValueError), match="compute_dx"):
        F.conv2d_backward(np.ones((1, 1, 3, 3)), x, w, compute_dx=np.array([True, False]))


def test_reported_bug_conv_huge_padding():
    with pytest.raises(ValueError, match="padding|shape"):
        F.conv2d(np.ones((1, 1, 1, 7)), np.ones((1, 1, 2, 4)), padding=2**63)


def test_reported_bug_pool_empty_plane():
    with pytest.raises(ValueError, match="shape|empty"):
        F.max_pool2d(np.zeros((1, 1, 2, 0)), (1, 2), 1, (0, 1))


def test_reported_bug_load_state_dict_mapping():
    model = nn.Sequential(nn.Linear(2, 2, rng=0))
    with pytest.raises(TypeError, match="state"):
        model.load_state_dict(None)
    with pytest.raises(TypeError, match="state"):
        model.load_state_dict("abc")
    with pytest.raises(ValueError, match="missing key"):  # bad input is TypeError/ValueError only
        model.load_state_dict({})


def test_reported_bug_mean_std_messages():
    images = np.zeros((1, 1, 2, 2), np.uint8)
    with pytest.raises((TypeError, ValueError), match="mean"):
        D.normalize(images, "x", [0.2])
    with pytest.raises((TypeError, ValueError), match="std"):
        D.normalize(images, [0.5], [1j])
