"""A training step of the 7-layer CIFAR-10 CNN with BN everywhere: cybn vs PyTorch, side by side.

One step = forward, softmax cross-entropy, backward and an SGD (momentum, weight decay) update
on a batch of 128 32x32 images. PyTorch runs the same network (same layers, shapes, batch) in its
default NCHW layout and in channels_last. The cases and the thread counts are interleaved (each
round runs each case at each thread count, rotated), and each runs twice in a row per round: the
main table gives the second call, the step as a training loop sees it, and a second table the
first call, which follows the other cases' steps (on a VM whose idle cores are slow to come
back, that one is slower). Also measured, in the same run:
- the GEMM peak: cybn's single-threaded sgemm inside its OpenMP split (a 1024^3 product
  through ``cybn.functional.linear``) at each thread count, timed in the same rotation as the
  steps, against which the step's GFLOP/s is set: its 1 -> n thread scaling is what the host's
  cores gave pure arithmetic in those minutes, the yardstick for the step's scaling (on a VM
  whose other tenants take a core at times it falls well below n), with the share of CPU time
  the hypervisor reported stolen;
- where the time goes: each layer's forward and backward timed inside real steps (the steps of
  the different thread counts interleaved), with each layer's 1 -> n thread scaling;
- import order: the step in child processes with ``import torch`` before ``import cybn`` (cybn
  then runs on torch's OpenMP runtime) and without torch, alternated, and PyTorch's
  channels_last step in a child without cybn (in this process PyTorch runs on the OpenMP
  runtime cybn loaded, with cybn's OMP_WAIT_POLICY=PASSIVE; alone it keeps its own defaults);
- data loading + augmentation per batch (its share of the step), the epoch time these imply
  (50,000 images), and cybn's peak memory while training (in a child process).

    python benchmarks/bench_training.py [--repeats 15] [--threads 1,2] [--data PATH]
                                        [--order-rounds 4] [--no-breakdown]
"""
import argparse
import math
import os
import statistics
import subprocess
import sys
import textwrap
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from torch_cnn7 import torch_step_fn  # noqa: E402

import cybn  # noqa: E402
from cybn import functional as F  # noqa: E402
from cybn.data import DataLoader  # noqa: E402
from cybn.nn import SGD, Conv2D, Linear, SoftmaxCrossEntropy, cnn7  # noqa: E402
from cybn.nn import container as _container  # noqa: E402  (its fused ops are timed)

BATCH = 128
EPOCH_IMAGES = 50000
FLOP_PER_IMAGE = 176.6e6  # forward + backward multiply-adds x2 of cnn7, per training image


def cybn_step_fn(x, y, model=None):
    model = model if model is not None else cnn7(bn="all", init="he", seed=0)
    loss_fn = SoftmaxCrossEntropy()
    opt = SGD(model, lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step():
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward())
        opt.step()
    return step


GEMM_N = 1024


