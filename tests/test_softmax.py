"""Softmax / log-softmax / softmax cross-entropy: kernels vs the NumPy reference, gradients,
extreme logits, thread independence, PyTorch (if installed) and input validation."""
import numpy as np
import pytest

import cybn
from cybn import functional as F
from cybn import reference as R

SHAPES = [(1, 1), (1, 7), (5, 1), (7, 13), (128, 10), (33, 1000), (300, 129)]


def make(rng, n, c, dtype=np.float64, scale=3.0):
    x = (rng.standard_normal((n, c)) * scale).astype(dtype)
    y = rng.integers(0, c, n)
    return x, y


def test_same_api():
    assert F.softmax.__module__.endswith("functional.softmax")
    import importlib
    fs = importlib.import_module("cybn.functional.softmax")
    rs = importlib.import_module("cybn.reference.softmax")
    assert fs.__all__ == rs.__all__


@pytest.mark.parametrize("n,c", SHAPES)
def test_float64_matches_reference(rng, threads, n, c):
    x, y = make(rng, n, c)
    np.testing.assert_allclose(F.softmax(x), R.softmax(x), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(F.log_softmax(x), R.log_softmax(x), rtol=1e-12, atol=1e-13)
    loss, p = F.softmax_cross_entropy(x, y)
    loss_r, p_r = R.softmax_cross_entropy(x, y)
    assert isinstance(loss, float)
    assert loss == pytest.approx(loss_r, rel=1e-12, abs=1e-14)
    np.testing.assert_allclose(p, p_r, rtol=1e-12, atol=1e-300)
    for grad in (1.0, 0.37):
        dx = F.softmax_cross_entropy_backward(p, y, grad)
        np.testing.assert_allclose(dx, R.softmax_cross_entropy_backward(p_r, y, grad), rtol=1e-12, atol=1e-17)
        assert dx.dtype == np.float64


@pytest.mark.parametrize("n,c", SHAPES)
def test_float32_matches_float64_reference(rng, threads, n, c):
    x, y = make(rng, n, c, np.float32)
    x64 = x.astype(np.float64)
    p = F.softmax(x)
    assert p.dtype == np.float32
    # exp and the scaling are float32 (~1e-7 relative), the row sums are accumulated in double
    np.testing.assert_allclose(p, R.softmax(x64), rtol=2e-6, atol=1e-30)
    # log_softmax: (x - m) is float32-rounded, so the error is relative to |x|
    np.testing.assert_allclose(F.log_softmax(x), R.log_softmax(x64), rtol=1e-6, atol=2e-6)
    loss, probs = F.softmax_cross_entropy(x, y)
    loss_r, _ = R.softmax_cross_entropy(x64, y)
    assert loss == pytest.approx(loss_r, rel=1e-6, abs=1e-6)
    dx = F.softmax_cross_entropy_backward(probs, y, 0.5)
    assert dx.dtype == np.float32
    np.testing.assert_allclose(dx, R.softmax_cross_entropy_backward(probs.astype(np.float64), y, 0.5),
                               rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-13), (np.float32, 1e-6)])
def test_exp_accuracy_over_range(dtype, rtol):
    """softmax of rows [0, z] is e^z / (1 + e^z): checks the inline exp over its whole range."""
    lo = -80.0 if dtype == np.float32 else -700.0
    z = np.concatenate([-np.geomspace(1e-9, -lo, 4000), np.linspace(lo, 0, 4001)]).astype(dtype)
    x = np.stack([np.zeros_like(z), z], axis=1)
    p = F.softmax(x)[:, 1].astype(np.float64)
    zz = z.astype(np.float64)
    want = np.exp(zz) / (1 + np.exp(zz))
    np.testing.assert_allclose(p, want, rtol=rtol, atol=0)
    # below the smallest normal number the kernel returns 0 (documented); no garbage
    tiny = np.array([[0.0, -2000.0], [0.0, -1e30]], dtype=dtype)
    assert np.all(F.softmax(tiny)[:, 1] == 0.0)


