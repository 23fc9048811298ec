"""Experiments built on the training recipe (``cybn.recipe``), each with its own subcommand.

``COMMANDS`` lists the top-level commands this package adds to ``cybn`` (objects with ``name``,
``add_parser(subparsers)``, ``run(args)``): ``cybn experiment <name>``, one entry per experiment
in ``EXPERIMENTS``. To add an experiment, write a module here and list its command there.
"""
from .command import ExperimentGroup, SmallInitCommand

EXPERIMENTS = [SmallInitCommand()]
COMMANDS = [ExperimentGroup(EXPERIMENTS)]