def gemm_fn():
    """An n^3 sgemm as cybn runs it (single-threaded BLAS in its OpenMP split), n = GEMM_N."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((GEMM_N, GEMM_N)).astype(np.float32)
    b = rng.standard_normal((GEMM_N, GEMM_N)).astype(np.float32)
    return lambda: F.linear(a, b)


def _layer_name(i, layer):
    w = layer.params.get("weight") if hasattr(layer, "params") else None
    if isinstance(layer, (Conv2D, Linear)):
        return f"{i} {type(layer).__name__} {w.shape[1]}->{w.shape[0]}"
    return f"{i} {type(layer).__name__}"


def _layer_flop(layer, x_shape, y_shape, needs_dx):
    """(forward, backward) multiply-adds x2 of a conv/linear layer; (0, 0) for the others."""
    w = layer.params.get("weight") if hasattr(layer, "params") else None
    if not isinstance(layer, (Conv2D, Linear)):
        return 0.0, 0.0
    per_output = int(np.prod(w.shape[1:]))  # C*kh*kw (conv) or in_features (linear)
    fwd = 2.0 * np.prod(y_shape) * per_output
    return fwd, fwd * (2 if needs_dx else 1)


class LayerTimer:
    """Wraps each layer's forward/backward (instance attributes, so Sequential's calls go through
    them) and Sequential's fused ops (BN -> ReLU, BN -> ReLU -> max-pool), and records wall
    seconds per call, per thread count, inside real training steps. A fused op's time goes to its
    BN row (named "BN+ReLU" or "BN+ReLU+pool"); the rows of its other layers then have no time of
    their own and are not printed."""

    def __init__(self, model):
        self.model = model
        self.names = [_layer_name(i, layer) for i, layer in enumerate(model.layers)]
        self.flop = [(0.0, 0.0)] * len(model.layers)
        self.times = {}  # (threads, layer index, "fwd" | "bwd") -> [seconds]
        self.threads = None
        for i, layer in enumerate(model.layers):
            layer.forward = self._wrap(i, layer, layer.forward, "fwd")
            layer.backward = self._wrap(i, layer, layer.backward, "bwd")
        index = {id(layer): i for i, layer in enumerate(model.layers)}
        for kind, name, label in (("fwd", "bn_relu_forward", "BN+ReLU"), ("bwd", "bn_relu_backward", "BN+ReLU"),
                                  ("fwd", "bn_relu_pool_forward", "BN+ReLU+pool"),
                                  ("bwd", "bn_relu_pool_backward", "BN+ReLU+pool")):
            fused = getattr(_container, name)

            def timed_op(*args, fused=fused, kind=kind, label=label):  # args: the layers, then x or dy
                i = index[id(args[0])]
                self.names[i] = f"{self.names[i].split()[0]} {label} (fused)"
                t0 = time.perf_counter()
                out = fused(*args)
                self.times.setdefault((self.threads, i, kind), []).append(time.perf_counter() - t0)
                return out
            setattr(_container, name, timed_op)

    def _wrap(self, i, layer, fn, kind):
        def timed(arg):
            t0 = time.perf_counter()
            out = fn(arg)
            self.times.setdefault((self.threads, i, kind), []).append(time.perf_counter() - t0)
            if kind == "fwd":
                self.flop[i] = _layer_flop(layer, arg.shape, out.shape, layer.needs_input_grad)
            return out
        return timed

    def median(self, threads, i, kind):
        return statistics.median(self.times[(threads, i, kind)])


def layer_breakdown(x, y, counts, steps):
    """Per-layer forward/backward medians at each thread count, the steps interleaved."""
    model = cnn7(bn="all", init="he", seed=0)
    timer = LayerTimer(model)
    step = cybn_step_fn(x, y, model)
    for n in counts:  # warm-up: scratch buffers, OpenMP teams
        timer.threads = n
        with cybn.num_threads(n):
            step()
    timer.times.clear()
    step_times = {n: [] for n in counts}
    for r in range(steps):
        for n in harness.rotated(counts, r):
            timer.threads = n
            with cybn.num_threads(n):
                t0 = time.perf_counter()
                step()
                step_times[n].append(time.perf_counter() - t0)
    return timer, {n: statistics.median(v) for n, v in step_times.items()}


def print_breakdown(timer, step_times, counts):
    lo, hi = counts[0], counts[-1]
    headers = ["layer"]
    for n in counts:
        headers += [f"fwd ms ({n}t)", f"bwd ms ({n}t)", f"share ({n}t)"]
    headers += ["conv/linear GFLOP/s fwd, bwd (%dt)" % hi]
    if hi != lo:
        headers += [f"scaling fwd {lo}->{hi}", f"scaling bwd {lo}->{hi}"]
    rows = []
    totals = {n: 0.0 for n in counts}
    for i, name in enumerate(timer.names):
        if (lo, i, "fwd") not in timer.times:  # the ReLU (and pool) of a fused op: timed with its BN
            continue
        row = [name]
        for n in counts:
            f, b = timer.median(n, i, "fwd"), timer.median(n, i, "bwd")
            totals[n] += f + b
            row += [f"{1e3 * f:.2f}", f"{1e3 * b:.2f}", f"{100 * (f + b) / step_times[n]:.1f} %"]
        ff, fb = timer.flop[i]
        row.append(f"{ff / timer.median(hi, i, 'fwd') / 1e9:.0f}, {fb / timer.median(hi, i, 'bwd') / 1e9:.0f}"
                   if ff else "")
        if hi != lo:
            row += [f"{timer.median(lo, i, k) / timer.median(hi, i, k):.2f}" for k in ("fwd", "bwd")]
        rows.append(row)
    print(harness.markdown_table(headers, rows))
    print("\nlayers' medians summed vs the median step of this section (the rest: loss, SGD "
          "update, Python): " + ", ".join(f"{n} threads {1e3 * totals[n]:.1f} of "
                                          f"{1e3 * step_times[n]:.1f} ms" for n in counts))


ORDER_CHILD = textwrap.dedent("""
    import sys, time, statistics
    import numpy as np
    if sys.argv[1] != "cybn-only":
        import torch  # (torch-first: loads torch's OpenMP runtime before cybn's extensions)
    from threadpoolctl import threadpool_info
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 128)
    if sys.argv[1] == "torch-cl-alone":  # PyTorch alone, at its own OpenMP defaults
        sys.path.insert(0, sys.argv[4])
        from torch_cnn7 import torch_step_fn
        torch.set_num_threads(int(sys.argv[2]))
        step = torch_step_fn(torch, x, y.astype(np.int64), channels_last=True)
    else:
        import cybn
        from cybn.nn import SGD, SoftmaxCrossEntropy, cnn7
        cybn.set_num_threads(int(sys.argv[2]))
        model, loss_fn = cnn7(bn="all", init="he", seed=0), SoftmaxCrossEntropy()
        opt = SGD(model, lr=0.01, momentum=0.9, weight_decay=5e-4)

        def step():
            loss_fn.forward(model.forward(x), y)
            model.backward(loss_fn.backward())
            opt.step()
    wall, cpu = [], []
    for i in range(int(sys.argv[3]) + 2):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    omp = [i["filepath"] for i in threadpool_info() if i["user_api"] == "openmp"]
    print(statistics.median(wall[2:]), statistics.median(cpu[2:]), omp[0] if omp else "?")
