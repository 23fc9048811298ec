"""Adam / AdamW against torch.optim (float64, 1e-12) and a plain-NumPy reference (always), their
state_dict and bit-exact resume, in-place updates without per-step allocation, and bad arguments."""
import math
import tracemalloc

import numpy as np
import pytest

from cybn import nn
from cybn.checkpoint import load_checkpoint, save_checkpoint
from cybn.nn.optim import Adam, AdamW
from cybn.train import Trainer

from test_train import assert_same_weights, make_loader, toy_model, weights

# odd sizes, a single element, 1x1 spatial
SHAPES = {"0.weight": (4, 3, 3, 3), "0.bias": (4,), "1.weight": (1,), "1.bias": (7, 1, 1, 1), "2.weight": (5, 6)}

CONFIGS = [
    (Adam, {}),
    (Adam, dict(weight_decay=1e-2)),
    (Adam, dict(amsgrad=True)),
    (Adam, dict(amsgrad=True, weight_decay=0.1, betas=(0.8, 0.99), eps=1e-6)),
    (Adam, dict(betas=(0.3, 0.9))),  # lerp weight 0.7: torch's other lerp branch
    (Adam, dict(betas=(0.0, 0.5), eps=1e-30)),  # eps far below even the 1e-20 gradients
    (AdamW, {}),
    (AdamW, dict(weight_decay=0.1, amsgrad=True)),
    (AdamW, dict(weight_decay=0.0, betas=(0.5, 0.95))),
]
IDS = [cls.__name__ + "(" + ",".join(f"{k}={v}" for k, v in cfg.items()) + ")" for cls, cfg in CONFIGS]


def make_params(rng, dtype=np.float64):
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}
    return params, {k: np.zeros_like(v) for k, v in params.items()}


def named(params, grads, bn_layer=None):
    # "1.*" plays the BatchNorm layer (for decay_bn_and_bias=False)
    return [(k, params[k], grads[k], bn_layer if k.startswith("1.") else None) for k in params]


def gradient_sequence(rng, steps):
    """Gradients whose scale changes from step to step and between parameters, down to 1e-20 (the
    deep layers' gradients under U(+-0.001) init), with exact zeros mixed in."""
    seq = []
    for step in range(steps):
        gs = {}
        for i, (k, s) in enumerate(SHAPES.items()):
            g = rng.standard_normal(s) * 10.0 ** rng.integers(-3, 2)
            if i == 4:
                g *= 1e-20
            g[rng.random(s) < 0.1] = 0.0
            gs[k] = g
        seq.append(gs)
    return seq


def lr_at(step):
    return 1e-2 * 0.97 ** step  # a changing lr, as a schedule would set it


def reference_adam(p, grads, lr, betas, eps, weight_decay, amsgrad, decoupled, decay=True):
    """Textbook Adam (Kingma & Ba) with PyTorch's eps placement, L2 or decoupled decay, in float64."""
    p = p.astype(np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    v_max = np.zeros_like(p)
    b1, b2 = betas
    wd = weight_decay if decay else 0.0
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64)
        if decoupled:
            p = p * (1 - lr(t - 1) * wd)
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        v_max = np.maximum(v_max, v)
        v_hat = (v_max if amsgrad else v) / (1 - b2 ** t)
        p = p - lr(t - 1) * (m / (1 - b1 ** t)) / (np.sqrt(v_hat) + eps)
    return p


def run_cybn(opt, grads, seq, first_step=0):
    for i, gs in enumerate(seq, start=first_step):
        opt.lr = lr_at(i)
        for k, g in gs.items():
            grads[k][...] = g
        opt.step()


