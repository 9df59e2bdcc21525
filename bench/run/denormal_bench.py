"""Seconds per epoch with and without subnormal floats flushed to zero: the measurement behind
``bench.core.numerics``.

``python -m bench.run.denormal_bench [--estimator enum] [--aux on] [--labels 3000] [--seed 0] [--lr 4.072e-3]
[--aux-multiplier 17.21] [--epochs 14] [--out results/benchmarks]`` trains one search trial's config
(``bench.run.search.trial_config`` on the search preset: the search's evaluation plan, validation accuracy each
epoch) twice, in two processes of one torch thread each: once as torch starts (subnormals kept) and once with
``bench.core.numerics.flush_denormals``. Where two CPUs are usable the two run side by side, so that the machine's
load falls on both; on one CPU, one after the other. The defaults are the config that slowed down: enum + aux at
3000 labels with the search's choice after its first 16 trials (trial 19, lr 4.07e-3, aux multiplier 17.2).

Per epoch it keeps the training seconds (``elapsed_seconds`` differences: evaluation excluded), the validation
accuracy, how many values of the run's state are subnormal (nonzero, below 1.2e-38 in magnitude), counted
apart for the parameters and for the optimiser's state, and whether the process was flushing them then
(``flushing``: a subnormal product came out 0). Writes ``denormal-epochs.json`` (every row, what it ran
on) and ``denormal-epochs.md`` (the table), and prints the table. A run beside other processes
(``bench.core.provenance.other_cpu_load`` at least ``bench.core.schema.CONTENDED_LOAD`` cores beyond its own two)
is marked "contended": both runs shared that load."""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

import pyro
import torch

from ssvae import data as ssdata
from ssvae.config import RunConfig
from ssvae.estimators import names
from ssvae.train import train

from ..core.errors import DataError, Parser, UsageError, add_data_args, fail, writable
from ..core.numerics import flush_denormals
from ..core.provenance import commit_label, cpu_name, cpu_times, git_commit, other_cpu_load, usable_cpus
from ..core.schema import CONTENDED_LOAD
from ..core.store import write_measurement
from . import grid as gridmod
from .search import EVALUATION, trial_config

REPO = Path(__file__).resolve().parents[2]
TINY = torch.finfo(torch.float32).tiny  # the smallest normal float32, 1.18e-38
WAYS = ("default", "flushed")


