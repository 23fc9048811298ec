"""Kernel benchmark: batch-norm training forward+backward (alone and fused with ReLU) and
softmax cross-entropy fwd+bwd.

cybn (Cython kernels) vs the NumPy reference (cybn.reference) vs PyTorch (optional), run
interleaved (round-robin) at 1 thread and at all threads; prints Markdown tables.

    python benchmarks/bench_kernels.py                 # default: 25 repeats, threads 1 and all
    python benchmarks/bench_kernels.py --quick         # a fast smoke run (few repeats)
    python benchmarks/bench_kernels.py --threads 1,2 --repeats 50

Batch-norm byte model (the bytes that MUST move, float32): forward reads x and writes y,
backward reads dy and x and writes dx: 5 * x.nbytes per forward+backward. The kernels really
move more (the statistics pass and the dweight/dbias pass read x / dy once more, 7 * nbytes),
so "GB/s" is a lower bound on the traffic achieved, compared with the copy bandwidth
(read + write) measured in the same run at the same thread count.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import harness  # noqa: E402
from cybn import functional as F  # noqa: E402
from cybn import reference as R  # noqa: E402

BN_SHAPES = [(128, 32, 32, 32), (128, 64, 16, 16), (128, 128, 8, 8)]
CE_SHAPES = [(128, 10), (4096, 1000)]
BN_PASSES = 5  # see the module docstring


def bn_available():
    """(True, '') if cybn's batch-norm ops exist and run, else (False, reason)."""
    train = getattr(F, "batch_norm_train", None)
    back = getattr(F, "batch_norm_backward", None)
    if train is None or back is None:
        return False, "cybn.functional.batch_norm_train/batch_norm_backward not found"
    try:
        x = np.ones((2, 1, 2, 2), np.float32)
        _, mean, var = train(x, None, None)
        back(x, x, None, mean, var)
    except Exception as e:  # a half-finished module must not stop the softmax part
        return False, f"{type(e).__name__}: {e}"
    return True, ""


def bn_inputs(shape, rng):
    """x, dy, per-channel weight and bias (float32) for a BN benchmark of ``shape``."""
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    c = shape[1]
    w = (1 + 0.1 * rng.standard_normal(c)).astype(np.float32)
    b = (0.1 * rng.standard_normal(c)).astype(np.float32)
    return x, dy, c, w, b


def bn_cases(shape, torch, rng):
    x, dy, c, w, b = bn_inputs(shape, rng)

    def cybn_case():
        y, mean, var = F.batch_norm_train(x, w, b)
        return F.batch_norm_backward(dy, x, w, mean, var)

    def numpy_case():
        y, mean, var = R.batch_norm_train(x, w, b)
        return R.batch_norm_backward(dy, x, w, mean, var)

    cases = {"cybn": cybn_case, "numpy": numpy_case}
    if torch is not None:
        tf = torch.nn.functional
        wt = torch.from_numpy(w).requires_grad_()
        bt = torch.from_numpy(b).requires_grad_()
        rm, rv = torch.zeros(c), torch.ones(c)

        def torch_case(xt, dyt):
            xt = xt.detach().requires_grad_()
            y = tf.batch_norm(xt, rm, rv, wt, bt, training=True)
            return torch.autograd.grad(y, (xt, wt, bt), dyt)

        xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
        xcl = xt.contiguous(memory_format=torch.channels_last)
        dycl = dyt.contiguous(memory_format=torch.channels_last)
        cases["torch"] = lambda: torch_case(xt, dyt)
        cases["torch_cl"] = lambda: torch_case(xcl, dycl)
    return cases, x.nbytes


def ce_cases(shape, torch, rng):
    n, c = shape
    x = rng.standard_normal(shape).astype(np.float32)
    y = rng.integers(0, c, n)

    def cybn_case():
        _, p = F.softmax_cross_entropy(x, y)
        return F.softmax_cross_entropy_backward(p, y)

    def numpy_case():
        _, p = R.softmax_cross_entropy(x, y)
        return R.softmax_cross_entropy_backward(p, y)

    cases = {"cybn": cybn_case, "numpy": numpy_case}
    if torch is not None:
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def torch_case():
            a = xt.detach().requires_grad_()
            loss = torch.nn.functional.cross_entropy(a, yt)
            return torch.autograd.grad(loss, a)

        cases["torch"] = torch_case
    return cases, x.nbytes


