"""Batch normalization: reference maths, kernels vs reference, gradients, stability, validation."""
import numpy as np
import pytest

import cybn
from cybn import functional as F
from cybn import reference as R

SHAPES = [
    (7, 3),            # 2-D (BatchNorm1d), odd channel count
    (2, 5),            # smallest valid 2-D training batch
    (130, 5),
    (1027, 3),         # 2-D, several reduction chunks, row count not a multiple of 4
    (3, 600),          # wide 2-D
    (5, 7, 3, 3),      # odd everything
    (4, 3, 1, 1),      # 1x1 spatial
    (1, 5, 4, 3),      # batch 1 with H*W > 1 is valid in training
    (70, 3, 2, 2),     # N > number of reduction chunks
    (3, 6, 9, 11),
    (6, 9, 5, 5),
    (1, 8, 2, 1),      # batch 1, a single row of 2 values per channel
    (2, 5, 64, 64),    # C*H*W larger than one cache block
    (2, 2, 130, 130),  # a single plane larger than one cache block
]


def _data(rng, shape, dtype, offset=0.0, scale=1.0):
    C = shape[1]
    x = (offset + scale * rng.standard_normal(shape)).astype(dtype)
    w = rng.uniform(0.5, 1.5, C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, w, b, dy


def _f64(*arrays):
    return [None if a is None else np.asarray(a, dtype=np.float64) for a in arrays]


# ----------------------------------------------------------------------------- reference maths

def test_reference_hand_computed():
    x = np.array([[1.0, -2.0], [3.0, 2.0], [5.0, 0.0]])
    w = np.array([2.0, 1.0])
    b = np.array([0.5, -1.0])
    y, mean, var = R.batch_norm_train(x, w, b, eps=0.0)
    np.testing.assert_allclose(mean, [3.0, 0.0])
    np.testing.assert_allclose(var, [8.0 / 3.0, 8.0 / 3.0])  # biased: divides by m = 3
    s = np.sqrt(8.0 / 3.0)
    np.testing.assert_allclose(y, [[2 * -2 / s + 0.5, -2 / s - 1], [0.5, 2 / s - 1],
                                   [2 * 2 / s + 0.5, -1]])
    # dy = 1 everywhere: dbias = m, dweight = sum(x_hat) = 0, dx = 0 (a shift does nothing).
    dx, dw, db = R.batch_norm_backward(np.ones_like(x), x, w, mean, var, eps=0.0)
    np.testing.assert_allclose(db, [3.0, 3.0])
    np.testing.assert_allclose(dw, [0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(dx, 0.0, atol=1e-12)
    # eval: plain affine map with the given statistics
    ye = R.batch_norm_eval(x, w, b, np.array([1.0, 2.0]), np.array([4.0, 0.25]), eps=0.0)
    np.testing.assert_allclose(ye, [[0.5, -9.0], [2.5, -1.0], [4.5, -5.0]])


def test_reference_running_stats_hand_computed():
    rm, rv = np.array([1.0, 0.0]), np.array([1.0, 2.0])
    R.update_running_stats(rm, rv, np.array([3.0, 1.0]), np.array([2.0, 4.0]), count=5, momentum=0.5)
    np.testing.assert_allclose(rm, [2.0, 0.5])
    np.testing.assert_allclose(rv, [0.5 + 0.5 * 2.0 * 5 / 4, 1.0 + 0.5 * 4.0 * 5 / 4])


def _numeric_grads(fn, x, w, b, dy, h=1e-6):
    """Central differences of L = sum(dy * fn(x, w, b)) w.r.t. every entry of x, w, b."""
    def loss(x_, w_, b_):
        return float(np.sum(dy * fn(x_, w_, b_)))

    grads = []
    for which, arr in enumerate((x, w, b)):
        g = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            args = [x.copy(), w.copy(), b.copy()]
            args[which][i] += h
            up = loss(*args)
            args[which][i] -= 2 * h
            down = loss(*args)
            g[i] = (up - down) / (2 * h)
        grads.append(g)
    return grads


@pytest.mark.parametrize("impl", [R, F], ids=["reference", "functional"])
@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 2, 3), (1, 2, 3, 1)])
def test_gradient_finite_differences(impl, shape, rng):
    x, w, b, dy = _f64(*_data(rng, shape, np.float64))
    eps = 1e-3

    def fwd(x_, w_, b_):
        return impl.batch_norm_train(x_, w_, b_, eps)[0]

    _, mean, var = impl.batch_norm_train(x, w, b, eps)
    dx, dw, db = impl.batch_norm_backward(dy, x, w, mean, var, eps)
    ndx, ndw, ndb = _numeric_grads(fwd, x, w, b, dy)
    np.testing.assert_allclose(dx, ndx, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, ndw, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, ndb, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------- functional vs reference

def _check_all(rng, shape, dtype, rtol, atol, offset=0.0, scale=1.0):
    x, w, b, dy = _data(rng, shape, dtype, offset, scale)
    y, mean, var = F.batch_norm_train(x, w, b)
    assert y.dtype == dtype and mean.dtype == np.float64 and var.dtype == np.float64
    assert y.shape == x.shape and mean.shape == var.shape == (shape[1],)
    yr, mr, vr = R.batch_norm_train(*_f64(x, w, b))
    np.testing.assert_allclose(mean, mr, rtol=1e-12, atol=1e-12 * (abs(offset) + scale))
    np.testing.assert_allclose(var, vr, rtol=1e-10)
    np.testing.assert_allclose(y, yr, rtol=rtol, atol=atol)

    dx, dw, db = F.batch_norm_backward(dy, x, w, mean, var)
    assert dx.dtype == dw.dtype == db.dtype == dtype
    dxr, dwr, dbr = R.batch_norm_backward(*_f64(dy, x, w), mr, vr)
    m = x.size // shape[1]
    np.testing.assert_allclose(dx, dxr, rtol=rtol, atol=atol)
    # channel sums of m terms: error grows with m (and with the cancellation inside the sum)
    np.testing.assert_allclose(dw, dwr, rtol=rtol, atol=atol * np.sqrt(m))
    np.testing.assert_allclose(db, dbr, rtol=rtol, atol=atol * np.sqrt(m))

    rm = rng.standard_normal(shape[1])
    rv = rng.uniform(0.1, 2.0, shape[1])
    ye = F.batch_norm_eval(x, w, b, rm, rv)
    assert ye.dtype == dtype
    np.testing.assert_allclose(ye, R.batch_norm_eval(*_f64(x, w, b), rm, rv), rtol=rtol, atol=atol)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_float64_matches_reference(shape, rng):
    _check_all(rng, shape, np.float64, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_float32_matches_reference(shape, rng):
    _check_all(rng, shape, np.float32, rtol=1e-5, atol=2e-5)


def test_threads_bit_identical(threads, rng, tiny_work_threaded):
    """Reductions are split by shape, not by thread count: results are bit-identical."""
    for shape in [(70, 3, 5, 5), (2003, 7), (9, 5, 64, 64), (16, 12, 4, 4)]:
        for dtype in (np.float32, np.float64):
            x, w, b, dy = _data(rng, shape, dtype, offset=3.0)
            got = F.batch_norm_train(x, w, b)
            got_b = F.batch_norm_backward(dy, x, w, got[1], got[2])
            with cybn.num_threads(1):
                ref = F.batch_norm_train(x, w, b)
                ref_b = F.batch_norm_backward(dy, x, w, ref[1], ref[2])
            for a, r in zip(got + got_b, ref + ref_b):
                np.testing.assert_array_equal(a, r)


@pytest.mark.parametrize("shape", [(16, 3, 8, 8), (2, 2, 130, 130)], ids=str)
def test_large_mean_small_std_float32_is_stable(shape, threads, rng):
    """mean 1e4, std 1e-2 in float32: E[x^2]-E[x]^2 would lose everything; we must not."""
    C = shape[1]
    x = (1e4 + 1e-2 * rng.standard_normal(shape)).astype(np.float32)
    w = np.ones(C, np.float32)
    b = np.zeros(C, np.float32)
    y, mean, var = F.batch_norm_train(x, w, b)
    yr, mr, vr = R.batch_norm_train(x.astype(np.float64), None, None)
    np.testing.assert_allclose(var, vr, rtol=1e-9)
    np.testing.assert_allclose(mean, mr, rtol=1e-14)
    np.testing.assert_allclose(y, yr, atol=2e-5)  # y is O(1): normalised correctly
    for c in range(C):  # per channel: mean 0, std sqrt(var / (var + eps)) (eps=1e-5 matters here)
        yc = y[:, c].astype(np.float64)
        assert abs(yc.mean()) < 1e-5
        assert abs(yc.std() - np.sqrt(vr[c] / (vr[c] + 1e-5))) < 1e-5
    dy = rng.standard_normal(shape).astype(np.float32)
    dx, dw, db = F.batch_norm_backward(dy, x, w, mean, var)
    dxr, dwr, dbr = R.batch_norm_backward(dy.astype(np.float64), x.astype(np.float64), None, mr, vr)
    np.testing.assert_allclose(dw, dwr, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(dx, dxr, rtol=1e-4, atol=1e-5 * np.abs(dxr).max())
    ye = F.batch_norm_eval(x, w, b, mean, vr)
    np.testing.assert_allclose(ye, yr, atol=2e-5)
    # 2-D input too
    x2 = (1e4 + 1e-2 * rng.standard_normal((500, 3))).astype(np.float32)
    y2, _, v2 = F.batch_norm_train(x2, None, None)
    yr2, _, vr2 = R.batch_norm_train(x2.astype(np.float64), None, None)
    np.testing.assert_allclose(v2, vr2, rtol=1e-9)
    np.testing.assert_allclose(y2, yr2, atol=2e-5)


@pytest.mark.parametrize("shape", [(300, 1, 64, 64), (1_100_000, 1)], ids=str)
def test_statistics_with_many_blocks_per_chunk(shape, rng):
    """Large per-channel counts: several shifted-sum blocks per chunk, merged pairwise."""
    x = (1e3 + rng.standard_normal(shape)).astype(np.float32)
    _, mean, var = F.batch_norm_train(x, None, None)
    x64 = x.astype(np.float64)
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    np.testing.assert_allclose(mean, x64.mean(axis=axes), rtol=1e-13)
    np.testing.assert_allclose(var, x64.var(axis=axes), rtol=1e-10)


def test_affine_false_equals_unit_weight_zero_bias(rng):
    for shape in [(6, 4), (3, 4, 5, 2)]:
        x, _, _, dy = _data(rng, shape, np.float64)
        ones, zeros = np.ones(shape[1]), np.zeros(shape[1])
        y, mean, var = F.batch_norm_train(x, None, None)
        y1, _, _ = F.batch_norm_train(x, ones, zeros)
        np.testing.assert_array_equal(y, y1)
        g = F.batch_norm_backward(dy, x, None, mean, var)
        g1 = F.batch_norm_backward(dy, x, ones, mean, var)
        for a, r in zip(g, g1):
            np.testing.assert_array_equal(a, r)
        np.testing.assert_allclose(y, R.batch_norm_train(x, None, None)[0], rtol=1e-10, atol=1e-12)
        rm, rv = rng.standard_normal(shape[1]), rng.uniform(0.5, 2, shape[1])
        np.testing.assert_allclose(F.batch_norm_eval(x, None, None, rm, rv),
                                   R.batch_norm_eval(x, None, None, rm, rv), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 3), (1, 4, 1, 1), (1, 2, 5, 5), (0, 3, 2, 2)], ids=str)
def test_eval_any_batch_size(shape, rng):
    x, w, b, _ = _data(rng, shape, np.float32)
    rm = rng.standard_normal(shape[1]).astype(np.float32)  # float32 running stats are fine
    rv = rng.uniform(0.5, 2, shape[1]).astype(np.float32)
    y = F.batch_norm_eval(x, w, b, rm, rv)
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, R.batch_norm_eval(*_f64(x, w, b, rm, rv)), rtol=1e-5, atol=1e-5)


