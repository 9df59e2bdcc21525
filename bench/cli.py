"""Command line of ssvae-bench: python -m bench COMMAND ...

Commands: train (one configuration, one JSON line), run (a grid into a results folder), list (estimators
and presets), report (tables, plots and report.html of a results folder), compare (two results folders),
search (tuning at the reporting budget, pruned on validation accuracy), tune (choices from a tuning run or
a search), regress (step-time regressions). Bad input prints one line on stderr (bench: error: ...) and
exits with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Iterable, List, Optional

from .commands import COMMANDS
from .core.errors import EXIT_USAGE, ConfigError, DataError, Parser, UsageError, fail
from .core.provenance import commit_label, versions


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ssvae-bench")
    except PackageNotFoundError:
        return "(not installed)"


class _Version(argparse.Action):
    """``--version``: the package, the commit and torch's version, looked up only when asked."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="show the version, the commit and torch's version, and exit"):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"ssvae-bench {_version()} (commit {commit_label()[:12]}, torch {versions()['torch']})")
        parser.exit()


def build_parser(load: Optional[Iterable[str]] = None) -> Parser:
    """The parser; ``load``: the commands whose own parsers are built (default: all). The others are
    named with their one-line help only, so ``--help`` and a command's run import nothing they do not need
    (no torch for the top-level help)."""
    parser = Parser(prog="python -m bench", description=__doc__)
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", parser_class=Parser)
    load = set(COMMANDS if load is None else load)
    for name, command in COMMANDS.items():
        if name in load:
            getattr(importlib.import_module(command.module), command.adder)(sub)
        else:
            sub.add_parser(name, help=command.help)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(load=[command] if command in COMMANDS else [])
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        return args.func(args)
    except (UsageError, ConfigError, DataError) as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
