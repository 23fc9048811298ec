"""A training step of the 7-layer CIFAR-10 CNN with BN everywhere: cybn vs PyTorch, side by side.

One step = forward, softmax cross-entropy, backward and an SGD (momentum, weight decay) update
on a batch of 128 32x32 images. PyTorch runs the same network (same layers, shapes, batch) in its
default NCHW layout and in channels_last. Also measured: data loading + augmentation per batch
(its share of the step), the epoch time these imply (50,000 images), and cybn's peak memory
while training (in a child process, so torch's memory does not count).

    python benchmarks/bench_training.py [--repeats 15] [--threads 1,2] [--data PATH]
"""
import argparse
import math
import os
import subprocess
import sys
import textwrap

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

from cybn.data import DataLoader  # noqa: E402
from cybn.nn import SGD, SoftmaxCrossEntropy, cnn7  # noqa: E402

BATCH = 128
EPOCH_IMAGES = 50000
FLOP_PER_IMAGE = 176.6e6  # forward + backward multiply-adds x2 of cnn7, per training image


def cybn_step_fn(x, y):
    model = cnn7(bn="all", init="he", seed=0)
    loss_fn = SoftmaxCrossEntropy()
    opt = SGD(model, lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step():
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward())
        opt.step()
    return step


def torch_model(torch):
    nn = torch.nn

    def conv(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    layers = (conv(3, 32) + conv(32, 32) + [nn.MaxPool2d(2)] + conv(32, 64) + conv(64, 64)
              + [nn.MaxPool2d(2)] + conv(64, 128) + [nn.MaxPool2d(2), nn.Flatten(),
              nn.Linear(2048, 256, bias=False), nn.BatchNorm1d(256), nn.ReLU(),
              nn.Linear(256, 10, bias=False), nn.BatchNorm1d(10)])
    return nn.Sequential(*layers)


def torch_step_fn(torch, x, y, channels_last):
    model = torch_model(torch)
    tx = torch.from_numpy(x)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        tx = tx.contiguous(memory_format=torch.channels_last)
    ty = torch.from_numpy(y)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(tx), ty).backward()
        opt.step()
    return step


def peak_memory_mb(threads, steps=20):
    """Peak RSS of a child process that builds the data pipeline and trains cnn7 for some steps."""
    code = textwrap.dedent(f"""
        import resource, numpy as np, cybn
        from cybn.data import DataLoader
        from cybn.nn import SGD, SoftmaxCrossEntropy, cnn7
        cybn.set_num_threads({threads})
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
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", default=None, help="comma-separated thread counts (default: 1 and all)")
    p.add_argument("--data", default=None, help="CIFAR-10 archive for the loading figure (default: random pixels)")
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
    rows = []
    for n in counts:
        with harness.threads(n):
            cases = {"cybn": cybn_step_fn(x, y), "data": lambda: loader.batch(1, 7)}
            if torch is not None:
                cases["torch"] = torch_step_fn(torch, x, y, channels_last=False)
                cases["torch_cl"] = torch_step_fn(torch, x, y, channels_last=True)
            t = harness.measure(cases, repeats=args.repeats, warmup=2)
        step = t["cybn"]
        row = [n, f"{1e3 * step:.1f}", f"{1e3 * t['data']:.2f}", f"{100 * t['data'] / step:.1f} %",
               f"{batches * (step + t['data']):.1f}", f"{FLOP_PER_IMAGE * BATCH / step / 1e9:.0f}"]
        if torch is not None:
            row += [f"{1e3 * t['torch']:.1f}", f"{t['torch'] / step:.2f}",
                    f"{1e3 * t['torch_cl']:.1f}", f"{t['torch_cl'] / step:.2f}"]
        rows.append(row)
    headers = ["threads", "cybn step ms", "data ms", "data share", "cybn epoch s (est.)", "cybn GFLOP/s"]
    if torch is not None:
        headers += ["torch NCHW ms", "ratio torch/cybn", "torch channels_last ms", "ratio cl/cybn"]
    print()
    print(harness.markdown_table(headers, rows))
    print(f"\nepoch estimate = {batches} batches x (step + data). Arithmetic floor: "
          f"{FLOP_PER_IMAGE / 1e6:.1f} MFLOP per training image.")
    print(f"cybn peak memory while training (child process, {max(counts)} threads): "
          f"{peak_memory_mb(max(counts)):.0f} MB")


if __name__ == "__main__":
    main()
