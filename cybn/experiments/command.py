"""``cybn experiment <name>``: the command-line faces of the experiments."""
import argparse
import json
import os
import platform
import time

from .._validation import (arg_type, comma_list, nonnegative_float_arg, positive_float_arg, positive_int_arg,
                           spec_arg)
from ..nn import schedule_from_spec
from ..recipe import CifarData, RunError, add_data_options
from .seeds import parse_seeds
from .small_init import CONFIGS, DEFAULT_PARTS, PARTS, Options


def _check_schedule(spec):
    schedule_from_spec(spec, 1.0, total_steps=1)


def _check_eps(values, name):
    if not values or any(v < 0 for v in values):
        raise ValueError(f"{name} must be one or more numbers >= 0, got {values}")
    return values


def _seeds(text, name):
    return parse_seeds(text)


class ExperimentGroup:
    """``cybn experiment``: one subcommand per experiment command in ``experiments``."""
    name = "experiment"

    def __init__(self, experiments):
        self.experiments = list(experiments)

    def add_parser(self, subparsers):
        names = ", ".join(e.name for e in self.experiments)
        p = subparsers.add_parser(self.name, help=f"run a packaged experiment ({names})")
        which = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
        for experiment in self.experiments:
            e = experiment.add_parser(which)
            e.set_defaults(_experiment=experiment, _parser=e)
        return p

    def run(self, args):
        return args._experiment.run(args)


