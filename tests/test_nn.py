"""Layers, Sequential, state I/O, hooks and initializers of cybn.nn."""
import numpy as np
import pytest

import cybn
from cybn import nn
from cybn.nn import init

F64 = np.float64


@pytest.fixture(autouse=True)
def one_thread():
    """Many tiny calls: one kernel thread keeps this file fast on a busy machine (the 1- vs 2-thread
    agreement of the ops is tested with the ops; ``test_threads_agree`` covers it end to end)."""
    with cybn.num_threads(1):
        yield


# ---- finite differences ----------------------------------------------------------------------------

def numeric_grad(f, x, eps=1e-6, max_checks=40, seed=0):
    """Central differences of the scalar f() with respect to x (perturbed in place), at up to
    ``max_checks`` random coordinates; returns (flat indices, numeric derivatives)."""
    flat = x.reshape(-1)
    assert np.shares_memory(flat, x)
    idx = np.arange(flat.size)
    if flat.size > max_checks:
        idx = np.sort(np.random.default_rng(seed).choice(flat.size, max_checks, replace=False))
    g = np.empty(len(idx))
    for j, i in enumerate(idx):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        g[j] = (fp - fm) / (2 * eps)
    return idx, g


def assert_grad(analytic, f, x, atol=1e-7):
    idx, numeric = numeric_grad(f, x)
    np.testing.assert_allclose(analytic.reshape(-1)[idx], numeric, rtol=1e-6, atol=atol)


def assert_close(a, b, rtol=1e-6, atol=1e-8):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def check_layer_grads(layer, x, rng, atol=1e-7):
    """Analytic vs numeric gradients of sum(R * layer(x)) for x and every parameter."""
    y = layer.forward(x)
    r = rng.standard_normal(y.shape)
    dx = layer.backward(r.copy())

    def f():
        return float((layer.forward(x) * r).sum())

    assert_grad(dx, f, x, atol=atol)
    for name, p in layer.params.items():
        layer.forward(x)
        layer.backward(r.copy())
        analytic = layer.grads[name].copy()
        assert_grad(analytic, f, p, atol=atol)


# ---- per-layer gradients -------------------------------------------------------------------------

@pytest.mark.parametrize("stride,padding,bias", [(1, 1, True), (2, 0, False), ((1, 2), (0, 1), True)])
def test_conv2d_grads(rng, stride, padding, bias):
    conv = nn.Conv2D(2, 3, (3, 2), stride=stride, padding=padding, bias=bias, dtype=F64, rng=1)
    check_layer_grads(conv, rng.standard_normal((2, 2, 5, 6)), rng)


def test_linear_grads(rng):
    check_layer_grads(nn.Linear(5, 4, dtype=F64, rng=2, init="glorot"), rng.standard_normal((3, 5)), rng)


@pytest.mark.parametrize("cls,shape", [(nn.BatchNorm2D, (3, 4, 2, 3)), (nn.BatchNorm1D, (5, 4))])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_train_grads(rng, cls, shape, affine):
    bn = cls(4, affine=affine, dtype=F64)
    if affine:
        bn.params["weight"][:] = rng.uniform(0.5, 1.5, 4)
        bn.params["bias"][:] = rng.standard_normal(4)
    else:
        assert bn.params == {} and bn.grads == {}
    check_layer_grads(bn, rng.standard_normal(shape) * 2 + 1, rng)


def test_batchnorm_eval_grads(rng):
    bn = nn.BatchNorm2D(3, dtype=F64)
    bn.params["weight"][:] = [0.5, 2.0, -1.0]
    bn.params["bias"][:] = [0.1, 0.2, 0.3]
    bn.buffers["running_mean"][:] = [0.3, -0.2, 1.0]
    bn.buffers["running_var"][:] = [0.5, 2.0, 1.5]
    bn.eval()
    check_layer_grads(bn, rng.standard_normal((2, 3, 2, 2)), rng)


def test_relu_pool_flatten_grads(rng):
    x = rng.standard_normal((2, 3, 5, 5))
    check_layer_grads(nn.ReLU(), x, rng)
    check_layer_grads(nn.MaxPool2D(2), x, rng)
    check_layer_grads(nn.MaxPool2D(3, stride=2, padding=1), x, rng)
    check_layer_grads(nn.Flatten(), x, rng)
    assert nn.Flatten()(x).shape == (2, 75)


