"""The ``cybn`` command line (also ``python -m cybn``)."""
import argparse
import sys


def build_parser():
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="cybn", description="Batch-normalized CNNs on multicore CPUs (Cython + OpenMP).")
    parser.add_argument("--version", action="version", version=f"cybn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("config", help="print version, OpenMP status, threads and the BLAS in use")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "config":
        from ._config import show_config
        show_config()
        return 0
    parser.print_help(sys.stderr)
    return 2
