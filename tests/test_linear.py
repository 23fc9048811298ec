"""cybn.functional.linear vs the NumPy reference, gradients, threads and input validation."""
import numpy as np
import pytest

from cybn import functional as F
from cybn import reference as R
from gradcheck import numerical_grad

# (N, in, out); the last ones span several of the kernel's 64 x 256 output tiles, with ragged edges
SHAPES = [(1, 1, 1), (1, 7, 3), (5, 3, 8), (17, 33, 10), (64, 129, 31), (130, 300, 270),
          (65, 257, 513)]


def make(rng, N, fin, fout, dtype=np.float64):
    x = rng.standard_normal((N, fin)).astype(dtype)
    w = rng.standard_normal((fout, fin)).astype(dtype)
    b = rng.standard_normal(fout).astype(dtype)
    dy = rng.standard_normal((N, fout)).astype(dtype)
    return x, w, b, dy



@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("use_bias", [True, False])
def test_forward_backward_vs_reference_float64(rng, threads, shape, use_bias):
    x, w, b, dy = make(rng, *shape)
    b = b if use_bias else None
    np.testing.assert_allclose(F.linear(x, w, b), R.linear(x, w, b), rtol=1e-12, atol=1e-12)
    for got, want in zip(F.linear_backward(dy, x, w), R.linear_backward(dy, x, w)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_float32_vs_float64_reference(rng, threads, shape):
    x, w, b, dy = make(rng, *shape)
    x32, w32, b32, dy32 = (a.astype(np.float32) for a in (x, w, b, dy))
    y = F.linear(x32, w32, b32)
    assert y.dtype == np.float32 and y.shape == (shape[0], shape[2])
    tol = 1e-5 * np.sqrt(shape[1])
    np.testing.assert_allclose(y, R.linear(x, w, b), rtol=tol, atol=tol)
    grads = F.linear_backward(dy32, x32, w32)
    for got, want in zip(grads, R.linear_backward(dy, x, w)):
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5 * np.sqrt(shape[0] + shape[2]),
                                   atol=1e-5 * np.sqrt(shape[0] + shape[2]))


@pytest.mark.parametrize("impl", [F, R], ids=["functional", "reference"])
def test_finite_difference_gradients(rng, impl):
    x, w, b, dy = make(rng, 3, 5, 4)
    loss = lambda: float(np.sum(impl.linear(x, w, b) * dy))  # noqa: E731  dL/dy = dy
    dx, dw, db = impl.linear_backward(dy, x, w)
    for analytic, param in ((dx, x), (dw, w), (db, b)):
        np.testing.assert_allclose(analytic, numerical_grad(loss, param), rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(128, 2048, 256), (128, 256, 10), (130, 300, 270), (3, 5, 600)])
def test_one_and_two_threads_agree_bitwise(rng, dtype, shape):
    """Fixed output tiles, one GEMM each: the same bits for any thread count."""
    import cybn
    x, w, b, dy = make(rng, *shape, dtype)
    out = []
    for n in (1, 2, 3):
        with cybn.num_threads(n):
            out.append((F.linear(x, w, b),) + F.linear_backward(dy, x, w))
    for results in zip(*out):
        for r in results[1:]:
            assert np.array_equal(r, results[0])


@pytest.mark.parametrize("shape", [(0, 3, 4), (3, 0, 4), (3, 4, 0), (0, 0, 0)])
def test_empty_dimensions(rng, shape):
    x, w, b, dy = make(rng, *shape)
    np.testing.assert_array_equal(F.linear(x, w, b), R.linear(x, w, b))
    np.testing.assert_array_equal(F.linear(x, w), R.linear(x, w))
    for got, want in zip(F.linear_backward(dy, x, w), R.linear_backward(dy, x, w)):
        np.testing.assert_array_equal(got, want)


def test_non_contiguous_inputs(rng):
    x, w, b, dy = make(rng, 6, 8, 5)
    xf, wf = np.asfortranarray(x), w[:, ::-1].copy()[:, ::-1]  # Fortran order, negative strides
    bs = np.repeat(b, 2)[::2]
    dyf = np.asfortranarray(dy)
    np.testing.assert_allclose(F.linear(xf, wf, bs), R.linear(x, w, b), rtol=1e-12)
    for got, want in zip(F.linear_backward(dyf, xf, wf), R.linear_backward(dy, x, w)):
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_inputs_are_not_modified(rng):
    x, w, b, dy = make(rng, 4, 3, 2)
    copies = [a.copy() for a in (x, w, b, dy)]
    F.linear(x, w, b)
    F.linear_backward(dy, x, w)
    for a, c in zip((x, w, b, dy), copies):
        np.testing.assert_array_equal(a, c)


def test_bad_dtypes_raise_type_error(rng):
    x, w, b, dy = make(rng, 4, 3, 2)
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        F.linear(x.tolist(), w, b)
    with pytest.raises(TypeError, match="int64"):
        F.linear(x.astype(np.int64), w, b)
    with pytest.raises(TypeError, match="weight has dtype float32"):
        F.linear(x, w.astype(np.float32), b)
    with pytest.raises(TypeError, match="bias has dtype float32"):
        F.linear(x, w, b.astype(np.float32))
    with pytest.raises(TypeError, match="dy has dtype float32"):
        F.linear_backward(dy.astype(np.float32), x, w)
    with pytest.raises(TypeError, match="float16"):
        F.linear(x.astype(np.float16), w.astype(np.float16))


def test_bad_shapes_raise_value_error(rng):
    x, w, b, dy = make(rng, 4, 3, 2)
    with pytest.raises(ValueError, match=r"x has shape \(4, 3\) but weight has shape \(2, 5\)"):
        F.linear(x, rng.standard_normal((2, 5)), b)
    with pytest.raises(ValueError, match=r"x must have 2 dimensions, got shape \(4, 3, 1\)"):
        F.linear(x[..., None], w, b)
    with pytest.raises(ValueError, match=r"weight must have 2 dimensions"):
        F.linear(x, w.ravel(), b)
    with pytest.raises(ValueError, match=r"bias .* must have shape \(2,\), got \(3,\)"):
        F.linear(x, w, np.zeros(3))
    with pytest.raises(ValueError, match=r"dy .* must have shape \(4, 2\), got \(4, 3\)"):
        F.linear_backward(np.zeros((4, 3)), x, w)
    with pytest.raises(ValueError, match=r"x has shape \(4, 3\) but weight has shape \(2, 4\)"):
        F.linear_backward(dy, x, np.zeros((2, 4)))
