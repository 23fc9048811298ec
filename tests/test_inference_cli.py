"""``cybn evaluate``, ``cybn predict``, ``cybn export`` and ``cybn.load_model`` on a tiny run
trained for a few steps on the mini CIFAR-10."""
import json
import os
import shutil
import sys

import numpy as np
import pytest

import cybn
from cybn import deploy
from cybn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from cybn.cli import main
from cybn.data import load_cifar10, normalize
from cybn.recipe import RunError

from inference_models import rel_err


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory):
    from conftest import SHARED_DATA
    data = SHARED_DATA / "cifar-10-mini.tar.gz"
    if not data.exists():
        pytest.skip(f"{data} not found (the shared CIFAR-10 archives are absent)")
    out = tmp_path_factory.mktemp("run") / "tiny"
    code = main(["train", "--data", str(data), "--steps", "3", "--epochs", "1", "--batch-size", "32",
                 "--train-limit", "256", "--test-limit", "64", "--dropout", "0.2", "--out", str(out),
                 "--quiet"])
    assert code == 0
    return out, data


def _cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(capsys, *args, match):
    code, out, err = _cli(capsys, *args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cybn: error: ") and "Traceback" not in err, err
    assert match in lines[0], lines[0]
    return lines[0]


def _test_set(data, n=64):
    return load_cifar10(data, limit=(0, n), quiet=True)


# ------------------------------------------------------------------------------- load_model
def test_load_model_folder_and_checkpoint(mini_run):
    out, data = mini_run
    model = cybn.load_model(out)
    assert not model.training and all(not m.training for _, m in model.named_modules())
    arrays, _ = load_checkpoint(out / "checkpoint.npz")
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, arrays[f"model/{k}"])
    same = cybn.load_model(out / "checkpoint.npz")
    x = normalize(_test_set(data, 8).test_images, *deploy.load_run(out).normalisation())
    np.testing.assert_array_equal(same.infer(x), model.infer(x))