def bn_relu_cases(shape, torch, rng):
    """BN + ReLU forward + backward: cybn fused, cybn unfused (BN, ReLU, their backwards), torch."""
    x, dy, _, w, b = bn_inputs(shape, rng)

    def fused():
        y, mean, var = F.batch_norm_relu_train(x, w, b)
        return F.batch_norm_relu_backward(dy, x, w, b, mean, var)

    def unfused():
        z, mean, var = F.batch_norm_train(x, w, b)
        y = F.relu(z)
        return F.batch_norm_backward(F.relu_backward(dy, y), x, w, mean, var)

    cases = {"fused": fused, "unfused": unfused}
    if torch is not None:
        cases["torch"] = torch_bn_then(torch, x, dy, w, b, torch.nn.functional.relu)
    return cases


def torch_bn_then(torch, x, dy, w, b, after):
    """torch's training BN forward, ``after`` on its output, and the backward to (x, w, b)."""
    tf = torch.nn.functional
    wt = torch.from_numpy(w).requires_grad_()
    bt = torch.from_numpy(b).requires_grad_()
    rm, rv = torch.zeros(len(w)), torch.ones(len(w))
    xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)

    def torch_case():
        a = xt.detach().requires_grad_()
        return torch.autograd.grad(after(tf.batch_norm(a, rm, rv, wt, bt, training=True)), (a, wt, bt), dyt)
    return torch_case


