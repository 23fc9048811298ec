"""Memory soak: train a small conv+BN+linear model for many steps and watch resident memory.

    python benchmarks/soak.py                  # 2,000 steps, batch 32, synthetic 3x16x16 data
    python benchmarks/soak.py --steps 800 --json

Every step goes through the real stack: DataLoader (augmenting, shuffling) -> Trainer.train_step
(model forward, loss, backward, NaN guard, SGD with momentum) -> every cybn kernel (conv2d fwd/bwd,
batch norm train/backward, relu, max pool, linear, softmax cross-entropy). Every 250 steps the
model is also evaluated (eval-mode BN, predict_logits). Resident memory (RSS, /proc/self/statm)
is sampled every 100 steps after gc.collect(); the figure of merit is the growth from step 100
(warm: workspace buffers and allocator pools have reached their size) to the end. Target: < 5 %.

A leak of one batch-sized array per step (32*8*16*16 float32 = 256 KiB) would add ~500 MiB over
2,000 steps; a leak of 1 KiB per step ~2 MiB, still visible against a ~60-100 MiB process.
"""
import argparse
import gc
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402,F401  (chooses the cybn: the checkout's in-place build, else the installed one)
import numpy as np  # noqa: E402

import cybn  # noqa: E402
from cybn import nn  # noqa: E402
from cybn.data import DataLoader  # noqa: E402
from cybn.train import Trainer  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes():
    """Current resident set size (Linux /proc/self/statm; else the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def small_model(channels=3, classes=10, seed=0):
    return nn.Sequential(
        nn.Conv2D(channels, 8, 3, padding=1, bias=False, rng=seed), nn.BatchNorm2D(8), nn.ReLU(),
        nn.MaxPool2D(2),                                                     # 16x16 -> 8x8
        nn.Conv2D(8, 16, 3, padding=1, bias=False, rng=seed + 1), nn.BatchNorm2D(16), nn.ReLU(),
        nn.MaxPool2D(2),                                                     # 8x8 -> 4x4
        nn.Flatten(), nn.Linear(16 * 4 * 4, 32, rng=seed + 2), nn.BatchNorm1D(32), nn.ReLU(),
        nn.Linear(32, classes, rng=seed + 3))


def synthetic_data(n, rng, channels=3, size=16, classes=10):
    """uint8 images whose class shifts the mean of one channel band: learnable, not trivial."""
    labels = rng.integers(0, classes, n)
    images = rng.normal(128, 40, (n, channels, size, size))
    images[np.arange(n), labels % channels, :, :] += 6.0 * (labels[:, None, None] - classes / 2)
    return np.clip(images, 0, 255).astype(np.uint8), labels


def soak(steps=2000, batch=32, warmup=100, sample_every=100, threads=None, seed=0, log=print):
    if threads:
        cybn.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    images, labels = synthetic_data(2048, rng)
    test_images, test_labels = synthetic_data(256, rng)
    loader = DataLoader(images, labels, batch, augment=True, padding=2, seed=seed, drop_last=True)
    mean, std = loader.mean, loader.std
    test_loader = DataLoader(test_images, test_labels, 128, shuffle=False, mean=mean, std=std)
    model = small_model()
    trainer = Trainer(model, nn.SoftmaxCrossEntropy(), nn.SGD(model, lr=0.05, momentum=0.9, weight_decay=5e-4),
                      progress=False)
    samples = []
    step = 0
    losses = []
    t0 = time.perf_counter()
    while step < steps:
        for x, y in loader:
            loss, _ = trainer.train_step(x, y)
            losses.append(loss)
            step += 1
            if step % 250 == 0:
                acc = float(np.mean(np.concatenate([model.predict(xb) == yb for xb, yb in test_loader])))
            if step % sample_every == 0 or step == steps:
                gc.collect()
                samples.append((step, rss_bytes()))
                if step % (5 * sample_every) == 0 or step == steps:
                    log(f"step {step:5d}  loss {np.mean(losses[-100:]):.3f}  test acc {acc:.3f}  "
                        f"RSS {samples[-1][1] / 2**20:7.1f} MiB  ({time.perf_counter() - t0:.0f} s)")
            if step >= steps:
                break
    base = next((r for s, r in samples if s >= warmup), samples[0][1])
    base_step = next((s for s, r in samples if s >= warmup), samples[0][0])
    end = samples[-1][1]
    after = [r for s, r in samples if s >= warmup]
    return {"steps": steps, "batch": batch, "threads": cybn.get_num_threads(), "warmup_steps": base_step,
            "rss_mib_at_warmup": base / 2**20, "rss_mib_end": end / 2**20,
            "rss_mib_max_after_warmup": max(after) / 2**20,
            "growth_percent": 100.0 * (end - base) / base,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "final_loss": float(np.mean(losses[-100:])), "seconds": time.perf_counter() - t0,
            "samples_mib": [(s, round(r / 2**20, 2)) for s, r in samples]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--warmup", type=int, default=100, help="step whose RSS is the baseline")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as one JSON line at the end")
    a = p.parse_args(argv)
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if a.json else print
    r = soak(a.steps, a.batch, a.warmup, threads=a.threads, seed=a.seed, log=log)
    if a.json:
        print(json.dumps(r))
    else:
        print(f"\nRSS at step {r['warmup_steps']}: {r['rss_mib_at_warmup']:.1f} MiB; at step {r['steps']}: "
              f"{r['rss_mib_end']:.1f} MiB; growth {r['growth_percent']:+.2f} % (target < 5 %); "
              f"max after warm-up {r['rss_mib_max_after_warmup']:.1f} MiB; peak {r['peak_rss_mib']:.1f} MiB; "
              f"{r['threads']} thread(s), {r['seconds']:.0f} s")
        print("verdict:", "OK" if r["growth_percent"] < 5.0 else "FAIL (memory grows)")
    return 0 if r["growth_percent"] < 5.0 else 1


if __name__ == "__main__":
    sys.exit(main())