@pytest.mark.parametrize("cls,cfg", CONFIGS, ids=IDS)
def test_matches_torch(rng, cls, cfg):
    torch = pytest.importorskip("torch", reason="torch is not installed: the NumPy reference test still runs")
    params, grads = make_params(rng)
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    opt = cls(named(params, grads), **cfg)
    topt = getattr(torch.optim, cls.__name__)(list(tparams.values()), foreach=False, capturable=False, **cfg)
    refs = dict(params)
    seq = gradient_sequence(rng, 60)
    for step, gs in enumerate(seq):
        for group in topt.param_groups:
            group["lr"] = lr_at(step)
        for k, g in gs.items():
            tparams[k].grad = torch.tensor(g)
        topt.step()
    run_cybn(opt, grads, seq)
    for k in params:
        assert params[k] is refs[k]  # updated in place
        np.testing.assert_allclose(params[k], tparams[k].detach().numpy(), rtol=1e-12, atol=1e-14, err_msg=k)
    # the optimizer's state is torch's state
    for tp, k in zip(tparams.values(), params):
        tstate = topt.state[tp]
        assert float(tstate["step"]) == opt.step_count == 60
        for key in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if opt.amsgrad else ()):
            np.testing.assert_allclose(opt.state_dict()[f"{key}/{k}"], tstate[key].numpy(),
                                       rtol=1e-12, atol=1e-300, err_msg=f"{key}/{k}")


@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_no_decay_on_bn_and_bias_matches_torch_groups(rng, cls):
    torch = pytest.importorskip("torch", reason="torch is not installed: the NumPy reference test still runs")
    bn = nn.BatchNorm1D(4, dtype=np.float64)
    params, grads = make_params(rng)
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    opt = cls(named(params, grads, bn), lr=0.05, weight_decay=0.1, decay_bn_and_bias=False)
    decayed = ["0.weight", "2.weight"]  # "0.bias" is a bias, "1.*" belong to the BatchNorm layer
    topt = getattr(torch.optim, cls.__name__)([
        {"params": [tparams[k] for k in decayed], "weight_decay": 0.1},
        {"params": [tparams[k] for k in params if k not in decayed], "weight_decay": 0.0}],
        lr=0.05, foreach=False)
    for gs in gradient_sequence(rng, 8):
        for k, g in gs.items():
            grads[k][...] = g
            tparams[k].grad = torch.tensor(g)
        opt.step()
        topt.step()
    for k in params:
        np.testing.assert_allclose(params[k], tparams[k].detach().numpy(), rtol=1e-12, atol=1e-14, err_msg=k)


@pytest.mark.parametrize("cls,cfg", CONFIGS, ids=IDS)
def test_matches_numpy_reference_float64(rng, cls, cfg):
    params, grads = make_params(rng)
    start = {k: v.copy() for k, v in params.items()}
    opt = cls(named(params, grads), **cfg)
    seq = gradient_sequence(rng, 40)
    run_cybn(opt, grads, seq)
    for k in params:
        want = reference_adam(start[k], [gs[k] for gs in seq], lr_at, opt.betas, opt.eps, opt.weight_decay,
                              opt.amsgrad, decoupled=cls is AdamW)
        np.testing.assert_allclose(params[k], want, rtol=1e-12, atol=1e-14, err_msg=k)


@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_float32_against_float64_reference(rng, cls):
    params, grads = make_params(rng, np.float32)
    start = {k: v.copy() for k, v in params.items()}
    opt = cls(named(params, grads), weight_decay=0.05, amsgrad=True)
    seq = gradient_sequence(rng, 10)
    # The gradients float32 can hold (1e-20 ones underflow in g * g: a float64 reference differs there).
    for gs in seq:
        gs["2.weight"] *= 1e20
    seq = [{k: g.astype(np.float32) for k, g in gs.items()} for gs in seq]
    run_cybn(opt, grads, seq)
    for k in params:
        assert params[k].dtype == np.float32
        want = reference_adam(start[k], [gs[k] for gs in seq], lr_at, opt.betas, opt.eps, opt.weight_decay,
                              True, decoupled=cls is AdamW)
        # Each step moves p by <= ~lr with a few float32 roundings (relative 6e-8 each) in the update
        # and one in p itself; 10 steps stay well inside these bounds.
        np.testing.assert_allclose(params[k], want, rtol=2e-6, atol=10 * 1e-2 * 1e-5, err_msg=k)


def test_adam_and_adamw_decay_differently(rng):
    params, grads = make_params(rng)
    p2, g2 = {k: v.copy() for k, v in params.items()}, {k: v.copy() for k, v in grads.items()}
    a, w = Adam(named(params, grads), weight_decay=0.1), AdamW(named(p2, g2), weight_decay=0.1)
    seq = gradient_sequence(rng, 3)
    run_cybn(a, grads, seq)
    run_cybn(w, g2, seq)
    assert not np.allclose(params["0.weight"], p2["0.weight"], rtol=1e-6)


