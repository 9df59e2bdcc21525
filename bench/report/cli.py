"""``python -m bench report RESULTS_DIR [--compare-timing DIR ...] [--no-plots] [--margin M] [--time-fraction F]``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import Parser, UsageError, fail
from ..paired import DEFAULT_MARGIN, DEFAULT_TIME_FRACTION
from .page import build_report


def add_report_parser(subparsers) -> argparse.ArgumentParser:
    """``report RESULTS_DIR [--compare-timing DIR ...] [--no-plots]``; sets ``func=cmd_report``."""
    p = subparsers.add_parser("report", help="write tables, plots, report.md and report.html into a results folder")
    p.add_argument("results_dir", help="a folder written by `python -m bench run`")
    p.add_argument("--compare-timing", action="append", default=[], metavar="DIR",
                   help="another results folder (e.g. the same preset on another device) whose timing.csv is "
                        "shown beside this one's; may be repeated (default: none)")
    p.add_argument("--no-plots", action="store_true", help="tables and report only, no PNG (default: plots)")
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN, metavar="M",
                   help="equivalence margin of the paired verdict, in accuracy (0.01 = 1 point; default: "
                        f"{DEFAULT_MARGIN:g})")
    p.add_argument("--time-fraction", type=float, default=DEFAULT_TIME_FRACTION, metavar="F",
                   help="the verdict's time bound, a fraction of enum + aux's time per epoch from the timing "
                        f"probe (default: {DEFAULT_TIME_FRACTION:g})")
    p.set_defaults(func=cmd_report)
    return p


def cmd_report(args) -> int:
    root = Path(args.results_dir)
    if not root.is_dir():
        raise UsageError(f"results folder {root} does not exist")
    if not any((root / name).is_file() for name in ("env.json", "runs.csv")) and not any(root.glob("runs/*.json")):
        raise UsageError(f"results folder {root} holds no results (no env.json, runs.csv or runs/*.json): give "
                         "the --out folder of a bench run")
    for other in args.compare_timing:
        if not (Path(other) / "timing.csv").is_file():
            raise UsageError(f"--compare-timing {other}: no timing.csv there")
    if not 0 < args.margin < 1:
        raise UsageError(f"--margin {args.margin:g}: give an accuracy difference between 0 and 1 (0.01 = 1 point)")
    if not 0 < args.time_fraction:
        raise UsageError(f"--time-fraction {args.time_fraction:g}: give a positive fraction (0.6 = 60 %)")
    out = build_report(root, compare_timing=args.compare_timing, plots=not args.no_plots, margin=args.margin,
                       time_fraction=args.time_fraction)
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
