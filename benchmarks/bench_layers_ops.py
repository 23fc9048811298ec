"""Linear, ReLU and 2x2 max-pool, forward + backward: cybn vs the NumPy reference vs PyTorch.

    python benchmarks/bench_layers_ops.py               # 15 interleaved repeats, threads 1 and all
    python benchmarks/bench_layers_ops.py --quick       # smoke run (few repeats)
    python benchmarks/bench_layers_ops.py --threads 1,2 --repeats 30 --dtype float64

Shapes are those of the CIFAR CNN (batch 128): the two fully connected layers
(128, 2048) -> 256 and (128, 256) -> 10, ReLU on (128, 32, 32, 32), 2x2/stride-2 max-pool on
(128, 32, 32, 32) and (128, 64, 16, 16). One case = forward then backward (cybn.functional;
cybn.reference, plain NumPy; torch with autograd, as a PyTorch user would run it), all cases of
a row timed interleaved, median per call. Ratios > 1 mean cybn is faster.

ReLU and max-pool are memory-bound, so their rows also give GB/s of the bytes that must move
(ReLU fwd: read x, write y; bwd: read dy, y, write dx = 5 * x.nbytes; pool fwd: read x, write y
and int64 indices; bwd: read dy and indices, write dx), next to the copy bandwidth measured in
the same run at the same thread count. linear is BLAS (numpy matmul): its row gives GFLOP/s of
the three products next to numpy's sgemm/dgemm rate on a 1024^3 product.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

from cybn import functional as F  # noqa: E402
from cybn import reference as R  # noqa: E402

BATCH = 128


def linear_cases(n, fin, fout, dtype, torch, rng):
    x = rng.standard_normal((n, fin)).astype(dtype)
    w = (rng.standard_normal((fout, fin)) / np.sqrt(fin)).astype(dtype)
    b = rng.standard_normal(fout).astype(dtype)
    dy = rng.standard_normal((n, fout)).astype(dtype)

    def run(impl):
        def f():
            impl.linear(x, w, b)
            impl.linear_backward(dy, x, w)
        return f

    cases = {"cybn": run(F), "numpy": run(R)}
    if torch is not None:
        xt, wt, bt = (torch.from_numpy(a).requires_grad_(True) for a in (x, w, b))
        dyt = torch.from_numpy(dy)

        def run_torch():
            xt.grad = wt.grad = bt.grad = None
            torch.nn.functional.linear(xt, wt, bt).backward(dyt)
        cases["torch"] = run_torch
    flops = 3 * 2.0 * n * fin * fout
    return cases, {"flops": flops}


def relu_cases(shape, dtype, torch, rng):
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)

    def run(impl):
        def f():
            impl.relu_backward(dy, impl.relu(x))
        return f

    cases = {"cybn": run(F), "numpy": run(R)}
    if torch is not None:
        xt = torch.from_numpy(x).requires_grad_(True)
        dyt = torch.from_numpy(dy)

        def run_torch():
            xt.grad = None
            torch.relu(xt).backward(dyt)
        cases["torch"] = run_torch
    return cases, {"bytes": 5 * x.nbytes}


def pool_cases(shape, dtype, torch, rng):
    x = rng.standard_normal(shape).astype(dtype)
    y, idx = F.max_pool2d(x, 2)
    dy = rng.standard_normal(y.shape).astype(dtype)

    def run(impl):
        def f():
            _, i = impl.max_pool2d(x, 2)
            impl.max_pool2d_backward(dy, i, x.shape)
        return f

    cases = {"cybn": run(F), "numpy": run(R)}
    if torch is not None:
        xt = torch.from_numpy(x).requires_grad_(True)
        dyt = torch.from_numpy(dy)

        def run_torch():
            xt.grad = None
            torch.nn.functional.max_pool2d(xt, 2).backward(dyt)
        cases["torch"] = run_torch
    # fwd: read x, write y + indices; bwd: read dy + indices, write dx
    nbytes = x.nbytes + 2 * (y.nbytes + idx.nbytes) + x.nbytes
    return cases, {"bytes": nbytes}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="3 repeats, 1 warm-up (smoke run)")
    ap.add_argument("--threads", default=None, help="comma list, default '1,<all cores>'")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = ap.parse_args(argv)
    repeats, warmup = (3, 1) if args.quick else (args.repeats, 2)
    dtype = np.dtype(args.dtype)
    all_t = harness.all_threads()
    thread_list = ([int(t) for t in args.threads.split(",")] if args.threads
                   else sorted({1, all_t}))
    torch = harness.torch_or_none()
    rng = np.random.default_rng(0)

    print(f"# cybn layer ops: linear, ReLU, max-pool (forward + backward, {dtype}, batch {BATCH})\n")
    print(harness.header(torch))
    print(f"- {repeats} interleaved repeats per row (median); torch = autograd forward + backward")
    print()

    rows = []
    for nt in thread_list:
        with harness.threads(nt):
            bw = harness.memory_bandwidth_gbs(nthreads=nt)
            gemm = harness.gemm_gflops(dtype=dtype)
            specs = [
                ("linear", f"({BATCH}, 2048) -> 256", lambda: linear_cases(BATCH, 2048, 256, dtype, torch, rng)),
                ("linear", f"({BATCH}, 256) -> 10", lambda: linear_cases(BATCH, 256, 10, dtype, torch, rng)),
                ("relu", f"({BATCH}, 32, 32, 32)", lambda: relu_cases((BATCH, 32, 32, 32), dtype, torch, rng)),
                ("max_pool2d 2x2/2", f"({BATCH}, 32, 32, 32)", lambda: pool_cases((BATCH, 32, 32, 32), dtype, torch, rng)),
                ("max_pool2d 2x2/2", f"({BATCH}, 64, 16, 16)", lambda: pool_cases((BATCH, 64, 16, 16), dtype, torch, rng)),
            ]
            for op, shape, make in specs:
                cases, work = make()
                t = harness.measure(cases, repeats=repeats, warmup=warmup)
                tc, tn, tt = t["cybn"], t["numpy"], t.get("torch", float("nan"))
                if "flops" in work:
                    rate = f"{work['flops'] / tc / 1e9:.0f} GFLOP/s (gemm {gemm:.0f})"
                else:
                    rate = f"{work['bytes'] / tc / 1e9:.1f} GB/s (copy {bw:.1f})"
                rows.append([op, shape, nt, harness.fmt_time(tc), harness.fmt_time(tn),
                             harness.fmt_time(tt), tn / tc, tt / tc, rate])
                print(f"  done: {op} {shape} @ {nt} thread(s)", file=sys.stderr)

    print(harness.markdown_table(
        ["op (fwd+bwd)", "shape", "threads", "cybn", "numpy ref", "torch",
         "numpy/cybn", "torch/cybn", "cybn rate"], rows))
    if torch is None:
        print("\nPyTorch not installed: torch column is n/a.")


if __name__ == "__main__":
    main()
