"""``python -m bench compare OLD NEW``: the command's parser and its run (:func:`add_compare_parser`,
:func:`cmd_compare`). The comparison is :mod:`bench.report.compare`'s, its text and CSV :mod:`bench.report.compare_render`'s.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..commands import COMMANDS
from .compare import Options, compare
from .compare_render import render, write_csv
from ..core.errors import UsageError


def _nonneg(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if not 0 <= v < math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite non-negative number, got {text!r}")
    return v


def add_compare_parser(subparsers) -> argparse.ArgumentParser:
    """``compare OLD NEW [--acc-tol X] [--time-tol X] [--var-k K] [--strict-time] [--csv OUT]``."""
    p = subparsers.add_parser(
        "compare", help=COMMANDS["compare"].help,
        description="Put the cells of two results folders side by side and flag differences beyond their "
                    "noise. Status: ok -> failed/diverged/corrupt/stale. Accuracy per variant: |new-old| > "
                    "max(--acc-tol, t95 x Welch SE over seeds); one seed a side: --acc-tol alone. Time per step: "
                    "new/old median > 1 + max(--time-tol, relative IQRs in quadrature); on different machines "
                    "the step time relative to trace within each folder instead. Gradient variance (common "
                    "trajectory): |ln(new/old)| > --var-k x sqrt(2/(n_old-1) + 2/(n_new-1)). Exit 0: nothing "
                    "flagged; 1: something flagged; 2: bad input.")
    p.add_argument("old", help="the reference results folder (written by `python -m bench run`)")
    p.add_argument("new", help="the results folder to check against it")
    p.add_argument("--acc-tol", type=_nonneg, default=0.01,
                   help="accuracy differences up to this are never flagged; the whole rule with one seed a side "
                        "(default 0.01 = 1 point)")
    p.add_argument("--time-tol", type=_nonneg, default=0.25,
                   help="smallest relative slowdown flagged (default 0.25: new/old > 1.25)")
    p.add_argument("--var-k", type=_nonneg, default=3.0,
                   help="variance ratios beyond k combined standard errors of the log variance are flagged "
                        "(default 3)")
    p.add_argument("--strict-time", action="store_true",
                   help="flag absolute step-time ratios even when the folders come from different machines")
    p.add_argument("--csv", default=None, metavar="OUT", help="write every comparison row to this CSV file")
    p.add_argument("--flagged-only", action="store_true", help="print only the flagged rows of each table")
    p.set_defaults(func=cmd_compare)
    return p


def cmd_compare(args) -> int:
    if args.csv is not None:
        parent = Path(args.csv).resolve().parent
        if not parent.is_dir():
            raise UsageError(f"--csv {args.csv}: folder {parent} does not exist")
    cmp = compare(args.old, args.new, Options(acc_tol=args.acc_tol, time_tol=args.time_tol, var_k=args.var_k,
                                               strict_time=args.strict_time))
    print(render(cmp, flagged_only=args.flagged_only))
    if args.csv is not None:
        try:
            write_csv(cmp, args.csv)
        except OSError as exc:
            raise UsageError(f"--csv {args.csv}: {exc.strerror or exc}")
    return 1 if cmp.flagged() else 0
