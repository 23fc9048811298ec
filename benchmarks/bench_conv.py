"""conv2d forward + backward (with dx) vs PyTorch, at 1 thread and at all threads.

    python benchmarks/bench_conv.py [--batch 128] [--repeats 10] [--dtype float32] [--alternatives]

The five 3x3 / stride 1 / pad 1 layers of a small CIFAR ResNet-style stack. Per shape: the
median time of y = conv2d(x, w, b); conv2d_backward(dy, x, w) (cybn) and of torch's conv2d +
autograd backward (dx, dw, db), measured interleaved; the ratio t_torch / t_cybn; the rate of
cybn's GEMM calls (flops the GEMMs actually execute -- Winograd layers execute fewer than
im2col -- / mean per-thread seconds inside BLAS, timed by the kernel) against numpy's sgemm rate
on a 1024^3 product measured in the same run; and the share of the wall time spent in BLAS.

--alternatives adds, at 1 thread and at all threads, the algorithms measured side by side per
layer (ratios against the shipped one in the same run): cybn as shipped (Winograd F(4x4, 3x3)
for forward, dx and dW where C, F >= 16); F(4x4) with im2col dW; F(2x2) with im2col dW (the
previous design); im2col only; and the GEMMs alone of the classic whole-batch design (one numpy
matmul per product over a (K, N*Ho*Wo) im2col matrix, BLAS threaded) -- a lower bound for that
design, which would still need the unrolling, col2im and NCHW transposes.
"""
import contextlib
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness

from cybn import functional as fn
from cybn.functional import conv as fconv

# (C_in, C_out, H=W)
SHAPES = [(3, 32, 32), (32, 32, 32), (32, 64, 16), (64, 64, 16), (64, 128, 8)]


def gemm_flops(n, c, f, hw, k=3):
    """Flops of the three products (forward, dweight, dx) of one layer, im2col-equivalent."""
    return 3 * 2.0 * n * f * c * k * k * hw * hw


