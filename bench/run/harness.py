"""``python -m bench run``: expand a preset into tasks, run what is missing, write the tables.

Resume by identity: a rerun reuses a finished record (status ok or diverged) only when its spec (every
run field, estimator options, the probe settings that task uses), the sha256 of the four MNIST files
and the torch and pyro versions are this run's; anything else is stale and runs again. A different
git commit alone is not stale (the record keeps its commit; the report counts them).

One folder, one grid: a run into a folder whose grid differs in a setting its cells use (lr, epochs,
network sizes, options of a shared estimator, the cells' probe settings...) is refused in one line that
names ``--force`` (run this grid there anyway: the other grid's records stay, and the report lists them
as outside this grid) and ``--out``. A run of a subset or a superset of the same settings (other
estimators, labels or seeds) is not another grid: it reuses what is done.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
import sys
import time
import tomllib
import uuid
from pathlib import Path
from typing import List, Optional

from ssvae import data as ssdata
from ssvae import resolve_labels
from ssvae.config import check_device
from ssvae.errors import ConfigError

from ..commands import COMMANDS
from . import grid as gridmod
from . import tune as tunemod
from ..core.errors import EXIT_STORAGE, StorageError, add_data_args, fail, writable
from .executors import EXECUTORS, executor_options
from .gpu_plan import plan_gpus
from ..core.provenance import commit_label, cpu_name, device_name, identity, run_parts, usable_cpus, versions
from ..core.schema import Folder, grid_difference, grid_union
from . import estimate
from .progress import Progress
from .tasks import KINDS
from ..core.store import (OutputLock, atomic_write_json, conflicts, is_done, normalise, read_result, result_path,
                    run_identity, stale_reason)
from ..core.tables import write_tables

REPO = Path(__file__).resolve().parents[2]


def _csv(kind):
    def parse(text: str):
        items = [v.strip() for v in text.split(",") if v.strip()]
        try:
            return [kind(v) for v in items]
        except ValueError:
            raise ValueError(f"expected a comma-separated list, got {text!r}")
    parse.__name__ = f"list of {kind.__name__}"
    return parse


def add_grid_args(p, default_preset: str = "default") -> None:
    """The flags that make a grid from a preset (``run`` and ``search`` share them; :func:`grid_from_args`)."""
    p.add_argument("--preset", default=default_preset,
                   help=f"one of: {', '.join(gridmod.preset_names())}, or a .toml file (default: %(default)s)")
    p.add_argument("--out", default=None, help="output folder (default: results/<preset>-<device>)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--estimators", type=_csv(str), default=None, help="e.g. trace,enum (default: the preset's)")
    p.add_argument("--aux", choices=["both", "on", "off"], default=None,
                   help="auxiliary loss variants (default: the preset's)")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--labels", type=_csv(int), default=None, help="label counts, e.g. 100,3000")
    p.add_argument("--label-fraction", type=_csv(float), default=None, help="label fractions, e.g. 0.02")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (0..N-1)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--steps-per-epoch", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any preset field, e.g. --set lr=0.001 --set probe.variance_samples=50")


def add_run_parser(sub) -> None:
    r = sub.add_parser("run", help=COMMANDS["run"].help)
    add_grid_args(r)
    r.add_argument("--workers", type=int, default=None, help="cells at a time (default: 1 per GPU, the preset's on CPU)")
    r.add_argument("--threads", type=int, default=None,
                   help="torch threads per cell (default: usable CPUs / workers)")
    r.add_argument("--executor", default="local", help="local (a process per cell) or dask (default: %(default)s)")
    for executor in EXECUTORS.values():  # each executor adds its own options
        executor.add_arguments(r)
    r.add_argument("--tuned", default=None, metavar="FILE",
                   help="apply the choices of a tuning run (its tuned.json: python -m bench tune OUT)")
    r.add_argument("--only", type=_csv(str), default=None, metavar="KINDS",
                   help=f"run only the tasks of these kinds ({', '.join(KINDS)}), e.g. the probes of an estimator "
                        "without training its cells; the rest stay to run (a later run without --only runs them)")
    r.add_argument("--retime", action="store_true",
                   help="run the timing probes again even where done (a measurement that shared the machine)")
    r.add_argument("--force", action="store_true",
                   help="run this grid in an --out that holds another grid (its records stay, outside this grid)")
    r.add_argument("--dry-run", action="store_true",
                   help="print the tasks, whether each is done, and the estimated time; write nothing")
    add_data_args(r)
    r.set_defaults(func=cmd_run)


def _value(text: str):
    """A --set value: a TOML value (number, boolean, list, quoted string), else the bare text."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def grid_from_args(args, search: bool = False) -> gridmod.Grid:
    """The grid of a command's flags; a preset with a ``[search]`` table only for ``search=True``
    (``bench search``), and only with one for it."""
    preset = gridmod.load_preset(args.preset)
    if bool(preset.get("search")) != search:
        raise ConfigError(f"preset {args.preset} is a search: run it with python -m bench search --preset {args.preset}"
                          if not search else f"preset {args.preset} has no [search] table: it is a grid "
                          f"(python -m bench run --preset {args.preset})")
    if getattr(args, "tuned", None):
        choices, args.tuned_info = tunemod.load_choices(args.tuned)
        preset = tunemod.apply_choices(preset, choices)
    for flag, value in (("--seeds", args.seeds), ("--epochs", args.epochs), ("--steps-per-epoch", args.steps_per_epoch),
                        ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1 (got {value})")
    if args.estimators is not None and not args.estimators:
        raise ConfigError("--estimators is empty: name at least one, e.g. --estimators enum,rb-topk")
    overrides = {
        "estimators": args.estimators, "labels": args.labels, "label_fractions": args.label_fraction,
        "seeds": args.seeds, "epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch,
        "batch_size": args.batch_size, "device": args.device,
        "aux": {"both": [False, True], "on": [True], "off": [False], None: None}[args.aux],
        "baseline": False if args.no_baseline else None,
    }
    if args.labels is not None and args.label_fraction is not None:
        raise ConfigError("give --labels or --label-fraction, not both")
    seen = set()
    for item in args.set:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"--set {item!r}: expected FIELD=VALUE")
        if key in seen:
            raise ConfigError(f"--set {key} is given twice: give each field once")
        same = ("labels", "label_fractions") if key in ("labels", "label_fractions") else (key,)
        if any(overrides.get(k) is not None for k in same):  # a flag would silently win
            raise ConfigError(f"--set {key} and a flag both set {key}: give it once")
        seen.add(key)
        value = _value(text)
        if key.startswith("probe."):
            sub = key.split(".", 1)[1]
            if sub not in gridmod.PROBE_FIELDS:
                raise ConfigError(f"unknown probe field {sub!r}: known {', '.join(sorted(gridmod.PROBE_FIELDS))}")
            preset["probe"] = {**preset.get("probe", {}), sub: value}
        elif key.startswith("options."):  # options.rb-topk.k=3
            est, _, opt = key.split(".", 1)[1].partition(".")
            if not opt:
                raise ConfigError(f"--set {item!r}: expected options.ESTIMATOR.OPTION=VALUE")
            preset["options"] = {e: dict(o) for e, o in preset.get("options", {}).items()}
            preset["options"].setdefault(est, {})[opt] = value
        elif key in gridmod.GRID_FIELDS - {"probe", "options", "search"}:
            preset[key] = value
        else:
            raise ConfigError(f"unknown field {key!r}: known {', '.join(sorted(gridmod.GRID_FIELDS - {'probe', 'options', 'search'}))}"
                              f", probe.* and options.ESTIMATOR.*")
    if args.label_fraction is not None:
        overrides["labels"] = [resolve_labels(None, f) for f in gridmod.check_fields(
            {"label_fractions": args.label_fraction})["label_fractions"]]
        overrides["label_fractions"] = None
        preset.pop("label_fractions", None)
    grid = gridmod.make_grid(preset, overrides)
    if getattr(args, "tuned", None):
        missing = args.tuned_info["without_choice"] = gridmod.without_choice(grid, args.tuned_info["chosen"])
        if missing:
            print(f"bench: {args.tuned} chooses nothing for {', '.join(missing)}: the preset's values there",
                  file=sys.stderr)
    return grid