def test_reference_gradient_finite_difference(rng):
    x, y = make(rng, 4, 5)
    _, p = R.softmax_cross_entropy(x, y)
    analytic = R.softmax_cross_entropy_backward(p, y, 1.0)
    numeric = _numeric_grad(lambda z: R.softmax_cross_entropy(z, y)[0], x)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_functional_gradient_finite_difference(rng):
    x, y = make(rng, 6, 7)
    _, p = F.softmax_cross_entropy(x, y)
    analytic = F.softmax_cross_entropy_backward(p, y, 2.5)
    numeric = _numeric_grad(lambda z: 2.5 * F.softmax_cross_entropy(z, y)[0], x)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


def _numeric_grad(f, x, h=1e-5):
    g = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = (f(xp) - f(xm)) / (2 * h)
    return g


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_logits_are_finite_and_correct(rng, dtype):
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]], dtype=dtype)
    y = np.array([1, 2, 0])
    loss, p = F.softmax_cross_entropy(x, y)
    # row losses: 2e4, log 3, log 2
    assert np.isfinite(loss) and np.all(np.isfinite(p))
    assert loss == pytest.approx((2e4 + np.log(3) + np.log(2)) / 3, rel=1e-6)
    np.testing.assert_allclose(p, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0]], rtol=1e-6, atol=0)
    logp = F.log_softmax(x)
    assert np.all(np.isfinite(logp))
    np.testing.assert_allclose(logp[0], [0, -2e4, -1e4], rtol=1e-6)
    # random logits of magnitude 1e4 against the float64 reference
    xr, yr = make(rng, 50, 20, dtype, scale=1e4)
    lr, pr = R.softmax_cross_entropy(xr.astype(np.float64), yr)
    l, p = F.softmax_cross_entropy(xr, yr)
    assert l == pytest.approx(lr, rel=1e-6)
    np.testing.assert_allclose(p, pr, rtol=1e-5, atol=1e-30)


