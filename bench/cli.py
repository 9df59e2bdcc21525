"""Command line of ssvae-bench: python -m bench COMMAND ...

Commands: train (one configuration, one JSON line), run (a grid into a results folder), list (estimators
and presets), report (tables, plots and report.html of a results folder), compare (two results folders),
regress (step-time regressions). Bad input prints one line on stderr (bench: error: ...) and exits with
status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from ssvae.config import DEFAULT_RUN

from .compare import add_compare_parser
from .errors import EXIT_USAGE, ConfigError, DataError, Parser, UsageError, add_data_args, fail, int_list
from .harness import add_list_parser, add_run_parser
from .provenance import commit_label, versions
from .regress.cli import add_parser as add_regress_parser
from .report.cli import add_report_parser


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


def build_parser() -> Parser:
    parser = Parser(prog="python -m bench", description=__doc__)
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", parser_class=Parser)

    t = sub.add_parser("train", help="train one configuration and print one JSON line")
    t.add_argument("--estimator", default="enum")
    t.add_argument("--aux", action="store_true", help="add the auxiliary classification loss")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--labels", type=int, default=None, help="labeled images (multiple of 10)")
    g.add_argument("--label-fraction", type=float, default=None, help="labeled fraction of 50,000")
    t.add_argument("--epochs", type=int, default=DEFAULT_RUN.epochs)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--batch-size", type=int, default=DEFAULT_RUN.batch_size)
    t.add_argument("--lr", type=float, default=DEFAULT_RUN.lr)
    t.add_argument("--z-dim", type=int, default=DEFAULT_RUN.z_dim)
    t.add_argument("--hidden", type=int_list, default=list(DEFAULT_RUN.hidden))
    t.add_argument("--aux-multiplier", type=float, default=DEFAULT_RUN.aux_multiplier)
    t.add_argument("--steps-per-epoch", type=int, default=None)
    t.add_argument("--device", default="cpu")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument("--no-progress", action="store_true")
    add_data_args(t)

    add_run_parser(sub)
    add_list_parser(sub)
    add_report_parser(sub)
    add_compare_parser(sub)
    add_regress_parser(sub)
    return parser


def cmd_train(args) -> int:
    import torch
    from tqdm import tqdm

    from ssvae import RunConfig, resolve_labels
    from ssvae import data as ssdata
    from ssvae.train import train

    labels = resolve_labels(args.labels if args.labels is not None or args.label_fraction is not None else 3000,
                            args.label_fraction)
    cfg = RunConfig(estimator=args.estimator, aux=args.aux, labels=labels, seed=args.seed, epochs=args.epochs,
                    batch_size=args.batch_size, lr=args.lr, z_dim=args.z_dim, hidden=tuple(args.hidden),
                    aux_multiplier=args.aux_multiplier, steps_per_epoch=args.steps_per_epoch,
                    device=args.device).validate()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = ssdata.load(cfg.labels, cfg.seed, cfg.device, args.data_dir,
                       download=False if args.no_download else None)
    bar = None

    def progress(ev):
        nonlocal bar
        if args.no_progress:
            return
        if bar is None:
            bar = tqdm(total=ev["steps"] * cfg.epochs, desc=f"{cfg.estimator}{'+aux' if cfg.aux else ''}",
                       unit="step", file=sys.stderr, dynamic_ncols=True)
        if ev["event"] == "step":
            bar.update(1)
        else:
            bar.set_postfix(epoch=ev["epoch"], valid=f"{ev['valid_acc']:.3f}", test=f"{ev['test_acc']:.3f}")

    try:
        result = train(cfg, data, callback=progress)
    finally:
        if bar is not None:
            bar.close()
    print(json.dumps(result.summary()))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        if args.command == "train":
            return cmd_train(args)
        return args.func(args)
    except (UsageError, ConfigError, DataError) as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