def test_decoupled_decay_with_zero_gradient_and_exemptions():
    # With g = 0 the Adam step is 0 / eps = 0, so AdamW only shrinks the decayed parameters.
    model = nn.Sequential(nn.Linear(3, 2, dtype=np.float64, rng=0), nn.BatchNorm1D(2, dtype=np.float64))
    before = weights(model)
    opt = AdamW(model, lr=0.1, weight_decay=0.3, decay_bn_and_bias=False)
    opt.step()
    after = weights(model)
    np.testing.assert_array_equal(after["0.weight"], before["0.weight"] * (1 - 0.1 * 0.3))
    for k in ("0.bias", "1.weight", "1.bias"):
        np.testing.assert_array_equal(after[k], before[k])


def test_in_place_without_per_step_allocation(rng):
    n = 200_000
    p, g = rng.standard_normal(n), np.zeros(n)
    opt = AdamW([("w", p, g)], weight_decay=0.1, amsgrad=True)
    g[...] = rng.standard_normal(n)
    opt.step()  # the work arrays are made once, at the first step
    buffers = [id(b) for b in (*opt._scratch.values(), *(b for d in opt._moments.values() for b in d.values()))]
    tracemalloc.start()  # numpy reports its data allocations to tracemalloc
    try:
        opt.step()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < p.nbytes / 20, f"a step allocated {peak} bytes for a {p.nbytes}-byte parameter"
    assert [id(b) for b in (*opt._scratch.values(), *(b for d in opt._moments.values() for b in d.values()))] \
        == buffers


@pytest.mark.parametrize("cls,cfg", [(Adam, dict(amsgrad=True, weight_decay=1e-3)), (AdamW, {})],
                         ids=["Adam-amsgrad", "AdamW"])
