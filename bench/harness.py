"""``python -m bench run``: expand a preset into tasks, run what is missing, write the tables.

A rerun of the same command skips tasks whose result file is complete (status ok or
diverged, same spec) and runs only what is missing or failed; ``--force`` reruns all.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import List, Optional

from ssvae import resolve_labels
from ssvae.config import check_device
from ssvae.errors import ConfigError

from . import grid as gridmod
from .errors import add_data_args
from .provenance import commit_label, cpu_name, device_name, versions
from .store import OutputLock, atomic_write_json, is_done, read_result, result_path, write_tables

REPO = Path(__file__).resolve().parents[1]


def _csv(kind):
    def parse(text: str):
        items = [v.strip() for v in text.split(",") if v.strip()]
        try:
            return [kind(v) for v in items]
        except ValueError:
            raise ValueError(f"expected a comma-separated list, got {text!r}")
    parse.__name__ = f"list of {kind.__name__}"
    return parse


def add_run_parser(sub) -> None:
    r = sub.add_parser("run", help="run a grid (a preset plus overrides) into an output folder")
    r.add_argument("--preset", default="quick", help=f"one of: {', '.join(gridmod.preset_names())}")
    r.add_argument("--out", default=None, help="output folder (default results/<preset>-<device>)")
    r.add_argument("--device", default="cpu")
    r.add_argument("--estimators", type=_csv(str), default=None, help="e.g. trace,enum (default: the preset's)")
    r.add_argument("--aux", choices=["both", "on", "off"], default=None, help="auxiliary loss variants")
    r.add_argument("--no-baseline", action="store_true")
    r.add_argument("--labels", type=_csv(int), default=None, help="label counts, e.g. 100,3000")
    r.add_argument("--label-fraction", type=_csv(float), default=None, help="label fractions, e.g. 0.02")
    r.add_argument("--seeds", type=int, default=None, help="number of seeds (0..N-1)")
    r.add_argument("--epochs", type=int, default=None)
    r.add_argument("--steps-per-epoch", type=int, default=None)
    r.add_argument("--batch-size", type=int, default=None)
    r.add_argument("--workers", type=int, default=None, help="cells at a time (default: 1 per GPU, 1 on CPU)")
    r.add_argument("--threads", type=int, default=None, help="torch threads per cell (default: cores / workers)")
    r.add_argument("--executor", default="local", help="local (default: a process per cell) or dask")
    r.add_argument("--scheduler", default=None,
                   help="dask scheduler address tcp://HOST:PORT (default: start a LocalCluster)")
    r.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any preset field, e.g. --set lr=0.001 --set probe.variance_samples=50")
    r.add_argument("--tuned", default=None, metavar="FILE",
                   help="apply the choices of a tuning run (its tuned.json: python -m bench.tune OUT)")
    r.add_argument("--force", action="store_true", help="rerun every task, even those already done")
    r.add_argument("--dry-run", action="store_true", help="list the tasks and whether they are done")
    add_data_args(r)
    r.set_defaults(func=cmd_run)


def add_other_parsers(sub) -> None:
    ls = sub.add_parser("list", help="list estimators and presets")
    ls.add_argument("--timing", default=None, help="a timing.csv to take costs relative to trace from")
    ls.set_defaults(func=cmd_list)
    from .report import add_report_parser
    add_report_parser(sub)
    from .compare import add_compare_parser
    add_compare_parser(sub)


def grid_from_args(args) -> gridmod.Grid:
    preset = gridmod.load_preset(args.preset)
    if getattr(args, "tuned", None):
        from .tune import apply_choices, load_choices
        choices, args.tuned_info = load_choices(args.tuned)
        preset = apply_choices(preset, choices)
    if args.seeds is not None and args.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1 (got {args.seeds})")
    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1 (got {args.epochs})")
    overrides = {
        "estimators": args.estimators, "labels": args.labels, "label_fractions": args.label_fraction,
        "seeds": args.seeds, "epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch,
        "batch_size": args.batch_size, "device": args.device,
        "aux": {"both": [False, True], "on": [True], "off": [False], None: None}[args.aux],
        "baseline": False if args.no_baseline else None,
    }
    if args.labels is not None and args.label_fraction is not None:
        raise ConfigError("give --labels or --label-fraction, not both")
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected FIELD=VALUE")
        try:
            value = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            pass  # a bare string
        if key.startswith("probe."):
            sub = key.split(".", 1)[1]
            if sub not in gridmod.PROBE_FIELDS:
                raise ConfigError(f"unknown probe field {sub!r}: known {', '.join(sorted(gridmod.PROBE_FIELDS))}")
            preset.setdefault("probe", {})[sub] = value
        elif key.startswith("options."):  # options.rb-topk.k=3
            est, _, opt = key.split(".", 1)[1].partition(".")
            if not opt:
                raise ConfigError(f"--set {item!r}: expected options.ESTIMATOR.OPTION=VALUE")
            preset["options"] = {e: dict(o) for e, o in preset.get("options", {}).items()}
            preset["options"].setdefault(est, {})[opt] = value
        elif key in gridmod.GRID_FIELDS - {"probe", "options"}:
            preset[key] = value
        else:
            raise ConfigError(f"unknown field {key!r}: known {', '.join(sorted(gridmod.GRID_FIELDS - {'probe', 'options'}))}"
                              f", probe.* and options.ESTIMATOR.*")
    if args.label_fraction is not None:
        overrides["labels"] = [resolve_labels(None, f) for f in args.label_fraction]
        overrides["label_fractions"] = None
        preset.pop("label_fractions", None)
    return gridmod.make_grid(preset, overrides)


def check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output folder {out} is a file: choose another --out")
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    try:  # os.access says yes to root everywhere; a real file says what the file system allows
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError:
        raise ConfigError(f"output folder {out} is not writable: choose another --out") from None


def environment(grid: gridmod.Grid, tasks: List[dict], data_sha: str, workers: int, threads: int,
                executor: str) -> dict:
    return {
        **versions(), "platform": platform.platform(),
        "device": grid.device, "device_name": device_name(grid.device), "cpu_name": cpu_name(),
        "cpu_count": os.cpu_count(), "threads": threads, "workers": workers, "executor": executor,
        "git_commit": commit_label(), "data_sha256": data_sha, "preset": grid.name,
        "command": " ".join(shlex.quote(a) for a in ["python", "-m", "bench"] + sys.argv[1:]),
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "grid": grid.to_dict(),
        "expected_cells": [t["id"] for t in tasks if t["kind"] == "train"],
        "expected_probes": [t["id"] for t in tasks if t["kind"] != "train"],
    }


def _earlier_runs(path: Path) -> List[dict]:
    """What earlier commands on this folder ran (a resumed grid keeps the provenance of every part)."""
    try:
        prev = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    keep = ("git_commit", "date", "command", "torch", "pyro", "device_name", "threads", "tasks_run")
    return prev.get("earlier_runs", []) + [{k: prev.get(k) for k in keep}]


class Progress:
    """One status line: tasks done / total, the current task, its epoch and step, an ETA."""

    def __init__(self, tasks: List[dict], todo: List[dict]):
        self.total = len(tasks)
        self.done = self.total - len(todo)
        self.units = {t["id"]: _units(t) for t in tasks}
        self.todo_units = sum(self.units[t["id"]] for t in todo)
        self.units_done = 0.0
        self.start = time.time()
        self.tty = sys.stderr.isatty()
        self.counts = {}

    def update(self, executor, record: Optional[dict]) -> None:
        if record is not None:
            status = record.get("status")
            if status != "requeued":
                self.done += 1
                self.units_done += self.units.get(record["id"], 1)
                self.counts[status] = self.counts.get(status, 0) + 1
            line = f"[{self.done}/{self.total}] {record['id']}: {status}"
            if record.get("error"):
                line += f" ({str(record['error'])[:160]})"
            self._print(line, final=True)
        partial, current = 0.0, []
        for tid, run in executor.running.items():
            p = run.progress
            if p.get("steps"):
                frac = ((p.get("epoch", 1) - 1) * p["steps"] + p.get("step", 0)) / (
                    p["steps"] * _epochs(run.spec))
                partial += min(frac, 1.0) * self.units[tid]
                current.append(f"{tid} epoch {p.get('epoch', 1)}/{_epochs(run.spec)} "
                               f"step {p.get('step', 0)}/{p['steps']}")
            else:
                current.append(f"{tid} starting")
        if self.tty and record is None:
            self._print(f"[{self.done}/{self.total}] {'; '.join(current)} | ETA {self.eta(partial)}")

    def eta(self, partial: float) -> str:
        done = self.units_done + partial
        if done <= 0:
            return "?"
        left = (time.time() - self.start) / done * max(self.todo_units - done, 0)
        return f"{int(left // 60)}m{int(left % 60):02d}s"

    def _print(self, line: str, final: bool = False) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K" + line[:200] + ("\n" if final else ""))
        else:
            print(line, file=sys.stderr)
        sys.stderr.flush()


def _epochs(spec: dict) -> int:
    return (spec.get("config") or {}).get("epochs", 1) if spec["kind"] != "timing" else 1


def _units(spec: dict) -> float:
    """A rough cost of a task in enum-step equivalents, for the ETA."""
    cfg = spec.get("config") or {}
    if spec["kind"] == "timing":
        return 60.0
    steps = _epochs(spec) * gridmod._steps_per_epoch(gridmod.RunConfig.from_dict(cfg))
    weight = {"baseline": 0.05, "trace": 0.2}.get(cfg.get("estimator"), 1.0)
    if spec["kind"] == "common":
        steps = max(spec["checkpoints"]) + len(spec["checkpoints"]) * len(spec["estimators"]) * spec["n_samples"]
    return max(steps * weight, 1.0)


def cmd_run(args) -> int:
    from ssvae import data as ssdata
    from .executors import EXECUTORS

    grid = grid_from_args(args)
    check_device(grid.device)
    if args.executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {args.executor!r}: choose from {', '.join(EXECUTORS)}")
    out = Path(args.out or f"results/{grid.name}-{grid.device.replace(':', '')}")
    check_out_dir(out)
    root = ssdata.locate_mnist(args.data_dir, download=False if args.no_download else None)
    data_sha = ssdata.sha256_file(root / "MNIST" / "raw" / ssdata.TRAIN_IMAGES)
    tasks = gridmod.expand(grid)
    todo = [t for t in tasks if args.force or not is_done(out, t)]
    if args.dry_run:
        for t in tasks:
            print(f"{'todo' if t in todo else 'done'}  {t['kind']:7s} {t['id']}")
        return 0
    workers = args.workers or grid.workers
    gpus = []
    if grid.device == "cuda":  # one cell per GPU, each pinned with CUDA_VISIBLE_DEVICES
        import torch
        gpus = list(range(torch.cuda.device_count()))
        workers = min(args.workers or len(gpus), len(gpus))
    elif grid.device.startswith("cuda"):  # cuda:N names one GPU
        workers = 1
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be at least 1 (got {args.workers})")
    kwargs = {"scheduler": args.scheduler} if args.executor == "dask" else {"gpus": gpus}
    if args.scheduler and args.executor != "dask":
        raise ConfigError("--scheduler needs --executor dask")
    executor = EXECUTORS[args.executor](workers=workers, threads=args.threads, data_dir=str(root), **kwargs)
    if hasattr(executor, "connect"):
        executor.connect()  # a scheduler that does not answer fails here, before anything is written
    with OutputLock(out):
        env = environment(grid, tasks, data_sha, workers, executor.threads, args.executor)
        env["tasks_run"] = [t["id"] for t in todo]
        if getattr(args, "tuned_info", None):
            env["tuned"] = args.tuned_info  # the choice file, its sha256 and the values it set
        env["earlier_runs"] = _earlier_runs(out / "env.json")
        atomic_write_json(out / "env.json", env)
        print(f"bench: {grid.name} on {grid.device}: {len(tasks)} tasks, {len(tasks) - len(todo)} already done, "
              f"{len(todo)} to run -> {out}", file=sys.stderr)
        progress = Progress(tasks, todo)

        def on_update(ex, record):
            progress.update(ex, record)
            if record is not None:
                write_tables(out, tasks)

        try:
            executor.run(todo, out, on_update)
        except KeyboardInterrupt:
            write_tables(out, tasks)
            done = sum(is_done(out, t) for t in tasks)
            print(f"\nbench: interrupted; {done}/{len(tasks)} tasks are done and kept in {out}. "
                  f"Rerun the same command to resume.", file=sys.stderr)
            return 130
        write_tables(out, tasks)
    failed = [t["id"] for t in tasks if (read_result(result_path(out, t))[0] or {}).get("status") == "failed"]
    summary = ", ".join(f"{n} {s}" for s, n in sorted(progress.counts.items())) or "nothing to run"
    print(f"bench: grid complete ({summary}); tables in {out}", file=sys.stderr)
    if failed:
        print(f"bench: {len(failed)} task(s) failed: {', '.join(failed[:10])}; rerun to retry them",
              file=sys.stderr)
        return 1
    return 0


def _local_timing() -> Optional[str]:
    """The newest CPU timing.csv under results/ (the committed reference included) measured on a CPU
    of this machine's model; else the newest CPU one."""
    found = []
    for t in [*REPO.glob("results/*/timing.csv"), *REPO.glob("results/reference/*/timing.csv")]:
        try:
            env = json.loads((t.parent / "env.json").read_text())
        except (OSError, ValueError):
            continue
        if env.get("device") == "cpu" and env.get("preset") != "tune":  # a tuning run's probe is minimal (3 steps)
            found.append((env.get("cpu_name") == cpu_name(), t.stat().st_mtime, str(t)))
    return max(found)[2] if found else None


def cmd_list(args) -> int:
    import csv

    from ssvae.estimators import REGISTRY

    cost = {}
    path = args.timing
    if path is None:
        path = _local_timing()
    if path and Path(path).is_file():
        rows = [r for r in csv.DictReader(open(path)) if r["step_kind"] == "unsup" and r["aux"] == "False"]
        by = {r["estimator"]: float(r["median_ms"]) for r in rows}
        if "trace" in by:
            cost = {e: ms / by["trace"] for e, ms in by.items()}
    width = max(10, *(len(n) for n in REGISTRY))
    print(f"{'estimator':{width}s} {'cost/trace':>10s}  description")
    for name, est in REGISTRY.items():
        c = f"{cost[name]:.1f}x" if name in cost else "-"
        print(f"{name:{width}s} {c:>10s}  {est.description}")
    if cost:
        print(f"(unsupervised step cost relative to trace, from {path})")
    print("\npresets: " + ", ".join(gridmod.preset_names()))
    return 0
