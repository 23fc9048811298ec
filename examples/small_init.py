"""The small-initialization experiment from Python (what `cybn experiment small-init` runs).

    python examples/small_init.py --data ../shared/data/cifar-10-mini.tar.gz --quick
    python examples/small_init.py --data ../shared/data/cifar-10-mini.tar.gz --quick --parts scale
"""
import argparse

from cybn.experiments.report import write_report
from cybn.experiments.small_init import DEFAULT_PARTS, Options, SmallInitExperiment
from cybn.recipe import CifarData


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="CIFAR-10 archive or folder (default: download)")
    p.add_argument("--quick", action="store_true", help="5,000 training images, 2 epochs, short sweeps")
    p.add_argument("--parts", default=",".join(DEFAULT_PARTS), help="comma-separated parts (default: %(default)s)")
    p.add_argument("--out", default="runs/small-init-example")
    args = p.parse_args()
    parts = tuple(args.parts.split(","))
    options = Options.quick(parts=parts) if args.quick else Options(parts=parts)
    data = CifarData(args.data, options.train_limit, options.test_limit)
    results = SmallInitExperiment(data, options).run()
    print("report:", write_report(results, args.out))


if __name__ == "__main__":
    main()
