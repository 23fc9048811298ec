"""Dropout: functional vs the NumPy reference, gradients, the random stream, validation."""
import numpy as np
import pytest

from cybn import functional as F
from cybn import nn
from cybn import reference as R

from gradcheck import numerical_grad

SHAPES = [(), (1,), (7,), (3, 5), (1, 1, 1, 1), (2, 3, 5, 7), (0, 4)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_reference(shape, p, dtype, rng):
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y, mask = F.dropout(x, p, np.random.default_rng(7))
    yr, maskr = R.dropout(x, p, np.random.default_rng(7))
    assert y.dtype == dtype and y.shape == x.shape and mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, maskr)  # same Generator state -> the same mask
    # x * (1/(1-p)) against x / (1-p): one rounding apart, <= 1 ulp of the dtype
    ulp = np.finfo(dtype).eps
    np.testing.assert_allclose(y, yr, rtol=ulp, atol=0)
    np.testing.assert_allclose(F.dropout_backward(dy, mask, p), R.dropout_backward(dy, mask, p), rtol=ulp, atol=0)
    if p == 0.0:
        np.testing.assert_array_equal(y, x)
    if p == 1.0:
        assert not mask.any() and not y.any()


def test_mask_statistics_and_scale(rng):
    x = np.ones((400, 500))
    y, mask = F.dropout(x, 0.3, rng)
    assert abs(mask.mean() - 0.7) < 0.005  # 200k Bernoulli(0.7): std 0.001
    np.testing.assert_array_equal(y[mask], 1 / 0.7)
    assert abs(y.mean() - 1.0) < 0.01  # inverted dropout keeps the expectation


@pytest.mark.parametrize("p", [0.0, 0.4, 1.0])
def test_gradient_finite_differences(p, rng):
    x = rng.standard_normal((3, 4, 2))
    dy = rng.standard_normal(x.shape)
    _, mask = F.dropout(x, p, np.random.default_rng(3))
    dx = F.dropout_backward(dy, mask, p)
    # the mask is a function of the Generator state only, so a fresh Generator per call fixes it
    ndx = numerical_grad(lambda: float((dy * F.dropout(x, p, np.random.default_rng(3))[0]).sum()), x)
    np.testing.assert_allclose(dx, ndx, rtol=1e-7, atol=1e-9)


def test_random_stream_is_the_layers_historic_one():
    """Checkpoints store the Generator state and resume bit-exactly only if the draws never change:
    one ``random(shape, dtype)`` per training forward with 0 < p < 1, nothing for p in {0, 1}."""
    for dtype in (np.float32, np.float64):
        x = np.ones((4, 6), dtype)
        g = np.random.default_rng(11)
        _, mask = F.dropout(x, 0.25, g)
        expect = np.random.default_rng(11)
        np.testing.assert_array_equal(mask, expect.random(x.shape, dtype=dtype) >= 0.25)
        assert g.bit_generator.state == expect.bit_generator.state
        for p in (0.0, 1.0):
            F.dropout(x, p, g)
            assert g.bit_generator.state == expect.bit_generator.state
    layer = nn.Dropout(0.5, rng=5)
    y = layer.forward(np.ones((3, 8), np.float32))
    keep = np.random.default_rng(5).random((3, 8), dtype=np.float32) >= 0.5
    np.testing.assert_array_equal(y, np.where(keep, np.float32(2.0), np.float32(0.0)))


def test_layer_goes_through_functional(monkeypatch, rng):
    calls = []
    real = F.dropout

    def spy(*args):
        calls.append(args[1])
        return real(*args)

    monkeypatch.setattr(F, "dropout", spy)
    layer = nn.Dropout(0.3, rng=0)
    x = rng.standard_normal((2, 5)).astype(np.float32)
    layer.forward(x)
    assert calls == [0.3]
    assert layer.eval().forward(x) is x and calls == [0.3]  # eval: the identity, nothing drawn


def test_bad_inputs(rng):
    x = rng.standard_normal((2, 3))
    g = np.random.default_rng(0)
    for p, exc in ((-0.1, ValueError), (1.5, ValueError), (float("nan"), ValueError), (10**400, ValueError),
                   (True, TypeError), ("0.5", TypeError), (None, TypeError)):
        with pytest.raises(exc, match="dropout probability p"):
            F.dropout(x, p, g)
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator, got int"):
        F.dropout(x, 0.5, 0)  # a seed would draw the same mask on every call
    with pytest.raises(TypeError, match="x must have dtype float32 or float64, got int64"):
        F.dropout(np.ones((2, 3), np.int64), 0.5, g)
    with pytest.raises(TypeError, match="x must be a plain numpy.ndarray, got the subclass MaskedArray"):
        F.dropout(np.ma.masked_array(x), 0.5, g)
    _, mask = F.dropout(x, 0.5, g)
    with pytest.raises(TypeError, match="mask must be the bool array dropout returned, got dtype float64"):
        F.dropout_backward(x, mask.astype(np.float64), 0.5)
    with pytest.raises(ValueError, match=r"mask \(the shape of dy\) must have shape \(2, 3\), got \(3, 2\)"):
        F.dropout_backward(x, mask.T, 0.5)
    with pytest.raises(TypeError, match="dy must be a numpy.ndarray, got list"):
        F.dropout_backward(x.tolist(), mask, 0.5)
    with pytest.raises(ValueError, match="dropout probability p"):
        F.dropout_backward(x, mask, 2.0)
