"""``python -m bench train``: train one configuration and print its summary as one JSON line (with
``flush_denormal``: whether subnormal floats were flushed to zero, as in every task of a grid)."""
from __future__ import annotations

import json
import sys

import torch
from tqdm import tqdm

from ssvae import RunConfig, resolve_labels
from ssvae import data as ssdata
from ssvae.config import DEFAULT_RUN
from ssvae.estimators import validate
from ssvae.train import train

from ..commands import COMMANDS
from ..core.errors import add_data_args, int_list
from ..core.numerics import flush_denormals


def add_train_parser(sub) -> None:
    t = sub.add_parser("train", help=COMMANDS["train"].help)
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

    t.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    labels = resolve_labels(args.labels if args.labels is not None or args.label_fraction is not None else 3000,
                            args.label_fraction)
    cfg = validate(RunConfig(estimator=args.estimator, aux=args.aux, labels=labels, seed=args.seed,
                             epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, z_dim=args.z_dim,
                             hidden=tuple(args.hidden), aux_multiplier=args.aux_multiplier,
                             steps_per_epoch=args.steps_per_epoch, device=args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    flushed = flush_denormals()
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
    print(json.dumps({**result.summary(), "flush_denormal": flushed}))
    return 0
