"""The recycled output arrays of ``cybn.functional`` (``functional._memory``)."""
import resource
import threading

import numpy as np
import pytest

from cybn import functional as F
from cybn.functional import _memory
from cybn.nn import SGD, SoftmaxCrossEntropy, cnn7

SHAPE = (64, 256)  # 64 KiB of float32: pooled


@pytest.fixture(autouse=True)
def empty_pool():
    """No free blocks left by earlier tests (their live ones stay, hence the byte deltas below)."""
    _memory.release()
    yield
    _memory.release()


def address(a):
    return a.__array_interface__["data"][0]


def test_a_dropped_array_is_handed_out_again():
    a = _memory.empty(SHAPE, np.float32)
    where = address(a)
    del a
    b = _memory.empty(SHAPE, np.float32)
    assert address(b) == where and b.shape == SHAPE and b.dtype == np.float32 and b.flags.c_contiguous


@pytest.mark.parametrize("keep", ["array", "view", "container"])
def test_an_array_still_referenced_is_never_handed_out(keep):
    a = _memory.empty(SHAPE, np.float32)
    a[...] = 7.0
    held = {"array": a, "view": a[3:, ::2], "container": [a]}[keep]
    del a
    b = _memory.empty(SHAPE, np.float32)
    b[...] = 0.0
    base = held if keep == "view" else (held[0] if keep == "container" else held)
    assert not np.shares_memory(b, base)
    assert np.all(base == 7.0)


def test_small_arrays_and_other_dtypes_get_their_own_memory():
    before = _memory.pooled_bytes()
    small = _memory.empty((10,), np.float32)
    assert _memory.pooled_bytes() == before and small.shape == (10,)
    a = _memory.empty(SHAPE, np.float32)
    del a
    b = _memory.empty(SHAPE, np.float64)
    assert b.dtype == np.float64 and b.shape == SHAPE


def test_the_limit_caps_the_pool_and_release_drops_free_arrays():
    live = _memory.pooled_bytes()
    previous = _memory.set_limit(0)
    try:
        a = _memory.empty(SHAPE, np.float32)  # past the cap: a plain array, not pooled
        assert _memory.pooled_bytes() == live and a.shape == SHAPE
        del a
    finally:
        assert _memory.set_limit(previous) == 0
    a = _memory.empty(SHAPE, np.float32)
    assert _memory.pooled_bytes() == live + a.nbytes
    _memory.release()
    assert _memory.pooled_bytes() == live + a.nbytes  # live: kept
    del a
    _memory.release()
    assert _memory.pooled_bytes() == live
    with pytest.raises(ValueError, match="nbytes"):
        _memory.set_limit(-1)
    with pytest.raises(TypeError, match="nbytes"):
        _memory.set_limit(1.5)


def test_live_arrays_are_distinct_across_threads():
    errors = []

    def worker(k):
        try:
            for i in range(200):
                a = _memory.empty(SHAPE, np.float32)
                a[...] = k
                b = _memory.empty(SHAPE, np.float32)
                b[...] = -k
                if not (np.all(a == k) and np.all(b == -k)):
                    errors.append((k, i))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k + 1,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_an_op_result_kept_by_the_caller_survives_later_calls():
    rng = np.random.default_rng(0)
    x1, x2 = (rng.standard_normal((8, 16, 16, 16)).astype(np.float32) for _ in range(2))
    y1 = F.relu(x1)
    expected = np.maximum(x1, 0)
    for _ in range(3):
        F.relu(x2)
    np.testing.assert_array_equal(y1, expected)


def test_training_steps_do_not_page_fault_their_buffers_in_again():
    """Steady-state steps reuse their activations and gradients: without recycling this step
    page-faults ~2,000 times (glibc hands freed blocks back to the OS), with it a handful."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 32)
    model = cnn7(bn="all", init="he", seed=0)
    loss_fn = SoftmaxCrossEntropy()
    opt = SGD(model, lr=0.01, momentum=0.9)

    def step():
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward())
        opt.step()

    for _ in range(3):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        step()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
    assert faults < 100


def test_unpooled_blocks_allocate_plain_arrays():
    live = _memory.pooled_bytes()
    with F.unpooled_outputs():
        a = _memory.empty(SHAPE, np.float32)
        with F.unpooled_outputs():
            pass
        assert _memory.pooled_bytes() == live  # still unpooled after the inner block
    b = _memory.empty(SHAPE, np.float32)
    assert _memory.pooled_bytes() == live + b.nbytes and not np.shares_memory(a, b)


def test_a_block_serves_smaller_requests_up_to_half_its_size():
    a = _memory.empty((100, 1000), np.float64)  # 800,000 bytes
    where = address(a)
    del a
    b = _memory.empty((2, 100, 1000), np.float32)  # the same bytes, another shape and dtype
    assert address(b) == where and b.shape == (2, 100, 1000) and b.dtype == np.float32
    del b
    c = _memory.empty((300, 1000), np.uint8)  # 300,000 < half the block: a block of its own
    assert address(c) != where
