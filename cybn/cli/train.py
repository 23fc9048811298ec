"""``cybn config`` and ``cybn train``."""
import argparse
import json
import os

from .. import distributed as _dist
from .._validation import (arg_type, nonnegative_float_arg, nonnegative_int, positive_float_arg, positive_int_arg,
                           probability_arg, spec_arg)
from ..nn import init_from_spec, schedule_from_spec
from ..nn.optim import check_betas
from ..recipe import (BN_CHOICES, NAN_POLICIES, OPTIMIZERS, CifarData, TrainConfig, add_data_options,
                      load_config, run)


class ConfigCommand:
    name = "config"

    def add_parser(self, subparsers):
        return subparsers.add_parser(self.name, help="print version, OpenMP status, threads and the BLAS in use")

    def run(self, args):
        from .._config import show_config
        comm = _dist.setup()
        ranks = comm.allgather(_dist.describe(comm))  # under mpiexec: one line per rank, from rank 0
        if comm.is_root:
            show_config()
            if comm.distributed:
                print(f"MPI: {comm.size} ranks, launched by {ranks[0]['launcher']}")
                for r in ranks:
                    print(f"  rank {r['rank']} of {r['world_size']} on {r['host']}: "
                          f"{r['threads_per_rank']} threads")
        return 0


def _check_schedule(spec):
    schedule_from_spec(spec, 1.0, total_steps=1)


def _betas(text, name):
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{name} must be two numbers B1,B2, got {text!r}") from None
    return check_betas(values)


class _SetBetas(argparse.Action):
    """``--betas B1,B2`` fills the config's beta1 and beta2."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.beta1, namespace.beta2 = values


def add_train_options(p):
    """The options that make a TrainConfig (``config_from_args`` reads them back)."""
    d = TrainConfig()
    p.add_argument("--bn", choices=BN_CHOICES, default=d.bn,
                   help="where batch norm goes: nowhere, after every conv/linear layer, or only "
                        "on the last layer before softmax (default: %(default)s)")
    p.add_argument("--init", type=spec_arg(init_from_spec), default=d.init,
                   help="weight init: uniform:A for U(-A, A), he, glorot, ... (default: %(default)s)")
    p.add_argument("--bn-eps", type=positive_float_arg, default=d.bn_eps, help="BN epsilon (default: %(default)s)")
    p.add_argument("--no-bias", dest="bias", action="store_false",
                   help="no conv/linear biases anywhere (with BN they are already dropped where BN follows)")
    p.add_argument("--dropout", type=probability_arg, default=d.dropout,
                   help="dropout probability before the last linear layer (default: %(default)s)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer,
                   help="sgd (with --momentum, --nesterov), adam (L2 weight decay) or adamw (decoupled "
                        "weight decay), with PyTorch's semantics (default: %(default)s)")
    p.add_argument("--lr", type=nonnegative_float_arg, default=d.lr,
                   help="peak learning rate (default: %(default)s; Adam's usual one is 0.001)")
    p.add_argument("--momentum", type=nonnegative_float_arg, default=d.momentum, help="SGD momentum (default: %(default)s)")
    p.add_argument("--betas", type=arg_type(_betas, parse=str, name="betas"), action=_SetBetas, metavar="B1,B2",
                   help=f"Adam/AdamW moment decay rates, each in [0, 1) (default: {d.beta1},{d.beta2})")
    p.set_defaults(beta1=d.beta1, beta2=d.beta2)
    p.add_argument("--adam-eps", type=nonnegative_float_arg, default=d.adam_eps,
                   help="Adam/AdamW epsilon added to sqrt(v) (default: %(default)s)")
    p.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    p.add_argument("--weight-decay", type=nonnegative_float_arg, default=d.weight_decay,
                   help="L2 weight decay (default: %(default)s)")
    p.add_argument("--decay-bn-and-bias", action="store_true",
                   help="also apply weight decay to BN parameters and biases (off by default)")
    p.add_argument("--schedule", type=spec_arg(_check_schedule), default=d.schedule,
                   help="lr schedule: constant, step:STEPS[:GAMMA], cosine[:MIN_LR], warmup:N+<schedule> "
                        "(default: %(default)s)")
    p.add_argument("--epochs", type=positive_int_arg, default=None, help=f"epochs (default: {d.epochs})")
    p.add_argument("--steps", dest="max_steps", type=positive_int_arg, default=None, help="stop after this many steps")
    p.add_argument("--batch-size", type=positive_int_arg, default=d.batch_size, help="(default: %(default)s)")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no random crop / flip")
    p.add_argument("--seed", type=arg_type(nonnegative_int), default=d.seed, help="seed of weights, data order, augmentation")
    p.add_argument("--train-limit", type=positive_int_arg, default=None, help="use only the first N training images")
    p.add_argument("--test-limit", type=positive_int_arg, default=None, help="use only the first N test images")
    p.add_argument("--nan-policy", choices=NAN_POLICIES, default=d.nan_policy,
                   help="on a NaN/Inf loss or gradient: stop with an error, or skip that step")
    p.add_argument("--checkpoint-every", type=positive_int_arg, default=None,
                   help="also checkpoint every N steps (always at the end of each epoch)")
    p.add_argument("--sync-bn", action="store_true",
                   help="under mpiexec: batch norm with the statistics of the whole global batch "
                        "(default: each rank's share, as PyTorch's plain BN)")


def config_from_args(args):
    """The TrainConfig the options in ``args`` describe (every field has an option of its name)."""
    values = {name: getattr(args, name) for name in TrainConfig.__dataclass_fields__}
    values["epochs"] = args.epochs or TrainConfig.epochs
    return TrainConfig(**values)


class TrainCommand:
    name = "train"

    def add_parser(self, subparsers):
        p = subparsers.add_parser(
            self.name, help="train the 7-layer CIFAR-10 CNN",
            description="Train the 7-layer CIFAR-10 CNN (cnn7) with SGD, Adam or AdamW; writes metrics.csv, history.json, "
                        "config.json, run.json and checkpoint.npz to --out.")
        add_train_options(p)
        add_data_options(p)
        p.add_argument("--out", metavar="DIR", default=None, help="output folder (default: runs/<bn>-<init>)")
        p.add_argument("--resume", metavar="DIR", default=None,
                       help="continue the run saved in DIR (its config.json and checkpoint.npz); "
                            "--epochs may extend it, --threads changes the threads; other options are ignored")
        return p

    def run(self, args):
        if args.resume:
            out = args.resume
            config = load_config(out)
            if args.epochs is not None:
                config.epochs = args.epochs
            if args.threads is not None:
                config.threads = args.threads
        else:
            config = config_from_args(args)
            out = args.out or os.path.join("runs", f"{config.bn}-{config.init.replace(':', '')}")
        comm = _dist.setup(config.threads)
        # rank 0 first: a download into the shared cache happens once
        data = _dist.root_first(comm, CifarData, args.data, config.train_limit, config.test_limit,
                                quiet=args.quiet or not comm.is_root)
        trainer = run(config, data, out_dir=out, progress=not args.quiet, resume=bool(args.resume))
        last = trainer.history[-1] if trainer.history else {}
        if comm.is_root:
            print(json.dumps({"out": out, **last}, indent=1))
        return 0


CONFIG = ConfigCommand()
TRAIN = TrainCommand()
