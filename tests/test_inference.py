"""Forward-only inference: infer() / inference_mode keep no activations, peak memory is one
layer's input + output (or a chunk's), outputs equal the eval forward, backward is refused."""
import threading
import tracemalloc

import numpy as np
import pytest

import cybn
from cybn import functional as F, nn

from inference_models import cnn7_case, odd_cases, rel_err


@pytest.fixture
def peak_bytes():
    """``measure(fn)``: the most bytes allocated at once while ``fn()`` ran, on top of what was
    allocated before (numpy reports its array allocations to tracemalloc); the output pool's free
    arrays are dropped first, so that what ``fn`` needs is allocated while it runs."""
    def measure(fn):
        F.release_buffers()
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1] - before
    tracemalloc.start()
    yield measure
    tracemalloc.stop()


def _deep_convnet(rng, layers=6):
    mods = []
    for _ in range(layers):
        mods += [nn.Conv2D(8, 8, 3, padding=1, dtype=np.float64, rng=rng), nn.ReLU()]
    return nn.Sequential(*mods, nn.MaxPool2D(4)).eval()


@pytest.mark.parametrize("bn", ["all", "none"])
def test_infer_equals_eval_forward(bn, rng, threads):
    model, x = cnn7_case(bn, np.float64, rng, batch=7)
    ref = model.forward(x)
    model.clear_cache()
    # whole batch, chunks that do not divide it, one image per chunk; batch 1
    per_image = 2 * 32 * 32 * 32 * 8  # conv 1's input + output bytes are below this
    for chunk_bytes in (None, 3 * per_image, 1):
        np.testing.assert_allclose(model.infer(x, chunk_bytes), ref, rtol=0, atol=1e-12 * np.abs(ref).max())
    np.testing.assert_allclose(model.infer(x[:1]), ref[:1], rtol=0, atol=1e-12 * np.abs(ref).max())


def test_infer_float32_and_odd_models(rng):
    for name, (model, x, _) in odd_cases(np.float32, rng).items():
        ref = model.forward(x)
        assert rel_err(model.infer(x, 1), ref) <= 1e-6, name


def test_infer_restores_modes_and_keeps_nothing(rng):
    model, x = cnn7_case("all", np.float32, rng, batch=3)
    model.train()
    model[1].eval()
    stats = model[1].running_mean.copy(), model[4].running_mean.copy()
    model.infer(x)
    assert model.training and not model[1].training and all(m.training for m in model.layers[2:])
    # eval mode ran: running statistics untouched
    np.testing.assert_array_equal(model[1].running_mean, stats[0])
    np.testing.assert_array_equal(model[4].running_mean, stats[1])
    for _, m in model.named_modules():
        assert m._cache is None or not isinstance(m._cache, tuple)


def test_backward_after_inference_forward_raises(rng):
    model, x = cnn7_case("all", np.float32, rng, batch=3)
    y = model.infer(x)
    with pytest.raises(RuntimeError, match=r"after an inference forward.*outside inference mode"):
        model.backward(np.ones_like(y))
    with nn.inference_mode():
        y = model.train().forward(x)  # inference_mode works in training mode too (no cache kept)
    with pytest.raises(RuntimeError, match="inference forward"):
        model.backward(np.ones_like(y))
    model.backward(np.ones_like(model.forward(x)))  # an ordinary forward trains again


@pytest.mark.parametrize("make", [lambda: nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1D(3), nn.ReLU()),
                                  lambda: nn.SyncBatchNorm1D(4),
                                  lambda: __import__("cybn.distributed").distributed.ShardedDropout(0.5, rng=0)])
def test_backward_after_inference_forward_raises_for_fused_and_sync_bn(make, rng):
    # a BN -> ReLU pair at the end of a model, SyncBatchNorm and the ranks' Dropout look at their
    # cache before popping it: without one they must still raise the inference-mode RuntimeError
    model = make().train()
    with nn.inference_mode():
        y = model.forward(rng.standard_normal((5, 4)).astype(np.float32))
    with pytest.raises(RuntimeError, match="after an inference forward"):
        model.backward(np.ones_like(y))


def test_inference_mode_nests_and_is_per_thread(rng):
    layer = nn.Linear(3, 2, rng=rng)
    x = np.ones((2, 3), np.float32)
    seen = {}

    def other_thread():
        layer_b = nn.Linear(3, 2, rng=0)
        layer_b.forward(x)
        seen["cached"] = isinstance(layer_b._cache, tuple)

    with nn.inference_mode():
        with nn.inference_mode():
            pass
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        layer.forward(x)  # still on after the inner block
        assert not isinstance(layer._cache, tuple)
    assert seen["cached"]  # the other thread was not in inference mode
    layer.forward(x)
    assert isinstance(layer._cache, tuple)


def test_peak_memory_is_one_layer_not_the_sum(rng, peak_bytes):
    """12 activations of 1 MiB: the eval forward keeps all ReLU outputs (>= 6 MiB), infer keeps
    one layer's input + output (2 MiB), and chunks bound it by their budget."""
    model = _deep_convnet(rng)
    x = rng.standard_normal((16, 8, 32, 32))
    act = x.nbytes
    model.infer(x, None)  # allocate the kernels' cached scratch buffers outside the measurement
    model.infer(x, act // 2)

    def forward():
        model.forward(x)
    eval_peak = peak_bytes(forward)
    model.clear_cache()
    whole = peak_bytes(lambda: model.infer(x, None))
    chunked = peak_bytes(lambda: model.infer(x, act // 2))
    assert eval_peak >= 6 * act
    assert whole <= 2.1 * act
    assert chunked <= 0.5 * act + act / 16 + 0.1 * act  # budget + the whole output + slack


def test_predict_uses_the_inference_path(rng):
    model, x = cnn7_case("all", np.float32, rng, batch=5)
    ref = model.forward(x).argmax(1)
    model.clear_cache()
    np.testing.assert_array_equal(model.predict(x, batch_size=2), ref)
    assert all(m._cache is None for _, m in model.named_modules())


def test_infer_bad_arguments(rng):
    model = nn.Sequential(nn.Linear(3, 2, rng=rng))
    with pytest.raises(TypeError, match="numpy.ndarray, got list"):
        model.infer([[1.0, 2.0, 3.0]])
    with pytest.raises(TypeError, match="max_chunk_bytes"):
        model.infer(np.ones((1, 3), np.float32), 1.5)
    with pytest.raises(ValueError, match="max_chunk_bytes must be >= 1"):
        model.infer(np.ones((1, 3), np.float32), 0)
    # shapes the layers reject: the layer's own message, not a chunking error
    with pytest.raises(ValueError, match="Linear expects 3 input features"):
        model.infer(np.ones((4, 5), np.float32), 8)
    assert model.training  # restored after the error


def test_module_level_infer_on_a_single_layer(rng):
    layer = nn.Conv2D(2, 3, 3, rng=rng)
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(cybn.nn.infer(layer, x), layer.forward(x))


def test_concurrent_infer_on_an_eval_model(rng):
    """An eval-mode model is not written to by infer: threads can serve it at once."""
    model, x = cnn7_case("all", np.float32, rng, batch=4)
    ref = model.infer(x)
    results = [None] * 4

    def work(i):
        results[i] = model.infer(x)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        np.testing.assert_array_equal(r, ref)
    assert not model.training