def test_non_contiguous_inputs_equal_contiguous(rng):
    base = rng.standard_normal((6, 5, 7, 4))
    x = base.transpose(0, 1, 3, 2)           # transposed view (N, C, 4, 7)
    dy = rng.standard_normal((6, 5, 7, 4))[::-1].transpose(0, 1, 3, 2)  # negative strides too
    w = rng.standard_normal(10)[::2]          # strided (C,)
    b = rng.standard_normal(5)[::-1]          # negative stride
    assert not x.flags.c_contiguous and not w.flags.c_contiguous
    y, mean, var = F.batch_norm_train(x, w, b)
    yc, mc, vc = F.batch_norm_train(*map(np.ascontiguousarray, (x, w, b)))
    np.testing.assert_array_equal(y, yc)
    np.testing.assert_array_equal(var, vc)
    g = F.batch_norm_backward(dy, x, w, np.ascontiguousarray(mean[::-1])[::-1], var)
    gc = F.batch_norm_backward(*map(np.ascontiguousarray, (dy, x, w)), mc, vc)
    for a, r in zip(g, gc):
        np.testing.assert_array_equal(a, r)
    rm, rv = rng.standard_normal(10)[::2], rng.uniform(0.5, 2, 10)[1::2]
    np.testing.assert_array_equal(F.batch_norm_eval(x, w, b, rm, rv),
                                  F.batch_norm_eval(*map(np.ascontiguousarray, (x, w, b, rm, rv))))
    x2 = rng.standard_normal((5, 8)).T       # 2-D transposed (8, 5)
    np.testing.assert_array_equal(F.batch_norm_train(x2, None, None)[0],
                                  F.batch_norm_train(np.ascontiguousarray(x2), None, None)[0])


