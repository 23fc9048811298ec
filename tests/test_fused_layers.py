"""BN -> ReLU fusion inside Sequential (training and eval), and the eval-mode fused front end:
bit for bit against the same model with ``fuse = False``, by finite differences in float64,
across thread counts, with forward hooks seeing what they saw unfused."""
import numpy as np
import pytest

import cybn
from cybn import functional as F
from cybn import nn
from cybn import reference as R
from cybn.nn.layers import bn_relu_forward
from gradcheck import numerical_grad


def _model(fuse, seed=0, dtype=np.float32):
    m = nn.cnn7(bn="all", init="he", seed=seed, width=8, hidden=16, dtype=dtype)
    m.fuse = fuse
    return m


def _batch(rng, n=6, dtype=np.float32):
    return rng.standard_normal((n, 3, 32, 32)).astype(dtype), rng.integers(0, 10, n)


def _train(model, batches, steps=4):
    loss_fn = nn.SoftmaxCrossEntropy()
    opt = nn.SGD(model, lr=0.05, momentum=0.9)
    losses, grads = [], []
    for s in range(steps):
        x, y = batches[s % len(batches)]
        losses.append(loss_fn(model.forward(x), y))
        model.backward(loss_fn.backward())
        grads.append({k: g.copy() for k, _, g, _ in model.named_parameters()})
        opt.step()
    return losses, grads


def _assert_states_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


def test_cnn7_training_bitwise_equal_to_unfused(rng, threads):
    batches = [_batch(rng) for _ in range(2)]
    fused, plain = _model(True), _model(False)
    lf, gf = _train(fused, batches)
    lp, gp = _train(plain, batches)
    assert lf == lp
    for a, b in zip(gf, gp):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    _assert_states_equal(fused, plain)  # weights and BN running statistics
    x = batches[0][0]
    np.testing.assert_array_equal(fused.predict_logits(x), plain.predict_logits(x))


def _fused_ops(model, train):
    """{first layer: layers fused} expected for cnn7: BN -> ReLU pairs, and in training the
    BN2D -> ReLU -> 2x2 MaxPool2D triples."""
    L = model.layers
    ops = {}
    for i in range(len(L) - 1):
        if isinstance(L[i], (nn.BatchNorm1D, nn.BatchNorm2D)) and isinstance(L[i + 1], nn.ReLU):
            ops[i] = 3 if train and i + 2 < len(L) and isinstance(L[i + 2], nn.MaxPool2D) else 2
    return ops


@pytest.mark.parametrize("train", [True, False])
def test_fusion_is_used_and_keeps_the_layer_api(train):
    model = _model(True).train(train)
    ops = _fused_ops(model, train)
    # five BN2D -> ReLU (three of them before a max-pool) and the BN1D -> ReLU of the hidden layer
    assert sorted(ops.values()) == ([2, 2, 2, 3, 3, 3] if train else [2] * 6)
    assert [n for n, _ in model.named_modules()] == [n for n, _ in _model(False).named_modules()]
    model.forward(_batch(np.random.default_rng(0))[0])
    assert model._fused == ops


def test_thread_counts_bit_identical(rng):
    batches = [_batch(rng)]
    runs = []
    for n in (1, 2):
        with cybn.num_threads(n):
            m = _model(True)
            runs.append((_train(m, batches, steps=3)[0], m.state_dict()))
    assert runs[0][0] == runs[1][0]
    for k in runs[0][1]:
        np.testing.assert_array_equal(runs[0][1][k], runs[1][1][k], err_msg=k)


def _recorded(model, x, train):
    model.train(train)
    seen = []
    with model.register_forward_hook(lambda i, layer, out: seen.append((i, type(layer), out.copy()))):
        model.forward(x)
    return seen


@pytest.mark.parametrize("train", [True, False])
def test_hooks_see_every_layer_output(rng, train):
    x = _batch(rng)[0]
    a, b = _recorded(_model(True), x, train), _recorded(_model(False), x, train)
    assert [(i, t) for i, t, _ in a] == [(i, t) for i, t, _ in b]
    assert len(a) == len(_model(True))
    for (i, t, u), (_, _, v) in zip(a, b):
        np.testing.assert_array_equal(u, v, err_msg=f"layer {i} {t.__name__}")
    bn = [u for i, t, u in a if t is nn.BatchNorm2D]
    assert any((u < 0).any() for u in bn)  # BN's hook got the pre-ReLU output


def test_hooked_forward_then_fused_backward_bitwise(rng):
    x, y = _batch(rng)
    grads = []
    for hooked in (True, False):
        m = _model(True)
        loss_fn = nn.SoftmaxCrossEntropy()
        handle = m.register_forward_hook(lambda *a: None) if hooked else None
        loss_fn(m.forward(x), y)
        m.backward(loss_fn.backward())
        if handle:
            handle.remove()
        grads.append({k: g.copy() for k, _, g, _ in m.named_parameters()})
    for k in grads[0]:
        np.testing.assert_array_equal(grads[0][k], grads[1][k], err_msg=k)


