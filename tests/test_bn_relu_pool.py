"""BN -> ReLU -> 2x2 max-pool fused (``batch_norm_relu_pool_*`` and Sequential's triples): bit for
bit against the three unfused ops, against the NumPy oracle, for any thread count, with the
layers' own backwards and clear errors on bad input (finite differences: test_fused_layers.py)."""
import numpy as np
import pytest

import cybn
from cybn import functional as F
from cybn import nn
from cybn import reference as R
from cybn.nn.layers import bn_relu_pool_forward

SHAPES = [(3, 5, 4, 6), (1, 3, 2, 2), (2, 1, 8, 2), (7, 3, 10, 12), (1, 2, 4, 514)]  # 514: rows of > 256 windows


def _inputs(rng, shape, dtype, bias_shift=0.0):
    C = shape[1]
    x = rng.standard_normal(shape).astype(dtype)
    w = (rng.standard_normal(C) + 1).astype(dtype)
    b = (rng.standard_normal(C) + bias_shift).astype(dtype)
    return x, w, b


def _unfused(x, w, b, dy):
    """The three ops apart: (y, dx, dweight, dbias)."""
    z, mean, var = F.batch_norm_relu_train(x, w, b)
    y, idx = F.max_pool2d(z, 2)
    return (y,) + F.batch_norm_relu_backward(F.max_pool2d_backward(dy, idx, x.shape), x, w, b, mean, var)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias_shift", [0.0, -2.0])  # -2: most windows all ReLU'd to 0 (ties, code 4)
def test_bitwise_equal_to_the_unfused_ops(rng, threads, tiny_work_threaded, dtype, shape, bias_shift):
    x, w, b = _inputs(rng, shape, dtype, bias_shift)
    y, code, mean, var = F.batch_norm_relu_pool_train(x, w, b)
    dy = rng.standard_normal(y.shape).astype(dtype)
    fused = (y,) + F.batch_norm_relu_pool_backward(dy, code, x, w, b, mean, var)
    for got, want, name in zip(fused, _unfused(x, w, b, dy), ("y", "dx", "dweight", "dbias")):
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_thread_counts_bit_identical(rng, tiny_work_threaded):
    x, w, b = _inputs(rng, (9, 4, 6, 8), np.float32)
    dy = rng.standard_normal((9, 4, 3, 4)).astype(np.float32)
    runs = []
    for n in (1, 2):
        with cybn.num_threads(n):
            y, code, mean, var = F.batch_norm_relu_pool_train(x, w, b)
            runs.append((y, code, mean, var) + F.batch_norm_relu_pool_backward(dy, code, x, w, b, mean, var))
    for a, c in zip(*runs):
        np.testing.assert_array_equal(a, c)


