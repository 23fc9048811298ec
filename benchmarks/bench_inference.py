"""Eval-mode inference of the 7-layer CIFAR-10 CNN (BN everywhere): cybn vs PyTorch vs ONNX Runtime.

Side by side in one run, per thread count and batch size (1 and 500 images, float32), with the
same weights everywhere:

- cybn forward:  ``model.eval().forward(x)`` (the training forward: it keeps activations);
- cybn infer:    ``model.infer(x)``, the forward-only path, BN unfused;
- cybn fused:    ``fuse_batchnorm(model).infer(x)`` (what ``cybn evaluate`` / ``predict`` run);
- torch NCHW / torch channels_last: ``cybn.export.to_torch(model)`` under ``torch.inference_mode``;
- ONNX Runtime: the file ``cybn.export.to_onnx`` writes for the fused model, CPU provider,
  ``intra_op_num_threads`` = the thread count.

Ratios are "other / cybn fused" (> 1: cybn fused is faster). Then the peak memory of evaluating
10,000 test images in batches of 500 as ``cybn evaluate`` does (``cybn.deploy.evaluate``: uint8
images normalised batch by batch), against the bound 1.5 x the images' size + one batch's largest
activation. ``--chunks``
compares ``infer``'s chunk budgets (1-thread CPU time).

    python benchmarks/bench_inference.py [--repeats 9] [--threads 1,2] [--data PATH] [--chunks] [--cpu-time]
"""
import argparse
import math
import os
import statistics
import sys
import tempfile
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

import cybn  # noqa: E402
from cybn.data import normalize  # noqa: E402
from cybn.deploy import evaluate  # noqa: E402
from cybn.export import to_onnx, to_torch  # noqa: E402
from cybn.nn import fuse_batchnorm, cnn7  # noqa: E402

BATCHES = (1, 500)
EVAL_IMAGES = 10000
EVAL_BATCH = 500
# CIFAR-10 training-set channel statistics (pixel / 255), for normalising the test images
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def trained_like_model():
    """cnn7 (BN everywhere, He init) with non-trivial BN statistics, in eval mode."""
    model = cnn7(bn="all", init="he", seed=0)
    rng = np.random.default_rng(1)
    for _ in range(2):
        model.forward(rng.standard_normal((64, 3, 32, 32)).astype(np.float32))
    return model.eval()


def ort_session(ort, path, n):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = n
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def cases_for(model, fused, x, n, torch, ort, onnx_path):
    cases = {
        "cybn forward": lambda: model.forward(x),
        "cybn infer": lambda: model.infer(x),
        "cybn fused": lambda: fused.infer(x),
    }
    if torch is not None:
        net = to_torch(model)
        net_cl = to_torch(model).to(memory_format=torch.channels_last)
        tx = torch.from_numpy(x)
        tx_cl = tx.contiguous(memory_format=torch.channels_last)

        def run(net, t):
            with torch.inference_mode():
                return net(t)
        cases["torch NCHW"] = lambda: run(net, tx)
        cases["torch channels_last"] = lambda: run(net_cl, tx_cl)
    if ort is not None:
        session = ort_session(ort, onnx_path, n)
        cases["ONNX Runtime"] = lambda: session.run(None, {"input": x})
    return cases


def largest_activation_bytes(model, batch, itemsize=4):
    shape, largest = (batch, 3, 32, 32), 0
    for layer in model.layers:
        shape = layer.output_shape(shape)
        largest = max(largest, math.prod(shape) * itemsize)
    return largest


def _batches(images, run):
    logits = np.empty((len(images), 10), np.float32)
    for i in range(0, len(images), EVAL_BATCH):
        logits[i:i + EVAL_BATCH] = run(normalize(images[i:i + EVAL_BATCH], MEAN, STD))