def small_model(dtype=F64, input_grad=True):
    return nn.Sequential(
        nn.Conv2D(2, 3, 3, padding=1, bias=False, dtype=dtype, rng=3),
        nn.BatchNorm2D(3, dtype=dtype),
        nn.ReLU(),
        nn.MaxPool2D(2),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3, 5, dtype=dtype, rng=4, init="glorot"),
        nn.BatchNorm1D(5, dtype=dtype),
        input_grad=input_grad)


def test_whole_model_gradcheck(rng):
    """Finite differences through conv+BN+relu+pool+flatten+linear+BN1D+softmax-CE, params and input."""
    model = small_model()
    for layer in (model[1], model[6]):
        layer.params["weight"][:] = rng.uniform(0.5, 1.5, layer.num_features)
        layer.params["bias"][:] = rng.standard_normal(layer.num_features) * 0.1
    loss_fn = nn.SoftmaxCrossEntropy()
    x = rng.standard_normal((6, 2, 6, 6))
    labels = rng.integers(0, 5, 6)

    def f():
        return loss_fn(model.forward(x), labels)

    f()
    dx = model.backward(loss_fn.backward())
    grads = {name: g.copy() for name, _, g, _ in model.named_parameters()}
    assert sorted(grads) == ["0.weight", "1.bias", "1.weight", "5.bias", "5.weight", "6.bias", "6.weight"]
    assert_grad(dx, f, x)
    for name, p, _, _ in model.named_parameters():
        assert_grad(grads[name], f, p)


def test_threads_agree(rng):
    model = small_model(np.float32)
    loss_fn = nn.SoftmaxCrossEntropy()
    x = rng.standard_normal((8, 2, 6, 6)).astype(np.float32)
    labels = rng.integers(0, 5, 8)
    results = []
    for n in (1, 2):
        with cybn.num_threads(n):
            loss = loss_fn(model(x), labels)
            dx = model.backward(loss_fn.backward())
            results.append((loss, dx, [g.copy() for _, _, g, _ in model.named_parameters()]))
    (l1, dx1, g1), (l2, dx2, g2) = results
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    np.testing.assert_allclose(dx1, dx2, rtol=1e-4, atol=1e-6)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_first_layer_skips_input_grad(rng):
    model = small_model(input_grad=False)
    assert model[0].needs_input_grad is False and model[1].needs_input_grad is True
    loss_fn = nn.SoftmaxCrossEntropy()
    x = rng.standard_normal((4, 2, 6, 6))
    loss_fn(model(x), rng.integers(0, 5, 4))
    assert model.backward(loss_fn.backward()) is None
    w_grad = model[0].grads["weight"].copy()
    model.needs_input_grad = True
    loss_fn(model(x), loss_fn._labels)
    assert model.backward(loss_fn.backward()).shape == x.shape
    assert_close(model[0].grads["weight"], w_grad, rtol=1e-12, atol=0)


def test_grads_are_overwritten_not_accumulated(rng):
    lin = nn.Linear(3, 2, dtype=F64, rng=0)
    x, dy = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    grad_ref = lin.grads["weight"]
    lin(x)
    lin.backward(dy)
    first = lin.grads["weight"].copy()
    lin(x)
    lin.backward(dy)
    assert lin.grads["weight"] is grad_ref  # updated in place: optimizers keep references
    assert_close(lin.grads["weight"], first, rtol=0, atol=0)
    lin.zero_grad()
    assert not lin.grads["weight"].any()


# ---- errors ---------------------------------------------------------------------------------------

def test_dtype_mismatch_names_both(rng):
    x32 = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    with pytest.raises(TypeError, match="float64.*float32"):
        nn.Conv2D(3, 4, 3, dtype=F64, rng=0)(x32)
    with pytest.raises(TypeError, match="float32.*float64"):
        nn.BatchNorm2D(3)(x32.astype(F64))
    with pytest.raises(TypeError, match="float32.*float64"):
        nn.Linear(3, 2, rng=0)(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="float32.*int64"):
        small_model(np.float32)(np.zeros((2, 2, 6, 6), dtype=np.int64))
    with pytest.raises(TypeError, match="dtype"):
        nn.Linear(3, 2, dtype=np.int32)
    with pytest.raises(TypeError, match="ndarray"):
        nn.Linear(3, 2)([[1.0, 2.0, 3.0]])