def check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output folder {out} is a file: choose another --out")
    if not writable(out):
        raise ConfigError(f"output folder {out} is not writable: choose another --out")


def _read_env(out: Path) -> Optional[dict]:
    try:
        env = json.loads(Folder(out).env.read_text())
    except (OSError, ValueError):
        return None
    return env if isinstance(env, dict) else None


def other_grid(out: Path, grid: gridmod.Grid, tasks: List[dict]) -> Optional[str]:
    """Why ``out`` holds another grid than ``grid`` (None: it holds none, or this one, or a part of it)."""
    prev = (_read_env(out) or {}).get("grid")
    why = grid_difference(prev, grid.to_dict()) if isinstance(prev, dict) else None
    if why:
        return why
    clash = conflicts(out, [t for t in tasks if t["kind"] == "train"])
    if clash:
        return f"{len(clash)} finished cell(s) of another configuration, e.g. {clash[0]}"
    return None


def folder_provenance(grid: gridmod.Grid, hashes: dict, threads: int) -> dict:
    """What env.json says of every command that writes a results folder (a grid's run, a search): versions,
    machine, threads, commit, data, the command and its date, the grid; ``identity`` as every record has it."""
    info = identity(grid.device, threads, hashes)
    return {
        **versions(), "platform": info["platform"],
        "device": grid.device, "device_name": device_name(grid.device), "cpu_name": cpu_name(),
        "cpu_count": os.cpu_count(), "usable_cpus": usable_cpus(), "threads": threads,
        "git_commit": commit_label(info["git"]), "data_sha256": hashes[ssdata.TRAIN_IMAGES], "preset": grid.name,
        "command": " ".join(shlex.quote(a) for a in ["python", "-m", "bench"] + sys.argv[1:]),
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "grid": grid.to_dict(), "identity": info}