def test_state_dict_resume_is_bit_exact(rng, tmp_path, cls, cfg):
    start, _ = make_params(np.random.default_rng(1))
    seq = gradient_sequence(rng, 10)

    def fresh():
        params = {k: v.copy() for k, v in start.items()}
        grads = {k: np.zeros_like(v) for k, v in params.items()}
        return params, grads, cls(named(params, grads), **cfg)

    full_p, full_g, full_opt = fresh()
    run_cybn(full_opt, full_g, seq)

    p, g, opt = fresh()
    run_cybn(opt, g, seq[:4])
    state = opt.state_dict()
    assert state["step"] == 4 and state["step"].dtype == np.int64
    state["exp_avg/0.weight"][...] = 7  # a copy: the optimizer keeps its own
    assert not (opt.state_dict()["exp_avg/0.weight"] == 7).any()
    save_checkpoint(tmp_path / "ckpt.npz", {**{f"model/{k}": v for k, v in p.items()},
                                            **{f"optim/{k}": v for k, v in opt.state_dict().items()}}, {})
    arrays, _ = load_checkpoint(tmp_path / "ckpt.npz")

    p2, g2, opt2 = fresh()
    for k in p2:
        p2[k][...] = arrays[f"model/{k}"]
    opt2.load_state_dict({k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")})
    assert opt2.step_count == 4
    run_cybn(opt2, g2, seq[4:], first_step=4)
    for k in full_p:
        np.testing.assert_array_equal(p2[k], full_p[k], err_msg=k)


@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_trainer_resume_is_bit_identical(tmp_path, cls):
    def trainer(out_dir=None, seed=0):
        model = toy_model(seed)
        opt = cls(model, lr=3e-3, weight_decay=1e-3, amsgrad=cls is Adam)
        return Trainer(model, nn.SoftmaxCrossEntropy(), opt, progress=False, out_dir=out_dir, checkpoint_every=1)

    full = trainer()
    full.fit(make_loader(), epochs=2)
    first = trainer(out_dir=tmp_path)
    first.fit(make_loader(), epochs=2, max_steps=7)
    resumed = trainer(out_dir=tmp_path, seed=99)  # everything must come from the checkpoint
    resumed.fit(make_loader(seed=5), epochs=2, resume=True)
    assert resumed.step == full.step == 20 and resumed.optimizer.step_count == 20
    assert_same_weights(weights(resumed.model), weights(full.model))
    assert full.history[-1]["train_loss"] < math.log(4)  # it learns


def test_load_state_dict_refuses_mismatches(rng):
    params, grads = make_params(rng)
    opt = Adam(named(params, grads), amsgrad=True)
    run_cybn(opt, grads, gradient_sequence(rng, 2))
    good = opt.state_dict()
    plain = Adam(named(*make_params(rng)))
    with pytest.raises(ValueError, match="error loading Adam state: unexpected.*max_exp_avg_sq/0.weight"):
        plain.load_state_dict(good)
    with pytest.raises(ValueError, match="missing.*max_exp_avg_sq.*amsgrad=False"):
        opt.load_state_dict(plain.state_dict())
    with pytest.raises(ValueError, match="unexpected \\['0.weight'\\]"):
        opt.load_state_dict({**good, "0.weight": good["exp_avg/0.weight"]})  # an SGD-style entry
    with pytest.raises(TypeError, match="mapping"):
        opt.load_state_dict([("step", 1)])
    with pytest.raises(ValueError, match="exp_avg/0.bias.*shape \\(5,\\)"):
        opt.load_state_dict({**good, "exp_avg/0.bias": np.zeros(5)})
    with pytest.raises(TypeError, match="exp_avg/0.bias.*dtype float32"):
        opt.load_state_dict({**good, "exp_avg/0.bias": good["exp_avg/0.bias"].astype(np.float32)})
    for step in (np.array(-1), np.array(2.0), np.array([2])):
        with pytest.raises(ValueError, match="'step'"):
            opt.load_state_dict({**good, "step": step})
    state_before = opt.state_dict()
    with pytest.raises(ValueError):
        opt.load_state_dict({**good, "step": np.array(9), "exp_avg/2.weight": np.zeros(3)})
    after = opt.state_dict()  # a refused state changes nothing
    assert after.keys() == state_before.keys()
    for k in after:
        np.testing.assert_array_equal(after[k], state_before[k])


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(betas=(1.0, 0.999)), ValueError, r"betas\[0\] must be a finite number in \[0, 1\), got 1.0"),
    (dict(betas=(0.9, -0.1)), ValueError, r"betas\[1\]"),
    (dict(betas=(0.9, float("nan"))), ValueError, r"betas\[1\]"),
    (dict(betas=("0.9", 0.999)), TypeError, r"betas\[0\]"),
    (dict(betas=0.9), TypeError, "betas must be a pair"),
    (dict(betas=(0.9,)), ValueError, "betas must be a pair.*1 values"),
    (dict(eps=-1e-8), ValueError, "eps"),
    (dict(eps=float("inf")), ValueError, "eps"),
    (dict(eps=None), TypeError, "eps"),
    (dict(lr=-1e-3), ValueError, "lr"),
    (dict(lr="1e-3"), TypeError, "lr"),
    (dict(weight_decay=-0.1), ValueError, "weight_decay"),
    (dict(weight_decay=True), TypeError, "weight_decay"),
    (dict(amsgrad="yes"), TypeError, "amsgrad"),
])
@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_bad_arguments(rng, cls, kwargs, exc, match):
    params, grads = make_params(rng)
    with pytest.raises(exc, match=match):
        cls(named(params, grads), **kwargs)


def test_defaults_repr_and_empty():
    model = nn.Sequential(nn.Linear(3, 2, dtype=np.float64, rng=0))
    a, w = Adam(model), AdamW(model)
    assert (a.lr, a.betas, a.eps, a.weight_decay, a.amsgrad) == (1e-3, (0.9, 0.999), 1e-8, 0.0, False)
    assert w.weight_decay == 1e-2  # PyTorch's AdamW default
    assert repr(w) == ("AdamW(lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01, amsgrad=False, "
                       "decay_bn_and_bias=True)")
    assert a.param_names == ["0.weight", "0.bias"]
    with pytest.raises(ValueError, match="Adam got an empty parameter list"):
        Adam([])