def test_nan_logits_propagate():
    x = np.array([[1.0, np.nan, 2.0], [0.0, 1.0, 2.0]])
    loss, p = F.softmax_cross_entropy(x, np.array([0, 1]))
    assert np.isnan(loss) and np.all(np.isnan(p[0])) and np.all(np.isfinite(p[1]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_and_two_threads_identical(rng, dtype):
    # large enough to run in parallel; each row is reduced by one thread, so bitwise equal
    x, y = make(rng, 257, 300, dtype)
    out = {}
    for n in (1, 2):
        with cybn.num_threads(n):
            loss, p = F.softmax_cross_entropy(x, y)
            out[n] = (loss, p, F.softmax_cross_entropy_backward(p, y), F.softmax(x), F.log_softmax(x))
    assert out[1][0] == out[2][0]
    for a, b in zip(out[1][1:], out[2][1:]):
        np.testing.assert_array_equal(a, b)


def test_inputs_not_modified_and_label_dtypes(rng):
    x, y = make(rng, 9, 4)
    x0, y0 = x.copy(), y.copy()
    loss, p = F.softmax_cross_entropy(x, y)
    F.softmax_cross_entropy_backward(p, y)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)
    for dt in (np.int32, np.uint8, np.int16, np.uint64):
        l2, p2 = F.softmax_cross_entropy(x, y.astype(dt))
        assert l2 == loss
        np.testing.assert_array_equal(F.softmax_cross_entropy_backward(p, y.astype(dt)),
                                      F.softmax_cross_entropy_backward(p, y))


def test_read_only_inputs(rng):
    x, y = make(rng, 5, 4)
    x.flags.writeable = False
    y.flags.writeable = False
    loss, p = F.softmax_cross_entropy(x, y)
    p.flags.writeable = False
    assert F.softmax_cross_entropy_backward(p, y).shape == (5, 4)
    assert F.softmax(x).shape == F.log_softmax(x).shape == (5, 4)


def test_non_contiguous_inputs_give_same_result(rng):
    big, _ = make(rng, 20, 30)
    x = big[::2, 1::3]  # strided view, shape (10, 10)
    y = rng.integers(0, 10, 20)[::2]
    xc = np.ascontiguousarray(x)
    loss, p = F.softmax_cross_entropy(x, y)
    loss_c, p_c = F.softmax_cross_entropy(xc, np.ascontiguousarray(y))
    assert loss == loss_c
    np.testing.assert_array_equal(p, p_c)
    np.testing.assert_array_equal(F.softmax(x), F.softmax(xc))
    np.testing.assert_array_equal(F.log_softmax(np.asfortranarray(xc)), F.log_softmax(xc))
    pf = np.asfortranarray(p_c)
    np.testing.assert_array_equal(F.softmax_cross_entropy_backward(pf, y), F.softmax_cross_entropy_backward(p_c, y))


def test_matches_torch_cross_entropy(rng):
    torch = pytest.importorskip("torch")
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        x, y = make(rng, 64, 10, dtype)
        xt = torch.from_numpy(x.copy()).requires_grad_()
        lt = torch.nn.functional.cross_entropy(xt, torch.from_numpy(y))
        lt.backward()
        loss, p = F.softmax_cross_entropy(x, y)
        assert loss == pytest.approx(lt.item(), rel=tol)
        np.testing.assert_allclose(F.softmax_cross_entropy_backward(p, y), xt.grad.numpy(), rtol=tol, atol=tol * 1e-2)
        np.testing.assert_allclose(F.log_softmax(x), torch.log_softmax(torch.from_numpy(x), 1).numpy(),
                                   rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- validation
X = np.zeros((4, 3))
Y = np.array([0, 1, 2, 0])


@pytest.mark.parametrize("fn", [F.softmax, F.log_softmax])
@pytest.mark.parametrize("bad,exc,match", [
    ([[1.0, 2.0]], TypeError, "x must be a numpy.ndarray"),
    (np.zeros((2, 3), dtype=np.int64), TypeError, "float32 or float64"),
    (np.zeros(3), ValueError, r"2 dimensions \(N, C\), got shape \(3,\)"),
    (np.zeros((2, 3, 4)), ValueError, "2 dimensions"),
    (np.zeros((0, 3)), ValueError, "N >= 1"),
    (np.zeros((3, 0)), ValueError, "C >= 1"),
])
def test_softmax_bad_inputs(fn, bad, exc, match):
    with pytest.raises(exc, match=match):
        fn(bad)


@pytest.mark.parametrize("logits,labels,exc,match", [
    ([[0.0, 1.0]], np.array([0]), TypeError, "logits must be a numpy.ndarray"),
    (np.zeros((0, 3)), np.zeros(0, np.int64), ValueError, "N >= 1"),
    (np.zeros((2, 3), np.float16), np.array([0, 1]), TypeError, "float32 or float64"),
    (X, [0, 1, 2, 0], TypeError, "labels must be a numpy.ndarray"),
    (X, Y.astype(np.float64), TypeError, "labels must have an integer dtype"),
    (X, Y.astype(bool), TypeError, "labels must have an integer dtype"),
    (X, Y[:3], ValueError, r"labels must have shape \(4,\)"),
    (X, Y.reshape(2, 2), ValueError, r"labels must have shape \(4,\)"),
    (X, np.array([0, 1, 3, 0]), ValueError, r"labels must lie in \[0, 3\), found 3 at index 2"),
    (X, np.array([0, -1, 2, 0]), ValueError, r"labels must lie in \[0, 3\), found -1"),
])
def test_cross_entropy_bad_inputs(logits, labels, exc, match):
    with pytest.raises(exc, match=match):
        F.softmax_cross_entropy(logits, labels)
    if isinstance(logits, np.ndarray) and logits.dtype != np.float16:
        with pytest.raises(exc, match=match.replace("logits", "probs")):
            F.softmax_cross_entropy_backward(logits, labels)


@pytest.mark.parametrize("grad,exc,match", [
    (float("nan"), ValueError, "grad must be a finite"),
    (float("inf"), ValueError, "grad must be a finite"),
    ("1", TypeError, "grad must be a real number"),
    (None, TypeError, "grad must be a real number"),
])
def test_backward_bad_grad(grad, exc, match):
    with pytest.raises(exc, match=match):
        F.softmax_cross_entropy_backward(np.full((4, 3), 1 / 3), Y, grad)


def test_reference_validates_labels():
    with pytest.raises(ValueError, match=r"lie in \[0, 3\)"):
        R.softmax_cross_entropy(X, np.array([0, 1, 3, 0]))
    with pytest.raises(ValueError, match="2 dimensions"):
        R.softmax(np.zeros(3))