class SmallInitCommand:
    name = "small-init"

    def add_parser(self, subparsers):
        p = subparsers.add_parser(
            self.name, help="the small-initialization experiment and the BN paper's claims",
            description="cnn7 on CIFAR-10 with W ~ U(-0.001, 0.001): (a) no BN, (b) BN everywhere, "
                        "(c) BN on the last layer only, (d) control no BN + He init; plus an epsilon "
                        "sweep for (c), steps to accuracy on a validation split, a learning-rate sweep, "
                        "Dropout where the model overfits, (a)-(d) under Adam and BN scale invariance, "
                        "each over --seeds. Writes results.json, report.md and plots (with matplotlib) to --out.")
        d = Options()
        p.add_argument("--epochs", type=positive_int_arg, default=None,
                       help=f"epochs per configuration (default {d.epochs}; --quick: 2)")
        p.add_argument("--lr", type=positive_float_arg, default=d.lr,
                       help="peak learning rate of the shared cosine schedule (default: %(default)s)")
        p.add_argument("--batch-size", type=positive_int_arg, default=d.batch_size, help="(default: %(default)s)")
        seeds = p.add_mutually_exclusive_group()
        seeds.add_argument("--seeds", type=arg_type(_seeds, parse=str, name="seeds"),
                           default=None, metavar="S,S,...",
                           help="run every configuration of every part once per seed (weights, data order, "
                                "augmentation), e.g. 0,1,2 or 0-4; tables give mean ± std and min–max "
                                f"(default: {','.join(map(str, d.seeds))}; --quick: 0)")
        seeds.add_argument("--seed", type=arg_type(_seeds, parse=str, name="seed"), dest="seeds", metavar="N",
                           help="one seed (the same as --seeds N)")
        p.add_argument("--parts", type=comma_list(str), default=DEFAULT_PARTS,
                       help=f"comma-separated parts to run, from {','.join(PARTS)}, or 'all' "
                            f"(default: {','.join(DEFAULT_PARTS)})")
        p.add_argument("--configs", type=comma_list(str), default=tuple(CONFIGS),
                       help="configurations for the main and optimizer parts, from a,b,c,d (default: all)")
        p.add_argument("--chance-tol", type=nonnegative_float_arg, default=d.chance_tol,
                       help="stop a full-length run after an epoch whose mean training loss is within this of "
                            "ln 10 (and no batch beyond 0.05): it sits at chance; 0 never stops (default: %(default)s)")
        p.add_argument("--steps-epochs", type=positive_int_arg, default=None,
                       help="epochs of each 'steps' run (default: --epochs)")
        p.add_argument("--val-size", type=positive_int_arg, default=None,
                       help=f"'steps': training images held out for validation (default {d.val_size}; --quick: 1000)")
        p.add_argument("--eval-every", type=positive_int_arg, default=None, dest="steps_eval_every", metavar="N",
                       help=f"'steps': validation every N steps (default {d.steps_eval_every}; --quick: 10)")
        p.add_argument("--dropout-epochs", type=positive_int_arg, default=None,
                       help=f"epochs of each 'dropout' run (default {d.dropout_epochs}; --quick: 4)")
        p.add_argument("--dropout-schedule", type=spec_arg(_check_schedule), default=d.dropout_schedule,
                       help="'dropout': lr schedule, constant or step:STEPS[:GAMMA] (default: %(default)s)")
        p.add_argument("--optimizer", choices=("adam", "adamw"), default=d.optimizer,
                       help="'optimizer': the optimizer (default: %(default)s)")
        p.add_argument("--optimizer-lr", type=positive_float_arg, default=d.optimizer_lr,
                       help="'optimizer': its peak learning rate (cosine) (default: %(default)s)")
        p.add_argument("--optimizer-eps", type=arg_type(_check_eps, parse=comma_list(float), name="optimizer_eps"),
                       default=d.optimizer_eps, help="'optimizer': the Adam epsilons to run (default: %(default)s)")
        p.add_argument("--optimizer-weight-decay", type=nonnegative_float_arg, default=d.optimizer_weight_decay,
                       help="'optimizer': L2 (adam) or decoupled (adamw) weight decay (default: %(default)s)")
        p.add_argument("--optimizer-epochs", type=positive_int_arg, default=None,
                       help="epochs of each 'optimizer' run (default: --epochs)")
        p.add_argument("--sweep-steps", type=positive_int_arg, default=None,
                       help=f"steps of each learning-rate sweep run (default {d.sweep_steps})")
        p.add_argument("--eps-steps", type=positive_int_arg, default=None,
                       help=f"steps of each epsilon sweep run (default {d.eps_steps})")
        p.add_argument("--quick", action="store_true",
                       help="a small version: 5,000 training / 1,000 test images, 2 epochs, short sweeps")
        p.add_argument("--no-plots", action="store_true", help="write tables only")
        p.add_argument("--report-only", action="store_true",
                       help="only redraw report.md and the plots from --out's results.json (e.g. after "
                            "installing matplotlib); trains nothing")
        p.add_argument("--out", metavar="DIR", default="runs/small-init", help="report folder (default: %(default)s)")
        add_data_options(p)
        return p

    def run(self, args):
        from .. import _threads
        from .._config import config as cybn_config
        from .records import read_results
        from .report import write_report
        from .small_init import SmallInitExperiment

        if args.report_only:
            path = os.path.join(args.out, "results.json")
            if not os.path.exists(path):
                raise RunError(f"--report-only: {path} does not exist (run the experiment first)")
            print(f"report: {write_report(read_results(path), args.out, plots=not args.no_plots)}")
            return 0
        parts = PARTS if args.parts == ("all",) else args.parts
        bad = [x for x in parts if x not in PARTS] + [x for x in args.configs if x not in CONFIGS]
        if bad:
            raise argparse.ArgumentError(None, f"unknown part or configuration {bad}: parts are {PARTS} or all, "
                                               f"configurations {tuple(CONFIGS)}")
        overrides = {"lr": args.lr, "batch_size": args.batch_size, "parts": parts,
                     "configs": args.configs, "threads": args.threads, "chance_tol": args.chance_tol,
                     "dropout_schedule": args.dropout_schedule, "optimizer": args.optimizer,
                     "optimizer_lr": args.optimizer_lr, "optimizer_eps": args.optimizer_eps,
                     "optimizer_weight_decay": args.optimizer_weight_decay}
        for name in ("seeds", "epochs", "sweep_steps", "eps_steps", "steps_epochs", "val_size", "steps_eval_every",
                     "dropout_epochs", "optimizer_epochs"):
            if getattr(args, name) is not None:
                overrides[name] = getattr(args, name)
        options = Options.quick(**overrides) if args.quick else Options(**overrides)
        if options.threads is not None:
            _threads.set_num_threads(options.threads)
        start = time.perf_counter()
        cfg = cybn_config()
        machine = (f"Machine: {cfg['processor']}, {cfg['cores_available']} cores, "
                   f"{cfg['num_threads']} threads, OpenMP {'on' if cfg['openmp'] else 'off'}, "
                   f"BLAS {', '.join(b['internal_api'] + ' ' + str(b['architecture']) for b in cfg['blas'])}; "
                   f"{platform.python_implementation()} {platform.python_version()}.")

        def save(results):
            results.total_seconds = time.perf_counter() - start
            results.machine = machine
            return write_report(results, args.out, plots=not args.no_plots)

        data = CifarData(args.data, options.train_limit, options.test_limit, quiet=args.quiet)
        experiment = SmallInitExperiment(data, options, progress=not args.quiet, on_update=save)
        experiment.results.quick = bool(args.quick)
        results = experiment.run()
        print(f"report: {save(results)}")
        print(json.dumps({"part_seconds": results.part_seconds, "total_seconds": results.total_seconds}))
        return 0