def environment(grid: gridmod.Grid, tasks: List[dict], ident: dict, hashes: dict, workers: int, threads: int,
                executor: str, part_of: Optional[dict] = None) -> dict:
    """env.json of a run. ``part_of``: the folder's env.json where this grid and the one there are parts of one
    grid (other estimators, label counts, seeds or probes): the folder keeps listing the other's tasks and its
    grid is the union (:func:`bench.core.schema.grid_union`), so a run of a part never narrows the folder."""
    env = {**folder_provenance(grid, hashes, threads), "workers": workers, "executor": executor, "identity_key": ident}
    specs = [normalise(t) for t in tasks]
    if part_of and isinstance(part_of.get("grid"), dict):
        ids = {t["id"] for t in specs}
        specs += [t for t in part_of.get("tasks") or [] if t.get("id") not in ids]
        env["grid"] = grid_union(part_of["grid"], env["grid"])
    return {**env, "tasks": specs, "expected_cells": [t["id"] for t in specs if t["kind"] == "train"],
            "expected_probes": [t["id"] for t in specs if t["kind"] != "train"]}


def earlier_runs(path: Path) -> List[dict]:
    """What earlier commands on this folder ran (a resumed grid keeps the provenance of every part)."""
    try:
        prev = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return run_parts(prev)


def _stale(out: Path, spec: dict, ident: dict) -> Optional[str]:
    record, problem = read_result(result_path(out, spec))
    if record is None:
        return problem if problem != "missing" else None
    return stale_reason(record, spec, ident)


def device_machine(device: str) -> Optional[str]:
    """The device name records are matched by: this CPU's, or the GPU's (None where there is none)."""
    try:
        return device_name(device)
    except Exception:  # noqa: BLE001 -- no such device here: price on every machine's records
        return None