def test_nan_propagates_as_unfused(rng):
    x, w, b = _inputs(rng, (2, 2, 4, 4), np.float64)
    x[1, 0, 2, 3] = np.nan  # channel 0's statistics become NaN
    y, code, mean, var = F.batch_norm_relu_pool_train(x, w, b)
    assert np.isnan(y[:, 0]).all() and (code[:, 0] == 4).all()
    dy = rng.standard_normal(y.shape)
    fused = (y,) + F.batch_norm_relu_pool_backward(dy, code, x, w, b, mean, var)
    for got, want in zip(fused, _unfused(x, w, b, dy)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_against_the_reference(rng, dtype, tol):
    # float32: one rounding of the normalised value (~6e-8 relative) and the sums' float32
    # results; 1e-5 of the largest gradient leaves a margin of ~100x
    x, w, b = _inputs(rng, (6, 3, 8, 10), dtype)
    y, code, mean, var = F.batch_norm_relu_pool_train(x, w, b)
    yr, cr, mr, vr = R.batch_norm_relu_pool_train(x, w, b)
    np.testing.assert_allclose(y, yr, rtol=tol, atol=tol * np.abs(yr).max())
    assert code.dtype == np.uint8 and code.shape == y.shape
    if dtype == np.float64:
        np.testing.assert_array_equal(code, cr)
    dy = rng.standard_normal(y.shape).astype(dtype)
    for got, want in zip(F.batch_norm_relu_pool_backward(dy, code, x, w, b, mean, var),
                         R.batch_norm_relu_pool_backward(dy, code, x, w, b, mean, var)):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


def test_code_marks_the_first_maximum_and_dead_windows():
    # one channel, batch statistics of +-1 values: windows (max at position 2, a tie, all <= 0)
    x = np.array([[[[-1, -1, 1, 1, -1, -1],
                    [1, -1, 1, 1, -1, -1]]]], dtype=np.float64)
    y, code, _, _ = F.batch_norm_relu_pool_train(x, None, None)
    assert code.tolist() == [[[[2, 0, 4]]]]
    assert (y[0, 0, 0, :2] > 0).all() and y[0, 0, 0, 2] == 0


def test_layer_backwards_still_work_after_a_fused_forward(rng):
    x = rng.standard_normal((4, 3, 4, 6))
    dy = rng.standard_normal((4, 3, 2, 3))
    outs = []
    for fused in (True, False):
        bn, relu, pool = nn.BatchNorm2D(3, dtype=np.float64), nn.ReLU(), nn.MaxPool2D(2)
        y = bn_relu_pool_forward(bn, relu, pool, x) if fused else pool(relu(bn(x)))
        dx = bn.backward(relu.backward(pool.backward(dy)))
        outs.append((y, dx, bn.grads["weight"].copy(), bn.buffers["running_mean"].copy()))
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("pool_args, shape, train, expect", [
    ((2,), (2, 3, 5, 6), True, {0: 2}),     # odd height: the pair, then the pool
    ((2, 1), (2, 3, 4, 6), True, {0: 2}),   # not stride 2
    ((3, 2, 1), (2, 3, 4, 6), True, {0: 2}),
    ((2,), (2, 3, 4, 6), False, {0: 2}),    # eval mode: the pair
    (((2, 2), (2, 2), 0), (2, 3, 4, 6), True, {0: 3}),
])
def test_which_pools_fuse(rng, pool_args, shape, train, expect):
    def build():
        return nn.Sequential(nn.BatchNorm2D(3, dtype=np.float64), nn.ReLU(), nn.MaxPool2D(*pool_args),
                             input_grad=True).train(train)
    model, plain = build(), build()
    plain.fuse = False
    x = rng.standard_normal(shape)
    y = model.forward(x)
    assert model._fused == expect
    np.testing.assert_array_equal(y, plain.forward(x))
    dy = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(model.backward(dy), plain.backward(dy))


def test_hooks_see_the_relu_output_then_the_pool_output(rng):
    model = nn.Sequential(nn.BatchNorm2D(3), nn.ReLU(), nn.MaxPool2D(2), input_grad=True)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    seen = []
    with model.register_forward_hook(lambda i, layer, out: seen.append((i, out.shape))):
        y = model.forward(x)
    assert seen == [(0, (2, 3, 4, 4)), (1, (2, 3, 4, 4)), (2, (2, 3, 2, 2))]
    assert model._fused == {0: 2}  # the pair's backward still fuses
    model.backward(np.ones_like(y))


def test_bad_inputs_name_the_problem(rng):
    x, w, b = _inputs(rng, (2, 3, 4, 4), np.float32)
    y, code, mean, var = F.batch_norm_relu_pool_train(x, w, b)
    dy = np.ones_like(y)
    with pytest.raises(ValueError, match="even height and width"):
        F.batch_norm_relu_pool_train(x[:, :, :3], w, b)
    with pytest.raises(ValueError, match="4"):
        F.batch_norm_relu_pool_train(x[:, :, 0], w, b)
    with pytest.raises(ValueError, match="pooled shape"):
        F.batch_norm_relu_pool_backward(np.ones_like(x), code, x, w, b, mean, var)
    with pytest.raises(TypeError, match="uint8"):
        F.batch_norm_relu_pool_backward(dy, code.astype(np.int64), x, w, b, mean, var)
    with pytest.raises(ValueError, match="code"):
        F.batch_norm_relu_pool_backward(dy, code[:1], x, w, b, mean, var)
    with pytest.raises(ValueError, match="0..4"):
        F.batch_norm_relu_pool_backward(dy, np.full_like(code, 5), x, w, b, mean, var)
    with pytest.raises(TypeError, match="dtype|float32"):
        F.batch_norm_relu_pool_backward(dy.astype(np.float64), code, x, w, b, mean, var)
    with pytest.raises(ValueError, match="more than 1 value"):
        F.batch_norm_relu_pool_train(x[:1, :, :0, :0], w, b)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("value", [5, 255])
def test_one_bad_code_anywhere_raises(rng, threads, tiny_work_threaded, shape, value):
    """The kernel checks every code as it expands it: one value above 4 in any plane or piece
    (first, last, a row of > 256 windows) is a ValueError at 1 and 2 threads."""
    x, w, b = _inputs(rng, shape, np.float32)
    y, code, mean, var = F.batch_norm_relu_pool_train(x, w, b)
    dy = np.ones_like(y)
    for flat in {0, code.size - 1, int(rng.integers(code.size))}:
        bad = code.copy()
        bad.flat[flat] = value
        with pytest.raises(ValueError, match=f"0..4 .*found {value}"):
            F.batch_norm_relu_pool_backward(dy, bad, x, w, b, mean, var)
    F.batch_norm_relu_pool_backward(dy, code, x, w, b, mean, var)  # the forward's codes pass


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_eval_op_equals_the_two_ops_and_the_reference(rng, dtype):
    x, w, b = _inputs(rng, (5, 3, 6, 4), dtype)
    rm, rv = rng.standard_normal(3), rng.random(3) + 0.5
    y = F.batch_norm_relu_pool_eval(x, w, b, rm, rv)
    np.testing.assert_array_equal(y, F.max_pool2d(F.batch_norm_relu_eval(x, w, b, rm, rv), 2)[0])
    np.testing.assert_allclose(y, R.batch_norm_relu_pool_eval(x, w, b, rm, rv), rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-6)
    with pytest.raises(ValueError, match="running_var must be non-negative"):
        F.batch_norm_relu_pool_eval(x, w, b, rm, -rv)


def test_infer_fuses_the_triples_and_matches_the_unfused_model(rng):
    fused = nn.cnn7(bn="all", init="he", seed=1, width=8, hidden=16)
    plain = nn.cnn7(bn="all", init="he", seed=1, width=8, hidden=16)
    plain.fuse = False
    x = rng.standard_normal((6, 3, 32, 32)).astype(np.float32)
    for m in (fused, plain):  # move the running statistics away from (0, 1)
        m.forward(x)
        m.backward(np.ones((6, 10), np.float32))
    np.testing.assert_array_equal(fused.infer(x), plain.infer(x))
    with nn.inference_mode():
        fused.eval().forward(x)
    assert sorted(fused._fused.values()) == [2, 2, 2, 3, 3, 3]
    fused.forward(x)  # eval mode outside inference mode: pairs only (a backward may follow)
    assert sorted(fused._fused.values()) == [2] * 6
    fused.backward(np.ones((6, 10), np.float32))