@pytest.mark.parametrize("bn_cls, shape, pool", [
    (nn.BatchNorm2D, (3, 4, 5, 3), False), (nn.BatchNorm2D, (1, 2, 1, 3), False), (nn.BatchNorm1D, (7, 5), False),
    (nn.BatchNorm2D, (4, 3, 4, 6), True)])  # BN -> ReLU -> MaxPool2D(2), fused as three
def test_fused_ops_finite_differences(rng, bn_cls, shape, pool):
    C = shape[1]
    bn = bn_cls(C, dtype=np.float64)
    bn.params["weight"][...] = rng.standard_normal(C) + 1
    bn.params["bias"][...] = rng.standard_normal(C)
    model = nn.Sequential(bn, nn.ReLU(), *([nn.MaxPool2D(2)] if pool else []), input_grad=True)
    x = rng.standard_normal(shape)
    r = rng.standard_normal(model.output_shape(shape))

    def loss():
        return float((model.forward(x) * r).sum())

    loss()
    assert model._fused == {0: 3 if pool else 2}
    dx = model.backward(r)
    dw, db = bn.grads["weight"].copy(), bn.grads["bias"].copy()
    np.testing.assert_allclose(dx, numerical_grad(loss, x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dw, numerical_grad(loss, bn.params["weight"]), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(db, numerical_grad(loss, bn.params["bias"]), rtol=1e-5, atol=1e-7)


def test_layer_backwards_still_work_after_a_fused_forward(rng):
    x = rng.standard_normal((4, 3, 2, 2))
    dy = rng.standard_normal(x.shape)
    outs = []
    for fused in (True, False):
        bn, relu = nn.BatchNorm2D(3, dtype=np.float64), nn.ReLU()
        y = bn_relu_forward(bn, relu, x) if fused else relu(bn(x))
        outs.append((y, bn.backward(relu.backward(dy)), bn.grads["weight"].copy()))
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


def test_eval_mode_backward_through_a_pair_is_unfused(rng):
    x, dy = rng.standard_normal((4, 3, 2, 2)), rng.standard_normal((4, 3, 2, 2))
    res = []
    for fuse in (True, False):
        m = nn.Sequential(nn.BatchNorm2D(3, dtype=np.float64), nn.ReLU(), input_grad=True).eval()
        m.fuse = fuse
        m.forward(x)
        res.append(m.backward(dy))
    np.testing.assert_array_equal(res[0], res[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (1, 2, 1, 1), (37, 6), (2, 16, 8, 8)])
def test_batch_norm_relu_eval(rng, threads, shape, dtype):
    C = shape[1]
    x = rng.standard_normal(shape).astype(dtype)
    w, b = (rng.standard_normal(C) + 1).astype(dtype), rng.standard_normal(C).astype(dtype)
    rm, rv = rng.standard_normal(C), rng.random(C) + 0.5
    y = F.batch_norm_relu_eval(x, w, b, rm, rv)
    np.testing.assert_array_equal(y, F.relu(F.batch_norm_eval(x, w, b, rm, rv)))
    ref = R.batch_norm_relu_eval(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), rm, rv)
    tol = 1e-12 if dtype == np.float64 else 1e-5  # one rounding of y in float32
    np.testing.assert_allclose(y, ref, rtol=tol, atol=tol)
    np.testing.assert_array_equal(F.batch_norm_relu_eval(x, None, None, rm, rv),
                                  F.relu(F.batch_norm_eval(x, None, None, rm, rv)))


def test_batch_norm_relu_eval_bad_inputs(rng):
    x = rng.standard_normal((2, 3))
    ok = (np.ones(3), np.zeros(3), np.zeros(3), np.ones(3))
    with pytest.raises(TypeError, match="x"):
        F.batch_norm_relu_eval([[1.0]], *ok)
    with pytest.raises(ValueError, match="running_var"):
        F.batch_norm_relu_eval(x, *ok[:3], -np.ones(3))
    with pytest.raises(ValueError, match="weight"):
        F.batch_norm_relu_eval(x, np.ones(4), *ok[1:])
    with pytest.raises(TypeError):
        F.batch_norm_relu_eval(x, np.ones(3, np.float32), *ok[1:])


def test_threads_for_caps_at_work_units():
    from cybn.functional._dispatch import PARALLEL_MIN, threads_for
    with cybn.num_threads(2):
        assert threads_for(PARALLEL_MIN - 1) == 1
        assert threads_for(4 * PARALLEL_MIN) == 2
        assert threads_for(4 * PARALLEL_MIN, units=1) == 1  # one row: one thread
        assert threads_for(0, units=0) == 1
