"""``cybn experiment <name>``: the command-line faces of the experiments."""
import argparse
import dataclasses
import json
import os
import platform
import time

from .._validation import comma_list, positive_float_arg, positive_int_arg
from ..recipe import CifarData, RunError, add_data_options
from .small_init import CONFIGS, DEFAULT_PARTS, PARTS, Options


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
                        "sweep for (c), a learning-rate sweep, Dropout and BN scale invariance. Writes "
                        "results.json, report.md and plots (with matplotlib) to --out.")
        d = Options()
        p.add_argument("--epochs", type=positive_int_arg, default=None,
                       help=f"epochs per configuration (default {d.epochs}; --quick: 2)")
        p.add_argument("--lr", type=positive_float_arg, default=d.lr,
                       help="peak learning rate of the shared cosine schedule (default: %(default)s)")
        p.add_argument("--batch-size", type=positive_int_arg, default=d.batch_size, help="(default: %(default)s)")
        p.add_argument("--seed", type=int, default=d.seed, help="one seed for weights, data order and augmentation")
        p.add_argument("--parts", type=comma_list(str), default=DEFAULT_PARTS,
                       help=f"comma-separated parts to run, from {','.join(PARTS)}, or 'all' "
                            f"(default: {','.join(DEFAULT_PARTS)}); 'steps' needs 'main' with configuration d")
        p.add_argument("--configs", type=comma_list(str), default=tuple(CONFIGS),
                       help="configurations for the main part, from a,b,c,d (default: all)")
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
        if "steps" in parts and not ("main" in parts and "d" in args.configs):
            raise argparse.ArgumentError(
                None, "part 'steps' compares with the control: add part 'main' with configuration d")
        overrides = {"lr": args.lr, "batch_size": args.batch_size, "seed": args.seed, "parts": parts,
                     "configs": args.configs, "threads": args.threads}
        for name in ("epochs", "sweep_steps", "eps_steps"):
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
        results = experiment.run()
        print(f"report: {save(results)}")
        print(json.dumps({"steps_to_control_best": results.steps_to_control_best,
                          "total_seconds": results.total_seconds}, default=_plain))
        return 0


def _plain(value):
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else float(value)