def test_shape_errors():
    with pytest.raises(ValueError, match="3 input channels"):
        nn.Conv2D(3, 4, 3, rng=0)(np.zeros((2, 5, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm2D.s input x must have 4 dimensions, got shape \(2, 3\)"):
        nn.BatchNorm2D(3)(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="kernel_size"):
        nn.Conv2D(3, 4, 0)


@pytest.mark.parametrize("layer", [nn.Conv2D(2, 2, 1, rng=0), nn.Linear(2, 2, rng=0), nn.BatchNorm1D(2),
                                   nn.ReLU(), nn.MaxPool2D(2), nn.Flatten(), nn.Dropout(0.5, rng=0)],
                         ids=lambda l: type(l).__name__)
def test_backward_before_forward(layer):
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.zeros((2, 2), np.float32))
    with pytest.raises(RuntimeError, match="before forward"):
        nn.SoftmaxCrossEntropy().backward()


@pytest.mark.parametrize("make,shape", [
    (lambda: nn.Conv2D(2, 3, 1, rng=0), (2, 2, 3, 3)), (lambda: nn.Linear(2, 3, rng=0), (4, 2)),
    (lambda: nn.BatchNorm2D(2), (3, 2, 2, 2)), (lambda: nn.BatchNorm2D(2).eval(), (3, 2, 2, 2)),
    (lambda: nn.BatchNorm1D(2).eval(), (3, 2)), (nn.ReLU, (2, 3)), (lambda: nn.MaxPool2D(2), (1, 2, 4, 4)),
    (nn.Flatten, (2, 3, 4)), (lambda: nn.Dropout(0.5, rng=0), (2, 3)), (lambda: nn.Dropout(0.5).eval(), (2, 3))],
    ids=["conv", "linear", "bn2d", "bn2d-eval", "bn1d-eval", "relu", "pool", "flatten", "dropout", "dropout-eval"])
def test_backward_validates_dy(make, shape):
    """Every layer checks dy against the forward output (one helper: Module._pop_cache), and a
    rejected dy leaves the cache in place so a correct backward can follow."""
    layer = make()
    y = layer.forward(np.ones(shape, np.float32))
    bad = [(None, TypeError, "dy.*numpy.ndarray"), (np.ones(y.shape, np.float64), TypeError, "dy.*dtype float64"),
           (np.ones(y.shape[:-1] + (y.shape[-1] + 1,), np.float32), ValueError, "dy.*shape"),
           (np.ma.masked_array(np.ones(y.shape, np.float32)), TypeError, "dy.*subclass MaskedArray")]
    for dy, exc, msg in bad:
        with pytest.raises(exc, match=msg):
            layer.backward(dy)
    dx = layer.backward(np.ones(y.shape, np.float32))
    assert dx.shape == shape and dx.dtype == np.float32


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix
def test_layer_inputs_reject_subclasses():
    x = np.ones((2, 3), np.float32)
    for layer in (nn.Linear(3, 2, rng=0), nn.BatchNorm1D(3), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5, rng=0)):
        with pytest.raises(TypeError, match="subclass"):
            layer.forward(np.ma.masked_array(x))
        with pytest.raises(TypeError, match="subclass"):
            layer.forward(np.asmatrix(x))


# ---- BatchNorm semantics ---------------------------------------------------------------------------

def test_batchnorm_train_eval_and_running_stats(rng):
    bn = nn.BatchNorm2D(3, momentum=0.1, dtype=F64)
    xs = [rng.standard_normal((4, 3, 2, 5)) * [[[[1.0]], [[2.0]], [[3.0]]]] + 1 for _ in range(3)]
    rm, rv = np.zeros(3), np.ones(3)
    for x in xs:
        y = bn(x)
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3))
        assert_close(y, (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5))  # batch stats
        rm = 0.9 * rm + 0.1 * mean
        rv = 0.9 * rv + 0.1 * x.var((0, 2, 3), ddof=1)  # unbiased, PyTorch semantics
    assert_close(bn.running_mean, rm)
    assert_close(bn.running_var, rv)
    assert bn.num_batches_tracked == 3
    bn.eval()
    x = xs[0]
    assert_close(bn(x), (x - rm[:, None, None]) / np.sqrt(rv[:, None, None] + 1e-5))
    assert bn.num_batches_tracked == 3  # eval leaves the buffers alone
    assert_close(bn.running_mean, rm)