def executed_gemm_flops(n, c, f, hw):
    """Flops the GEMMs of one cybn forward + backward actually execute (3x3, stride 1, pad 1)."""
    im2col = 2.0 * n * f * c * 9 * hw * hw

    def wino(m):  # (m+2)^2 products per m x m output tile
        return (m + 2) ** 2 * 2.0 * n * f * c * (-(-hw // m)) ** 2

    if not fconv._use_winograd(3, 3, 1, 1, c, f, n * hw * hw):
        return 3 * im2col
    return 2 * wino(fconv._WINO_M) + (wino(4) if fconv._WINO_DW else im2col)


def cases_for(n, c, f, hw, dtype, torch, rng):
    x = rng.standard_normal((n, c, hw, hw)).astype(dtype)
    w = (rng.standard_normal((f, c, 3, 3)) / np.sqrt(9 * c)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    dy = rng.standard_normal((n, f, hw, hw)).astype(dtype)

    def run_cybn():
        fn.conv2d(x, w, b, 1, 1)
        fn.conv2d_backward(dy, x, w, 1, 1)

    cases = {"cybn": run_cybn}
    if torch is not None:
        xt = torch.from_numpy(x).requires_grad_(True)
        wt = torch.from_numpy(w).requires_grad_(True)
        bt = torch.from_numpy(b).requires_grad_(True)
        dyt = torch.from_numpy(dy)

        def run_torch():
            xt.grad = wt.grad = bt.grad = None
            torch.nn.functional.conv2d(xt, wt, bt, 1, 1).backward(dyt)

        cases["torch"] = run_torch
    return cases


def gemm_seconds(run, reps=5):
    """Median over calls of the mean per-thread seconds cybn spent inside BLAS (fwd + bwd)."""
    secs = []
    for _ in range(reps):
        run()
        secs.append(sum(fconv._gemm_seconds[k].mean() for k in ("forward", "backward", "backward_dx")))
    return float(np.median(secs))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--alternatives", action="store_true",
                    help="also time the alternative designs side by side (all threads)")
    args = ap.parse_args(argv)
    dtype = np.dtype(args.dtype)
    torch = harness.torch_or_none()
    rng = np.random.default_rng(0)
    nmax = harness.all_threads()
    thread_counts = [1] if nmax == 1 else [1, nmax]

    rows, totals = [], {}
    for nt in thread_counts:
        with harness.threads(nt):
            peak = harness.gemm_gflops(dtype)
            tc = tt = 0.0
            for c, f, hw in SHAPES:
                cases = cases_for(args.batch, c, f, hw, dtype, torch, rng)
                med = harness.measure(cases, repeats=args.repeats, warmup=2)
                gsec = gemm_seconds(cases["cybn"])
                rate = executed_gemm_flops(args.batch, c, f, hw) / gsec / 1e9
                t_c, t_t = med["cybn"], med.get("torch", float("nan"))
                tc += t_c
                tt += t_t
                rows.append([f"{c}->{f} @{hw}x{hw}", nt, t_c * 1e3, t_t * 1e3, t_t / t_c,
                             rate, 100 * rate / peak, 100 * gsec / t_c])
            totals[nt] = tc
            rows.append(["**sum of 5**", nt, tc * 1e3, tt * 1e3, tt / tc, float("nan"),
                         float("nan"), float("nan")])
            rows.append([f"(numpy sgemm 1024^3: {peak:.0f} GFLOP/s)", nt, "", "", "", "", "", ""])

    print(f"# conv2d forward + backward (dx, dw, db), batch {args.batch}, 3x3, stride 1, pad 1, "
          f"{dtype.name}\n")
    print(harness.header(torch))
    print()
    print(harness.markdown_table(
        ["layer", "threads", "cybn ms", "torch ms", "torch/cybn", "GEMM GFLOP/s",
         "% of sgemm rate", "% time in GEMM"], rows))
    if len(thread_counts) > 1:
        print(f"\nstack speed-up {nmax} threads vs 1: {totals[1] / totals[nmax]:.2f}x")
    if args.alternatives:
        alternatives(args, dtype, torch, nmax)


# name -> settings of cybn.functional.conv; the first is the shipped configuration
ALGORITHMS = {
    "shipped: F(4x4) fwd/dx/dW": {},
    "F(4x4) fwd/dx, im2col dW": {"_WINO_DW": False},
    "F(2x2) fwd/dx, im2col dW": {"_WINO_M": 2, "_WINO_DW": False},
    "im2col only": {"_WINOGRAD": False},
}


@contextlib.contextmanager
def conv_settings(settings):
    old = {k: getattr(fconv, k) for k in settings}
    for k, v in settings.items():
        setattr(fconv, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(fconv, k, v)


def alternatives(args, dtype, torch, nmax):
    rng = np.random.default_rng(1)
    names = list(ALGORITHMS) + ["whole-batch GEMMs only"]
    rows = []
    for nt in ([1] if nmax == 1 else [1, nmax]):
        with harness.threads(nt):
            for c, f, hw in SHAPES:
                run = cases_for(args.batch, c, f, hw, dtype, None, rng)["cybn"]
                cases = {}
                for name, settings in ALGORITHMS.items():
                    def case(run=run, settings=settings):
                        with conv_settings(settings):
                            run()
                    cases[name] = case
                k, p = 9 * c, args.batch * hw * hw
                w = rng.standard_normal((f, k)).astype(dtype)
                cols = rng.standard_normal((k, p)).astype(dtype)
                dy = rng.standard_normal((f, p)).astype(dtype)
                y, dw, dcols = np.empty((f, p), dtype), np.empty((f, k), dtype), np.empty((k, p), dtype)

                def batch_gemms(w=w, cols=cols, dy=dy, y=y, dw=dw, dcols=dcols):
                    np.matmul(w, cols, out=y)
                    np.matmul(dy, cols.T, out=dw)
                    np.matmul(w.T, dy, out=dcols)

                cases["whole-batch GEMMs only"] = batch_gemms
                med = harness.measure(cases, repeats=args.repeats, warmup=1)
                base = med[names[0]]
                rows.append([f"{c}->{f} @{hw}x{hw}", nt] + [
                    f"{med[m] * 1e3:.1f} ({base / med[m]:.2f}x)" if m != names[0]
                    else f"{med[m] * 1e3:.1f}" for m in names])
    print("\n## Alternatives (ms per forward + backward, interleaved medians; in brackets the "
          "shipped time / this one: < 1 means slower than shipped)\n")
    print(harness.markdown_table(["layer", "threads"] + names, rows))


if __name__ == "__main__":
    main()