def bn_relu_pool_cases(shape, torch, rng):
    """BN + ReLU + 2x2 max-pool forward + backward: cybn's fused triple, cybn's fused BN + ReLU
    then the pool apart (what Sequential ran before the triple), torch."""
    x, _, _, w, b = bn_inputs(shape, rng)
    pooled = shape[:2] + (shape[2] // 2, shape[3] // 2)
    dy = rng.standard_normal(pooled).astype(np.float32)

    def fused():
        y, code, mean, var = F.batch_norm_relu_pool_train(x, w, b)
        return F.batch_norm_relu_pool_backward(dy, code, x, w, b, mean, var)

    def unfused():
        z, mean, var = F.batch_norm_relu_train(x, w, b)
        y, idx = F.max_pool2d(z, 2)
        return F.batch_norm_relu_backward(F.max_pool2d_backward(dy, idx, x.shape), x, w, b, mean, var)

    cases = {"fused": fused, "unfused": unfused}
    if torch is not None:
        tf = torch.nn.functional
        cases["torch"] = torch_bn_then(torch, x, dy, w, b, lambda y: tf.max_pool2d(tf.relu(y), 2))
    return cases


def fused_section(title, unfused_name, make_cases, counts, torch, rng, repeats, warmup):
    rows = []
    for shape in BN_SHAPES:
        cases = make_cases(shape, torch, rng)
        for t in counts:
            with harness.threads(t):
                med = harness.measure(cases, repeats=repeats, warmup=warmup)
            tt = med.get("torch", float("nan"))
            rows.append(["x".join(map(str, shape)), t, harness.fmt_time(med["fused"]),
                         harness.fmt_time(med["unfused"]), harness.fmt_time(tt),
                         ratio(med["unfused"], med["fused"]), ratio(tt, med["fused"])])
    print(f"## {title}\n")
    print(harness.markdown_table(["shape", "thr", "t fused", f"t {unfused_name}", "t torch",
                                  f"{unfused_name}/fused", "torch/fused"], rows))
    print()


def ratio(a, b):
    return a / b if (a == a and b == b and b > 0) else float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=25, help="timed rounds per case (median reported)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", default=None,
                    help="comma-separated thread counts (default: 1 and all available cores)")
    ap.add_argument("--quick", action="store_true", help="few repeats, for a smoke test")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup = min(args.repeats, 5), 1
    n_all = harness.all_threads()
    counts = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, n_all})

    torch = harness.torch_or_none()
    rng = np.random.default_rng(0)
    print("# cybn kernel benchmark: batch norm and softmax cross-entropy (forward + backward)\n")
    print(harness.header(torch))
    bw = {}
    for t in counts:
        with harness.threads(t):
            bw[t] = harness.memory_bandwidth_gbs(nthreads=t)
    print("- copy bandwidth (read+write, 256 MB): "
          + ", ".join(f"{bw[t]:.1f} GB/s at {t} thread{'s' if t > 1 else ''}" for t in counts))
    print(f"- method: interleaved round-robin, median of {args.repeats} rounds "
          f"(IQR% = inter-quartile range / median of cybn), float32\n")

    ok, why = bn_available()
    suites = []
    if ok:
        suites.append(("batch_norm", BN_SHAPES, bn_cases))
    else:
        print(f"**batch norm: MISSING** ({why}); only the softmax part runs.\n")
    suites.append(("softmax_xent", CE_SHAPES, ce_cases))

    cols = ["cybn", "numpy", "torch", "torch_cl"]
    for name, shapes, make in suites:
        rows = []
        for shape in shapes:
            cases, nbytes = make(shape, torch, rng)
            res = {}
            for t in counts:
                with harness.threads(t):
                    res[t] = harness.measure_stats(cases, repeats=args.repeats, warmup=args.warmup)
            for t in counts:
                st = res[t]
                med = {k: (st[k].median if k in st else float("nan")) for k in cols}
                row = [name, "x".join(map(str, shape)), t]
                row += [harness.fmt_time(med[k]) for k in cols if name == "batch_norm" or k != "torch_cl"]
                row += [f"{st['cybn'].rel_iqr * 100:.0f}%"]
                row += [ratio(med["numpy"], med["cybn"]), ratio(med["torch"], med["cybn"])]
                if name == "batch_norm":
                    row += [ratio(med["torch_cl"], med["cybn"])]
                t1 = res[counts[0]]
                row += [ratio(t1["cybn"].median, med["cybn"]),
                        ratio(t1["torch"].median, med["torch"]) if "torch" in st else float("nan")]
                if name == "batch_norm":
                    gbs = BN_PASSES * nbytes / med["cybn"] / 1e9
                    row += [f"{gbs:.1f}", f"{100 * gbs / bw[t]:.0f}%"]
                rows.append(row)
        headers = ["op", "shape", "thr", "t cybn", "t numpy", "t torch"]
        if name == "batch_norm":
            headers += ["t torch CL"]
        headers += ["IQR%", "numpy/cybn", "torch/cybn"]
        if name == "batch_norm":
            headers += ["torchCL/cybn"]
        headers += [f"cybn x vs {counts[0]}thr", f"torch x vs {counts[0]}thr"]
        if name == "batch_norm":
            headers += ["cybn GB/s", "% of copy BW"]
        title = ("Batch norm training forward + backward (NCHW; torch CL = channels_last input)"
                 if name == "batch_norm" else "Softmax cross-entropy forward + backward (mean loss)")
        print(f"## {title}\n")
        print(harness.markdown_table(headers, rows))
        print()
    if ok:
        fused_section("Batch norm + ReLU forward + backward: fused (batch_norm_relu_*) vs unfused", "unfused",
                      bn_relu_cases, counts, torch, rng, args.repeats, args.warmup)
        fused_section("Batch norm + ReLU + 2x2 max-pool forward + backward: fused (batch_norm_relu_pool_*) vs "
                      "fused BN + ReLU, then the pool", "pair+pool", bn_relu_pool_cases, counts, torch, rng,
                      args.repeats, args.warmup)
    print("Ratios > 1 mean cybn is faster. 'x vs 1thr' = time at 1 thread / time at this count.")
    if torch is None:
        print("PyTorch not installed: torch columns are n/a.")


if __name__ == "__main__":
    main()
