"""The ``cybn`` command line (also ``python -m cybn``).

Each command is an object with ``name``, ``add_parser(subparsers)`` (returns its parser) and
``run(args)`` (returns the exit code): ``config`` and ``train`` live in ``cybn.cli.train``, the
experiments register theirs in ``cybn.experiments.COMMANDS``. To add one, write a module here and
list its command in ``commands()``.

Errors: a command raises ``argparse.ArgumentError`` for a bad combination of options (usage +
message, exit 2); a user mistake (missing or damaged data, download failure, damaged or foreign
checkpoint, bad run folder) ends in one line ``cybn: error: ...`` and exit 2; a run that stops on
a NaN/Inf exits 1 the same way; Ctrl-C exits 130. Anything else is a bug and keeps its traceback.

Under MPI (``mpiexec -n R cybn ...``) an error that every rank meets alike (ranks disagree, a
NaN/Inf in the summed gradients) is printed once, by rank 0, and every rank exits; any other
error is printed with the rank that met it and ends the whole job (``MPI_Abort``): a rank that
simply exited would leave the others waiting in their next collective.
"""
import argparse
import os
import sys

from .. import _comm
from .._formats import FormatError
from .._threads import SettingError
from ..distributed import DistributedError
from ..checkpoint import CheckpointError
from ..recipe import RunError
from ..train import NonFiniteError

USER_ERRORS = (OSError, RunError, CheckpointError, FormatError, SettingError)


def commands():
    from .. import experiments
    from . import inference, train
    return [train.CONFIG, train.TRAIN, inference.EVALUATE, inference.PREDICT, inference.EXPORT,
            *experiments.COMMANDS]


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


def _error(message, every_rank_alike=False):
    """Print ``cybn: error: message``; under MPI naming the rank, or only on rank 0 when every
    rank meets the same error."""
    comm = _comm.current()
    if comm is None or not comm.distributed:
        print(f"cybn: error: {message}", file=sys.stderr)
    elif not every_rank_alike:
        print(f"cybn: error (rank {comm.rank} of {comm.size}): {message}", file=sys.stderr)
    elif comm.is_root:
        print(f"cybn: error: {message}", file=sys.stderr)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    command = getattr(args, "_command", None)
    if command is None:
        parser.print_help(sys.stderr)
        return 2
    alike = False
    try:
        return command.run(args)
    except argparse.ArgumentError as e:
        args._parser.error(e.message)
    except BrokenPipeError:  # `cybn config | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    except DistributedError as e:
        _error(_one_line(e), every_rank_alike=True)
        code, alike = 2, True
    except USER_ERRORS as e:
        _error(_one_line(e))
        code = 2
    except NonFiniteError as e:  # the summed gradients: the same on every rank
        _error(f"training stopped: {_one_line(e)} (the last checkpoint is intact; "
               "--nan-policy skip drops such steps)", every_rank_alike=True)
        code, alike = 1, True
    except KeyboardInterrupt:
        print("cybn: interrupted (the last checkpoint, if any, is intact)", file=sys.stderr)
        code = 130
    comm = _comm.current()
    if comm is not None and comm.distributed and not alike:
        comm.abort(code)
    return code
