"""``out=(dweight, dbias)`` of conv2d_backward and linear_backward: the gradients are written
into the given arrays (the layers pass their own gradient arrays), bitwise what the op returns
without ``out``, and a bad ``out`` raises naming the problem before anything is written."""
import numpy as np
import pytest

from cybn import functional as F

rng = np.random.default_rng(7)


def _conv_case(C, F_, HW, dtype):
    x = rng.standard_normal((3, C, HW, HW)).astype(dtype)
    w = rng.standard_normal((F_, C, 3, 3)).astype(dtype)
    dy = rng.standard_normal((3, F_, HW, HW)).astype(dtype)
    return lambda **kw: F.conv2d_backward(dy, x, w, 1, 1, **kw), (dy, x, w)


def _linear_case(dtype):
    x = rng.standard_normal((5, 7)).astype(dtype)
    w = rng.standard_normal((4, 7)).astype(dtype)
    dy = rng.standard_normal((5, 4)).astype(dtype)
    return lambda **kw: F.linear_backward(dy, x, w, **kw), (dy, x, w)


CASES = {
    "conv_im2col": lambda dt: _conv_case(3, 5, 6, dt),
    "conv_winograd": lambda dt: _conv_case(16, 16, 8, dt),
    "linear": _linear_case,
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_bias", [True, False])
def test_out_is_written_and_bitwise(case, dtype, with_bias):
    op, (dy, x, w) = CASES[case](dtype)
    dx, dw, db = op()
    ow = np.full_like(w, np.nan)
    ob = np.full(w.shape[0], np.nan, dtype) if with_bias else None
    dx2, dw2, db2 = op(out=(ow, ob))
    assert dw2 is ow
    np.testing.assert_array_equal(dx2, dx)
    np.testing.assert_array_equal(ow, dw)
    np.testing.assert_array_equal(db2, db)
    if with_bias:
        assert db2 is ob


def test_conv_out_without_dx_and_empty_batch():
    x = rng.standard_normal((2, 16, 8, 8)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((2, 16, 8, 8)).astype(np.float32)
    ow, ob = np.empty_like(w), np.empty(16, np.float32)
    dx, dw, db = F.conv2d_backward(dy, x, w, 1, 1, compute_dx=False, out=(ow, ob))
    assert dx is None and dw is ow and db is ob
    np.testing.assert_array_equal(ow, F.conv2d_backward(dy, x, w, 1, 1)[1])
    ow.fill(1), ob.fill(1)
    F.conv2d_backward(dy[:0], x[:0], w, 1, 1, out=(ow, ob))
    assert not ow.any() and not ob.any()


@pytest.mark.parametrize("case", CASES)
def test_bad_out(case):
    op, (dy, x, w) = CASES[case](np.float32)
    good_b = np.zeros(w.shape[0], np.float32)
    bad = [
        ([np.zeros_like(w), good_b], TypeError, "tuple"),
        ((np.zeros_like(w),), TypeError, "tuple"),
        ((None, good_b), TypeError, "dweight must be a numpy.ndarray"),
        ((w.tolist(), good_b), TypeError, "dweight must be a numpy.ndarray"),
        ((np.zeros(w.shape, np.float64), good_b), TypeError, "dtype float32"),
        ((np.zeros_like(w), np.zeros(w.shape[0], np.float64)), TypeError, "dbias must have"),
        ((np.zeros(w.size, np.float32), good_b), ValueError, "shape"),
        ((np.zeros_like(w), np.zeros(w.shape[0] + 1, np.float32)), ValueError, "shape"),
        ((np.zeros(w.shape[::-1], np.float32).T, good_b), ValueError, "C-contiguous"),
        ((np.zeros_like(w), np.zeros(2 * w.shape[0], np.float32)[::2]), ValueError, "C-contiguous"),
        ((w, good_b), ValueError, "share memory with weight"),
    ]
    ro = np.zeros_like(w)
    ro.flags.writeable = False
    bad.append(((ro, good_b), ValueError, "writeable"))
    both = np.zeros(w.size + w.shape[0], np.float32)
    bad.append(((both[:w.size].reshape(w.shape), both[w.size - 1:-1]), ValueError,
                "dweight and dbias"))
    if x.size >= w.size:
        bad.append(((x.reshape(-1)[:w.size].reshape(w.shape), good_b), ValueError,
                    "share memory with x"))
    if dy.size >= w.size:
        bad.append(((dy.reshape(-1)[:w.size].reshape(w.shape), good_b), ValueError,
                     "share memory with dy"))
    for out, err, words in bad:
        with pytest.raises(err, match=words):
            op(out=out)
    # the zero-filled arrays of the bad outs were not written
    assert not good_b.any() and not both.any()


@pytest.mark.parametrize("bias", [True, False])
def test_layers_write_their_own_grad_arrays(bias):
    """Conv2D and Linear backward write into the grads arrays allocated at construction (an
    optimizer's references stay live), with the op's values."""
    from cybn import nn
    for layer, x in ((nn.Conv2D(16, 16, 3, padding=1, bias=bias, rng=1),
                      rng.standard_normal((2, 16, 8, 8)).astype(np.float32)),
                     (nn.Linear(7, 4, bias=bias, rng=1),
                      rng.standard_normal((5, 7)).astype(np.float32))):
        refs = dict(layer.grads)
        for _ in range(2):
            y = layer.forward(x)
            dy = rng.standard_normal(y.shape).astype(np.float32)
            layer.backward(dy)
            assert all(layer.grads[k] is refs[k] for k in refs) and set(refs) == set(layer.grads)
            if isinstance(layer, nn.Conv2D):
                _, dw, db = F.conv2d_backward(dy, x, layer.params["weight"], 1, 1)
            else:
                _, dw, db = F.linear_backward(dy, x, layer.params["weight"])
            np.testing.assert_array_equal(refs["weight"], dw)
            if bias:
                np.testing.assert_array_equal(refs["bias"], db)
