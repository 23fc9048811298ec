"""The output pool (``cybn.functional._memory``) on and off: a cnn7 training step, side by side.

A step allocates the same activations and gradients as the one before; with the pool off they
come from malloc, which hands freed blocks back to the OS, so each step page-faults them in
again, as long as the process trains (measured: 7,180 faults per step over 60 steps of a fresh
process). glibc adapts its thresholds to a process's history, so each thread count runs in a
fresh child process, as a training process starts. Pool on and off alternate in blocks (the pool
needs a step to fill), ``--rounds`` times; each block warms up 2 steps, then times ``--steps``
steps and counts the page faults. Prints the median step and faults per step of each mode.

    python benchmarks/bench_memory.py [--threads 1,2] [--rounds 3] [--steps 5]
"""
import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

import cybn  # noqa: E402
from cybn.functional import _memory  # noqa: E402
from bench_training import BATCH, cybn_step_fn  # noqa: E402


def block(step, steps):
    """(median seconds per step, page faults per step) of ``steps`` steps after 2 warm-up steps."""
    for _ in range(2):
        step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps


def measure(threads, rounds, steps):
    """One table row: this process's pool-off and pool-on medians at ``threads`` threads."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, BATCH)
    limit = _memory.limit()
    seen = {"on": [], "off": []}
    with cybn.num_threads(threads):
        step = cybn_step_fn(x, y)
        for _ in range(rounds):
            for mode, cap in (("off", 0), ("on", limit)):
                _memory.set_limit(cap)
                _memory.release()
                seen[mode].append(block(step, steps))
    _memory.set_limit(limit)
    med = {m: (statistics.median(t for t, _ in v) * 1e3, statistics.median(f for _, f in v)) for m, v in seen.items()}
    return [threads, f"{med['off'][0]:.1f}", f"{med['off'][1]:.0f}", f"{med['on'][0]:.1f}", f"{med['on'][1]:.0f}",
            f"{med['off'][0] / med['on'][0]:.2f}"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print("\t".join(map(str, measure(int(args.threads), args.rounds, args.steps))))
        return
    print("## cnn7 training step, output pool on vs off (a fresh process per thread count)\n")
    print(harness.header(torch=False))
    rows = []
    for threads in args.threads.split(","):
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--threads", threads,
                              "--rounds", str(args.rounds), "--steps", str(args.steps)],
                             capture_output=True, text=True, check=True)
        rows.append(out.stdout.strip().splitlines()[-1].split("\t"))
    print(harness.markdown_table(["threads", "pool off ms", "faults/step off", "pool on ms", "faults/step on",
                                  "speed-up"], rows))


if __name__ == "__main__":
    main()
