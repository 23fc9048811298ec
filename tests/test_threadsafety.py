"""Thread safety: kernels called from two Python threads at once give the single-threaded results.

Each op runs in two threads simultaneously (concurrent.futures, a barrier so they overlap), each
thread on its OWN shapes but the same dtype, so any module-level workspace buffer (cached per
name/dtype for speed) would be shared and a race would corrupt one thread's result. Every result
is compared with the one computed beforehand in a single thread: kernel-only ops (batch norm,
softmax, pooling, relu) must match bit for bit; BLAS-backed ops (conv2d, linear) must match to a
few ulps (OpenBLAS may split a GEMM differently when another call holds its pool), which is far
below anything a race on a buffer produces. Also: the BLAS thread limit conv2d sets for its call
is back to cybn's setting afterwards.

The memory soak (benchmarks/soak.py) has a slow-marked test at the bottom.
"""
import concurrent.futures
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import cybn
import cybn.functional as F
import cybn.functional.conv as fconv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ITERATIONS = 150


def _conv_inputs(rng, dtype, N, C, H, W, Fo, k, stride, padding):
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((Fo, C, k, k)).astype(dtype)
    b = rng.standard_normal(Fo).astype(dtype)
    Ho = (H + 2 * padding - k) // stride + 1
    Wo = (W + 2 * padding - k) // stride + 1
    dy = rng.standard_normal((N, Fo, Ho, Wo)).astype(dtype)
    return x, w, b, dy, stride, padding


# Two shape variants per op: thread 0 runs variant 0, thread 1 variant 1 (different sizes, same dtype).
def _workloads(dtype):
    rng = np.random.default_rng(2024)
    work = {}
    conv = [_conv_inputs(rng, dtype, 4, 3, 16, 16, 8, 3, 1, 1), _conv_inputs(rng, dtype, 3, 5, 11, 13, 6, 5, 2, 2)]
    work["conv2d"] = [lambda a=a: F.conv2d(a[0], a[1], a[2], a[4], a[5]) for a in conv]
    work["conv2d_backward"] = [lambda a=a: F.conv2d_backward(a[3], a[0], a[1], a[4], a[5]) for a in conv]
    work["conv2d_backward_no_dx"] = [lambda a=a: F.conv2d_backward(a[3], a[0], a[1], a[4], a[5], compute_dx=False)
                                     for a in conv]
    # 3x3, stride 1, >= 16 channels, >= 512 output pixels: the Winograd path (its own workspaces)
    wino = [_conv_inputs(rng, dtype, 4, 16, 12, 12, 16, 3, 1, 1), _conv_inputs(rng, dtype, 16, 17, 7, 9, 18, 3, 1, 0)]
    for a in wino:  # the shapes must keep taking the Winograd path (a[3] is dy: N, F, Ho, Wo)
        assert fconv._use_winograd(3, 3, 1, 1, a[0].shape[1], a[1].shape[0], a[3].shape[0] * a[3][0, 0].size)
    work["conv2d_winograd"] = [lambda a=a: F.conv2d(a[0], a[1], a[2], a[4], a[5]) for a in wino]
    work["conv2d_backward_winograd"] = [lambda a=a: F.conv2d_backward(a[3], a[0], a[1], a[4], a[5]) for a in wino]
    bn = []
    for shape in ((8, 16, 6, 6), (5, 12, 9, 7)):  # fused path (C >= 8, small planes)
        x = rng.standard_normal(shape).astype(dtype) * 3 + 1
        C = shape[1]
        bn.append((x, rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype),
                   rng.standard_normal(shape).astype(dtype)))
    for shape in ((64, 4, 32, 32), (3, 3, 40, 40), (256, 37)):  # unfused 4-D and 2-D paths
        x = rng.standard_normal(shape).astype(dtype) * 3 + 1
        C = shape[1]
        bn.append((x, rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype),
                   rng.standard_normal(shape).astype(dtype)))
    work["batch_norm_train"] = [lambda a=a: F.batch_norm_train(a[0], a[1], a[2]) for a in bn[:2]]
    work["batch_norm_train_unfused"] = [lambda a=a: F.batch_norm_train(a[0], a[1], a[2]) for a in bn[2:4]]
    work["batch_norm_train_2d"] = [lambda a=a: F.batch_norm_train(a[0], a[1], a[2]) for a in (bn[4], bn[0])]

    def bn_backward(a):
        _, mean, var = F.batch_norm_train(a[0], a[1], a[2])
        return lambda: F.batch_norm_backward(a[3], a[0], a[1], mean, var)

    work["batch_norm_backward"] = [bn_backward(a) for a in bn[:2]]
    work["batch_norm_backward_unfused"] = [bn_backward(a) for a in (bn[2], bn[4])]
    work["batch_norm_eval"] = [lambda a=a: F.batch_norm_eval(a[0], a[1], a[2], np.zeros(a[0].shape[1]),
                                                             np.ones(a[0].shape[1])) for a in bn[2:4]]
    sm = []
    for n, c in ((128, 10), (77, 33)):
        logits = rng.standard_normal((n, c)).astype(dtype) * 4
        sm.append((logits, rng.integers(0, c, n)))
    work["softmax_cross_entropy"] = [lambda a=a: F.softmax_cross_entropy(a[0], a[1]) for a in sm]
    work["softmax_cross_entropy_backward"] = [
        lambda a=a: F.softmax_cross_entropy_backward(F.softmax(a[0]), a[1], 0.5) for a in sm]
    work["log_softmax"] = [lambda a=a: F.log_softmax(a[0]) for a in sm]
    pool = [rng.standard_normal((8, 16, 32, 32)).astype(dtype), rng.standard_normal((3, 5, 17, 9)).astype(dtype)]
    work["max_pool2d"] = [lambda: F.max_pool2d(pool[0], 2), lambda: F.max_pool2d(pool[1], 3, 2, 1)]

    def pool_backward(x, k, s, p):
        y, idx = F.max_pool2d(x, k, s, p)
        dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
        return lambda: F.max_pool2d_backward(dy, idx, x.shape)

    work["max_pool2d_backward"] = [pool_backward(pool[0], 2, None, 0), pool_backward(pool[1], 3, 1, 1)]
    act = [rng.standard_normal((16, 32, 16, 16)).astype(dtype), rng.standard_normal((5000, 7)).astype(dtype)]
    work["relu"] = [lambda a=a: F.relu(a) for a in act]
    work["relu_backward"] = [lambda a=a: F.relu_backward(a * 2, F.relu(a)) for a in act]
    lin = []
    for n, i, o in ((64, 128, 32), (33, 70, 10)):
        lin.append((rng.standard_normal((n, i)).astype(dtype), rng.standard_normal((o, i)).astype(dtype),
                    rng.standard_normal(o).astype(dtype), rng.standard_normal((n, o)).astype(dtype)))
    work["linear"] = [lambda a=a: F.linear(a[0], a[1], a[2]) for a in lin]
    work["linear_backward"] = [lambda a=a: F.linear_backward(a[3], a[0], a[1]) for a in lin]
    return work