def test_read_only_inputs(rng):
    x, w, b, dy = _data(rng, (4, 3, 2, 2), np.float32)
    for a in (x, w, b, dy):
        a.flags.writeable = False
    y, mean, var = F.batch_norm_train(x, w, b)
    F.batch_norm_backward(dy, x, w, mean, var)
    F.batch_norm_eval(x, w, b, mean, var)


# ------------------------------------------------------------------------------- running stats

@pytest.mark.parametrize("stat_dtype", [np.float64, np.float32])
def test_update_running_stats_matches_reference(stat_dtype, rng):
    C = 5
    mean, var = rng.standard_normal(C), rng.uniform(0.1, 2, C)
    rm0 = rng.standard_normal(C).astype(stat_dtype)
    rv0 = rng.uniform(0.5, 2, C).astype(stat_dtype)
    rm, rv, rmr, rvr = rm0.copy(), rv0.copy(), rm0.copy(), rv0.copy()
    out = F.update_running_stats(rm, rv, mean, var, count=12, momentum=0.3)
    assert out is None
    R.update_running_stats(rmr, rvr, mean, var, count=12, momentum=0.3)
    assert rm.dtype == stat_dtype and rv.dtype == stat_dtype
    np.testing.assert_array_equal(rm, rmr)
    np.testing.assert_array_equal(rv, rvr)
    # momentum 0 keeps, momentum 1 replaces (variance unbiased by 12/11)
    F.update_running_stats(rm, rv, mean, var, count=12, momentum=0.0)
    np.testing.assert_array_equal(rm, rmr)
    F.update_running_stats(rm, rv, mean, var, count=12, momentum=1.0)
    np.testing.assert_allclose(rm, mean.astype(stat_dtype))
    np.testing.assert_allclose(rv, (var * 12 / 11).astype(stat_dtype), rtol=1e-6)


