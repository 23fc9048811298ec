"""cybn.functional.max_pool2d(_backward) vs the NumPy reference and PyTorch (if installed):
values, int64 indices, tie/NaN rules, gradients, threads and input validation."""
import numpy as np
import pytest

import cybn
from cybn import functional as F
from cybn import reference as R
from gradcheck import numerical_grad

# (x shape, kernel_size, stride, padding): odd sizes, 1x1 output, non-square kernel/stride,
# padding, batch 1, floor mode (sizes that do not divide), overlapping windows (stride < kernel).
CONFIGS = [
    ((2, 3, 8, 8), 2, None, 0),
    ((1, 1, 7, 9), 2, 2, 0),
    ((3, 2, 5, 5), 3, 2, 1),
    ((2, 2, 6, 7), (2, 3), (1, 2), (1, 1)),
    ((1, 4, 9, 6), (3, 1), (2, 1), (1, 0)),
    ((2, 1, 4, 4), 4, None, 0),           # 1x1 output
    ((1, 2, 1, 1), 1, 1, 0),              # 1x1 input
    ((2, 3, 11, 13), 3, 1, 1),            # heavy overlap
    ((1, 1, 3, 5), (3, 5), (1, 1), (1, 2)),
    ((4, 5, 13, 10), 2, 3, 1),            # stride > kernel: skipped elements
]
IDS = [f"{s}-k{k}-s{st}-p{p}" for s, k, st, p in CONFIGS]


