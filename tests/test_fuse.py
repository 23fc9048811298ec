"""fuse_batchnorm: folded BN gives the eval model's outputs; what cannot be folded stays."""
import numpy as np
import pytest

import cybn
from cybn import nn

from inference_models import BN_PLACEMENTS, cnn7_case, count_bn, odd_cases, rel_err

# float64: the fold reorders a handful of roundings per output (W*s then the sum, instead of the
# sum then *s), ~1e-16 each relative to the output scale; float32 the same at ~6e-8, summed over
# up to 1152 products per output and 7 layers: 1e-5 leaves a wide margin and still fails on any
# wrong formula (a missing eps or mean shifts outputs by >= 1e-3).
TOL = {np.float64: 1e-12, np.float32: 1e-5}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("bn", BN_PLACEMENTS)
def test_cnn7_fused_equals_eval(bn, dtype, rng):
    model, x = cnn7_case(bn, dtype, rng)
    before = model.state_dict()
    fused = cybn.fuse_batchnorm(model)
    assert count_bn(fused) == 0
    assert not fused.training and all(not m.training for _, m in fused.named_modules())
    ref = model.forward(x)
    for batch in (x, x[:1]):
        y = fused.forward(batch)
        assert y.dtype == dtype
        assert rel_err(y, ref[:len(batch)]) <= TOL[dtype]
    # the original is untouched: same layers, same parameters and statistics
    assert count_bn(model) == {"all": 7, "last": 1, "none": 0}[bn]
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_odd_models_fused_equal_eval(dtype, rng):
    for name, (model, x, left) in odd_cases(dtype, rng).items():
        fused = cybn.fuse_batchnorm(model)
        assert count_bn(fused) == left, name
        ref = model.forward(x)
        assert rel_err(fused.forward(x), ref) <= TOL[dtype], name
        assert rel_err(fused.forward(x[:1]), ref[:1]) <= TOL[dtype], name


def test_fold_formula_on_one_layer(rng):
    """The folded weight and bias are exactly W*s and (b - mean)*s + beta (float64 maths)."""
    conv = nn.Conv2D(2, 3, 3, dtype=np.float64, rng=rng)
    bn = nn.BatchNorm2D(3, eps=0.5, dtype=np.float64)
    bn.params["weight"][:] = [2.0, -1.0, 0.5]
    bn.params["bias"][:] = [0.1, 0.2, 0.3]
    bn.buffers["running_mean"][:] = [1.0, -2.0, 3.0]
    bn.buffers["running_var"][:] = [1.5, 3.5, 0.5]
    fused = cybn.fuse_batchnorm(nn.Sequential(conv, bn).eval())
    s = bn.params["weight"] / np.sqrt(bn.running_var + 0.5)
    (layer,) = fused.layers
    np.testing.assert_allclose(layer.params["weight"], conv.params["weight"] * s[:, None, None, None], rtol=1e-15)
    np.testing.assert_allclose(layer.params["bias"], (conv.params["bias"] - bn.running_mean) * s
                               + bn.params["bias"], rtol=1e-15)
    assert layer is not conv and layer.grads["bias"].shape == (3,)


def test_no_bias_layer_gains_a_bias(rng):
    model = nn.Sequential(nn.Linear(4, 3, bias=False, rng=rng), nn.BatchNorm1D(3)).eval()
    model[1].buffers["running_mean"][:] = [1, 2, 3]
    (layer,) = cybn.fuse_batchnorm(model).layers
    assert "bias" in layer.params and "bias" not in model[0].params
    np.testing.assert_allclose(layer.params["bias"], -np.array([1, 2, 3]) / np.sqrt(1 + 1e-5), rtol=1e-6)
    assert "bias=True" in repr(layer)


def test_training_mode_refused_with_the_reason(rng):
    model, _ = cnn7_case("all", np.float32, rng, batch=2)
    model.train()
    with pytest.raises(ValueError, match=r"eval mode.*model\.eval\(\).*batch's own statistics"):
        cybn.fuse_batchnorm(model)
    model.eval()
    model[1].train()  # one BN left in training mode is refused too, and named
    with pytest.raises(ValueError, match=r"\(1\)"):
        cybn.fuse_batchnorm(model)


def test_not_a_sequential():
    with pytest.raises(TypeError, match="Sequential.*Conv2D"):
        cybn.fuse_batchnorm(nn.Conv2D(1, 1, 1))


def test_mismatched_dtype_bn_not_folded(rng):
    """A BN whose dtype differs from the layer's is left alone (forward would reject it anyway,
    but folding must not silently cast)."""
    model = nn.Sequential(nn.Linear(2, 2, rng=rng), nn.BatchNorm1D(2, dtype=np.float64)).eval()
    assert count_bn(cybn.fuse_batchnorm(model)) == 1


def test_copy_has_no_cache_and_no_hooks(rng):
    model, x = cnn7_case("all", np.float32, rng, batch=2)
    seen = []
    model.register_forward_hook(lambda i, layer, y: seen.append(i))
    model.forward(x)  # leaves caches in the original
    fused = cybn.fuse_batchnorm(model)
    assert all(m._cache is None for _, m in fused.named_modules())
    seen.clear()
    fused.forward(x)
    assert seen == []
    model.backward(np.ones((2, 10), np.float32))  # the original's caches survived the copy