BLAS_OPS = {"conv2d", "conv2d_backward", "conv2d_backward_no_dx", "conv2d_winograd", "conv2d_backward_winograd",
            "linear", "linear_backward"}


def _flatten(result):
    if isinstance(result, (tuple, list)):
        out = []
        for r in result:
            out.extend(_flatten(r))
        return out
    return [result]


def _mismatch(got, want, exact):
    """None if equal, else a description of the first difference."""
    for i, (g, w) in enumerate(zip(_flatten(got), _flatten(want))):
        if g is None and w is None:
            continue
        if isinstance(w, float):
            if not (g == w or (exact is False and abs(g - w) <= 1e-12 * max(1.0, abs(w)))):
                return f"output {i}: {g!r} vs {w!r}"
            continue
        if g.shape != w.shape or g.dtype != w.dtype:
            return f"output {i}: {g.shape}/{g.dtype} vs {w.shape}/{w.dtype}"
        if exact:
            if not np.array_equal(g, w, equal_nan=True):
                bad = np.argwhere(g != w)
                return f"output {i}: {len(bad)} of {g.size} values differ, first at {tuple(bad[0])}: " \
                       f"{g[tuple(bad[0])]!r} vs {w[tuple(bad[0])]!r}"
        else:
            ulps = 64 * np.finfo(w.dtype).eps * max(1.0, float(np.abs(w).max(initial=0)))
            err = float(np.abs(g.astype(np.float64) - w).max(initial=0))
            if err > ulps:
                return f"output {i}: max abs difference {err:.3g} > {ulps:.3g} (of {g.size} values)"
    return None