""")


def import_order(counts, rounds, steps, torch_alone=False):
    """Median step wall and process-CPU seconds (all threads: idle OpenMP workers that spin
    show up here) per thread count with torch imported first and without, in alternated child
    processes; also which OpenMP runtime cybn ran on. ``torch_alone``: also PyTorch's
    channels_last step in a process without cybn (at PyTorch's own OpenMP defaults)."""
    here = os.path.dirname(os.path.abspath(__file__))
    modes = ["torch-first", "cybn-only"] + (["torch-cl-alone"] if torch_alone else [])
    runs = [(n, m) for n in counts for m in modes]  # interleaved, as the main table's cases
    samples = {run: [] for run in runs}
    runtime = {}
    for r in range(rounds):
        for n, order in harness.rotated(runs, r):
            res = subprocess.run([sys.executable, "-c", ORDER_CHILD, order, str(n), str(steps), here],
                                 capture_output=True, text=True, check=True)
            wall, cpu, lib = res.stdout.split()
            samples[n, order].append((float(wall), float(cpu)))
            runtime[n, order] = lib
    return {n: {m: (statistics.median(w for w, _ in samples[n, m]),
                    statistics.median(c for _, c in samples[n, m]), runtime[n, m]) for m in modes}
            for n in counts}


def peak_memory_mb(threads, steps=20, pool=True):
    """Peak RSS of a child process that builds the data pipeline and trains cnn7 for some steps:
    VmHWM, since Linux carries ru_maxrss over exec (it would report this parent's RSS, ~1 GB with
    PyTorch loaded). ``pool=False`` turns the output pool off (``set_buffer_pool_limit(0)``)."""
    code = textwrap.dedent(f"""
        import resource, numpy as np, cybn
        from cybn.data import DataLoader
        from cybn.nn import SGD, SoftmaxCrossEntropy, cnn7
        cybn.set_num_threads({threads})
        {"" if pool else "cybn.functional.set_buffer_pool_limit(0)"}
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, ({EPOCH_IMAGES}, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, {EPOCH_IMAGES})
        loader = DataLoader(images, labels, {BATCH}, augment=True, seed=0)
        model, loss_fn = cnn7(bn="all", init="he"), SoftmaxCrossEntropy()
        opt = SGD(model, lr=0.01, momentum=0.9, weight_decay=5e-4)
        for i, (x, y) in enumerate(loader):
            loss_fn.forward(model.forward(x), y)
            model.backward(loss_fn.backward())
            opt.step()
            if i + 1 == {steps}:
                break
        try:
            with open("/proc/self/status") as f:
                print(next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024)
        except OSError:
            print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", default=None, help="comma-separated thread counts (default: 1 and all)")
    p.add_argument("--data", default=None, help="CIFAR-10 archive for the loading figure (default: random pixels)")
    p.add_argument("--order-rounds", type=int, default=4,
                   help="child-process pairs for the import-order comparison (0: skip it)")
    p.add_argument("--no-breakdown", action="store_true", help="skip the per-layer breakdown")
    args = p.parse_args()
    torch = harness.torch_or_none()
    counts = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, harness.all_threads()})

    rng = np.random.default_rng(0)
    if args.data:
        from cybn.data import load_cifar10
        d = load_cifar10(args.data)
        images, labels = d.train_images, d.train_labels
    else:
        images = rng.integers(0, 256, (EPOCH_IMAGES, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, EPOCH_IMAGES)
    loader = DataLoader(images, labels, BATCH, augment=True, seed=0)
    x, y = loader.batch(0, 0)
    batches = math.ceil(EPOCH_IMAGES / BATCH)

    print("## cnn7 (BN everywhere) training step, batch 128, float32\n")
    print(harness.header(torch))
    from threadpoolctl import threadpool_info
    for info in threadpool_info():
        if info["user_api"] == "openmp":
            print(f"- OpenMP runtime: {info['internal_api']} {info['filepath']}")
    # Every case at every thread count, interleaved in one rotation: the scaling ratios compare
    # steps timed in the same minutes (a shared host's speed drifts from minute to minute).
    cases, settings = {}, {}
    gemm = gemm_fn()
    for n in counts:
        at_n = {"cybn": cybn_step_fn(x, y), "data": lambda: loader.batch(1, 7), "gemm": gemm}
        if torch is not None:
            at_n["torch"] = torch_step_fn(torch, x, y, channels_last=False)
            at_n["torch_cl"] = torch_step_fn(torch, x, y, channels_last=True)
        for name, fn in at_n.items():
            cases[f"{name}@{n}"] = fn
            settings[f"{name}@{n}"] = lambda n=n: harness.threads(n)
    names = list(at_n)
    ticks = harness.cpu_ticks()
    second, first = harness.measure_back_to_back(cases, repeats=args.repeats, settings=settings)
    stolen = harness.steal_share(ticks, harness.cpu_ticks())
    peak = {n: 2.0 * GEMM_N ** 3 / second[f"gemm@{n}"] / 1e9 for n in counts}
    print(f"- GEMM peak ({GEMM_N}^3 sgemm as cybn runs it, single-threaded BLAS per OpenMP thread, "
          "timed in the rounds below): "
          + ", ".join(f"{peak[n]:.0f} GFLOP/s at {n} thread{'s' if n > 1 else ''}" for n in counts)
          + "".join(f"; scaling {peak[n] / peak[counts[0]]:.2f} at {n}" for n in counts[1:]))
    if stolen is not None:
        print(f"- CPU time the hypervisor reported stolen during those rounds: {100 * stolen:.1f} %")

    def at(times, n):
        return {name: times[f"{name}@{n}"] for name in names}
    rows = []
    steps = {}
    first_steps = {n: at(first, n) for n in counts}
    for n in counts:
        t = at(second, n)
        step = steps[n] = t["cybn"]
        gflops = FLOP_PER_IMAGE * BATCH / step / 1e9
        row = [n, f"{1e3 * step:.1f}", f"{steps[counts[0]] / step:.2f}", f"{1e3 * t['data']:.2f}",
               f"{100 * t['data'] / step:.1f} %", f"{batches * (step + t['data']):.1f}",
               f"{gflops:.0f}", f"{100 * gflops / peak[n]:.0f} %"]
        if torch is not None:
            row += [f"{1e3 * t['torch']:.1f}", f"{t['torch'] / step:.2f}",
                    f"{1e3 * t['torch_cl']:.1f}", f"{t['torch_cl'] / step:.2f}"]
        rows.append(row)
    headers = ["threads", "cybn step ms", f"scaling vs {counts[0]}t", "data ms", "data share",
               "cybn epoch s (est.)", "cybn GFLOP/s", "of GEMM peak"]
    if torch is not None:
        headers += ["torch NCHW ms", "ratio torch/cybn", "torch channels_last ms", "ratio cl/cybn"]
    print()
    print(harness.markdown_table(headers, rows))
    print(f"\nepoch estimate = {batches} batches x (step + data). Arithmetic floor: "
          f"{FLOP_PER_IMAGE / 1e6:.1f} MFLOP per training image.")
    for n in counts[1:]:
        relative = (steps[counts[0]] / steps[n]) / (peak[n] / peak[counts[0]])
        print(f"The step's scaling at {n} threads is {relative:.2f} of the GEMM peak's in the same "
              "rounds.")
    print("\nEach round runs every case twice in a row; the table times the second call (a "
          "training loop's steady step). The first call of each pair, right after the other "
          "cases' calls (medians, ms):\n")
    names = [k for k in ("cybn", "torch", "torch_cl") if k in first_steps[counts[0]]]
    first_rows = [[n] + [f"{1e3 * first_steps[n][k]:.1f}" for k in names]
                  + [f"{first_steps[counts[0]]['cybn'] / first_steps[n]['cybn']:.2f}"]
                  + ([f"{first_steps[n]['torch_cl'] / first_steps[n]['cybn']:.2f}"]
                     if "torch_cl" in names else []) for n in counts]
    print(harness.markdown_table(
        ["threads"] + [f"{k} first ms" for k in names] + [f"cybn scaling vs {counts[0]}t"]
        + (["ratio cl/cybn"] if "torch_cl" in names else []), first_rows))

    if not args.no_breakdown:
        print(f"\n### Per layer, timed inside real steps ({args.repeats} steps per thread count, "
              f"interleaved; medians)\n")
        print_breakdown(*layer_breakdown(x, y, counts, args.repeats), counts)

    if args.order_rounds > 0:
        print(f"\n### Import order: `import torch` before `import cybn` vs cybn alone "
              f"(child processes, {args.order_rounds} each, alternated with the thread counts; median "
              "step)\n")
        order = import_order(counts, args.order_rounds, steps=max(5, args.repeats // 2),
                             torch_alone=torch is not None)
        rows = [[n, f"{1e3 * a[0]:.1f}", f"{1e3 * t[0]:.1f}", f"{t[0] / a[0]:.2f}",
                 f"{1e3 * a[1]:.1f}", f"{1e3 * t[1]:.1f}", t[2]]
                for n, (a, t) in ((n, (o["cybn-only"], o["torch-first"])) for n, o in order.items())]
        print(harness.markdown_table(["threads", "cybn alone ms", "torch first ms",
                                      "ratio torch-first/alone", "CPU ms alone", "CPU ms torch first",
                                      "OpenMP runtime (torch first)"], rows))
        print("\n(CPU = process time of all threads per step; above the wall time x threads' "
              "useful share it is threads spinning: at 2+ threads cybn's idle-priority spinners "
              "(CYBN_IDLE_SPIN), and with torch first also torch's OpenMP runtime, initialised "
              "without cybn's OMP_WAIT_POLICY=PASSIVE default.)")
        if torch is not None:
            # In this process PyTorch runs on the OpenMP runtime cybn loaded, with cybn's wait
            # policy; alone, each runs at its own defaults.
            print(f"\n### Each alone, at its own defaults (child processes, {args.order_rounds} each, "
                  f"alternated with the above; median step)\n")
            base = order[counts[0]]["cybn-only"][0]
            rows = [[n, f"{1e3 * o['cybn-only'][0]:.1f}", f"{base / o['cybn-only'][0]:.2f}",
                     f"{1e3 * o['torch-cl-alone'][0]:.1f}",
                     f"{o['torch-cl-alone'][0] / o['cybn-only'][0]:.2f}"] for n, o in order.items()]
            print(harness.markdown_table(["threads", "cybn ms", f"cybn scaling vs {counts[0]}t",
                                          "PyTorch channels_last ms", "ratio cl/cybn"], rows))

    print(f"\ncybn peak memory while training (child process, {max(counts)} threads): "
          f"{peak_memory_mb(max(counts)):.0f} MB ({peak_memory_mb(max(counts), pool=False):.0f} MB "
          "with the output pool off)")


if __name__ == "__main__":
    main()
