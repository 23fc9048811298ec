"""``cybn experiment small-init``: the command-line face of ``small_init``."""
import argparse
import json
import os
import platform
import time

from .small_init import CONFIGS, DEFAULT_PARTS, PARTS, Options


def _csv(kind):
    def parse(text):
        try:
            return tuple(kind(v) for v in text.split(",") if v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got {text!r}")
    return parse


def add_experiment_parser(sub):
    from ..cli import _positive_float, _positive_int, add_data_options
    exp = sub.add_parser("experiment", help="run a packaged experiment (small-init)")
    which = exp.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    p = which.add_parser(
        "small-init", help="the small-initialization experiment and the BN paper's claims",
        description="cnn7 on CIFAR-10 with W ~ U(-0.001, 0.001): (a) no BN, (b) BN everywhere, "
                    "(c) BN on the last layer only, (d) control no BN + He init; plus an epsilon "
                    "sweep for (c), a learning-rate sweep, Dropout and BN scale invariance. Writes "
                    "results.json, report.md and plots (with matplotlib) to --out.")
    d = Options()
    p.add_argument("--epochs", type=_positive_int, default=None, help=f"epochs per configuration (default {d.epochs}; --quick: 2)")
    p.add_argument("--lr", type=_positive_float, default=d.lr, help="peak learning rate of the shared cosine schedule (default: %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="one seed for weights, data order and augmentation")
    p.add_argument("--parts", type=_csv(str), default=DEFAULT_PARTS,
                   help=f"comma-separated parts to run, from {','.join(PARTS)}, or 'all' "
                        f"(default: {','.join(DEFAULT_PARTS)}); 'steps' needs 'main' with configuration d")
    p.add_argument("--configs", type=_csv(str), default=tuple(CONFIGS),
                   help="configurations for the main part, from a,b,c,d (default: all)")
    p.add_argument("--sweep-steps", type=_positive_int, default=None,
                   help=f"steps of each learning-rate sweep run (default {d.sweep_steps})")
    p.add_argument("--eps-steps", type=_positive_int, default=None,
                   help=f"steps of each epsilon sweep run (default {d.eps_steps})")
    p.add_argument("--quick", action="store_true",
                   help="a small version: 5,000 training / 1,000 test images, 2 epochs, short sweeps")
    p.add_argument("--no-plots", action="store_true", help="write tables only")
    p.add_argument("--report-only", action="store_true",
                   help="only redraw report.md and the plots from --out's results.json (e.g. after "
                        "installing matplotlib); trains nothing")
    p.add_argument("--out", metavar="DIR", default="runs/small-init", help="report folder (default: %(default)s)")
    add_data_options(p)
    return exp


def run_experiment(parser, args):
    from .. import _threads
    from .._config import config as cybn_config
    from .recipe import CifarData
    from .report import write_report
    from .small_init import SmallInitExperiment

    if args.report_only:
        path = os.path.join(args.out, "results.json")
        if not os.path.exists(path):
            parser.error(f"--report-only: {path} does not exist (run the experiment first)")
        with open(path) as f:
            print(f"report: {write_report(json.load(f), args.out, plots=not args.no_plots)}")
        return 0
    if args.parts == ("all",):
        args.parts = PARTS
    bad = [x for x in args.parts if x not in PARTS] + [x for x in args.configs if x not in CONFIGS]
    if bad:
        parser.error(f"unknown part or configuration {bad}: parts are {PARTS} or all, "
                     f"configurations {tuple(CONFIGS)}")
    if "steps" in args.parts and not ("main" in args.parts and "d" in args.configs):
        parser.error("part 'steps' compares with the control: add part 'main' with configuration d")
    overrides = {"lr": args.lr, "batch_size": args.batch_size, "seed": args.seed, "parts": args.parts,
                 "configs": args.configs, "threads": args.threads}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.sweep_steps is not None:
        overrides["sweep_steps"] = args.sweep_steps
    if args.eps_steps is not None:
        overrides["eps_steps"] = args.eps_steps
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
        results["total_seconds"] = time.perf_counter() - start
        results["machine"] = machine
        return write_report(results, args.out, plots=not args.no_plots)

    data = CifarData(args.data, options.train_limit, options.test_limit, quiet=args.quiet)
    experiment = SmallInitExperiment(data, options, progress=not args.quiet, on_update=save)
    results = experiment.run()
    report = save(results)
    print(f"report: {report}")
    print(json.dumps({k: v for k, v in results.items() if k in ("steps_to_control_best", "total_seconds")}, default=float))
    return 0