def _hammer(fns, expected, exact, iterations):
    """Run fns[t] in thread t, all threads at once, `iterations` times; return mismatch reports."""
    barrier = threading.Barrier(len(fns))

    def worker(t):
        barrier.wait()
        bad = []
        for it in range(iterations):
            msg = _mismatch(fns[t](), expected[t], exact)
            if msg:
                bad.append(f"thread {t}, iteration {it}: {msg}")
        return bad

    with concurrent.futures.ThreadPoolExecutor(len(fns)) as pool:
        results = list(pool.map(worker, range(len(fns))))
    return [m for r in results for m in r]


OPS = sorted(_workloads(np.float32))


@pytest.mark.parametrize("kernel_threads", [1, 2], ids=["1kthread", "2kthreads"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("op", OPS)
def test_two_python_threads_same_op(op, dtype, kernel_threads):
    with cybn.num_threads(kernel_threads):
        fns = _workloads(dtype)[op]
        expected = [fn() for fn in fns]  # single-threaded, one after the other
        iterations = 3 * ITERATIONS if op.startswith("conv") else ITERATIONS  # small, cheap, racy: more tries
        bad = _hammer(fns, expected, op not in BLAS_OPS, iterations)
    assert not bad, (f"{op} ({np.dtype(dtype)}, {kernel_threads} kernel thread(s)) called from 2 Python threads "
                     f"at once differs from the single-threaded result in {len(bad)} of {2 * iterations} calls; "
                     f"first: {bad[:3]}")


@pytest.mark.parametrize("pair", [("conv2d", "conv2d_backward"), ("conv2d_backward", "conv2d_backward_no_dx"),
                                  ("conv2d_winograd", "conv2d_backward_winograd"), ("conv2d_winograd", "conv2d"),
                                  ("batch_norm_train", "batch_norm_backward"),
                                  ("softmax_cross_entropy", "max_pool2d_backward"), ("relu", "linear_backward")])
def test_two_python_threads_different_ops(pair):
    """Different ops at once (e.g. forward and backward of conv share the 'cols' workspace name)."""
    work = _workloads(np.float32)
    fns = [work[pair[0]][0], work[pair[1]][1]]
    expected = [fn() for fn in fns]
    bad = _hammer(fns, expected, not (set(pair) & BLAS_OPS), ITERATIONS)
    assert not bad, f"{pair[0]} and {pair[1]} run concurrently give wrong results in {len(bad)} calls: {bad[:3]}"


def test_all_ops_from_four_python_threads():
    """Every op, round-robin, from 4 Python threads at once (2 kernel threads each)."""
    work = _workloads(np.float32)
    names = OPS
    calls = [(n, v) for n in names for v in (0, 1)]
    expected = {c: work[c[0]][c[1]]() for c in calls}
    barrier = threading.Barrier(4)

    def worker(t):
        barrier.wait()
        bad = []
        for it in range(12):
            for k, c in enumerate(calls):
                if (k + t) % 4:  # each thread takes a different rotation of the calls
                    continue
                msg = _mismatch(work[c[0]][c[1]](), expected[c], c[0] not in BLAS_OPS)
                if msg:
                    bad.append(f"{c[0]}[{c[1]}] thread {t} round {it}: {msg}")
        return bad

    with cybn.num_threads(2):
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            bad = [m for r in pool.map(worker, range(4)) for m in r]
    assert not bad, f"{len(bad)} wrong results with 4 Python threads: {bad[:5]}"


def _blas_threads():
    return [d["num_threads"] for d in threadpool_info() if d.get("user_api") == "blas"]


def test_blas_thread_limit_restored_after_concurrent_conv():
    """conv2d holds BLAS at 1 thread during its call; overlapping calls must not leave it there."""
    with cybn.num_threads(2):
        before = _blas_threads()
        work = _workloads(np.float32)
        fns = [work["conv2d"][0], work["conv2d_backward"][1]]
        expected = [fn() for fn in fns]
        _hammer(fns, expected, False, 60)
        after = _blas_threads()
    assert after == before, (f"BLAS thread count(s) {before} before concurrent conv2d calls, {after} after "
                             "(threadpoolctl limits entered/exited from two threads restore each other's state)")


@pytest.mark.slow
def test_soak_memory_growth():
    """benchmarks/soak.py (fewer steps): resident memory grows < 5 % after the first 100 steps."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "soak.py"), "--steps", "800",
                           "--json"], capture_output=True, text=True, timeout=1200, cwd=os.path.join(ROOT, "tests"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\nsoak: RSS {result['rss_mib_at_warmup']:.1f} MiB at step {result['warmup_steps']}, "
          f"{result['rss_mib_end']:.1f} MiB at step {result['steps']}: growth {result['growth_percent']:+.2f} %")
    assert result["growth_percent"] < 5.0, result
