"""The ``cybn`` command line (also ``python -m cybn``).

Each command is an object with ``name``, ``add_parser(subparsers)`` (returns its parser) and
``run(args)`` (returns the exit code): ``config`` and ``train`` live in ``cybn.cli.train``, the
experiments register theirs in ``cybn.experiments.COMMANDS``. To add one, write a module here and
list its command in ``commands()``.

Errors: a command raises ``argparse.ArgumentError`` for a bad combination of options (usage +
message, exit 2); a user mistake (missing or damaged data, download failure, damaged or foreign
checkpoint, bad run folder) ends in one line ``cybn: error: ...`` and exit 2; a run that stops on
a NaN/Inf exits 1 the same way; Ctrl-C exits 130. Anything else is a bug and keeps its traceback.
"""
import argparse
import os
import sys

from .._formats import FormatError
from ..checkpoint import CheckpointError
from ..recipe import RunError
from ..train import NonFiniteError

USER_ERRORS = (OSError, RunError, CheckpointError, FormatError)


def commands():
    from .. import experiments
    from . import train
    return [train.CONFIG, train.TRAIN, *experiments.COMMANDS]


class _ShowConfig(argparse.Action):
    """``--version``: the version plus what a bug report needs (OpenMP, threads, BLAS)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from .._config import show_config
        show_config()
        parser.exit()


def build_parser():
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="cybn", description="Batch-normalized CNNs on multicore CPUs (Cython + OpenMP).")
    parser.add_argument("--version", action=_ShowConfig,
                        help=f"print the version (cybn {__version__}), OpenMP status, threads and BLAS")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in commands():
        p = command.add_parser(sub)
        p.set_defaults(_command=command, _parser=p)
    return parser


def _one_line(error):
    return " ".join(str(error).split())


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    command = getattr(args, "_command", None)
    if command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return command.run(args)
    except argparse.ArgumentError as e:
        args._parser.error(e.message)
    except BrokenPipeError:  # `cybn config | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except USER_ERRORS as e:
        print(f"cybn: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"cybn: error: training stopped: {_one_line(e)} (the last checkpoint is intact; "
              "--nan-policy skip drops such steps)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cybn: interrupted (the last checkpoint, if any, is intact)", file=sys.stderr)
        return 130
