"""One rank of the distributed tests (run by ``mpiexec`` from ``test_distributed.py``), and the
single-process oracle it is compared with (imported by the test).

``python distributed_worker.py OUT.npz [--dtype float64] [--sync-bn] [--steps N] [--save-at K]
[--resume CKPT] [--seed S] [--dropout P] [--fault kill|raise] [--mismatch]``: trains a small cnn7 on synthetic
images for N steps (global batches of BATCH, uneven splits for 2 and 3 ranks), rank 0 writes the
losses, the first step's gradients, the final parameters and buffers and the evaluation
(split over the ranks) of the final model to OUT.npz.
"""
import argparse
import json
import os
import signal
import sys

import numpy as np

import cybn
from cybn import distributed as D
from cybn.data import DataLoader
from cybn.nn.sync_batchnorm import convert_sync_batchnorm
from cybn.train import NonFiniteError, Trainer, evaluate

NUM_SAMPLES, BATCH = 28, 10  # batches of 10, 10, 8: split 5/5, 4/4 on 2 ranks; 3/3/4, 2/3/3 on 3


def make_data():
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (NUM_SAMPLES, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, NUM_SAMPLES)
    return images, labels


def make_run(dtype, seed=3, dropout=0.0):
    """(model, optimizer, loader): the same on every rank and in the oracle."""
    images, labels = make_data()
    model = cybn.cnn7(bn="all", init="he", width=4, hidden=16, dtype=dtype, seed=seed, dropout=dropout)
    opt = cybn.SGD(model, lr=0.05, momentum=0.9, weight_decay=5e-4)
    loader = DataLoader(images, labels, BATCH, shuffle=True, augment=True, seed=seed, dtype=dtype)
    return model, opt, loader


def eval_loader(dtype):
    return DataLoader(*make_data(), 12, shuffle=False, dtype=dtype)  # batches of 12, 12, 4


def result(model, losses, first_grads, evaluated):
    out = {"loss": np.array(losses), "eval": np.array([evaluated["loss"], evaluated["accuracy"]])}
    out.update({f"grad/{k}": v for k, v in first_grads.items()})
    out.update({f"state/{k}": v for k, v in model.state_dict().items()})
    return out


def oracle(dtype, steps, seed=3, dropout=0.0):
    """The single-process run on the same global batches (plain cybn, no distributed code)."""
    model, opt, loader = make_run(dtype, seed, dropout)
    loss_fn = cybn.SoftmaxCrossEntropy()
    losses, first = [], None
    while len(losses) < steps:
        for x, y in loader:
            loss = loss_fn.forward(model.forward(x), y)
            model.backward(loss_fn.backward())
            if first is None:
                first = {name: g.copy() for name, _, g, _ in model.named_parameters()}
            opt.step()
            losses.append(loss)
            if len(losses) == steps:
                break
    return result(model, losses, first, evaluate(model, loss_fn, eval_loader(dtype)))


def save(path, model, opt, loader, losses):
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    arrays.update({f"optim/{k}": v for k, v in opt.state_dict().items()})
    st = loader.state_dict()
    arrays["loader"] = np.array([st["seed"], st["epoch"], st["position"]])
    arrays["losses"] = np.array(losses)
    np.savez(path, **arrays)


def load(comm, path, model, opt, loader):
    """Rank 0 reads the checkpoint, every rank gets it by broadcast (no shared file system needed)."""
    data = None
    if comm.is_root:
        with np.load(path) as f:
            data = {k: f[k] for k in f.files}
    data = comm.bcast(data)
    model.load_state_dict({k[6:]: v for k, v in data.items() if k.startswith("model/")})
    opt.load_state_dict({k[6:]: v for k, v in data.items() if k.startswith("optim/")})
    seed, epoch, position = (int(v) for v in data["loader"])
    loader.load_state_dict({"seed": seed, "epoch": epoch, "position": position})
    return list(data["losses"])


