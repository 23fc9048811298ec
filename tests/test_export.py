"""Export: ONNX graphs accepted by onnx.checker and matched by ONNX Runtime; state-dict files and
torch.nn.Sequential twins that reproduce cybn's eval outputs."""
import sys

import numpy as np
import pytest

import cybn
from cybn import nn
from cybn.export import ONNX_OPSET, to_onnx, to_state_dict_file, to_torch

from inference_models import BN_PLACEMENTS, cnn7_case, count_bn, odd_cases, rel_err

# float32 against another runtime: different summation orders (im2col/Winograd vs MLAS/oneDNN)
# give ~1e-7 per product; 1e-5 of the output scale still catches a wrong pad, axis or epsilon.
RTOL = 1e-5


def _onnx_and_ort():
    onnx = pytest.importorskip("onnx", reason="ONNX export tests need onnx (pip install \"cybn[onnx]\")")
    ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")
    return onnx, ort


def _run_ort(ort, path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def _models(rng):
    """(name, eval model, input): cnn7 in every BN placement and the odd models, each unfused
    and fused, float32."""
    cases = [(f"cnn7_{bn}", *cnn7_case(bn, np.float32, rng, batch=3)) for bn in BN_PLACEMENTS]
    cases += [(name, m, x) for name, (m, x, _) in odd_cases(np.float32, rng).items()]
    for name, model, x in cases:
        yield name, model, x
        yield name + "_fused", cybn.fuse_batchnorm(model), x


def test_onnx_checker_and_runtime_match_cybn(tmp_path, rng):
    onnx, ort = _onnx_and_ort()
    for name, model, x in _models(rng):
        path = tmp_path / f"{name}.onnx"
        proto = to_onnx(model, path)
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        assert proto.opset_import[0].version == ONNX_OPSET
        ops = {n.op_type for n in proto.graph.node}
        assert "Dropout" not in ops
        assert ("BatchNormalization" in ops) == (count_bn(model) > 0), name
        ref = model.infer(x)
        assert rel_err(_run_ort(ort, path, x), ref) <= RTOL, name
        assert rel_err(_run_ort(ort, path, x[:1]), ref[:1]) <= RTOL, name  # symbolic batch


def test_onnx_static_input_shape_and_opsets(tmp_path, rng):
    onnx, ort = _onnx_and_ort()
    model, x = cnn7_case("all", np.float32, rng, batch=2)
    for opset in (14, ONNX_OPSET, onnx.defs.onnx_opset_version()):
        proto = to_onnx(model, tmp_path / "m.onnx", input_shape=(3, 32, 32), opset=opset)
        dims = [d.dim_value or d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
        assert dims == ["N", 3, 32, 32]
        out = [d.dim_value or d.dim_param for d in proto.graph.output[0].type.tensor_type.shape.dim]
        assert out == ["N", 10]
        assert rel_err(_run_ort(ort, tmp_path / "m.onnx", x), model.infer(x)) <= RTOL
    with pytest.raises(ValueError, match=r"opset must be between 14 and"):
        to_onnx(model, tmp_path / "m.onnx", opset=12)
    with pytest.raises(TypeError, match="opset must be an int"):
        to_onnx(model, tmp_path / "m.onnx", opset="17")


def test_onnx_metadata(tmp_path, rng):
    onnx, ort = _onnx_and_ort()
    model, _ = cnn7_case("none", np.float32, rng, batch=2)
    to_onnx(model, tmp_path / "m.onnx", metadata={"mean": [0.5, 0.4, 0.3], "classes": "a,b"})
    meta = ort.InferenceSession(str(tmp_path / "m.onnx")).get_modelmeta().custom_metadata_map
    assert meta == {"mean": "[0.5, 0.4, 0.3]", "classes": "a,b"}


def test_onnx_float64_graph(tmp_path, rng):
    onnx, _ = _onnx_and_ort()
    model, _ = cnn7_case("all", np.float64, rng, batch=2)
    proto = to_onnx(model, tmp_path / "m.onnx")
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    assert all(t.data_type == onnx.TensorProto.DOUBLE for t in proto.graph.initializer)


def test_onnx_input_shape_errors(tmp_path, rng):
    _onnx_and_ort()
    model, _ = cnn7_case("none", np.float32, rng, batch=2)
    with pytest.raises(ValueError, match=r"input_shape \(3, 30, 32\).*Gemm.*2048"):
        to_onnx(model, tmp_path / "m.onnx", input_shape=(3, 30, 32))
    with pytest.raises(ValueError, match="without the batch axis"):
        to_onnx(model, tmp_path / "m.onnx", input_shape=(1, 3, 32, 32))
    with pytest.raises(ValueError, match="positive ints"):
        to_onnx(model, tmp_path / "m.onnx", input_shape=(3, 0, 32))
    with pytest.raises(ValueError, match="input_shape is needed"):
        to_onnx(nn.Sequential(nn.ReLU()), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()  # nothing written on a refusal


def test_empty_nested_sequential_is_the_identity(tmp_path, rng):
    onnx, ort = _onnx_and_ort()
    torch = pytest.importorskip("torch", reason="needs PyTorch")
    model = nn.Sequential(nn.Linear(3, 2, rng=rng), nn.Sequential(), nn.ReLU()).eval()
    x = rng.standard_normal((4, 3)).astype(np.float32)
    to_onnx(model, tmp_path / "m.onnx")
    assert rel_err(_run_ort(ort, tmp_path / "m.onnx", x), model.infer(x)) <= RTOL
    with torch.no_grad():
        assert rel_err(to_torch(model)(torch.from_numpy(x)).numpy(), model.infer(x)) <= RTOL


def test_unknown_layer_is_refused_naming_it(tmp_path, rng):
    class Scale(nn.Module):
        def forward(self, x):
            return 2 * x

    model = nn.Sequential(nn.Linear(3, 3, rng=rng), nn.Sequential(nn.ReLU(), Scale()))
    for export in (lambda: to_onnx(model, tmp_path / "m.onnx"),
                   lambda: to_state_dict_file(model, tmp_path / "m.npz")):
        with pytest.raises(ValueError, match=r"cannot export layer 1\.1 \(Scale\(\)\): Scale is not one of"):
            export()
    with pytest.raises(TypeError, match="Sequential"):
        to_onnx(nn.ReLU(), tmp_path / "m.onnx")


def test_missing_onnx_says_how_to_install(tmp_path, monkeypatch, rng):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "cybn\[onnx\]"'):
        to_onnx(nn.Sequential(nn.Linear(2, 2, rng=rng)), tmp_path / "m.onnx")


def _torch_cnn7_all(torch):
    """cnn7(bn="all") written out in torch, independently of to_torch."""
    tnn = torch.nn

    def conv(cin, cout):
        return [tnn.Conv2d(cin, cout, 3, padding=1, bias=False), tnn.BatchNorm2d(cout), tnn.ReLU()]
    return tnn.Sequential(*conv(3, 32), *conv(32, 32), tnn.MaxPool2d(2), *conv(32, 64), *conv(64, 64),
                          tnn.MaxPool2d(2), *conv(64, 128), tnn.MaxPool2d(2), tnn.Flatten(),
                          tnn.Linear(2048, 256, bias=False), tnn.BatchNorm1d(256), tnn.ReLU(),
                          tnn.Dropout(0.25), tnn.Linear(256, 10, bias=False), tnn.BatchNorm1d(10))


def _load_file(torch, path):
    with np.load(path, allow_pickle=False) as f:
        return {k: torch.from_numpy(f[k]) for k in f.files}


def test_state_dict_file_loads_into_the_matching_torch_sequential(tmp_path, rng):
    torch = pytest.importorskip("torch", reason="the torch round trip needs PyTorch")
    for name, model, x in _models(rng):
        path = tmp_path / f"{name}.npz"
        keys = to_state_dict_file(model, path)
        state = _load_file(torch, path)
        assert sorted(state) == sorted(keys)
        twin = to_torch(model)
        with torch.no_grad():  # scramble the twin, so only the file can restore it
            for t in list(twin.parameters()) + [b for b in twin.buffers() if b.is_floating_point()]:
                t.uniform_(0.5, 1.0)
        twin.load_state_dict(state, strict=True)
        with torch.no_grad():
            y = twin.eval()(torch.from_numpy(x)).numpy()
        assert rel_err(y, model.infer(x)) <= RTOL, name


def test_state_dict_file_fits_a_hand_written_torch_cnn7(tmp_path, rng):
    torch = pytest.importorskip("torch", reason="the torch round trip needs PyTorch")
    model, x = cnn7_case("all", np.float32, rng, batch=3)
    to_state_dict_file(model, tmp_path / "cnn7.npz")
    net = _torch_cnn7_all(torch)
    net.load_state_dict(_load_file(torch, tmp_path / "cnn7.npz"), strict=True)
    with torch.no_grad():
        y = net.eval()(torch.from_numpy(x)).numpy()
    assert rel_err(y, model.infer(x)) <= RTOL


def test_to_torch_float64(rng):
    torch = pytest.importorskip("torch", reason="needs PyTorch")
    model, x = cnn7_case("all", np.float64, rng, batch=2)
    twin = to_torch(model)
    with torch.no_grad():
        y = twin(torch.from_numpy(x)).numpy()
    assert y.dtype == np.float64 and rel_err(y, model.infer(x)) <= 1e-12