def _roots(out: Path) -> List[Path]:
    """Where finished records are read for the estimate: results/ and the run's own folder."""
    return [REPO / "results", out]


def _plan_line(tasks: List[dict], todo: List[dict], workers: int, est: "estimate.Plan", held: int = 0) -> str:
    """``N tasks, D done, T to run on W worker(s)[, H left for later (--only)]; estimated ...``."""
    line = (f"{len(tasks)} tasks, {len(tasks) - len(todo) - held} done, {len(todo)} to run on {workers} worker(s)"
            + (f", {held} left for later (--only)" if held else "") + f"; estimated {estimate.duration(est.total)}")
    if any((t.get("config") or {}).get("patience") for t in todo):
        line += " at most (early stopping may end cells sooner)"
    if est.probe_share is not None and est.probe_share > 0:
        line += f", of which the gradient probe {100 * est.probe_share:.0f}%"
    if est.calibration is not None:
        line += f" ({est.calibration.describe()})"
    return line


def cmd_run(args) -> int:
    grid = grid_from_args(args)
    check_device(grid.device)
    executor_kwargs = executor_options(args)
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be at least 1 (got {args.threads})")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be at least 1 (got {args.workers})")
    if args.only is not None and (not args.only or set(args.only) - set(KINDS)):
        raise ConfigError(f"--only {','.join(args.only)}: give task kinds among {', '.join(KINDS)}")
    out = Path(args.out or f"results/{grid.name}-{grid.device.replace(':', '')}")
    check_out_dir(out)
    root = ssdata.locate_mnist(args.data_dir, download=False if args.no_download or args.dry_run else None)
    hashes = ssdata.check_raw(root)
    train_labels = ssdata.read_labels(root)
    for labels in grid.labels:
        ssdata.check_label_capacity(labels, train_labels)
    tasks = gridmod.expand(grid)
    ident = run_identity(hashes, versions())
    todo = [t for t in tasks if not is_done(out, t, ident) or (args.retime and t["kind"] == "timing")]
    asked = [not args.only or t["kind"] in args.only for t in todo]
    held = [t for t, a in zip(todo, asked) if not a]  # not asked for this time
    todo = [t for t, a in zip(todo, asked) if a]
    stale = {t["id"]: why for t in todo if (why := _stale(out, t, ident))}
    clash = other_grid(out, grid, tasks)
    workers = args.workers or grid.workers
    gpu_plan = None
    if grid.device == "cuda":  # cells share the GPUs, each pinned with CUDA_VISIBLE_DEVICES (default: one per GPU)
        import torch
        gpu_plan = plan_gpus(args.workers or torch.cuda.device_count(), out)
        workers = gpu_plan.workers
    elif grid.device.startswith("cuda"):  # cuda:N names one GPU
        workers = 1
    if args.dry_run:
        est = estimate.plan(todo, workers, args.threads or 1, machine=device_machine(grid.device), roots=_roots(out))
        if gpu_plan and (est.calibration is None or est.calibration.machine is None):  # no task timed on this GPU
            est = estimate.Plan(None, {}, None, None)
        print(_plan_line(tasks, todo, workers, est, len(held)))
        if gpu_plan:
            print(gpu_plan.line())
        for t in tasks:
            state = "todo" if t in todo else "left" if t in held else "done"
            secs = f"{est.per_task[t['id']]:8.0f} s" if t["id"] in est.per_task else " " * 10
            note = f"  (stale: {stale[t['id']]})" if t["id"] in stale else ""
            print(f"{state}  {t['kind']:7s} {secs}  {t['id']}{note}")
        if clash:
            print(f"{out} holds another grid ({clash}): a run needs --force or another --out")
        return 0
    if clash and not args.force:
        raise ConfigError(f"{out} holds another grid ({clash}): add --force to run this grid there "
                          f"(the other's records stay, outside this grid), or choose another --out")
    if gpu_plan:
        print(f"bench: {gpu_plan.line()}", file=sys.stderr)
    kwargs = dict(executor_kwargs)
    if gpu_plan and EXECUTORS[args.executor].PINS_GPUS:
        kwargs.update(gpus=gpu_plan.gpus, slots=gpu_plan.slots)
    # the run's id: OUT/.lock names it while this run holds it, and a worker writes only while it does
    executor = EXECUTORS[args.executor](workers=workers, threads=args.threads, data_dir=str(root),
                                        run_id=uuid.uuid4().hex, **kwargs)
    executor.connect()  # a scheduler that does not answer fails here, before anything is written
    try:
        return _run_locked(args, grid, out, tasks, todo, stale, ident, hashes, workers, executor, len(held),
                           part_of=None if clash else _read_env(out))
    except StorageError as exc:
        executor.shutdown()
        return fail(str(exc), EXIT_STORAGE)


