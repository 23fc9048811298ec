"""cybn.functional.relu / relu_backward vs the NumPy reference, NaN rules, threads, validation."""
import numpy as np
import pytest

import cybn
from cybn import functional as F
from cybn import reference as R
from gradcheck import numerical_grad

SHAPES = [(), (0,), (1,), (7,), (3, 5), (1, 1, 1, 1), (2, 3, 5, 7), (4, 3, 2, 3, 2), (128, 1001)]



@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_vs_reference(rng, threads, monkeypatch, shape, dtype):
    import cybn.functional._dispatch as dispatch
    monkeypatch.setattr(dispatch, "PARALLEL_MIN", 1)  # run the threaded kernels even on tiny inputs
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y = F.relu(x)
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_array_equal(y, R.relu(x))  # a select: exact in any dtype
    dx = F.relu_backward(dy, y)
    assert dx.dtype == dtype and dx.shape == x.shape
    np.testing.assert_array_equal(dx, R.relu_backward(dy, y))
    np.testing.assert_array_equal(dx, np.where(x > 0, dy, 0))


def test_nan_and_inf_semantics():
    x = np.array([np.nan, -np.inf, np.inf, -0.0, 0.0, -1.0, 2.0])
    y = F.relu(x)
    # relu(NaN) = NaN, as torch.relu: a diverged activation must stay visible.
    np.testing.assert_array_equal(y, [np.nan, 0, np.inf, 0, 0, 0, 2.0])
    np.testing.assert_array_equal(R.relu(x), y)
    # Backward is a select on y > 0: NaN/inf upstream gradients at dead units give 0,
    # a NaN y counts as "not > 0".
    dy = np.array([5.0, np.nan, 1.0, np.inf, 3.0, -np.inf, np.nan])
    want = np.array([0, 0, 1.0, 0, 0, 0, np.nan])
    np.testing.assert_array_equal(F.relu_backward(dy, y), want)
    np.testing.assert_array_equal(R.relu_backward(dy, y), want)


@pytest.mark.parametrize("impl", [F, R], ids=["functional", "reference"])
def test_finite_difference_gradient(rng, impl):
    x = rng.standard_normal((3, 4, 5))
    x[np.abs(x) < 1e-3] = 0.5  # stay away from the kink at 0
    g = rng.standard_normal(x.shape)
    loss = lambda: float(np.sum(impl.relu(x) * g))  # noqa: E731
    np.testing.assert_allclose(impl.relu_backward(g, impl.relu(x)), numerical_grad(loss, x),
                               rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("shape", [(8, 8, 33, 17), (3, 5)])
def test_one_and_two_threads_agree(rng, monkeypatch, shape):
    import cybn.functional._dispatch as dispatch
    monkeypatch.setattr(dispatch, "PARALLEL_MIN", 1)  # small inputs too run on the 2-thread team
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    out = []
    for n in (1, 2):
        with cybn.num_threads(n):
            y = F.relu(x)
            out.append((y, F.relu_backward(dy, y)))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_array_equal(out[0][1], out[1][1])


def test_non_contiguous_inputs(rng):
    base = rng.standard_normal((6, 10, 8))
    x = base[:, ::2, ::-1]  # strided + negative strides
    xf = np.asfortranarray(base)
    np.testing.assert_array_equal(F.relu(x), R.relu(x))
    np.testing.assert_array_equal(F.relu(xf), R.relu(xf))
    dy = rng.standard_normal((8, 10, 6)).transpose(2, 1, 0)
    y = F.relu(xf)
    np.testing.assert_array_equal(F.relu_backward(dy, y), R.relu_backward(dy, y))


def test_input_not_modified(rng):
    x = rng.standard_normal((4, 5))
    c = x.copy()
    F.relu(x)
    np.testing.assert_array_equal(x, c)


def test_bad_inputs():
    x = np.ones((2, 3))
    with pytest.raises(TypeError, match="x must be a numpy.ndarray, got list"):
        F.relu([1.0, -1.0])
    with pytest.raises(TypeError, match="x must have dtype float32 or float64, got int64"):
        F.relu(np.arange(3))
    with pytest.raises(TypeError, match="dy must have dtype float32 or float64, got int32"):
        F.relu_backward(np.ones(3, np.int32), np.ones(3))
    with pytest.raises(TypeError, match="y has dtype float32 but the other operands are float64"):
        F.relu_backward(x, x.astype(np.float32))
    with pytest.raises(ValueError, match=r"y .* must have shape \(2, 3\), got \(3, 2\)"):
        F.relu_backward(x, np.ones((3, 2)))