def subnormals(tree) -> int:
    """How many values of the float tensors in ``tree`` (nested dicts and lists) are subnormal."""
    if isinstance(tree, torch.Tensor):
        if not tree.is_floating_point():
            return 0
        t = tree.detach().abs()
        return int(((t > 0) & (t < torch.finfo(t.dtype).tiny)).sum())
    if isinstance(tree, dict):
        return sum(subnormals(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(subnormals(v) for v in tree)
    return 0


def flushing() -> bool:
    """Whether this process flushes subnormal floats now: a subnormal product comes out 0."""
    return (torch.tensor([TINY]) * 0.5).item() == 0.0


def epoch_rows(cfg, data, flush: bool) -> List[Dict]:
    """Train ``cfg`` on ``data`` in this process (flushing subnormals first if ``flush``); a row per epoch."""
    if flush:
        flush_denormals()
    rows: List[Dict] = []

    def hook(state: dict) -> None:
        row, trainer = state["curves"][-1], state["trainer"]
        before = rows[-1]["elapsed_seconds"] if rows else 0.0
        rows.append({"epoch": row["epoch"], "seconds": round(row["elapsed_seconds"] - before, 2),
                     "elapsed_seconds": row["elapsed_seconds"], "valid_acc": row["valid_acc"],
                     "subnormal_params": subnormals(trainer["param_store"]),
                     "subnormal_optimiser": subnormals(trainer["optimizer"]), "flushing": flushing()})
    train(cfg, data, evaluation=EVALUATION, on_epoch_end=hook)
    return rows


def _child(cfg_dict: dict, root: str, flush: bool) -> List[Dict]:
    torch.set_num_threads(1)
    cfg = RunConfig.from_dict(cfg_dict)
    return epoch_rows(cfg, ssdata.load(cfg.labels, cfg.seed, cfg.device, root, download=False), flush)


def config(estimator: str, aux: bool, labels: int, seed: int, lr: float, aux_multiplier: float, epochs: int):
    """The search preset's config of one trial (``bench.run.search.trial_config``), ``epochs`` long."""
    grid = gridmod.make_grid(gridmod.load_preset("search"))
    values = {"lr": lr, **({"aux_multiplier": aux_multiplier} if aux else {})}
    return dataclasses.replace(trial_config(grid, estimator, aux, labels, seed, values), epochs=epochs)


def run(cfg, root: str) -> dict:
    """Both ways of ``cfg``, in two processes (side by side where two CPUs are usable), and what they ran on."""
    side_by_side = usable_cpus() >= 2
    start, t0, load0 = cpu_times(), time.perf_counter(), os.getloadavg()
    ctx = multiprocessing.get_context("spawn")
    # a fresh process for each way: the flushed run's setting never reaches the other
    with ProcessPoolExecutor(max_workers=2 if side_by_side else 1, mp_context=ctx, max_tasks_per_child=1) as pool:
        futures = {way: pool.submit(_child, cfg.to_dict(), root, way == "flushed") for way in WAYS}
        rows = {way: f.result() for way, f in futures.items()}
    seconds = time.perf_counter() - t0
    # the two children are this measurement's own load: everything beyond them is someone else's
    other = other_cpu_load(start, cpu_times(), seconds)
    other = None if other is None else round(max(0.0, other - (2 if side_by_side else 1)), 2)
    return {"rows": rows, "config": cfg.to_dict(), "side_by_side": side_by_side, "threads": 1,
            "cpu": cpu_name(), "torch": torch.__version__, "pyro": pyro.__version__,
            "python": platform.python_version(), "commit": commit_label(git_commit()), "seconds": round(seconds, 1),
            "other_cpu_load": other, "loadavg_1min": [round(load0[0], 2), round(os.getloadavg()[0], 2)],
            "contended": other is not None and other >= CONTENDED_LOAD}


def markdown(result: dict) -> str:
    """The table of ``result`` (:func:`run`) with what it ran on."""
    r, c = result, result["config"]
    variant = c["estimator"] + (" + aux" if c["aux"] else "")
    state = (f"**contended**: other processes kept {r['other_cpu_load']} cores busy on average beside the two runs"
             if r["contended"] else f"uncontended (other processes: {r['other_cpu_load']} cores)")
    how = "side by side, one core each" if r["side_by_side"] else "one after the other on one core"
    lines = ["# Seconds per epoch with and without subnormal floats flushed", "",
             f"`python -m bench.run.denormal_bench`: {variant}, {c['labels']} labels, seed {c['seed']}, lr "
             f"{c['lr']:.4g}" + (f", aux multiplier {c['aux_multiplier']:.4g}" if c["aux"] else "") +
             f", {c['epochs']} epochs, one torch thread, the two runs {how}; {r['cpu']}, torch {r['torch']}, "
             f"commit {r['commit']}; {state}.", "",
             "| epoch | seconds, default | seconds, flushed | valid acc, default | valid acc, flushed "
             "| subnormal values in the parameters (default) | in the optimiser's state (default) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for d, f in zip(r["rows"]["default"], r["rows"]["flushed"]):
        lines.append(f"| {d['epoch']} | {d['seconds']:.1f} | {f['seconds']:.1f} | {d['valid_acc']:.4f} | "
                     f"{f['valid_acc']:.4f} | {d['subnormal_params']} | {d['subnormal_optimiser']} |")
    lines += ["", "Seconds: training time of the epoch (evaluation excluded). Subnormal: nonzero values below "
              "1.2e-38 in magnitude in the run's state after the epoch, counted in the run that kept them (the "
              "flushed run holds none). docs/results.md, \"Subnormal floats\", says what the project does about "
              "it; every row is in denormal-epochs.json.", ""]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = Parser(prog="python -m bench.run.denormal_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--estimator", default="enum", help="a registered estimator (default enum)")
    ap.add_argument("--aux", choices=("on", "off"), default="on", help="the auxiliary loss (default on)")
    ap.add_argument("--labels", type=int, default=3000, help="labelled digits (default 3000)")
    ap.add_argument("--seed", type=int, default=0, help="the run's seed (default 0)")
    ap.add_argument("--lr", type=float, default=4.072e-3, help="learning rate (default 4.072e-3)")
    ap.add_argument("--aux-multiplier", type=float, default=17.21, help="with --aux on (default 17.21)")
    ap.add_argument("--epochs", type=int, default=14, help="epochs of each run (default 14)")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks", help="folder of the two files")
    add_data_args(ap)
    try:
        args = ap.parse_args(argv)
        if args.estimator not in names():
            raise UsageError(f"--estimator {args.estimator!r} is not an estimator (known: {', '.join(names())})")
        if args.epochs < 1 or args.labels < 1 or args.lr <= 0 or args.aux_multiplier <= 0:
            raise UsageError("--epochs and --labels must be at least 1, --lr and --aux-multiplier above 0")
        if not writable(args.out):
            raise UsageError(f"{args.out} cannot be written")
        cfg = config(args.estimator, args.aux == "on", args.labels, args.seed, args.lr, args.aux_multiplier,
                     args.epochs)
        root = ssdata.locate_mnist(args.data_dir, download=False if args.no_download else None)
        ssdata.check_raw(root)
    except (UsageError, ValueError, DataError) as exc:
        return fail(str(exc))
    result = run(cfg, str(root))
    write_measurement(args.out, "denormal-epochs", result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
