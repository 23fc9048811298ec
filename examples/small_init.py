"""The small-initialization experiment from Python (what `cybn experiment small-init` runs).

    python examples/small_init.py --data ../shared/data/cifar-10-mini.tar.gz --quick
"""
import argparse

from cybn.experiments.recipe import CifarData
from cybn.experiments.report import write_report
from cybn.experiments.small_init import Options, SmallInitExperiment


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="CIFAR-10 archive or folder (default: download)")
    p.add_argument("--quick", action="store_true", help="5,000 training images, 2 epochs, short sweeps")
    p.add_argument("--out", default="runs/small-init-example")
    args = p.parse_args()
    options = Options.quick() if args.quick else Options()
    data = CifarData(args.data, options.train_limit, options.test_limit)
    results = SmallInitExperiment(data, options).run()
    print("report:", write_report(results, args.out))


if __name__ == "__main__":
    main()