def test_batchnorm_cumulative_momentum(rng):
    bn = nn.BatchNorm1D(2, momentum=None, dtype=F64)
    xs = [rng.standard_normal((5, 2)) for _ in range(3)]
    for x in xs:
        bn(x)
    assert_close(bn.running_mean, np.mean([x.mean(0) for x in xs], axis=0))


def test_batchnorm_matches_torch(rng):
    torch = pytest.importorskip("torch")
    bn = nn.BatchNorm2D(3, momentum=0.2, eps=1e-3)
    tbn = torch.nn.BatchNorm2d(3, momentum=0.2, eps=1e-3)
    for _ in range(2):
        x = (rng.standard_normal((4, 3, 3, 3)) * 3 + 2).astype(np.float32)
        np.testing.assert_allclose(bn(x), tbn(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)
    for k, v in tbn.state_dict().items():
        np.testing.assert_allclose(bn.state_dict()[k], v.numpy(), rtol=1e-5, atol=1e-6)
    bn.eval(), tbn.eval()
    np.testing.assert_allclose(bn(x), tbn(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)


# ---- Dropout ---------------------------------------------------------------------------------------

def test_dropout(rng):
    x = rng.standard_normal((200, 50)).astype(np.float32) + 3
    d = nn.Dropout(0.25, rng=7)
    y = d(x)
    dropped = y == 0
    assert 0.2 < dropped.mean() < 0.3
    np.testing.assert_allclose(y[~dropped], x[~dropped] / 0.75, rtol=1e-6)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx = d.backward(dy)
    np.testing.assert_allclose(dx, np.where(dropped, 0, dy / 0.75), rtol=1e-6)
    assert y.dtype == dx.dtype == np.float32
    np.testing.assert_array_equal(nn.Dropout(0.25, rng=7)(x), y)  # seeded: same mask
    assert not np.array_equal(d(x), y)  # the generator advances
    d.eval()
    assert np.array_equal(d(x), x) and np.array_equal(d.backward(dy), dy)
    assert not nn.Dropout(1.0, rng=0)(x).any()
    d.train()
    state = nn.generator_state(d.rng)
    y1 = d(x)
    nn.set_generator_state(d.rng, state)  # e.g. restored from a checkpoint
    np.testing.assert_array_equal(d(x), y1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        nn.Dropout(1.5)


# ---- Sequential ------------------------------------------------------------------------------------

def test_state_dict_keys_and_copies():
    model = small_model(np.float32)
    sd = model.state_dict()
    assert list(sd) == ["0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                        "1.num_batches_tracked", "5.weight", "5.bias", "6.weight", "6.bias",
                        "6.running_mean", "6.running_var", "6.num_batches_tracked"]
    assert sd["1.num_batches_tracked"].dtype == np.int64 and sd["1.num_batches_tracked"].shape == ()
    assert sd["0.weight"].dtype == np.float32
    sd["0.weight"][:] = 123
    assert not (model[0].params["weight"] == 123).any()


def test_save_load_roundtrip(tmp_path, rng):
    model = small_model(np.float32)
    x = rng.standard_normal((4, 2, 6, 6)).astype(np.float32)
    for _ in range(3):
        model(x + rng.standard_normal(x.shape).astype(np.float32))  # moves the running stats
    path = tmp_path / "model.npz"
    model.save(path)
    with np.load(path, allow_pickle=False) as data:
        assert set(data.files) == set(model.state_dict()) | {"format_version"}  # + the file format version
    other = small_model(np.float32)
    other[0].params["weight"][:] = 0
    weight_ref = other[0].params["weight"]
    other.load(path)
    assert other[0].params["weight"] is weight_ref  # loaded in place
    assert other[1].num_batches_tracked == 3
    for mode in ("eval", "train"):
        getattr(model, mode)(), getattr(other, mode)()
        np.testing.assert_array_equal(model(x), other(x))


def test_load_state_dict_errors():
    model = small_model(np.float32)
    good = model.state_dict()
    before = model[0].params["weight"].copy()

    bad = dict(good)
    del bad["1.running_var"]
    bad["9.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"missing key\(s\) \['1.running_var'\].*unexpected key\(s\) \['9.weight'\]"):
        model.load_state_dict(bad)
    missing, unexpected = small_model(np.float32).load_state_dict(bad, strict=False)
    assert missing == ["1.running_var"] and unexpected == ["9.weight"]

    bad = dict(good, **{"0.weight": np.zeros((3, 2, 3, 1), np.float32)})
    with pytest.raises(ValueError, match=r"0.weight.*\(3, 2, 3, 1\).*\(3, 2, 3, 3\)"):
        model.load_state_dict(bad)
    bad = dict(good, **{"5.bias": np.zeros(5, np.float64), "0.weight": good["0.weight"] + 1})
    with pytest.raises(TypeError, match="5.bias.*float64.*float32"):
        model.load_state_dict(bad)
    np.testing.assert_array_equal(model[0].params["weight"], before)  # all-or-nothing
    bad = dict(good, **{"1.num_batches_tracked": np.array(1.5)})
    with pytest.raises(TypeError, match="num_batches_tracked"):
        model.load_state_dict(bad)


def test_forward_hooks(rng):
    model = small_model(np.float32)
    seen = []
    handle = model.register_forward_hook(lambda i, layer, out: seen.append((i, type(layer).__name__, out.shape)))
    model(rng.standard_normal((4, 2, 6, 6)).astype(np.float32))
    assert [s[0] for s in seen] == list(range(7))
    assert seen[0] == (0, "Conv2D", (4, 3, 6, 6)) and seen[-1] == (6, "BatchNorm1D", (4, 5))
    handle.remove()
    handle.remove()  # idempotent
    seen.clear()
    model(rng.standard_normal((4, 2, 6, 6)).astype(np.float32))
    assert seen == []


def test_predict_restores_mode(rng):
    model = small_model(np.float32)
    x = rng.standard_normal((10, 2, 6, 6)).astype(np.float32)
    model(x)  # one training step's stats
    stats = model.state_dict()
    labels = model.predict(x, batch_size=3)
    assert labels.shape == (10,) and labels.dtype == np.int64
    assert model.training and all(layer.training for layer in model)
    model.eval()
    np.testing.assert_array_equal(labels, model(x).argmax(1))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, stats[k])  # predict did not touch running stats
    model[1].train()  # mixed modes are restored as they were
    model.predict(x)
    assert model[1].training and not model[0].training


def test_repr_and_summary():
    assert repr(nn.Conv2D(3, 32, 3, padding=1, rng=0)) == \
        "Conv2D(3, 32, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))"
    assert repr(nn.Conv2D(3, 8, 3, stride=2, bias=False, rng=0)) == \
        "Conv2D(3, 8, kernel_size=(3, 3), stride=(2, 2), bias=False)"
    assert repr(nn.Linear(4, 2, rng=0)) == "Linear(in_features=4, out_features=2, bias=True)"
    assert repr(nn.BatchNorm2D(8)) == "BatchNorm2D(8, eps=1e-05, momentum=0.1, affine=True)"
    assert repr(nn.MaxPool2D(2)) == "MaxPool2D(kernel_size=2, stride=2, padding=0)"
    model = small_model(np.float32)
    assert repr(model).splitlines()[1] == "  (0): Conv2D(2, 3, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)"
    text = model.summary((2, 6, 6))
    assert "(N, 3, 3, 3)" in text and "(N, 27)" in text
    assert f"total parameters: {model.num_parameters():,}" in text
    assert model.num_parameters() == 54 + 6 + 27 * 5 + 5 + 10


# ---- initializers ----------------------------------------------------------------------------------

def test_init_statistics():
    g = np.random.default_rng(0)
    w = init.uniform((64, 32, 3, 3), 0.001, g, np.float32)
    assert w.dtype == np.float32 and np.abs(w).max() <= 0.001 and np.abs(w).max() > 0.00099
    np.testing.assert_allclose(w.std(), 0.001 / np.sqrt(3), rtol=0.03)
    w = init.kaiming_normal((256, 128, 3, 3), g)
    np.testing.assert_allclose(w.std(), np.sqrt(2 / (128 * 9)), rtol=0.02)
    w = init.kaiming_uniform((256, 128, 3, 3), g)
    np.testing.assert_allclose(w.std(), np.sqrt(2 / (128 * 9)), rtol=0.02)
    assert np.abs(w).max() <= np.sqrt(6 / (128 * 9))
    w = init.glorot_uniform((300, 200), g, np.float64)
    assert w.dtype == np.float64 and np.abs(w).max() <= np.sqrt(6 / 500)
    np.testing.assert_allclose(w.std(), np.sqrt(2 / 500), rtol=0.02)
    assert init.fans((32, 16, 3, 3)) == (144, 288)
    np.testing.assert_array_equal(init.uniform((3, 4), 0.5, np.random.default_rng(5)),
                                  init.uniform((3, 4), 0.5, np.random.default_rng(5)))


def test_init_specs():
    g = np.random.default_rng(0)
    assert np.abs(init.init_from_spec("uniform:0.001")((10, 10), g)).max() <= 0.001
    for spec in ("he", "kaiming", "HE_uniform", "glorot", "xavier", "glorot_normal", "torch", "normal:0.01"):
        assert init.init_from_spec(spec)((4, 3, 3, 3), g).shape == (4, 3, 3, 3)
    for bad in ("uniform", "uniform:x", "uniform:-1", "uniform:nan", "normal:inf", "he:2", "bogus"):
        with pytest.raises(ValueError, match="allowed forms: uniform:A"):
            init.init_from_spec(bad)
    with pytest.raises(TypeError, match="allowed forms: uniform:A.*got int"):
        init.init_from_spec(3)
    conv = nn.Conv2D(3, 4, 3, rng=1, init="uniform:0.01")
    assert np.abs(conv.params["weight"]).max() <= 0.01 and not conv.params["bias"].any()
    same = nn.Conv2D(3, 4, 3, rng=np.random.default_rng(1), init="uniform:0.01")
    np.testing.assert_array_equal(conv.params["weight"], same.params["weight"])
    custom = nn.Linear(3, 2, init=lambda shape, rng, dtype: np.full(shape, 0.5, dtype))
    assert (custom.params["weight"] == 0.5).all()
    assert np.abs(nn.Linear(100, 10, rng=0, init="torch").params["bias"]).max() <= 0.1


def test_top_level_exports():
    assert cybn.Conv2D is nn.Conv2D and cybn.Sequential is nn.Sequential
    assert cybn.SGD is nn.SGD and cybn.cnn7 is nn.cnn7


def test_slicing_and_nesting(rng):
    model = small_model(np.float32, input_grad=False)
    head = model[:4]
    assert len(head) == 4 and head[0] is model[0]
    tail = model[4:]
    assert model[4].needs_input_grad and model[0].needs_input_grad is False  # flags untouched
    x = rng.standard_normal((4, 2, 6, 6)).astype(np.float32)
    model.eval()
    np.testing.assert_array_equal(tail(head(x)), model(x))
    nested = nn.Sequential(nn.Sequential(nn.Linear(3, 4, rng=0), nn.ReLU()), nn.Linear(4, 2, rng=1))
    assert [k for k, *_ in nested.named_parameters()] == ["0.0.weight", "0.0.bias", "1.weight", "1.bias"]
    assert list(nested.state_dict()) == ["0.0.weight", "0.0.bias", "1.weight", "1.bias"]
    assert "    (0): Linear" in repr(nested)


def test_copy_and_restore_buffers(rng):
    model = nn.Sequential(nn.Conv2D(2, 3, 1, rng=0), nn.BatchNorm2D(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(12, 4, rng=1), nn.BatchNorm1D(4))
    x = rng.standard_normal((5, 2, 2, 2)).astype(np.float32)
    model(x)
    snapshot = model.copy_buffers()
    held = model[1].buffers["running_mean"]  # arrays held elsewhere must stay the live buffers
    saved = {k: np.array(v) for k, v in model.state_dict().items() if "running" in k or "tracked" in k}
    model(x + 1)
    assert model[1].num_batches_tracked == 2 and not np.array_equal(held, saved["1.running_mean"])
    model.restore_buffers(snapshot)
    assert model[1].buffers["running_mean"] is held
    for k, v in saved.items():
        np.testing.assert_array_equal(model.state_dict()[k], v)
    assert model[1].num_batches_tracked == 1
    model(x)
    model.restore_buffers(snapshot)  # a snapshot is reusable: it holds copies
    assert model[1].num_batches_tracked == 1
    other = nn.Sequential(nn.BatchNorm1D(4))
    with pytest.raises(ValueError, match="another model"):
        other.restore_buffers(snapshot)
    with pytest.raises(ValueError, match="shape"):
        nn.Sequential(nn.Conv2D(2, 3, 1), nn.BatchNorm2D(5), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4),
                      nn.BatchNorm1D(4)).restore_buffers(snapshot)
    with pytest.raises(TypeError, match="copy_buffers"):
        model.restore_buffers(None)
    assert nn.Linear(2, 2).copy_buffers() == {}


def test_layer_argument_policy():
    """TypeError for a wrong type (bools and floats are not sizes), ValueError for a wrong value."""
    cases = [(lambda: nn.Conv2D(3, 4, 2.0), TypeError, "kernel_size must be an integer, got float 2.0"),
             (lambda: nn.Conv2D(3, 4, 3, stride=(1, True)), TypeError, "stride must be an integer, got bool"),
             (lambda: nn.Conv2D(3, 4, 3, padding=-1), ValueError, "padding must be >= 0, got -1"),
             (lambda: nn.Conv2D(3, 4, (3, 3, 3)), ValueError, r"kernel_size must be an int or a pair \(h, w\)"),
             (lambda: nn.Linear(2.7, 3), TypeError, "in_features must be an integer, got float 2.7"),
             (lambda: nn.Linear(0, 3), ValueError, "in_features must be >= 1, got 0"),
             (lambda: nn.Linear(2, 2**31), ValueError, "out_features must be <= 2147483647"),
             (lambda: nn.Linear(2, 3, bias=1), TypeError, "bias must be a bool"),
             (lambda: nn.Linear(2, 3, dtype=np.int32), TypeError, "dtype must be float32 or float64"),
             (lambda: nn.BatchNorm2D(3, eps=0), ValueError, "eps must be a finite number > 0, got 0.0"),
             (lambda: nn.BatchNorm2D(3, eps=float("inf")), ValueError, "eps must be a finite number > 0"),
             (lambda: nn.BatchNorm2D(3, momentum=1.5), ValueError, r"momentum \(or None\) must be a finite number in \[0, 1\]"),
             (lambda: nn.BatchNorm2D(3, affine="yes"), TypeError, "affine must be a bool"),
             (lambda: nn.BatchNorm2D(True), TypeError, "num_features must be an integer, got bool"),
             (lambda: nn.Dropout(float("nan")), ValueError, r"dropout probability p must be a finite number in \[0, 1\], got nan"),
             (lambda: nn.Dropout(0.5, rng=1.5), TypeError, "rng must be a numpy.random.Generator"),
             (lambda: nn.MaxPool2D(2, stride=0), ValueError, "stride must be >= 1, got 0"),
             (lambda: nn.Sequential(nn.ReLU(), input_grad=1), TypeError, "input_grad must be a bool"),
             (lambda: nn.Sequential(nn.Linear(2, 2)).predict(np.ones((1, 2), np.float32), batch_size=2.5),
              TypeError, "batch_size must be an integer, got float 2.5"),
             (lambda: nn.Sequential(nn.Linear(2, 2)).load_state_dict({}, strict=1), TypeError, "strict must be a bool"),
             (lambda: nn.init.uniform((2, 2), -1, np.random.default_rng()), ValueError, "uniform bound a must be"),
             (lambda: nn.init.normal((2, 2), "0.1", np.random.default_rng()), TypeError, "normal std must be a real"),
             ]
    for make, exc, message in cases:
        with pytest.raises(exc, match=message):
            make()


def test_output_shape_uses_the_ops_formula(rng):
    """Layers predict exactly the shape the op computes (one formula for both)."""
    for k, s, p, hw in [(3, 1, 1, (7, 5)), ((2, 3), (2, 1), (1, 0), (6, 9)), (5, 3, 2, (11, 4))]:
        x = rng.standard_normal((2, 3) + hw).astype(np.float32)
        conv = nn.Conv2D(3, 4, k, stride=s, padding=p, rng=0)
        assert conv.output_shape(x.shape) == conv(x).shape
    for k, s, p in [(2, None, 0), (3, 2, 1), ((3, 2), (1, 2), (1, 1))]:
        pool = nn.MaxPool2D(k, s, p)
        x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
        assert pool.output_shape(x.shape) == pool(x).shape
