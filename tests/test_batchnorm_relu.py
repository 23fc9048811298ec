"""Fused BN + ReLU (functional.batch_norm_relu_train / _backward) vs the NumPy reference, vs the
unfused composition (bit for bit), by finite differences, across threads, and bad inputs."""
import numpy as np
import pytest

import cybn
from cybn import functional as F
from cybn import reference as R
from gradcheck import numerical_grad

# plane mode (4-D, odd sizes, 1x1 spatial, batch 1), column mode (2-D), and > 8 and < 8 values
# per plane (vector body and scalar tail of the kernels)
SHAPES = [(4, 3, 5, 5), (1, 2, 3, 7), (9, 5, 1, 1), (3, 4, 4, 4), (2, 16, 8, 8), (37, 6),
          (5, 129), (2, 3)]


def _data(rng, shape, dtype=np.float64, affine=True):
    C = shape[1]
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    w = (rng.standard_normal(C) + 1).astype(dtype) if affine else None
    b = rng.standard_normal(C).astype(dtype) if affine else None
    dy = rng.standard_normal(shape).astype(dtype)
    return x, w, b, dy


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference_float64(rng, threads, shape, affine):
    x, w, b, dy = _data(rng, shape, affine=affine)
    y, mean, var = F.batch_norm_relu_train(x, w, b)
    ry, rmean, rvar = R.batch_norm_relu_train(x, w, b)
    np.testing.assert_allclose(y, ry, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mean, rmean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(var, rvar, rtol=1e-12, atol=1e-12)
    assert (y == 0).any() and (y > 0).any()  # the mask is exercised
    got = F.batch_norm_relu_backward(dy, x, w, b, mean, var)
    want = R.batch_norm_relu_backward(dy, x, w, b, mean, var)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_bitwise_equal_to_the_unfused_composition(rng, shape, dtype):
    """The fused kernels compute the same lanes, order and mask as relu(bn(x)) unfused."""
    x, w, b, dy = _data(rng, shape, dtype)
    y, mean, var = F.batch_norm_relu_train(x, w, b)
    z, mean2, var2 = F.batch_norm_train(x, w, b)
    assert np.array_equal(y, F.relu(z)) and np.array_equal(mean, mean2)
    fused = F.batch_norm_relu_backward(dy, x, w, b, mean, var)
    unfused = F.batch_norm_backward(F.relu_backward(dy, y), x, w, mean, var)
    for a, c in zip(fused, unfused):
        assert a.dtype == dtype and np.array_equal(a, c)


@pytest.mark.parametrize("shape", SHAPES)
def test_float32_against_float64_reference(rng, shape):
    x, w, b, dy = _data(rng, shape)
    x32, w32, b32, dy32 = (a.astype(np.float32) for a in (x, w, b, dy))
    y, mean, var = F.batch_norm_relu_train(x32, w32, b32)
    ry, rmean, rvar = R.batch_norm_relu_train(x, w, b)
    # float32 normalisation: a few ulp of |y| <= ~10
    np.testing.assert_allclose(y, ry, rtol=1e-5, atol=1e-5)
    got = F.batch_norm_relu_backward(dy32, x32, w32, b32, mean, var)
    want = R.batch_norm_relu_backward(dy, x, w, b, rmean, rvar)
    # the mask can differ only where the float32 and float64 pre-activations straddle 0
    # (|z| ~ 1e-7: not drawn here); the sums are in double, dx in float32
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", [F, R], ids=["functional", "reference"])
@pytest.mark.parametrize("shape", [(3, 2, 2, 3), (7, 3)])
def test_finite_difference_gradients(rng, impl, shape):
    x, w, b, dy = _data(rng, shape)

    def loss():
        return float(np.sum(impl.batch_norm_relu_train(x, w, b)[0] * dy))
    _, mean, var = impl.batch_norm_relu_train(x, w, b)
    dx, dw, db = impl.batch_norm_relu_backward(dy, x, w, b, mean, var)
    for analytic, param in ((dx, x), (dw, w), (db, b)):
        np.testing.assert_allclose(analytic, numerical_grad(loss, param), rtol=1e-6, atol=1e-7)


def test_threads_bit_identical(rng, tiny_work_threaded):
    for shape in [(70, 3, 5, 5), (2003, 7), (9, 5, 64, 64)]:
        for dtype in (np.float32, np.float64):
            x, w, b, dy = _data(rng, shape, dtype)
            out = []
            for n in (1, 2, 3):
                with cybn.num_threads(n):
                    y, mean, var = F.batch_norm_relu_train(x, w, b)
                    out.append((y, mean, var) + F.batch_norm_relu_backward(dy, x, w, b, mean, var))
            for results in zip(*out):
                for r in results[1:]:
                    assert np.array_equal(r, results[0])


def test_nan_behaves_as_the_unfused_composition(rng):
    x, w, b, dy = _data(rng, (4, 2, 3, 3))
    x[0, 0, 0, 0] = np.nan
    y, mean, var = F.batch_norm_relu_train(x, w, b)
    assert np.isnan(y[:, 0]).all() and not np.isnan(y[:, 1]).any()  # NaN passes the ReLU
    np.testing.assert_array_equal(y, F.relu(F.batch_norm_train(x, w, b)[0]))
    fused = F.batch_norm_relu_backward(dy, x, w, b, mean, var)
    unfused = F.batch_norm_backward(F.relu_backward(dy, y), x, w, mean, var)
    for a, c in zip(fused, unfused):
        np.testing.assert_array_equal(a, c)
    assert not np.isnan(fused[0][:, 1]).any()


def test_bad_inputs_raise_clear_errors(rng):
    x, w, b, dy = _data(rng, (4, 3, 2, 2))
    _, mean, var = F.batch_norm_relu_train(x, w, b)
    with pytest.raises(TypeError, match="x"):
        F.batch_norm_relu_train(x.tolist(), w, b)
    with pytest.raises(TypeError, match="bias"):
        F.batch_norm_relu_train(x, w, b.astype(np.float32))
    with pytest.raises(ValueError, match="bias"):
        F.batch_norm_relu_backward(dy, x, w, b[:2], mean, var)
    with pytest.raises(ValueError, match="dy"):
        F.batch_norm_relu_backward(dy[:2], x, w, b, mean, var)
    with pytest.raises(ValueError, match="batch_norm_relu_train"):
        F.batch_norm_relu_train(x[:1, :, :1, :1], w, b)
    with pytest.raises(ValueError, match="var"):
        F.batch_norm_relu_backward(dy, x, w, b, mean, -var - 1)