def trainer_run(comm, sync_bn=False, nan_at=None, nan_policy="stop", out_dir=None):
    """cybn.train.Trainer's own loop over ``comm`` (float64, one epoch, evaluated); with
    ``nan_at``, rank 1's first activations become NaN at that step. Returns what this rank saw."""
    model, opt, loader = make_run(np.float64)
    if sync_bn:
        convert_sync_batchnorm(model, comm)
    trainer = Trainer(model, cybn.SoftmaxCrossEntropy(), opt, nan_policy=nan_policy, progress=False,
                      out_dir=out_dir, comm=comm)

    def poison(index, layer, out):
        if index == 0 and comm.rank == 1 and trainer.step == nan_at and layer.training:
            out[...] = np.nan
    model.register_forward_hook(poison)
    try:
        trainer.fit(loader, epochs=1, eval_loader=eval_loader(np.float64))
        seen = {"history": trainer.history, "skipped": trainer.skipped_steps}
    except NonFiniteError as e:
        seen = {"error": str(e)}
    seen["params"] = [p.tolist() for p in model.parameters()]
    return seen


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--dtype", default="float64")
    p.add_argument("--sync-bn", action="store_true")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--save-at", type=int)
    p.add_argument("--resume")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--fault", choices=["kill", "raise", "exit", "uncaught"])
    p.add_argument("--mismatch", action="store_true", help="rank 1 uses another seed")
    p.add_argument("--trainer", action="store_true", help="run cybn.train.Trainer instead (each rank "
                   "writes what it saw to OUT.rankR.json)")
    p.add_argument("--nan-at", type=int)
    p.add_argument("--nan-policy", default="stop")
    a = p.parse_args(argv)
    comm = D.setup(threads=1)
    if a.trainer:
        with D.abort_on_error(comm):
            seen = trainer_run(comm, a.sync_bn, a.nan_at, a.nan_policy, out_dir=os.path.dirname(a.out))
            with open(f"{a.out}.rank{comm.rank}.json", "w") as f:
                json.dump(seen, f)
        return 0
    if a.fault == "uncaught" and comm.rank == 1:  # outside abort_on_error: the excepthook aborts
        raise RuntimeError("injected failure")
    with D.abort_on_error(comm):
        seed = a.seed + (comm.rank == 1 and a.mismatch)
        model, opt, loader = make_run(np.dtype(a.dtype), seed, a.dropout)
        if a.sync_bn:
            convert_sync_batchnorm(model, comm)
        images, labels = make_data()
        try:
            D.check_consistency(comm, model=D.model_fingerprint(model), seed=seed, batch_size=BATCH,
                                data=D.data_fingerprint(images, labels))
        except D.DistributedError as e:
            with open(f"{a.out}.rank{comm.rank}.txt", "w") as f:
                f.write(str(e))
            return 3
        dp = D.DataParallel(model, comm)
        shards = D.ShardedLoader(loader, comm)
        losses = load(comm, a.resume, model, opt, loader) if a.resume else []
        loss_fn = cybn.SoftmaxCrossEntropy()
        first = None
        while len(losses) < a.steps:
            for x, y in shards:
                if a.fault and comm.rank == 1 and len(losses) == 1:
                    if a.fault == "kill":
                        os.kill(os.getpid(), signal.SIGKILL)
                    if a.fault == "exit":
                        sys.exit(2)
                    raise RuntimeError("injected failure")
                scale = dp.begin_step(shards.shard)
                logits = model.forward(x)
                local = loss_fn.forward(logits, y)
                model.backward(loss_fn.backward(scale))
                loss, _ = dp.reduce_gradients(local * scale, np.count_nonzero(logits.argmax(1) == y))
                if first is None:
                    first = {name: g.copy() for name, _, g, _ in model.named_parameters()}
                opt.step()
                losses.append(loss)
                if len(losses) == a.save_at:
                    dp.broadcast_buffers()
                    if comm.is_root:
                        save(a.out + ".ckpt.npz", model, opt, loader, losses)
                if len(losses) == a.steps:
                    break
        dp.broadcast_buffers()
        if not dp.in_sync():
            raise AssertionError("ranks hold different parameters")
        evaluated = D.evaluate(model, loss_fn, eval_loader(model.dtype), comm)
        if comm.is_root:
            np.savez(a.out, **result(model, losses, first or {}, evaluated))
    return 0


if __name__ == "__main__":
    sys.exit(main())