def _copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_load_model_errors_name_the_file(mini_run, tmp_path):
    out, _ = mini_run
    with pytest.raises(RunError, match="nowhere does not exist"):
        cybn.load_model(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RunError, match="has no checkpoint.npz"):
        cybn.load_model(empty)
    # damaged checkpoint
    run = _copy_run(out, tmp_path / "damaged")
    blob = (run / "checkpoint.npz").read_bytes()
    (run / "checkpoint.npz").write_bytes(blob[:len(blob) // 2])
    with pytest.raises(CheckpointError, match=r"damaged/checkpoint.npz is unreadable"):
        cybn.load_model(run)
    # another architecture: config.json says bn=none, the checkpoint holds BN layers
    run = _copy_run(out, tmp_path / "foreign")
    config = json.loads((run / "config.json").read_text())
    config["bn"] = "none"
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"foreign/checkpoint.npz holds another architecture.*"
                                              r"bn='none'.*unexpected keys 1\.bias, 1\.num_batches_tracked"):
        cybn.load_model(run)
    # shapes: one weight of another shape
    run = _copy_run(out, tmp_path / "shapes")
    arrays, meta = load_checkpoint(run / "checkpoint.npz")
    arrays["model/0.weight"] = np.zeros((16, 3, 3, 3), np.float32)
    save_checkpoint(run / "checkpoint.npz", arrays, meta)
    with pytest.raises(CheckpointError, match=r"shapes differ: 0\.weight \(16, 3, 3, 3\) in the file, "
                                              r"\(32, 3, 3, 3\) in the model"):
        cybn.load_model(run)


# -------------------------------------------------------------------------------- evaluate
def test_evaluate_prints_figures_table_and_png(mini_run, capsys, tmp_path, monkeypatch):
    out, data = mini_run
    png = tmp_path / "cm.png"
    code, text, _ = _cli(capsys, "evaluate", out, "--data", data, "--limit", 64, "--png", png, "--quiet")
    first = text
    assert code == 0
    assert "64 test images" in text and "accuracy" in text and "BN folded" in text
    for name in cybn.data.CIFAR10_CLASSES:
        assert name in text
    with monkeypatch.context() as m:  # without matplotlib: the table only, and a note saying why
        m.setitem(sys.modules, "matplotlib", None)
        code, text, _ = _cli(capsys, "evaluate", out, "--data", data, "--limit", 64, "--png",
                             tmp_path / "no.png", "--quiet")
        assert code == 0 and "matplotlib is not installed" in text and not (tmp_path / "no.png").exists()
    pytest.importorskip("matplotlib")
    assert f"confusion matrix: {png}" in first
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_json_matches_the_model(mini_run, capsys):
    out, data = mini_run
    code, text, _ = _cli(capsys, "evaluate", out, "--data", data, "--limit", 64, "--json", "--no-png", "--quiet")
    assert code == 0
    figures = json.loads(text)
    saved = deploy.load_run(out)
    test = _test_set(data)
    logits = saved.model.infer(normalize(test.test_images, *saved.normalisation()))
    assert figures["images"] == 64
    assert figures["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == test.test_labels), abs=1 / 64 + 1e-9)
    confusion = np.array(figures["confusion"])
    assert confusion.sum() == 64 and np.trace(confusion) / 64 == pytest.approx(figures["accuracy"])
    loss, _ = cybn.functional.softmax_cross_entropy(logits, test.test_labels)
    assert figures["loss"] == pytest.approx(loss, rel=1e-5)  # fused vs unfused: float32 rounding
    code, text, _ = _cli(capsys, "evaluate", out, "--data", data, "--limit", 64, "--json", "--no-png",
                         "--no-fuse", "--quiet")
    assert json.loads(text)["loss"] == pytest.approx(loss, rel=1e-6)


def test_evaluate_errors(mini_run, capsys, tmp_path):
    out, data = mini_run
    _one_line_error(capsys, "evaluate", tmp_path / "none", "--data", data, match="does not exist")
    _one_line_error(capsys, "evaluate", out, "--data", tmp_path / "no.tar.gz", "--quiet", match="no.tar.gz")
    run = _copy_run(out, tmp_path / "norecord")
    os.unlink(run / "run.json")
    _one_line_error(capsys, "evaluate", run, "--data", data, "--quiet", match="run.json does not exist")


# --------------------------------------------------------------------------------- predict
def _write_images(tmp_path, data):
    from PIL import Image
    test = _test_set(data, 3)
    paths = [tmp_path / "a.png", tmp_path / "b.jpg", tmp_path / "c.png"]
    Image.fromarray(test.test_images[0].transpose(1, 2, 0)).save(paths[0])
    Image.fromarray(test.test_images[1].transpose(1, 2, 0)).resize((50, 40)).save(paths[1], quality=95)
    Image.fromarray(test.test_images[2].transpose(1, 2, 0)).convert("L").save(paths[2])
    return paths, test.test_images[0]


def test_predict_top_k_with_class_names(mini_run, capsys, tmp_path):
    pytest.importorskip("PIL", reason="cybn predict needs Pillow")
    out, data = mini_run
    paths, first = _write_images(tmp_path, data)
    code, text, _ = _cli(capsys, "predict", out, *paths, "--top", 2)
    assert code == 0
    lines = text.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith(f"{paths[0]}: ")
    assert "resized from 50x40 to 32x32" in lines[1] and "converted from L to RGB" in lines[2]
    assert "resized" not in lines[0]
    code, text, _ = _cli(capsys, "predict", out, *paths, "--top", 3, "--json")
    rows = json.loads(text)
    saved = deploy.load_run(out)
    probs = cybn.functional.softmax(saved.model.infer(normalize(first[None], *saved.normalisation())))[0]
    best = np.argsort(-probs)[:3]
    assert [r["class"] for r in rows[0]["top"]] == [saved.classes[i] for i in best]
    np.testing.assert_allclose([r["probability"] for r in rows[0]["top"]], probs[best], rtol=1e-4)
    assert all(r["top"][0]["probability"] >= r["top"][1]["probability"] for r in rows)


def test_predict_errors(mini_run, capsys, tmp_path):
    pytest.importorskip("PIL", reason="cybn predict needs Pillow")
    out, _ = mini_run
    _one_line_error(capsys, "predict", out, tmp_path / "missing.png", match="missing.png does not exist")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    _one_line_error(capsys, "predict", out, bad, match="bad.png could not be read as an image")


def test_predict_without_pillow(mini_run, capsys, tmp_path, monkeypatch):
    out, _ = mini_run
    monkeypatch.setitem(sys.modules, "PIL", None)
    _one_line_error(capsys, "predict", out, tmp_path / "a.png", match='pip install "cybn[image]"')


# ---------------------------------------------------------------------------------- export
def test_export_onnx_and_state_dict(mini_run, capsys, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")
    pytest.importorskip("onnx", reason="onnx is not installed")
    out, data = mini_run
    onnx_path, npz = tmp_path / "m.onnx", tmp_path / "m.npz"
    code, text, _ = _cli(capsys, "export", out, "--onnx", onnx_path, "--state-dict", npz)
    assert code == 0 and f"wrote {onnx_path}" in text and f"wrote {npz}" in text
    saved = deploy.load_run(out)
    x = normalize(_test_set(data, 5).test_images, *saved.normalisation())
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert rel_err(session.run(None, {"input": x})[0], saved.model.infer(x)) <= 1e-5
    meta = session.get_modelmeta().custom_metadata_map
    np.testing.assert_allclose(json.loads(meta["mean"]), saved.record.mean)
    assert meta["classes"].split(",") == list(saved.classes)
    fused = cybn.fuse_batchnorm(saved.model)
    with np.load(npz) as f:
        assert sorted(f.files) == sorted(fused.state_dict())
    torch = pytest.importorskip("torch", reason="the torch round trip needs PyTorch")
    net = cybn.export.to_torch(fused)
    with np.load(npz) as f:
        net.load_state_dict({k: torch.from_numpy(f[k]) for k in f.files})
    with torch.no_grad():
        assert rel_err(net(torch.from_numpy(x)).numpy(), saved.model.infer(x)) <= 1e-5
    code, _, _ = _cli(capsys, "export", out, "--state-dict", npz, "--no-fuse")
    with np.load(npz) as f:
        assert sorted(f.files) == sorted(saved.model.state_dict())


def test_export_errors(mini_run, capsys, tmp_path, monkeypatch):
    out, _ = mini_run
    with pytest.raises(SystemExit) as e:
        main(["export", str(out)])
    assert e.value.code == 2 and "nothing to export" in capsys.readouterr().err
    missing = tmp_path / "no-such-folder"
    _one_line_error(capsys, "export", out, "--state-dict", missing / "m.npz",
                    match=f"the folder {missing} does not exist")
    _one_line_error(capsys, "export", out, "--state-dict", tmp_path, match=f"cannot write {tmp_path}: it is a folder")
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "onnx", None)
        _one_line_error(capsys, "export", out, "--onnx", tmp_path / "m.onnx", match='pip install "cybn[onnx]"')
    pytest.importorskip("onnx", reason="the opset check needs onnx")
    _one_line_error(capsys, "export", out, "--onnx", tmp_path / "m.onnx", "--opset", 3, match="opset must be between")
    assert not (tmp_path / "m.onnx").exists()