def _run_locked(args, grid, out, tasks, todo, stale, ident, hashes, workers, executor, held: int = 0,
                part_of: Optional[dict] = None) -> int:
    with OutputLock(out, executor.run_id):
        env = environment(grid, tasks, ident, hashes, workers, executor.threads, args.executor, part_of)
        folder_tasks = env["tasks"]  # this grid's and, where it is a part, the folder's other tasks
        env["tasks_run"] = [t["id"] for t in todo]
        if getattr(args, "tuned_info", None):
            env["tuned"] = args.tuned_info  # the choice file, its sha256 and the values it set
        env["earlier_runs"] = earlier_runs(Folder(out).env)
        est = estimate.plan(todo, workers, executor.threads, machine=device_machine(grid.device), roots=_roots(out))
        env["estimate"] = {"seconds": est.total, "tasks": len(todo), "workers": workers,
                           "priced_on": est.calibration.describe() if est.calibration else None}
        atomic_write_json(Folder(out).env, env)
        print(f"bench: {grid.name} on {grid.device}: {len(tasks)} tasks, {len(tasks) - len(todo) - held} already done, "
              f"{len(todo)} to run" + (f" ({len(stale)} stale)" if stale else "")
              + (f", {held} left for later (--only)" if held else "") + f" -> {out}", file=sys.stderr)
        if todo:
            print(f"bench: {_plan_line(tasks, todo, workers, est).split('; ', 1)[1]}", file=sys.stderr)
        progress = Progress(tasks, todo, seconds=est.per_task, wall=est.total)
        attempts_failed = set()  # a failed attempt whose file kept a finished record still fails the run

        def on_update(running, record):
            progress.update(running, record)
            if record is not None and record.get("status") == "failed":
                attempts_failed.add(record["id"])
            if record is not None:
                write_tables(out, folder_tasks, ident)

        try:
            executor.run(todo, out, on_update)
        except KeyboardInterrupt:
            progress.close()
            write_tables(out, folder_tasks, ident)
            done = sum(is_done(out, t, ident) for t in tasks)
            print(f"\nbench: interrupted; {done}/{len(tasks)} tasks are done and kept in {out}. "
                  f"Rerun the same command to resume.", file=sys.stderr)
            return 130
        progress.close()
        write_tables(out, folder_tasks, ident)
    failed = [t["id"] for t in tasks if t["id"] in attempts_failed
              or (read_result(result_path(out, t))[0] or {}).get("status") == "failed"]
    summary = ", ".join(f"{n} {s}" for s, n in sorted(progress.counts.items())) or "nothing to run"
    took = time.time() - progress.start
    against = f" (estimated {estimate.duration(est.total).replace('about ', '')})" if todo and est.total else ""
    head = (f"the {','.join(args.only)} tasks done, {held} other task(s) left for later (rerun without --only)"
            if held else "grid complete")
    print(f"bench: {head} ({summary}) in {estimate.duration(took).replace('about ', '')}{against}; tables in {out}",
          file=sys.stderr)
    if failed:
        print(f"bench: {len(failed)} task(s) failed: {', '.join(failed[:10])}; rerun to retry them",
              file=sys.stderr)
        return 1
    return 0
