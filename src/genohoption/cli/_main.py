"""The ``genohoption`` console script: one parser with a command per job."""

from __future__ import annotations

import argparse

from . import _annotate, _perturb
from ._common import PROG, Parser, UserError, console_output, yielding_thread_pools

DESCRIPTION = "Command line: ``genohoption annotate`` and ``genohoption perturb`` (also ``python -m genohoption ...``)."

COMMANDS = {_annotate.COMMAND: _annotate, _perturb.COMMAND: _perturb}
"""Each command's module: ``add_parser(sub)``, ``run(args) -> metrics``, ``report(metrics, args)``."""


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of every command."""
    parser = Parser(prog=PROG, description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``genohoption`` console script; returns the exit status (0).

    A mistake in the options or the input files is reported in one line on stderr and exits with status 2
    (:class:`SystemExit`), before any training.
    """
    yielding_thread_pools()
    parser = build_parser()
    args = parser.parse_args(argv)
    command = COMMANDS[args.command]
    with console_output(args.verbose):
        try:
            metrics = command.run(args)
        except UserError as err:
            parser.exit(2, f"{PROG} {args.command}: error: {err}\n")
    command.report(metrics, args)
    return 0