def distinct(rng, shape, dtype=np.float64):
    """Values spaced >= 0.1 apart in random order: no ties, finite differences stay in-window."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * 0.1 - n * 0.05).reshape(shape).astype(dtype)



@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,k,s,p", CONFIGS, ids=IDS)
def test_vs_reference(rng, threads, monkeypatch, shape, k, s, p, dtype):
    import cybn.functional._dispatch as dispatch
    monkeypatch.setattr(dispatch, "PARALLEL_MIN", 1)  # run the threaded kernels even on tiny inputs
    x = rng.standard_normal(shape).astype(dtype)
    y, idx = F.max_pool2d(x, k, s, p)
    yr, idxr = R.max_pool2d(x, k, s, p)
    assert y.dtype == dtype and idx.dtype == np.int64 and y.shape == idx.shape == yr.shape
    np.testing.assert_array_equal(y, yr)   # max is a selection: exact
    np.testing.assert_array_equal(idx, idxr)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = F.max_pool2d_backward(dy, idx, shape)
    dxr = R.max_pool2d_backward(dy, idxr, shape)
    assert dx.dtype == dtype and dx.shape == shape
    # overlapping windows add several dy into one dx: same terms, possibly another order
    np.testing.assert_allclose(dx, dxr, rtol=1e-6 if dtype == np.float32 else 1e-12, atol=1e-6)


@pytest.mark.parametrize("shape,k,s,p", CONFIGS, ids=IDS)
def test_vs_torch(rng, shape, k, s, p):
    torch = pytest.importorskip("torch")
    for x in (rng.standard_normal(shape), rng.integers(-2, 3, shape).astype(np.float64)):  # 2nd: ties
        y, idx = F.max_pool2d(x, k, s, p)
        yt, it = torch.nn.functional.max_pool2d(torch.from_numpy(x), k, s if s is not None else k, p,
                                                return_indices=True)
        np.testing.assert_array_equal(y, yt.numpy())
        np.testing.assert_array_equal(idx, it.numpy())
        xt = torch.from_numpy(x).requires_grad_()
        yt = torch.nn.functional.max_pool2d(xt, k, s if s is not None else k, p)
        dy = rng.standard_normal(y.shape)
        yt.backward(torch.from_numpy(dy))
        np.testing.assert_allclose(F.max_pool2d_backward(dy, idx, shape), xt.grad.numpy(),
                                   rtol=1e-12, atol=1e-12)


def test_ties_take_first_maximum_in_row_major_order():
    x = np.array([[[[1.0, 3.0, 3.0],
                    [3.0, 0.0, 3.0],
                    [2.0, 3.0, 1.0]]]])
    for impl in (F, R):
        y, idx = impl.max_pool2d(x, 3, 1, 0)
        assert y[0, 0, 0, 0] == 3.0 and idx[0, 0, 0, 0] == 1
        y, idx = impl.max_pool2d(x, 2, 1, 0)
        np.testing.assert_array_equal(idx[0, 0], [[1, 1], [3, 5]])
        # a constant plane: every window points at its first (top-left in-bounds) element
        y, idx = impl.max_pool2d(np.zeros((1, 1, 4, 4)), 3, 2, 1)
        np.testing.assert_array_equal(idx[0, 0], [[0, 1], [4, 5]])
        # signed zeros compare equal: still the first one, with its own value
        for dtype in (np.float32, np.float64):
            y, idx = impl.max_pool2d(np.array([[[[-0.0, 0.0], [0.0, 0.0]]]], dtype), 2)
            assert idx[0, 0, 0, 0] == 0 and np.signbit(y[0, 0, 0, 0])


def test_all_minus_inf_window_points_inside_the_input():
    x = np.full((1, 1, 3, 3), -np.inf)
    for impl in (F, R):
        y, idx = impl.max_pool2d(x, 2, 2, 1)
        assert np.all(y == -np.inf)
        np.testing.assert_array_equal(idx[0, 0], [[0, 1], [3, 4]])  # first in-bounds element


def test_all_minus_inf_window_vs_torch():
    torch = pytest.importorskip("torch")
    x = np.full((1, 1, 3, 3), -np.inf)
    _, it = torch.nn.functional.max_pool2d(torch.from_numpy(x), 2, 2, 1, return_indices=True)
    np.testing.assert_array_equal(F.max_pool2d(x, 2, 2, 1)[1], it.numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_propagates_and_first_nan_wins(threads, dtype):
    x = np.arange(16, dtype=dtype).reshape(1, 1, 4, 4)
    x[0, 0, 0, 1] = np.nan          # window (0,0): NaN beats 5
    x[0, 0, 2, 3] = np.nan          # window (1,1): two NaNs -> the first one
    x[0, 0, 3, 2] = np.nan
    for impl in (F, R):
        y, idx = impl.max_pool2d(x, 2)
        assert np.isnan(y[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 1
        assert np.isnan(y[0, 0, 1, 1]) and idx[0, 0, 1, 1] == 11
        assert y[0, 0, 0, 1] == 7 and y[0, 0, 1, 0] == 13
    # generic (non 2x2) kernel path: NaN as first and as last candidate
    for pos in (0, 8):
        x = np.arange(9, dtype=dtype).reshape(1, 1, 3, 3)
        x.flat[pos] = np.nan
        y, idx = F.max_pool2d(x, 3, 1, 1)
        yr, idxr = R.max_pool2d(x, 3, 1, 1)
        np.testing.assert_array_equal(y, yr)
        np.testing.assert_array_equal(idx, idxr)


@pytest.mark.parametrize("impl", [F, R], ids=["functional", "reference"])
@pytest.mark.parametrize("k,s,p", [(2, None, 0), (3, 2, 1), ((2, 3), 1, (1, 1))])
def test_finite_difference_gradient(rng, impl, k, s, p):
    x = distinct(rng, (2, 2, 5, 6))
    y, idx = impl.max_pool2d(x, k, s, p)
    g = rng.standard_normal(y.shape)
    loss = lambda: float(np.sum(impl.max_pool2d(x, k, s, p)[0] * g))  # noqa: E731
    np.testing.assert_allclose(impl.max_pool2d_backward(g, idx, x.shape), numerical_grad(loss, x),
                               rtol=1e-7, atol=1e-8)


def test_backward_accumulates_overlapping_windows():
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 1.0               # the centre is the max of all four 2x2 windows
    y, idx = F.max_pool2d(x, 2, 1, 0)
    assert np.all(idx == 4)
    dx = F.max_pool2d_backward(np.ones_like(y), idx, x.shape)
    assert dx[0, 0, 1, 1] == 4.0 and dx.sum() == 4.0


@pytest.mark.parametrize("shape", [(4, 8, 33, 32), (1, 3, 5, 6)])
def test_one_and_two_threads_agree(rng, monkeypatch, shape):
    import cybn.functional._dispatch as dispatch
    monkeypatch.setattr(dispatch, "PARALLEL_MIN", 1)  # small inputs too run on the 2-thread team
    x = rng.standard_normal(shape).astype(np.float32)
    out = []
    for n in (1, 2):
        with cybn.num_threads(n):
            for k, s, p in ((2, 2, 0), (3, 1, 1)):
                y, idx = F.max_pool2d(x, k, s, p)
                dx = F.max_pool2d_backward(np.ones_like(y), idx, x.shape)
                out.append((y, idx, dx))
    for a, b in zip(out[:2], out[2:]):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)  # one thread per plane: bitwise deterministic


def test_non_contiguous_inputs(rng):
    base = rng.standard_normal((3, 8, 10, 12))
    x = base[:, ::2, ::-1, 1:]                    # strided, negative stride, offset
    y, idx = F.max_pool2d(x, 2)
    yr, idxr = R.max_pool2d(np.ascontiguousarray(x), 2)
    np.testing.assert_array_equal(y, yr)
    np.testing.assert_array_equal(idx, idxr)
    dy = np.asfortranarray(rng.standard_normal(y.shape))
    idx_nc = np.asfortranarray(idx)
    np.testing.assert_allclose(F.max_pool2d_backward(dy, idx_nc, x.shape),
                               R.max_pool2d_backward(dy, idx, x.shape))
    # indices of another integer dtype are accepted (converted to int64)
    np.testing.assert_allclose(F.max_pool2d_backward(dy, idx.astype(np.int32), x.shape),
                               R.max_pool2d_backward(dy, idx, x.shape))


def test_bad_forward_inputs():
    x = np.zeros((1, 2, 4, 4))
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        F.max_pool2d(x.tolist(), 2)
    with pytest.raises(TypeError, match="x must have dtype float32 or float64, got int64"):
        F.max_pool2d(np.zeros((1, 1, 4, 4), np.int64), 2)
    with pytest.raises(ValueError, match=r"x must have 4 dimensions, got shape \(2, 4, 4\)"):
        F.max_pool2d(x[0], 2)
    with pytest.raises(ValueError, match="kernel_size must be >= 1"):
        F.max_pool2d(x, 0)
    with pytest.raises(TypeError, match="kernel_size must be an integer"):
        F.max_pool2d(x, 2.0)
    with pytest.raises(ValueError, match="kernel_size must be an int or a pair"):
        F.max_pool2d(x, (2, 2, 2))
    with pytest.raises(ValueError, match="stride must be >= 1"):
        F.max_pool2d(x, 2, (1, 0))
    with pytest.raises(ValueError, match="padding must be >= 0"):
        F.max_pool2d(x, 2, 2, -1)
    with pytest.raises(ValueError, match=r"padding \(2, 2\) must be at most half the kernel size \(3, 3\)"):
        F.max_pool2d(x, 3, 1, 2)
    with pytest.raises(ValueError, match=r"padding \(0, 1\) must be at most half the kernel size \(2, 1\)"):
        F.max_pool2d(x, (2, 1), 1, (0, 1))
    with pytest.raises(ValueError, match=r"input of shape \(1, 2, 4, 4\) .* smaller than the kernel \(5, 5\)"):
        F.max_pool2d(x, 5)


def test_bad_backward_inputs():
    x = np.arange(32.0).reshape(1, 2, 4, 4)
    y, idx = F.max_pool2d(x, 2)
    with pytest.raises(TypeError, match="dy must have dtype float32 or float64, got int64"):
        F.max_pool2d_backward(idx, idx, x.shape)
    with pytest.raises(TypeError, match="indices must have an integer dtype"):
        F.max_pool2d_backward(y, y, x.shape)
    with pytest.raises(TypeError, match="indices must be a numpy.ndarray"):
        F.max_pool2d_backward(y, idx.tolist(), x.shape)
    with pytest.raises(ValueError, match=r"indices must have the shape of dy \(1, 2, 2, 2\), got \(1, 2, 4\)"):
        F.max_pool2d_backward(y, idx.reshape(1, 2, 4), x.shape)
    with pytest.raises(ValueError, match=r"input_shape \(1, 3, 4, 4\) and dy of shape \(1, 2, 2, 2\) disagree"):
        F.max_pool2d_backward(y, idx, (1, 3, 4, 4))
    with pytest.raises(ValueError, match="input_shape must be a 4-tuple"):
        F.max_pool2d_backward(y, idx, (2, 4, 4))
    with pytest.raises(ValueError, match=r"input_shape \(1, 2, 0, 4\): each size must be >= 1, got 0"):
        F.max_pool2d_backward(y, idx, (1, 2, 0, 4))
    with pytest.raises(TypeError, match=r"input_shape .*must be an integer, got float 4.0"):
        F.max_pool2d_backward(y, idx, (1, 2, 4, 4.0))
    with pytest.raises(TypeError, match="input_shape must be a tuple"):
        F.max_pool2d_backward(y, idx, np.array(x.shape))
    for bad in (16, -1, 2**40):  # out of range for a 4x4 plane: must raise, never write
        b = idx.copy()
        b[0, 1, 1, 0] = bad
        with pytest.raises(ValueError, match=r"1 value\(s\) outside \[0, H\*W\) = \[0, 16\)"):
            F.max_pool2d_backward(y, b, x.shape)
    # a smaller claimed input than the indices were made for is caught the same way
    with pytest.raises(ValueError, match=r"outside \[0, H\*W\) = \[0, 9\)"):
        F.max_pool2d_backward(y, idx, (1, 2, 3, 3))
