"""The ``cybn`` command line (also ``python -m cybn``)."""
import argparse
import json
import os
import sys


class _ShowConfig(argparse.Action):
    """``--version``: the version plus what a bug report needs (OpenMP, threads, BLAS)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from ._config import show_config
        show_config()
        parser.exit()


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _nonneg_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def _positive_float(text):
    value = _nonneg_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a number > 0, got 0")
    return value


def _init_spec(text):
    from .nn import init_from_spec
    try:
        init_from_spec(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_data_options(p):
    p.add_argument("--data", metavar="PATH", default=None,
                   help="CIFAR-10 archive (cifar-10-python.tar.gz) or extracted folder; "
                        "default: download the official archive (checksum-verified) into the cache "
                        "(CYBN_CACHE_DIR, else ~/.cache/cybn)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="threads for the kernels and the BLAS pool (default: CYBN_NUM_THREADS or all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _betas(text):
    from .nn.optim import _betas as check
    try:
        return check(tuple(float(v) for v in text.split(",")))
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"expected B1,B2 with each in [0, 1), got {text!r} ({e})") from None


def add_train_options(p):
    from .experiments.recipe import OPTIMIZERS, TrainConfig
    d = TrainConfig()
    p.add_argument("--bn", choices=("none", "all", "last"), default=d.bn,
                   help="where batch norm goes: nowhere, after every conv/linear layer, or only "
                        "on the last layer before softmax (default: %(default)s)")
    p.add_argument("--init", type=_init_spec, default=d.init,
                   help="weight init: uniform:A for U(-A, A), he, glorot, ... (default: %(default)s)")
    p.add_argument("--bn-eps", type=_positive_float, default=d.bn_eps, help="BN epsilon (default: %(default)s)")
    p.add_argument("--no-bias", dest="bias", action="store_false",
                   help="no conv/linear biases anywhere (with BN they are already dropped where BN follows)")
    p.add_argument("--dropout", type=_nonneg_float, default=d.dropout,
                   help="dropout probability before the last linear layer (default: %(default)s)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer,
                   help="sgd (with --momentum, --nesterov), adam (L2 weight decay) or adamw (decoupled "
                        "weight decay), with PyTorch's semantics (default: %(default)s)")
    p.add_argument("--lr", type=_nonneg_float, default=d.lr,
                   help="peak learning rate (default: %(default)s; Adam's usual one is 0.001)")
    p.add_argument("--momentum", type=_nonneg_float, default=d.momentum, help="SGD momentum (default: %(default)s)")
    p.add_argument("--betas", type=_betas, default=(d.beta1, d.beta2), metavar="B1,B2",
                   help="Adam/AdamW moment decay rates, each in [0, 1) (default: %(default)s)")
    p.add_argument("--adam-eps", type=_nonneg_float, default=d.adam_eps,
                   help="Adam/AdamW epsilon added to sqrt(v) (default: %(default)s)")
    p.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    p.add_argument("--weight-decay", type=_nonneg_float, default=d.weight_decay,
                   help="L2 weight decay (default: %(default)s)")
    p.add_argument("--decay-bn-and-bias", action="store_true",
                   help="also apply weight decay to BN parameters and biases (off by default)")
    p.add_argument("--schedule", default=d.schedule,
                   help="lr schedule: constant, step:STEPS[:GAMMA], cosine[:MIN_LR], warmup:N+<schedule> "
                        "(default: %(default)s)")
    p.add_argument("--epochs", type=_positive_int, default=None, help=f"epochs (default: {d.epochs})")
    p.add_argument("--steps", type=_positive_int, default=None, help="stop after this many steps")
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size, help="(default: %(default)s)")
    p.add_argument("--no-augment", action="store_true", help="no random crop / flip")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of weights, data order, augmentation")
    p.add_argument("--train-limit", type=_positive_int, default=None, help="use only the first N training images")
    p.add_argument("--test-limit", type=_positive_int, default=None, help="use only the first N test images")
    p.add_argument("--nan-policy", choices=("stop", "skip"), default=d.nan_policy,
                   help="on a NaN/Inf loss or gradient: stop with an error, or skip that step")
    p.add_argument("--checkpoint-every", type=_positive_int, default=None,
                   help="also checkpoint every N steps (always at the end of each epoch)")


def build_parser():
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="cybn", description="Batch-normalized CNNs on multicore CPUs (Cython + OpenMP).")
    parser.add_argument("--version", action=_ShowConfig,
                        help=f"print the version (cybn {__version__}), OpenMP status, threads and BLAS")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("config", help="print version, OpenMP status, threads and the BLAS in use")

    train = sub.add_parser("train", help="train the 7-layer CIFAR-10 CNN",
                           description="Train the 7-layer CIFAR-10 CNN (cnn7) with SGD; writes "
                                       "metrics.csv, history.json, config.json and checkpoint.npz to --out.")
    add_train_options(train)
    add_data_options(train)
    train.add_argument("--out", metavar="DIR", default=None, help="output folder (default: runs/<bn>-<init>)")
    train.add_argument("--resume", metavar="DIR", default=None,
                       help="continue the run saved in DIR (its config.json and checkpoint.npz); "
                            "--epochs may extend it")

    from .experiments.cli import add_experiment_parser
    add_experiment_parser(sub)
    return parser


def _config_from_args(args):
    from .experiments.recipe import TrainConfig
    return TrainConfig(
        bn=args.bn, init=args.init, bn_eps=args.bn_eps, bias=args.bias, dropout=args.dropout, lr=args.lr,
        optimizer=args.optimizer, beta1=args.betas[0], beta2=args.betas[1], adam_eps=args.adam_eps,
        momentum=args.momentum, nesterov=args.nesterov, weight_decay=args.weight_decay,
        decay_bn_and_bias=args.decay_bn_and_bias, schedule=args.schedule, epochs=args.epochs or TrainConfig.epochs,
        max_steps=args.steps, batch_size=args.batch_size, augment=not args.no_augment, seed=args.seed,
        threads=args.threads, train_limit=args.train_limit, test_limit=args.test_limit,
        nan_policy=args.nan_policy, checkpoint_every=args.checkpoint_every)


def _train(parser, args):
    from .experiments.recipe import CifarData, TrainConfig, run
    from .nn import schedule_from_spec

    if args.resume:
        out = args.resume
        config_path = os.path.join(out, "config.json")
        if not os.path.exists(config_path) or not os.path.exists(os.path.join(out, "checkpoint.npz")):
            parser.error(f"--resume {out}: no config.json and checkpoint.npz there to resume from")
        with open(config_path) as f:
            config = TrainConfig(**json.load(f))
        if args.epochs is not None:
            config.epochs = args.epochs
        if args.threads is not None:
            config.threads = args.threads
    else:
        config = _config_from_args(args)
        out = args.out or os.path.join("runs", f"{config.bn}-{config.init.replace(':', '')}")
    try:
        schedule_from_spec(config.schedule, config.lr, total_steps=1)
    except ValueError as e:
        parser.error(f"--schedule: {e}")
    data = CifarData(args.data, config.train_limit, config.test_limit, quiet=args.quiet)
    trainer = run(config, data, out_dir=out, progress=not args.quiet, resume=bool(args.resume))
    last = trainer.history[-1] if trainer.history else {}
    print(json.dumps({"out": out, **last}, indent=1))
    return 0


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "config":
            from ._config import show_config
            show_config()
            return 0
        if args.command == "train":
            return _train(parser, args)
        if args.command == "experiment":
            from .experiments.cli import run_experiment
            return run_experiment(parser, args)
    except FileNotFoundError as e:
        print(f"cybn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cybn: interrupted (the last checkpoint, if any, is intact)", file=sys.stderr)
        return 130
    parser.print_help(sys.stderr)
    return 2