_TRAIN_OPS = {"bn": ("batch_norm_train", (6, 5, 4, 2)), "bn_relu": ("batch_norm_relu_train", (7, 3)),
              "bn_relu_pool": ("batch_norm_relu_pool_train", (3, 5, 4, 6))}


@pytest.mark.parametrize("op", sorted(_TRAIN_OPS))
@pytest.mark.parametrize("dtype, stat_dtype, layout", [
    (np.float32, np.float32, "contiguous"), (np.float64, np.float64, "contiguous"),
    (np.float32, np.float64, "contiguous"), (np.float64, np.float64, "strided")],
    ids=["f32-in-kernel", "f64-in-kernel", "f32-f64-stats", "strided-stats"])
@pytest.mark.parametrize("momentum", [0.1, 0.0, 1.0])
def test_train_ops_update_running_stats_as_the_separate_op(rng, threads, tiny_work_threaded, op,
                                                          dtype, stat_dtype, layout, momentum):
    """running_mean/running_var given to a training forward end up bitwise as after the forward
    without them and update_running_stats (in the kernel for a layer's buffers; the other
    dtype and strided arrays take the separate update), the outputs unchanged; the reference
    does the same."""
    name, shape = _TRAIN_OPS[op]
    C = shape[1]
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    w, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
    start = [rng.standard_normal(2 * C).astype(stat_dtype) for _ in range(2)]
    if layout == "strided":
        rm, rv = (v[::2] for v in start)
    else:
        rm, rv = (np.ascontiguousarray(v[:C]) for v in start)
    rm_sep, rv_sep = rm.copy(), rv.copy()
    plain = getattr(F, name)(x, w, b)
    tracked = getattr(F, name)(x, w, b, running_mean=rm, running_var=rv, momentum=momentum)
    F.update_running_stats(rm_sep, rv_sep, plain[-2], plain[-1], x.size // C, momentum)
    for a, c in zip(plain, tracked):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(rm, rm_sep)
    np.testing.assert_array_equal(rv, rv_sep)
    rm_ref, rv_ref = (np.ascontiguousarray(v) for v in (rm_sep, rv_sep))
    getattr(R, name)(x, w, b, running_mean=rm_ref, running_var=rv_ref, momentum=momentum)
    R.update_running_stats(rm_sep, rv_sep, plain[-2], plain[-1], x.size // C, momentum)
    np.testing.assert_array_equal(rm_ref, rm_sep)
    np.testing.assert_array_equal(rv_ref, rv_sep)


def test_train_ops_bad_running_stats_change_nothing(rng):
    x = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    w, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    ro = rv.copy()
    ro.flags.writeable = False
    cases = [(dict(running_mean=rm), ValueError, "give both or neither"),
             (dict(running_var=rv), ValueError, "give both or neither"),
             (dict(running_mean=rm, running_var=np.ones(4, np.float32)), ValueError,
              r"running_var must have shape \(3,\)"),
             (dict(running_mean=rm, running_var=rm), ValueError, "must not share memory"),
             (dict(running_mean=rm, running_var=ro), ValueError, "updated in place"),
             (dict(running_mean=rm, running_var=rv, momentum=1.5), ValueError, "momentum must"),
             (dict(running_mean=rm, running_var=np.ones(3, np.int32)), TypeError, "running_var")]
    for op in (F.batch_norm_train, F.batch_norm_relu_train, F.batch_norm_relu_pool_train):
        for kwargs, exc, match in cases:
            with pytest.raises(exc, match=match):
                op(x, w, b, **kwargs)
    np.testing.assert_array_equal(rm, 0.0)
    np.testing.assert_array_equal(rv, 1.0)


def test_matches_torch_training_and_running_stats(rng):
    torch = pytest.importorskip("torch")
    for shape in [(8, 3, 5, 5), (6, 7)]:
        C = shape[1]
        x, w, b, dy = _f64(*_data(rng, shape, np.float64))
        m = x.size // C
        rm, rv = np.zeros(C), np.ones(C)
        trm, trv = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
        xt = torch.tensor(x, requires_grad=True)
        wt = torch.tensor(w, requires_grad=True)
        bt = torch.tensor(b, requires_grad=True)
        for _ in range(3):  # three steps: running stats accumulate
            y, mean, var = F.batch_norm_train(x, w, b)
            F.update_running_stats(rm, rv, mean, var, m, momentum=0.1)
            yt = torch.nn.functional.batch_norm(xt, trm, trv, wt, bt, training=True, momentum=0.1,
                                                eps=1e-5)
        np.testing.assert_allclose(rm, trm.numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(rv, trv.numpy(), rtol=1e-12)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
        yt.backward(torch.tensor(dy))
        dx, dw, db = F.batch_norm_backward(dy, x, w, mean, var)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(dw, wt.grad.numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(db, bt.grad.numpy(), rtol=1e-9, atol=1e-12)
        ye = torch.nn.functional.batch_norm(xt[:1], trm, trv, wt, bt, training=False)
        np.testing.assert_allclose(F.batch_norm_eval(x[:1], w, b, rm, rv), ye.detach().numpy(),
                                   rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------- bad inputs

def test_bad_inputs_train(rng):
    x, w, b, _ = _data(rng, (4, 3, 2, 2), np.float32)
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        F.batch_norm_train(x.tolist(), w, b)
    with pytest.raises(TypeError, match="x must have dtype float32 or float64.*int64"):
        F.batch_norm_train(x.astype(np.int64), None, None)
    with pytest.raises(TypeError, match="float16"):
        F.batch_norm_train(x.astype(np.float16), None, None)
    with pytest.raises(TypeError, match="weight has dtype float64"):
        F.batch_norm_train(x, w.astype(np.float64), b)
    with pytest.raises(TypeError, match="bias has dtype float64"):
        F.batch_norm_train(x, w, b.astype(np.float64))
    with pytest.raises(TypeError, match="weight must have dtype"):
        F.batch_norm_train(x, w.astype(np.int32), b)
    with pytest.raises(ValueError, match="x must have 2 or 4 dimensions"):
        F.batch_norm_train(x[0], w, b)
    with pytest.raises(ValueError, match="x must have 2 or 4 dimensions"):
        F.batch_norm_train(x[:, :, 0, 0].ravel(), None, None)
    with pytest.raises(ValueError, match=r"weight .*shape \(3,\)"):
        F.batch_norm_train(x, np.ones(4, np.float32), b)
    with pytest.raises(ValueError, match=r"bias .*shape \(3,\)"):
        F.batch_norm_train(x, w, np.ones(2, np.float32))
    with pytest.raises(ValueError, match=r"bias must have 1 dimensions.*\(3, 1\)"):
        F.batch_norm_train(x, w, np.ones((3, 1), np.float32))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm_train(x[:1, :, :1, :1], w, b)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm_train(np.ones((1, 3)), None, None)
    with pytest.raises(ValueError, match="at least one channel"):
        F.batch_norm_train(np.ones((4, 0)), None, None)
    for eps in (-1e-5, 0.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps must be a finite number > 0"):
            F.batch_norm_train(x, w, b, eps=eps)
    with pytest.raises(TypeError, match="eps must be a real number"):
        F.batch_norm_train(x, w, b, eps="1e-5")


def test_bad_inputs_backward_eval(rng):
    x, w, b, dy = _data(rng, (4, 3, 2, 2), np.float64)
    _, mean, var = F.batch_norm_train(x, w, b)
    with pytest.raises(TypeError, match="dy has dtype float32"):
        F.batch_norm_backward(dy.astype(np.float32), x, w, mean, var)
    with pytest.raises(ValueError, match="dy must have the shape of x"):
        F.batch_norm_backward(dy[:2], x, w, mean, var)
    with pytest.raises(ValueError, match=r"mean .*shape \(3,\)"):
        F.batch_norm_backward(dy, x, w, mean[:2], var)
    with pytest.raises(ValueError, match="var must be non-negative"):
        F.batch_norm_backward(dy, x, w, mean, -var)
    with pytest.raises(TypeError, match="var must have dtype"):
        F.batch_norm_backward(dy, x, w, mean, var.astype(np.int64))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm_backward(dy[:1, :, :1, :1], x[:1, :, :1, :1], w, mean, var)
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        F.batch_norm_backward(dy, x, w, mean, var, eps=-1.0)
    with pytest.raises(ValueError, match=r"running_var .*shape \(3,\)"):
        F.batch_norm_eval(x, w, b, mean, np.ones(4))
    with pytest.raises(ValueError, match="running_var must be non-negative"):
        F.batch_norm_eval(x, w, b, mean, -np.ones(3))
    with pytest.raises(TypeError, match="weight has dtype float32"):
        F.batch_norm_eval(x, w.astype(np.float32), b, mean, var)
    with pytest.raises(ValueError, match="x must have 2 or 4 dimensions"):
        F.batch_norm_eval(x[:, :, :, 0], w, b, mean, var)


def test_bad_inputs_running_stats():
    rm, rv, mean, var = np.zeros(3), np.ones(3), np.zeros(3), np.ones(3)
    with pytest.raises(ValueError, match="count must be >= 2"):
        F.update_running_stats(rm, rv, mean, var, count=1)
    with pytest.raises(TypeError, match="count must be an integer"):
        F.update_running_stats(rm, rv, mean, var, count=2.5)
    for momentum in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="momentum must"):
            F.update_running_stats(rm, rv, mean, var, count=4, momentum=momentum)
    with pytest.raises(ValueError, match="running_var must have shape"):
        F.update_running_stats(rm, np.ones(4), mean, var, count=4)
    with pytest.raises(ValueError, match=r"mean .*shape \(3,\)"):
        F.update_running_stats(rm, rv, np.zeros(2), var, count=4)
    with pytest.raises(TypeError, match="running_mean must have dtype"):
        F.update_running_stats(np.zeros(3, np.int64), rv, mean, var, count=4)
    with pytest.raises(TypeError, match="running_mean must be a numpy.ndarray"):
        F.update_running_stats([0.0, 0.0, 0.0], rv, mean, var, count=4)
    ro = np.zeros(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="running_mean is updated in place"):
        F.update_running_stats(ro, rv, mean, var, count=4)
    np.testing.assert_array_equal(rm, 0.0)  # nothing was modified by the failed calls
    np.testing.assert_array_equal(rv, 1.0)


# ------------------------------------------------------------------------ eval-mode backward

def _running(rng, C, dtype=np.float64):
    return rng.standard_normal(C).astype(dtype), rng.uniform(0.1, 3.0, C).astype(dtype)


def test_eval_backward_reference_hand_computed():
    x = np.array([[1.0, -2.0], [3.0, 2.0], [5.0, 0.0]])
    dy = np.array([[1.0, 2.0], [0.0, -1.0], [2.0, 1.0]])
    w, rm, rv = np.array([2.0, 1.0]), np.array([1.0, 2.0]), np.array([4.0, 0.25])
    dx, dw, db = R.batch_norm_eval_backward(dy, x, w, rm, rv, eps=0.0)
    np.testing.assert_allclose(dx, dy * [2.0 / 2.0, 1.0 / 0.5])
    np.testing.assert_allclose(db, [3.0, 2.0])
    # x_hat = [[0, -8], [1, 0], [2, -4]]
    np.testing.assert_allclose(dw, [1 * 0 + 0 * 1 + 2 * 2, 2 * -8 + -1 * 0 + 1 * -4])


@pytest.mark.parametrize("impl", [R, F], ids=["reference", "functional"])
@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 2, 3), (1, 2, 3, 1), (1, 4)])
@pytest.mark.parametrize("affine", [True, False])
def test_eval_backward_finite_differences(impl, shape, affine, rng):
    x, w, b, dy = _data(rng, shape, np.float64)
    rm, rv = _running(rng, shape[1])
    if not affine:
        w = b = None
    eps = 1e-3
    dx, dw, db = impl.batch_norm_eval_backward(dy, x, w, rm, rv, eps)
    ndx, ndw, ndb = _numeric_grads(lambda x_, w_, b_: impl.batch_norm_eval(x_, w_, b_, rm, rv, eps),
                                   x, np.ones(shape[1]) if w is None else w,
                                   np.zeros(shape[1]) if b is None else b, dy)
    np.testing.assert_allclose(dx, ndx, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, ndw, rtol=1e-6, atol=1e-7)  # for the implicit gamma = 1 too
    np.testing.assert_allclose(db, ndb, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", SHAPES + [(0, 3), (0, 2, 3, 3)], ids=str)
@pytest.mark.parametrize("stat_dtype", [np.float32, np.float64])
def test_eval_backward_matches_reference(shape, stat_dtype, threads, rng):
    for dtype, rtol in ((np.float64, 1e-13), (np.float32, 2e-6)):
        x, w, b, dy = _data(rng, shape, dtype, offset=3.0)
        rm, rv = _running(rng, shape[1], stat_dtype)
        dx, dw, db = F.batch_norm_eval_backward(dy, x, w, rm, rv)
        assert dx.dtype == dw.dtype == db.dtype == dtype and dx.shape == x.shape
        dxr, dwr, dbr = R.batch_norm_eval_backward(*_f64(dy, x, w, rm, rv))
        # dx = dy * scale rounds twice in float32 (scale, product): <= ~1 ulp = 6e-8 relative;
        # the sums run in float64 over float32 data, so only the final cast rounds (plus m terms
        # of float64 rounding, far below the float32 ulp).
        np.testing.assert_allclose(dx, dxr, rtol=rtol, atol=0)
        m = max(1, dy.size // shape[1])
        scale = np.sqrt(m) * (np.abs(dy).max(initial=0) * (np.abs(x).max(initial=0) + 5) + 1)
        np.testing.assert_allclose(dw, dwr, rtol=rtol, atol=rtol * scale)
        np.testing.assert_allclose(db, dbr, rtol=rtol, atol=rtol * scale)


def test_eval_backward_is_bit_identical_across_threads_and_layouts(rng, tiny_work_threaded):
    x, w, _, dy = _data(rng, (70, 5, 9, 7), np.float32)
    rm, rv = _running(rng, 5, np.float32)
    with cybn.num_threads(1):
        one = F.batch_norm_eval_backward(dy, x, w, rm, rv)
    with cybn.num_threads(2):
        two = F.batch_norm_eval_backward(np.asfortranarray(dy), x[::-1][::-1], w, rm, rv)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_eval_backward_dx_ignores_x_values(rng):
    """Eval BN is affine in x: an inf in x changes dweight, never dx."""
    x, w, _, dy = _data(rng, (4, 3, 2, 2), np.float64)
    rm, rv = _running(rng, 3)
    x[0, 1, 0, 0] = np.inf
    dx, dw, _ = F.batch_norm_eval_backward(dy, x, w, rm, rv)
    assert np.isfinite(dx).all() and not np.isfinite(dw[1])


def test_bad_inputs_eval_backward(rng):
    x, w, _, dy = _data(rng, (4, 3, 2, 2), np.float64)
    rm, rv = _running(rng, 3)
    with pytest.raises(TypeError, match="dy has dtype float32"):
        F.batch_norm_eval_backward(dy.astype(np.float32), x, w, rm, rv)
    with pytest.raises(ValueError, match="dy must have the shape of x"):
        F.batch_norm_eval_backward(dy[:2], x, w, rm, rv)
    with pytest.raises(TypeError, match="dy must be a plain numpy.ndarray, got the subclass MaskedArray"):
        F.batch_norm_eval_backward(np.ma.masked_array(dy), x, w, rm, rv)
    with pytest.raises(ValueError, match=r"weight .*shape \(3,\)"):
        F.batch_norm_eval_backward(dy, x, w[:2], rm, rv)
    with pytest.raises(ValueError, match="running_var must be non-negative"):
        F.batch_norm_eval_backward(dy, x, w, rm, -rv)
    with pytest.raises(TypeError, match="running_mean must be a numpy.ndarray"):
        F.batch_norm_eval_backward(dy, x, w, list(rm), rv)
    for eps, exc in ((0.0, ValueError), (float("nan"), ValueError), (10**400, ValueError),
                     ("1e-5", TypeError), (True, TypeError)):
        with pytest.raises(exc, match="eps"):
            F.batch_norm_eval_backward(dy, x, w, rm, rv, eps=eps)
