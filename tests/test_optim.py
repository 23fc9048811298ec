"""SGD (vs torch.optim.SGD) and learning-rate schedules."""
import math

import numpy as np
import pytest

from cybn import nn
from cybn.nn.optim import (SGD, ConstantLR, CosineLR, StepLR, WarmupLR, schedule_from_spec)


def make_params(rng, dtype=np.float64):
    shapes = {"0.weight": (4, 3, 3, 3), "0.bias": (4,), "1.weight": (4,), "1.bias": (4,), "2.weight": (5, 6)}
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    return params, grads


def named(params, grads, bn_layer=None):
    # "1.*" plays the BatchNorm layer (for decay_bn_and_bias=False)
    return [(k, params[k], grads[k], bn_layer if k.startswith("1.") else None) for k in params]


CONFIGS = [dict(momentum=0.0), dict(momentum=0.9), dict(momentum=0.9, nesterov=True),
           dict(momentum=0.9, weight_decay=5e-3), dict(momentum=0.8, nesterov=True, weight_decay=1e-2),
           dict(momentum=0.9, dampening=0.3), dict(weight_decay=1e-2)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_sgd_matches_torch(rng, cfg):
    torch = pytest.importorskip("torch")
    params, grads = make_params(rng)
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    opt = SGD(named(params, grads), lr=0.1, **cfg)
    topt = torch.optim.SGD(list(tparams.values()), lr=0.1, **cfg)
    refs = {k: v for k, v in params.items()}
    for step in range(6):
        lr = 0.1 * (0.7 ** step)  # a changing lr, as a schedule would set it
        opt.lr = lr
        for group in topt.param_groups:
            group["lr"] = lr
        for k in params:
            g = rng.standard_normal(params[k].shape)
            grads[k][...] = g
            tparams[k].grad = torch.tensor(g)
        opt.step()
        topt.step()
    for k in params:
        assert params[k] is refs[k]  # updated in place
        np.testing.assert_allclose(params[k], tparams[k].detach().numpy(), rtol=1e-12, atol=1e-14)


def test_sgd_no_decay_on_bn_and_bias_matches_torch_groups(rng):
    torch = pytest.importorskip("torch")
    bn = nn.BatchNorm1D(4, dtype=np.float64)
    params, grads = make_params(rng)
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    opt = SGD(named(params, grads, bn), lr=0.05, momentum=0.9, weight_decay=0.1, decay_bn_and_bias=False)
    decayed = ["0.weight", "2.weight"]
    topt = torch.optim.SGD([
        {"params": [tparams[k] for k in decayed], "weight_decay": 0.1},
        {"params": [tparams[k] for k in params if k not in decayed], "weight_decay": 0.0}],
        lr=0.05, momentum=0.9)
    for _ in range(4):
        for k in params:
            g = rng.standard_normal(params[k].shape)
            grads[k][...] = g
            tparams[k].grad = torch.tensor(g)
        opt.step()
        topt.step()
    for k in params:
        np.testing.assert_allclose(params[k], tparams[k].detach().numpy(), rtol=1e-12, atol=1e-14)


def test_sgd_plain_rule_float32(rng):
    params, grads = make_params(rng, np.float32)
    p0 = {k: v.copy() for k, v in params.items()}
    for k in grads:
        grads[k][...] = 1
    opt = SGD(named(params, grads), lr=0.5, weight_decay=0.1)
    opt.step()
    for k in params:
        assert params[k].dtype == np.float32
        np.testing.assert_allclose(params[k], p0[k] - 0.5 * (1 + 0.1 * p0[k]), rtol=1e-6)
    scratch = {k: id(v) for k, v in opt._scratch.items()}
    opt.step()
    assert {k: id(v) for k, v in opt._scratch.items()} == scratch  # no per-step allocation


def test_sgd_state_dict_resume(rng, tmp_path):
    grads_seq = [{k: rng.standard_normal(s.shape) for k, s in make_params(rng)[0].items()} for _ in range(6)]
    start, _ = make_params(np.random.default_rng(1))

    def run(steps, opt=None, params=None):
        if params is None:
            params = {k: v.copy() for k, v in start.items()}
        grads = {k: np.zeros_like(v) for k, v in params.items()}
        opt = opt or SGD(named(params, grads), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
        return params, grads, opt

    full_p, full_g, full_opt = run(6)
    for gs in grads_seq:
        for k in gs:
            full_g[k][...] = gs[k]
        full_opt.step()

    p, g, opt = run(3)
    assert opt.state_dict() == {}  # no buffers before the first step (PyTorch)
    for gs in grads_seq[:3]:
        for k in gs:
            g[k][...] = gs[k]
        opt.step()
    np.savez(tmp_path / "opt.npz", **opt.state_dict())
    saved_params = {k: v.copy() for k, v in p.items()}

    p2, g2, opt2 = run(3, params=saved_params)
    with np.load(tmp_path / "opt.npz", allow_pickle=False) as data:
        opt2.load_state_dict({k: data[k] for k in data.files})
    for gs in grads_seq[3:]:
        for k in gs:
            g2[k][...] = gs[k]
        opt2.step()
    for k in full_p:
        np.testing.assert_array_equal(p2[k], full_p[k])


def test_sgd_with_model_and_errors(rng):
    model = nn.Sequential(nn.Linear(3, 2, dtype=np.float64, rng=0), nn.BatchNorm1D(2, dtype=np.float64))
    opt = SGD(model, lr=0.1, momentum=0.9)
    assert opt.param_names == ["0.weight", "0.bias", "1.weight", "1.bias"]
    x = rng.standard_normal((4, 3))
    w0 = model[0].params["weight"].copy()
    y = model(x)
    model.backward(np.ones_like(y) + rng.standard_normal(y.shape))
    opt.step()
    np.testing.assert_allclose(model[0].params["weight"], w0 - 0.1 * model[0].grads["weight"], rtol=1e-12)
    opt.zero_grad()
    assert not model[0].grads["weight"].any()

    state = opt.state_dict()
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['9.weight'\]"):
        opt.load_state_dict({**state, "9.weight": np.zeros(2)})
    with pytest.raises(ValueError, match=r"missing momentum buffer\(s\) \['0.bias'\]"):
        opt.load_state_dict({k: v for k, v in state.items() if k != "0.bias"})
    with pytest.raises(ValueError, match="0.bias.*shape"):
        opt.load_state_dict({**state, "0.bias": np.zeros(3)})
    with pytest.raises(TypeError, match="0.bias.*dtype float32"):
        opt.load_state_dict({**state, "0.bias": np.zeros(2, np.float32)})
    with pytest.raises(TypeError, match="mapping"):
        opt.load_state_dict([("0.bias", np.zeros(2))])
    untouched = opt.state_dict()
    for k in state:
        np.testing.assert_array_equal(untouched[k], state[k])  # failed loads change nothing
    opt.load_state_dict({})  # the state before the first step
    assert opt.state_dict() == {}
    with pytest.raises(ValueError, match="Nesterov"):
        SGD(model, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="lr"):
        SGD(model, lr=-1)
    with pytest.raises(ValueError, match="empty"):
        SGD([], lr=0.1)


# ---- schedules -------------------------------------------------------------------------------------

def test_schedules():
    assert ConstantLR(0.1).lr_at(12345) == 0.1
    s = StepLR(0.1, step_size=10, gamma=0.5)
    assert [s.lr_at(i) for i in (0, 9, 10, 25)] == [0.1, 0.1, 0.05, 0.025]
    c = CosineLR(1.0, total_steps=100, min_lr=0.1)
    assert c.lr_at(0) == 1.0 and math.isclose(c.lr_at(50), 0.55) and c.lr_at(100) == c.lr_at(500) == 0.1
    w = WarmupLR(CosineLR(1.0, 100), warmup_steps=4)
    assert [w.lr_at(i) for i in range(4)] == [c0 * (i + 1) / 4 for i, c0 in
                                               enumerate(CosineLR(1.0, 100).lr_at(i) for i in range(4))]
    assert w.lr_at(4) == CosineLR(1.0, 100).lr_at(4)
    with pytest.raises(ValueError, match="step must be >= 0, got -1"):
        c.lr_at(-1)


def test_schedule_from_spec():
    assert isinstance(schedule_from_spec("constant", 0.1), ConstantLR)
    assert isinstance(schedule_from_spec("step:5", 0.1), StepLR) and StepLR(0.1, 5)(5) == 0.1 * 0.1
    s = schedule_from_spec("step:30:0.2", 0.1)
    assert (s.step_size, s.gamma) == (30, 0.2)
    assert schedule_from_spec("step:30", 0.1).gamma == 0.1
    c = schedule_from_spec("cosine:0.001", 0.1, total_steps=1000)
    assert (c.total_steps, c.min_lr) == (1000, 0.001)
    w = schedule_from_spec("warmup:50+cosine", 0.1, total_steps=1000)
    assert isinstance(w, WarmupLR) and w.warmup_steps == 50 and isinstance(w.schedule, CosineLR)
    for bad in ("cosine", "linear", "step", "step:x", "step:2.5", "step:0", "step:5:nan", "cosine:-1",
                "warmup:5", "warmup:a+constant", "warmup:-1+constant", "constant:3"):
        with pytest.raises(ValueError, match="allowed forms: constant"):
            schedule_from_spec(bad, 0.1)
    with pytest.raises(TypeError, match="string"):
        schedule_from_spec(None, 0.1)


def test_no_weight_decay_is_declared_by_the_layer(rng):
    """decay_bn_and_bias=False asks each layer (Module.no_weight_decay), not the layer's type."""
    class Scale(nn.Module):
        no_weight_decay = frozenset({"gain"})

        def __init__(self):
            super().__init__()
            self.params = {"gain": np.ones(3), "weight": np.ones(3)}
            self.grads = {k: np.zeros(3) for k in self.params}

    assert nn.BatchNorm2D(3).no_weight_decay == {"weight", "bias"} and nn.Linear(2, 2).no_weight_decay == set()
    model = nn.Sequential(nn.Linear(3, 3, dtype=np.float64, rng=0), Scale(), nn.BatchNorm1D(3, dtype=np.float64))
    before = {name: p.copy() for name, p, _, _ in model.named_parameters()}
    SGD(model, lr=1.0, weight_decay=0.5, decay_bn_and_bias=False).step()  # grads are zero: decay only
    after = {name: p for name, p, _, _ in model.named_parameters()}
    decayed = {name for name in before if not np.array_equal(before[name], after[name])}
    assert decayed == {"0.weight", "1.weight"}
    for name in decayed:
        np.testing.assert_array_equal(after[name], 0.5 * before[name])


def test_sgd_argument_types():
    model = nn.Sequential(nn.Linear(2, 2, rng=0))
    for kwargs, exc, message in [(dict(lr=True), TypeError, "lr must be a real number, got bool"),
                                 (dict(lr=float("nan")), ValueError, "lr must be a finite number >= 0"),
                                 (dict(lr=0.1, momentum=10**400), ValueError, "momentum must be a finite"),
                                 (dict(lr=0.1, nesterov=1), TypeError, "nesterov must be a bool"),
                                 (dict(lr=0.1, decay_bn_and_bias="no"), TypeError, "decay_bn_and_bias must be a bool")]:
        with pytest.raises(exc, match=message):
            SGD(model, **kwargs)
    # integers are never truncated: 2.7 steps is an error, not 2
    for make, name in [(lambda v: StepLR(0.1, v), "step_size"), (lambda v: CosineLR(0.1, v), "total_steps"),
                       (lambda v: WarmupLR(ConstantLR(0.1), v), "warmup_steps"),
                       (lambda v: ConstantLR(0.1).lr_at(v), "step")]:
        with pytest.raises(TypeError, match=f"{name} must be an integer, got float 2.7"):
            make(2.7)
        with pytest.raises(TypeError, match=f"{name} must be an integer, got bool"):
            make(True)
    with pytest.raises(ValueError, match="step_size must be >= 1, got 0"):
        StepLR(0.1, 0)


SGD_UPDATE_CONFIGS = CONFIGS + [dict(momentum=0.9, dampening=0.3, weight_decay=1e-2)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cfg", SGD_UPDATE_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_sgd_update_is_bitwise_the_reference(rng, monkeypatch, dtype, cfg):
    import cybn
    from cybn import functional as F, reference as R
    from cybn.functional import optim as fopt
    monkeypatch.setattr(fopt, "_SGD_GRAIN", 1000)  # several threads and work blocks
    for size in [(0,), (1,), (7, 3), (70001,)]:  # 70001: past one work block of the kernel
        p = rng.standard_normal(size).astype(dtype)
        p_ref = p.copy()
        buf = np.empty_like(p) if cfg.get("momentum") else None
        buf_ref = None if buf is None else np.empty_like(p)
        for step in range(4):
            g = rng.standard_normal(size).astype(dtype)
            lr = 0.1 * 0.7 ** step
            with cybn.num_threads(1 + step % 2):
                F.sgd_update(p, g, buf, lr, first_step=step == 0, **cfg)
            R.sgd_update(p_ref, g, buf_ref, lr, first_step=step == 0, **cfg)
            assert p.dtype == dtype
            assert p.tobytes() == p_ref.tobytes()
            if buf is not None:
                assert buf.tobytes() == buf_ref.tobytes()


def test_sgd_update_bad_inputs(rng):
    from cybn import functional as F
    p = rng.standard_normal((4, 3))
    g = rng.standard_normal((4, 3))
    buf = np.zeros_like(p)
    p0 = p.copy()
    with pytest.raises(ValueError, match="C-contiguous"):
        F.sgd_update(np.asfortranarray(p), np.asfortranarray(g), None, 0.1)
    ro = p.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        F.sgd_update(ro, g, None, 0.1)
    with pytest.raises(TypeError, match="dtype"):
        F.sgd_update(p, g.astype(np.float32), None, 0.1)
    with pytest.raises(ValueError, match="shape"):
        F.sgd_update(p, g[:2], None, 0.1)
    with pytest.raises(ValueError, match="C-contiguous"):
        F.sgd_update(p, g.T.copy().T, None, 0.1)
    with pytest.raises(ValueError, match="momentum_buffer"):
        F.sgd_update(p, g, None, 0.1, momentum=0.9)
    with pytest.raises(ValueError, match="shape"):
        F.sgd_update(p, g, buf[:2], 0.1, momentum=0.9)
    with pytest.raises(TypeError, match="dtype"):
        F.sgd_update(p, g, buf.astype(np.float32), 0.1, momentum=0.9)
    with pytest.raises(ValueError, match="None when momentum is 0"):
        F.sgd_update(p, g, buf, 0.1)
    with pytest.raises(ValueError, match="Nesterov"):
        F.sgd_update(p, g, None, 0.1, nesterov=True)
    with pytest.raises(ValueError, match="Nesterov"):
        F.sgd_update(p, g, buf, 0.1, momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(ValueError, match="lr"):
        F.sgd_update(p, g, None, -0.1)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        F.sgd_update(p.tolist(), g, None, 0.1)
    with pytest.raises(TypeError, match="nesterov"):
        F.sgd_update(p, g, buf, 0.1, momentum=0.9, nesterov="yes")
    assert (buf == 0).all() and np.array_equal(p, p0)  # a refused call updates nothing
