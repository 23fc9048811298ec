"""Data-parallel training throughput: 1 process x T threads against R processes x T/R threads.

cnn7 (BN everywhere, float32) training steps on a global batch of 128 synthetic images: forward,
loss, backward, the fused gradient allreduce (``cybn.distributed.DataParallel``) and the SGD
update. Cases, run in interleaved rounds (each round starts every case once, in rotated order,
so load from other processes hits all of them alike):

* ``1 x T``: one process with all T threads (the baseline);
* ``R x T/R plain BN``: ``mpiexec -n R``, each rank 128/R images, per-rank BN statistics;
* ``R x T/R SyncBN``: the same with ``SyncBatchNorm`` (two small collectives per BN layer).

Per case: median step time, images/s, the allreduce's time per step (rank 0's wall time inside
``reduce_gradients``; it includes waiting for the slower rank) and a bare allreduce of the same
buffer timed after a barrier (the transfer alone). Then a projection to N machines from the
measured single-process step time, the gradient size and a STATED network bandwidth and
latency: an estimate (ring allreduce model), not a measurement.

    python benchmarks/bench_distributed.py [--ranks 2] [--threads 2] [--steps 8] [--rounds 3]
        [--bandwidth-gbit 10] [--latency-us 20] [--yield-when-idle]

Needs mpi4py and mpiexec (``pip install "cybn[mpi]"``); as root, Open MPI needs
OMPI_ALLOW_RUN_AS_ROOT=1 and OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 (set here for the child jobs).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

BATCH = 128


# ------------------------------------------------------------------------------------ worker

def worker(args):
    """One rank (or the single process): time ``args.steps`` steps after 2 warm-up steps."""
    import cybn
    from cybn import distributed as D
    from cybn.nn.sync_batchnorm import convert_sync_batchnorm

    comm = D.setup(threads=args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, BATCH)
    lo, hi = D.shard_range(BATCH, comm.rank, comm.size)
    x, y = x[lo:hi], y[lo:hi]
    model = cybn.cnn7(bn="all", init="he", seed=0)
    if args.sync_bn:
        convert_sync_batchnorm(model, comm)
    dp = D.DataParallel(model, comm)
    opt = cybn.SGD(model, lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = cybn.SoftmaxCrossEntropy()
    scale = dp.loss_scale(hi - lo, BATCH)
    steps, reduces = [], []
    for i in range(2 + args.steps):
        t0 = time.perf_counter()
        loss = loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward(scale))
        t1 = time.perf_counter()
        dp.reduce_gradients(loss * scale, 0)
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if i >= 2:
            steps.append(t3 - t0)
            reduces.append(t2 - t1)
    bare = []
    flat = dp._buckets[0][0]
    for _ in range(5):
        comm.barrier()
        t0 = time.perf_counter()
        comm.allreduce(flat)
        bare.append(time.perf_counter() - t0)
    result = {"step": statistics.median(steps), "reduce": statistics.median(reduces),
              "bare_allreduce": statistics.median(bare), "nbytes": dp.nbytes,
              "params": model.num_parameters(), "threads": cybn.get_num_threads(), "ranks": comm.size}
    everyone = comm.allgather(result)
    if comm.is_root:
        result["step"] = max(r["step"] for r in everyone)  # the job runs at the slowest rank's pace
        print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------ driver

def _run(cmd, env):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"benchmark case failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def project(step_1, nbytes, bandwidth_gbit, latency_us, machines, sync_bn_layers=7):
    """Estimated step time on N machines, each with this machine's speed (ring allreduce)."""
    bw = bandwidth_gbit * 1e9 / 8
    rows = []
    for n in machines:
        ring = 0.0 if n == 1 else 2 * (n - 1) / n * nbytes / bw + 2 * (n - 1) * latency_us * 1e-6
        # SyncBN: per BN layer an allgather (forward) and an allreduce (backward) of a few KB,
        # latency-bound: ~2 * log2(n) latencies each
        sync = 0.0 if n == 1 else sync_bn_layers * 2 * 2 * np.log2(n) * latency_us * 1e-6
        strong = step_1 / n + ring + sync  # global batch 128 split over n
        weak = step_1 + ring + sync  # 128 per machine: global batch 128 * n
        rows.append((n, strong, BATCH / strong, step_1 / n / strong, weak, BATCH * n / weak, step_1 / weak, ring))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="threads of the single process (split among ranks)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--bandwidth-gbit", type=float, default=10.0, help="stated network bandwidth (estimate)")
    p.add_argument("--latency-us", type=float, default=20.0, help="stated network latency (estimate)")
    p.add_argument("--yield-when-idle", action="store_true",
                   help="ranks waiting in MPI yield the CPU (OMPI_MCA_mpi_yield_when_idle=1): for busy machines")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sync-bn", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if mpiexec is None:
        raise SystemExit('no mpiexec: pip install "cybn[mpi]"')
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env.pop("CYBN_NUM_THREADS", None)
    if args.yield_when_idle:
        env["OMPI_MCA_mpi_yield_when_idle"] = "1"
    me = [sys.executable, os.path.abspath(__file__), "--worker", "--steps", str(args.steps)]
    per_rank = max(1, args.threads // args.ranks)
    mpi = [mpiexec, "-n", str(args.ranks), "--oversubscribe", "--bind-to", "none"]
    cases = {
        f"1 x {args.threads}": me + ["--threads", str(args.threads)],
        f"{args.ranks} x {per_rank} plain BN": mpi + me + ["--threads", str(per_rank)],
        f"{args.ranks} x {per_rank} SyncBN": mpi + me + ["--threads", str(per_rank), "--sync-bn"],
    }
    names = list(cases)
    results = {n: [] for n in names}
    for r in range(args.rounds):
        for name in harness.rotated(names, r):
            results[name].append(_run(cases[name], env))
            print(f"round {r + 1}/{args.rounds} {name}: step {results[name][-1]['step'] * 1e3:.1f} ms",
                  file=sys.stderr, flush=True)

    print(harness.header(torch=False))  # no torch baseline: its DDP is another engine
    print(f"\n## Data-parallel cnn7 training steps, global batch {BATCH} (float32, BN everywhere)\n")
    print("Wall-clock medians, the cases interleaved; the load average above says how quiet the machine was.\n")
    base = statistics.median(r["step"] for r in results[names[0]])
    rows = []
    for name in names:
        med = {k: statistics.median(r[k] for r in results[name]) for k in ("step", "reduce", "bare_allreduce")}
        share = med["reduce"] / med["step"]
        rows.append([name, f"{med['step'] * 1e3:.1f} ms", f"{BATCH / med['step']:.0f}",
                     f"{base / med['step']:.2f}x",
                     "-" if name == names[0] else f"{med['reduce'] * 1e3:.2f} ms ({100 * share:.1f} %)",
                     "-" if name == names[0] else f"{med['bare_allreduce'] * 1e3:.2f} ms"])
    print(harness.markdown_table(["case", "step", "images/s", "vs 1 process", "allreduce in step (share)",
                                  "bare allreduce"], rows))
    first = results[names[0]][0]
    print(f"\nGradient buffer: {first['params']:,} parameters, {first['nbytes'] / 1e6:.2f} MB per allreduce "
          "(+ 2 values: the step's loss and correct count).")

    print(f"\n## Projection to N machines (ESTIMATE, not measured)\n")
    print(f"Assumes each machine steps a batch of 128 in the measured single-process time "
          f"({base * 1e3:.0f} ms here), a network of {args.bandwidth_gbit:g} Gbit/s and "
          f"{args.latency_us:g} us latency, a ring allreduce (2 (N-1)/N x {first['nbytes'] / 1e6:.2f} MB) and "
          "SyncBN's small collectives (latency-bound), no overlap of communication with the backward, "
          "and compute that scales perfectly with the batch share (optimistic for small shares).\n")
    rows = [[str(n), f"{s * 1e3:.0f} ms", f"{ips:.0f}", f"{100 * eff:.0f} %", f"{w * 1e3:.0f} ms", f"{wips:.0f}",
             f"{100 * weff:.0f} %", f"{ring * 1e3:.1f} ms"]
            for n, s, ips, eff, w, wips, weff, ring in
            project(base, first["nbytes"], args.bandwidth_gbit, args.latency_us, (1, 2, 4, 8, 16, 32))]
    print(harness.markdown_table(["N", "step (batch 128 split)", "images/s", "efficiency",
                                  "step (128 per machine)", "images/s", "efficiency", "allreduce"], rows))


if __name__ == "__main__":
    main()