def traced_peak(fn):
    """Peak bytes numpy allocated (tracemalloc) while ``fn()`` ran."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def memory_report(model, fused, images, labels):
    mb = 2 ** 20
    act = largest_activation_bytes(model, EVAL_BATCH)
    bound = 1.5 * images.nbytes + act
    runs = {"cybn evaluate (deploy.evaluate, fused, chunked infer)":
            lambda: evaluate(fused, images, labels, MEAN, STD, EVAL_BATCH),
            "fused infer, whole batches (no chunks)": lambda: _batches(images, lambda x: fused.infer(x, None)),
            "eval forward (keeps activations)": lambda: _batches(images, model.forward)}
    rows = []
    for name, run in runs.items():
        model.forward(normalize(images[:EVAL_BATCH], MEAN, STD))  # the kernels' scratch exists beforehand
        fused.infer(normalize(images[:EVAL_BATCH], MEAN, STD), None)
        model.clear_cache()
        peak = images.nbytes + traced_peak(run)
        model.clear_cache()
        rows.append([name, f"{peak / mb:.1f}", f"{peak / bound:.2f}"])
    print(f"\n## Peak memory: {len(images):,} test images in batches of {EVAL_BATCH} (tracemalloc)\n")
    print(f"images (uint8) {images.nbytes / mb:.1f} MB; largest activation of one batch "
          f"{act / mb:.1f} MB; bound 1.5 x images + activation = {bound / mb:.1f} MB\n")
    print(harness.markdown_table(["path", "peak MB (images + traced)", "peak / bound"], rows))


def cpu_medians(cases, repeats):
    """1-thread CPU-time medians of interleaved runs (rotating start), seconds per call."""
    names = list(cases)
    for name in names:
        cases[name]()
    samples = {name: [] for name in names}
    for r in range(repeats):
        for name in harness.rotated(names, r):
            t0 = time.process_time()
            cases[name]()
            samples[name].append(time.process_time() - t0)
    return {name: statistics.median(s) for name, s in samples.items()}


def chunk_report(fused, repeats):
    x = np.random.default_rng(2).standard_normal((EVAL_BATCH, 3, 32, 32)).astype(np.float32)
    budgets = {"whole batch": None, "4 MiB": 4 << 20, "8 MiB": 8 << 20, "16 MiB (default)": 16 << 20,
               "32 MiB": 32 << 20, "64 MiB": 64 << 20}
    with harness.threads(1):
        t = cpu_medians({k: (lambda b=b: fused.infer(x, b)) for k, b in budgets.items()}, repeats)
    base = t["16 MiB (default)"]
    print(f"\n## infer chunk budget, fused cnn7, batch {EVAL_BATCH}, 1 thread (CPU time medians)\n")
    print(harness.markdown_table(["max_chunk_bytes", "ms", "vs default"],
                                 [[k, f"{1e3 * v:.1f}", f"{v / base:.2f}"] for k, v in t.items()]))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", default=None, help="comma-separated thread counts (default: 1 and all)")
    p.add_argument("--data", default=None,
                   help="CIFAR-10 archive for the memory figure (default: random pixels)")
    p.add_argument("--chunks", action="store_true", help="also compare infer's chunk budgets")
    p.add_argument("--cpu-time", action="store_true",
                   help="time the 1-thread rows by CPU time (process_time) instead of wall time: "
                        "steadier on a busy machine")
    args = p.parse_args()
    torch = harness.torch_or_none()
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
        print('note: onnxruntime is not installed; its column is skipped (pip install "cybn[onnx]")',
              file=sys.stderr)
    counts = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, harness.all_threads()})

    model = trained_like_model()
    fused = fuse_batchnorm(model)
    tmp = tempfile.TemporaryDirectory()
    onnx_path = os.path.join(tmp.name, "cnn7.onnx")
    if ort is not None:
        to_onnx(fused, onnx_path)
    rng = np.random.default_rng(0)
    print("## cnn7 (BN everywhere) eval-mode inference, float32\n")
    print(harness.header(torch))
    if ort is not None:
        print(f"- ONNX Runtime {ort.__version__} (CPU provider, graph optimisations on)")
    for n in counts:
        for batch in BATCHES:
            x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
            with harness.threads(n):
                cases = cases_for(model, fused, x, n, torch, ort, onnx_path)
                repeats = args.repeats if batch > 1 else 5 * args.repeats
                if args.cpu_time and n == 1:
                    t = cpu_medians(cases, repeats)
                else:
                    t = harness.measure(cases, repeats=repeats, warmup=2)
            model.clear_cache()
            base = t["cybn fused"]
            clock = "CPU time" if args.cpu_time and n == 1 else "wall time"
            print(f"\n### {n} thread(s), batch {batch} (medians, {clock})\n")
            print(harness.markdown_table(
                ["case", "ms per batch", "images/s", "time / cybn fused"],
                [[k, f"{1e3 * v:.3f}", f"{batch / v:,.0f}", f"{v / base:.2f}"] for k, v in t.items()]))
    if args.data:
        from cybn.data import load_cifar10
        test = load_cifar10(args.data, limit=(0, EVAL_IMAGES), quiet=True)
        images, labels = test.test_images, test.test_labels
    else:
        images = rng.integers(0, 256, (EVAL_IMAGES, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, EVAL_IMAGES)
    with harness.threads(max(counts)):
        memory_report(model, fused, images, labels)
    if args.chunks:
        chunk_report(fused, args.repeats)
    tmp.cleanup()


if __name__ == "__main__":
    main()
