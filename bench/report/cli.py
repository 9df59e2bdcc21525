"""``python -m bench report RESULTS_DIR [--compare-timing DIR ...] [--no-plots] [--margin M] [--level L]``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..commands import COMMANDS
from ..core.errors import EXIT_STORAGE, Parser, UsageError, fail, writable
from ..analysis.paired import CONFIDENCE, DEFAULT_MARGIN
from ..analysis.wall_time import DEFAULT_BUDGET
from ..core.schema import Folder
from .page import build_report


def add_report_parser(subparsers) -> argparse.ArgumentParser:
    """``report RESULTS_DIR [--compare-timing DIR ...] [--no-plots]``; sets ``func=cmd_report``."""
    p = subparsers.add_parser("report", help=COMMANDS["report"].help)
    p.add_argument("results_dir", help="a folder written by `python -m bench run`")
    p.add_argument("--compare-timing", action="append", default=[], metavar="DIR",
                   help="another results folder (e.g. the same preset on another device) whose timing.csv is "
                        "shown beside this one's; may be repeated (default: none)")
    p.add_argument("--no-plots", action="store_true", help="tables and report only, no PNG (default: plots)")
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN, metavar="M",
                   help="non-inferiority margin of the paired verdict, in accuracy (0.01 = 1 point; default: "
                        f"{DEFAULT_MARGIN:g})")
    p.add_argument("--level", type=float, default=CONFIDENCE, metavar="L",
                   help=f"confidence level of the paired intervals (default: {CONFIDENCE:g})")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET, metavar="S",
                   help="the fixed time budget of the accuracy-per-second table, in seconds of training per run "
                        f"on the timing probe's device (default: {DEFAULT_BUDGET:g})")
    p.set_defaults(func=cmd_report)
    return p


def cmd_report(args) -> int:
    root = Path(args.results_dir)
    if not root.is_dir():
        raise UsageError(f"results folder {root} does not exist")
    folder = Folder(root)
    if not (folder.env.is_file() or folder.table("runs").is_file() or any(folder.runs.glob("*.json"))):
        raise UsageError(f"results folder {root} holds no results (no env.json, runs.csv or runs/*.json): give "
                         "the --out folder of a bench run")
    for other in args.compare_timing:
        if not Folder(Path(other)).table("timing").is_file():
            raise UsageError(f"--compare-timing {other}: no timing.csv there")
    if not 0 < args.margin < 1:
        raise UsageError(f"--margin {args.margin:g}: give an accuracy difference between 0 and 1 (0.01 = 1 point)")
    if not 0 < args.level < 1:
        raise UsageError(f"--level {args.level:g}: give a confidence level between 0 and 1 (0.95 = 95 %)")
    if not (0 < args.budget < float("inf")):
        raise UsageError(f"--budget {args.budget:g}: give a positive number of seconds")
    if not writable(root):
        raise UsageError(f"results folder {root} is not writable (the report is written into it): copy the folder "
                         "somewhere writable and report that copy")
    try:
        out = build_report(root, compare_timing=args.compare_timing, plots=not args.no_plots, margin=args.margin,
                           level=args.level, budget=args.budget)
    except OSError as exc:  # the folder stopped taking writes midway (full disk, no inodes)
        return fail(f"cannot write the report into {root} ({exc.strerror or exc}): free space, or copy the "
                    "folder somewhere writable and report that copy", EXIT_STORAGE)
    print(out["report.html"])
    return 0


def main(argv=None) -> int:
    """``python -m bench.report RESULTS_DIR``: the report alone, without the rest of the CLI."""
    parser = Parser(prog="python -m bench.report")
    sub = parser.add_subparsers(dest="command", parser_class=Parser)
    add_report_parser(sub)
    try:
        args = parser.parse_args(["report", *(sys.argv[1:] if argv is None else argv)])
        return args.func(args)
    except UsageError as exc:
        return fail(str(exc))
