"""``python -m bench list``: the estimators (each unlabeled step's cost relative to trace's, from the newest
CPU timing table of this machine's model) and the presets (tasks, workers, estimated wall time on this CPU)."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional

from ssvae.estimators import REGISTRY

from ..commands import COMMANDS
from ..core.provenance import cpu_name
from ..core.schema import Folder
from . import estimate
from . import grid as gridmod
from . import tune as tunemod
from .harness import REPO, device_machine


def add_list_parser(sub) -> None:
    ls = sub.add_parser("list", help=COMMANDS["list"].help)
    ls.add_argument("--timing", default=None, help="a timing.csv to take costs relative to trace from")
    ls.set_defaults(func=cmd_list)


def _unsup_ms(path) -> dict:
    """Each estimator's unlabeled step (ms) in a timing.csv: one measurement, repeated on its aux rows."""
    by = {}
    for r in csv.DictReader(open(path)):
        if r["step_kind"] == "unsup":
            by.setdefault(r["estimator"], float(r["median_ms"]))
    return by


def _local_timing() -> Optional[str]:
    """The newest CPU timing.csv under results/ (the committed references included) that times trace, measured
    on a CPU of this machine's model; else the newest CPU one that times trace."""
    found = []
    for t in [*REPO.glob("results/*/timing.csv"), *REPO.glob("results/reference/*/timing.csv")]:
        try:
            env = json.loads(Folder(t.parent).env.read_text())
            times_trace = "trace" in _unsup_ms(t)
        except (OSError, ValueError, KeyError):
            continue
        # a tuning run's probe is minimal (3 steps); a grid without trace gives no cost relative to it
        if env.get("device") == "cpu" and env.get("preset") != "tune" and times_trace:
            found.append((env.get("cpu_name") == cpu_name(), t.stat().st_mtime, str(t)))
    return max(found)[2] if found else None


def cmd_list(args) -> int:
    cost = {}
    path = args.timing
    if path is None:
        path = _local_timing()
    if path and Path(path).is_file():
        by = _unsup_ms(path)
        if "trace" in by:
            cost = {e: ms / by["trace"] for e, ms in by.items()}
    width = max(10, *(len(n) for n in REGISTRY))
    print(f"{'estimator':{width}s} {'cost/trace':>10s}  description")
    for name, est in REGISTRY.items():
        c = f"{cost[name]:.1f}x" if name in cost else "-"
        print(f"{name:{width}s} {c:>10s}  {est.description}")
    if cost:
        print(f"(unsupervised step cost relative to trace, from {path})")
    cal = estimate.calibrate([REPO / "results"], device_machine("cpu"))
    print(f"\n{'preset':8s} {'tasks':>5s} {'workers':>7s} {'wall time':>10s} {'probe':>5s}  description")
    for name in gridmod.preset_names():
        grid = gridmod.make_grid(gridmod.load_preset(name))
        tasks = gridmod.expand(grid)
        scale = 1.0
        if grid.search:  # a search trains each cell once per trial, mostly cut short by its pruner
            tasks = [t for t in tasks if t["kind"] == "train"]
            scale = grid.search["trials"] * tunemod.search_share(grid.search, grid.epochs)
        est = estimate.plan(tasks, grid.workers, cal=cal) if cal else None
        wall = estimate.duration(est.total * scale).replace("about ", "") if est else "?"
        share = f"{100 * est.probe_share:.0f}%" if est and est.probe_share is not None else "?"
        share = "-" if grid.search else share  # a search's trials probe nothing
        n = len(tasks) * (grid.search["trials"] if grid.search else 1)
        print(f"{name:8s} {n:5d} {grid.workers:7d} {wall:>10s} {share:>5s}  {grid.description}")
    if cal:
        print(f"(CPU wall time with the preset's workers, each task at the measured rate of its kind and part, the "
              f"schedule played out (bench/run/estimate.py); {cal.describe()}; probe: the gradient probe's share; "
              f"a search: its cells x trials, each trial cut at the rate its halving keeps)")
    return 0
