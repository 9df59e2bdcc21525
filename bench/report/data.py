"""Reading a results folder: :func:`load_results` -> :class:`Results`.

Tolerant reading: a corrupt or missing file becomes a "corrupt" / "missing" cell or an entry in
``Results.problems``, never a crash (records go through ``bench.core.store.read_result``, the one typed
reader). A folder whose records cannot be tied to one grid (env.json absent or unreadable) is refused
(:class:`bench.core.errors.UsageError`): its tables would mix configurations. This module only reads; every
table and plot is built from the :class:`Results` it returns (see ``bench/report/sections/``).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from ssvae.statistics import COLUMNS as STAT_COLUMNS

from ..core.errors import UsageError
from ..core.store import read_result
from ..core.tables import busy_seconds, load_grid
from ..core.schema import ANALOGY_SUFFIX, Folder
from ..core.stats import as_bool

CELL_RE = re.compile(r"^(?P<estimator>.+?)(?P<aux>\+aux)?_L(?P<labels>\d+)_s(?P<seed>\d+)$")
#: "stale": runs.csv says the file was written for another configuration than the grid's
STATUS_ORDER = ("ok", "failed", "diverged", "corrupt", "stale", "missing")
#: supervised-only estimators (no unlabeled objective, so no aux variant); the report shows them last
BASELINES = ("baseline",)
RUN_NUMERIC = ("test_acc_at_best_valid", "best_valid_acc", "best_epoch", "final_test_acc",
               "final_valid_acc", "epochs", "steps", "train_seconds", "seconds_per_epoch", "final_test_elbo",
               "test_iwae", "iwae_k", "epochs_run")
#: runs' text columns (absent in older folders: empty)
RUN_TEXT = ("protocol",)
CURVE_COLUMNS = ("cell", "estimator", "aux", "labels", "seed", "epoch", "global_step", "valid_acc",
                 "test_acc", "loss_sup", "loss_unsup", "loss_aux", "elapsed_seconds", "test_elbo")
#: timing.csv columns of the reference-step timing (Pyro's overhead) and the peak memory, numeric
OVERHEAD_COLUMNS = ("ref_median_ms", "ref_q1_ms", "ref_q3_ms", "pyro_overhead", "gflop", "matmul_gflops",
                    "pct_of_matmul_peak", "peak_mb")
#: grad_variance.csv columns read as numbers where present
GRAD_NUMERIC = ("labels", "seed", "step", *STAT_COLUMNS, "temperature")


@dataclass
class Results:
    root: Path
    env: dict
    runs: pd.DataFrame          # one row per expected or present cell (status ok/failed/diverged/corrupt/missing)
    curves: pd.DataFrame        # per-epoch rows of ok cells
    timing: pd.DataFrame        # this folder's timing.csv plus any --compare-timing folders' (column source)
    grad: pd.DataFrame          # grad_variance.csv
    samples: Dict[str, Path]    # cell -> samples/<cell>.analogy.npy (or an older folder's samples/<cell>.npy)
    problems: List[str] = field(default_factory=list)
    timing_sources: List[Tuple[str, dict]] = field(default_factory=list)  # (label, env) per timing folder
    outside: List[dict] = field(default_factory=list)  # records of the folder outside its grid (in no table)
    part_provenance: Dict[str, dict] = field(default_factory=dict)  # cells/probes: commits and threads
    busy_seconds: Optional[float] = None  # wall time with a task of the grid running (bench.core.tables.busy_seconds)


def parse_cell(cell: str) -> Optional[dict]:
    """``enum+aux_L3000_s0`` -> {estimator: enum, aux: True, labels: 3000, seed: 0}; None if not a cell id."""
    m = CELL_RE.match(cell)
    if not m:
        return None
    return {"estimator": m["estimator"], "aux": bool(m["aux"]), "labels": int(m["labels"]),
            "seed": int(m["seed"])}


def _read_json(path: Path, problems: List[str]):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        problems.append(f"{path.name}: unreadable JSON ({type(exc).__name__}: {exc})")
        return None


def _read_csv(path: Path, problems: List[str]) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame()
    try:
        return pd.read_csv(path)
    except Exception as exc:  # empty or malformed file: report it, carry on without it
        problems.append(f"{path.name}: unreadable CSV ({type(exc).__name__}: {exc})")
        return pd.DataFrame()


def _expected_cells(env: dict) -> List[str]:
    cells = env.get("expected_cells")
    if isinstance(cells, list):
        return [str(c) for c in cells]
    grid = env.get("grid") or {}
    ests = list(grid.get("estimators", [])) + (["baseline"] if grid.get("baseline") else [])
    out = []
    for labels in grid.get("labels", []):
        for est in ests:
            for aux in ((False,) if est in BASELINES else grid.get("aux", [False])):
                for seed in grid.get("seeds", []):
                    out.append(f"{est}{'+aux' if aux else ''}_L{labels}_s{seed}")
    return out


def _status(value) -> str:
    """The harness's status words; "corrupt: <reason>" (runs.csv) counts as corrupt."""
    text = str(value or "failed").strip()
    return "corrupt" if text.startswith("corrupt") else text


def _run_row(cell: str, record: Optional[dict], problem: str = "corrupt or truncated JSON") -> dict:
    """One row of the runs table from a runs/<cell>.json record (None: corrupt, for ``problem``)."""
    ident = parse_cell(cell) or {"estimator": "?", "aux": False, "labels": -1, "seed": -1}
    row = {"cell": cell, **ident, "status": "corrupt", "error": problem, "source": "json"}
    if record is None:
        return row
    cfg = record.get("config") if isinstance(record.get("config"), dict) else {}
    for key in ("estimator", "labels", "seed"):
        if cfg.get(key) is not None:
            row[key] = cfg[key]
    if "aux" in cfg:
        row["aux"] = as_bool(cfg["aux"])
    row["status"] = _status(record.get("status"))
    row["error"] = record.get("error")
    metrics = record.get("metrics") if isinstance(record.get("metrics"), dict) else {}
    for key in RUN_NUMERIC + RUN_TEXT:
        row[key] = metrics.get(key)
    if row["status"] == "ok" and row.get("test_acc_at_best_valid") is None:
        row["status"], row["error"] = "failed", row["error"] or "status ok but no test_acc_at_best_valid"
    return row


def load_results(results_dir, compare_timing: Sequence = ()) -> Results:
    """Read a results folder; never raises on a corrupt or missing piece (see ``problems``)."""
    root = Path(results_dir)
    problems: List[str] = []
    folder = Folder(root)
    env = _read_json(folder.env, problems) if folder.env.exists() else None
    if not isinstance(env, dict):
        problems.append("env.json missing or unreadable: provenance unknown")
        env = {}

    # The grid of env.json, from its JSON records (bench.core.tables.load_grid). A folder whose env.json lists
    # its task specs is read from its records alone: CSVs are caches, and a record outside the grid
    # (another configuration, other data or torch) is in no table. Older folders: as they were written.
    grid = load_grid(root)
    if grid.problem:
        n = len(grid.outside)
        raise UsageError(f"results folder {root}: {grid.problem}, so its {n} record(s) cannot be tied to one grid "
                         "(a table would mix configurations): rerun the python -m bench run command that made "
                         "it (finished cells are reused) to write env.json again")
    paths = sorted(Folder(root).runs.glob("*.json"))
    if not grid.legacy:
        expected_ids = set(_expected_cells(env))
        paths = [p for p in paths if p.stem in grid.records or (p.stem in expected_ids and read_result(p)[0] is None)]
        for o in grid.outside:
            problems.append(f"outside this grid: {o['id']} ({o['status']}, {o['why']}"
                            + (f", commit {o['git_commit'][:7]}" if o.get("git_commit") else "") + ")")
    rows, json_curves = {}, []
    for path in paths:
        record, problem = read_result(path)
        if record is None:
            problems.append(f"{path.name}: {problem}")
        cell = str(record.get("cell") or path.stem) if record else path.stem
        try:
            rows[cell] = _run_row(cell, record, problem or "")
        except Exception as exc:  # a well-formed file with ill-typed content
            problems.append(f"{path.name}: unexpected content ({type(exc).__name__}: {exc})")
            rows[cell] = _run_row(cell, None)
            continue
        if record and rows[cell]["status"] == "ok" and isinstance(record.get("curves"), list):
            for c in record["curves"]:
                if isinstance(c, dict):
                    json_curves.append({"cell": cell, **{k: c.get(k) for k in CURVE_COLUMNS[5:]}})

    csv_runs = _read_csv(Folder(root).table("runs"), problems) if grid.legacy else pd.DataFrame()
    if not grid.legacy:  # an expected cell whose file holds another configuration's record
        for o in grid.outside:
            if o["id"] in expected_ids and o["id"] not in rows and o["kind"] == "train":
                rows[o["id"]] = {"cell": o["id"], **(parse_cell(o["id"]) or {}), "status": "stale",
                                 "error": f"result file written for {o['why']}", "source": "json"}
    if "cell" in csv_runs:  # cells with a CSV row but no JSON file
        for rec in csv_runs.to_dict("records"):
            cell = str(rec["cell"])
            if cell in rows:
                if str(rec.get("status")) == "stale":  # the harness found the file is for another config
                    rows[cell].update(status="stale", error="result file written for another configuration")
                continue
            row = {"cell": cell, **(parse_cell(cell) or {}), "source": "runs.csv"}
            for key in ("estimator", "labels", "seed", "status", "error", *RUN_NUMERIC, *RUN_TEXT):
                if key in rec and not (isinstance(rec[key], float) and math.isnan(rec[key])):
                    row[key] = rec[key]
            row["aux"] = as_bool(rec.get("aux", row.get("aux")))
            row["status"] = _status(row.get("status"))
            rows[cell] = row

    expected = _expected_cells(env)
    for cell in expected:
        if cell not in rows:
            ident = parse_cell(cell) or {"estimator": "?", "aux": False, "labels": -1, "seed": -1}
            rows[cell] = {"cell": cell, **ident, "status": "missing", "error": "no result file", "source": ""}
    runs = pd.DataFrame(list(rows.values()))
    runs = runs.reindex(columns=[*runs.columns, *(k for k in RUN_TEXT if k not in runs)])
    for key in RUN_NUMERIC:
        runs[key] = pd.to_numeric(runs[key], errors="coerce") if key in runs else np.nan
    runs["labels"] = pd.to_numeric(runs["labels"], errors="coerce").fillna(-1).astype(int)
    runs["seed"] = pd.to_numeric(runs["seed"], errors="coerce").fillna(-1).astype(int)
    runs["aux"] = runs["aux"].map(as_bool)
    runs["estimator"] = runs["estimator"].astype(str)
    runs["status"] = runs["status"].astype(str)
    runs["expected"] = runs["cell"].isin(set(expected))
    runs["error"] = runs["error"].where(runs["error"].notna(), "")
    # what ran beside each cell (bench.core.tables.collect, from the records' times and the worker's measurement)
    side = {} if grid.legacy else {r["cell"]: r for r in grid.tables.get("runs", [])}
    for key in ("beside", "other_cpu_load"):
        runs[key] = pd.to_numeric(runs["cell"].map(lambda c: side.get(c, {}).get(key)), errors="coerce")
    runs["flush_denormal"] = runs["cell"].map(lambda c: side.get(c, {}).get("flush_denormal"))
    # the machine that trained each cell (its record's; a time per epoch is compared on one machine only)
    runs["device_name"] = runs["cell"].map(lambda c: (grid.records.get(c) or {}).get("device_name"))
    runs = runs.sort_values(["labels", "estimator", "aux", "seed", "cell"]).reset_index(drop=True)

    ok_cells = set(runs.loc[runs.status == "ok", "cell"])
    curves = pd.DataFrame(json_curves, columns=["cell", *CURVE_COLUMNS[5:]])
    csv_curves = _read_csv(Folder(root).table("curves"), problems) if grid.legacy else pd.DataFrame()
    if "cell" in csv_curves and "epoch" in csv_curves:
        extra = csv_curves[~csv_curves["cell"].isin(set(curves["cell"]))]
        extra = extra.reindex(columns=["cell", *CURVE_COLUMNS[5:]])
        curves = pd.concat([curves, extra], ignore_index=True) if len(curves) else extra
    curves = curves[curves["cell"].isin(ok_cells)]
    ident = runs.set_index("cell")[["estimator", "aux", "labels", "seed"]]
    curves = curves.join(ident, on="cell")
    for key in CURVE_COLUMNS[5:]:
        curves[key] = pd.to_numeric(curves[key], errors="coerce")
    curves = curves.sort_values(["cell", "epoch"]).reset_index(drop=True)

    own_timing = None if grid.legacy else pd.DataFrame(grid.tables["timing"])
    timing, sources = _load_timing(root, env, problems, compare_timing, own_timing)
    grad = (_read_csv(Folder(root).table("grad_variance"), problems) if grid.legacy
            else pd.DataFrame(grid.tables["grad_variance"]))
    if len(grad):
        need = {"estimator", "aux", "labels", "seed", "trajectory", "step", "param_group", "step_kind",
                "variance"}
        if not need <= set(grad.columns):
            problems.append(f"grad_variance.csv: missing columns {sorted(need - set(grad.columns))}")
            grad = pd.DataFrame()
        else:
            grad["aux"] = grad["aux"].map(as_bool)
            for key in GRAD_NUMERIC:
                if key in grad:
                    grad[key] = pd.to_numeric(grad[key], errors="coerce")

    samples = {}
    for p in sorted((root / "samples").glob("*.npy")):  # an analogy file wins over an older independent-z one
        cell = p.name[: -len(ANALOGY_SUFFIX)] if p.name.endswith(ANALOGY_SUFFIX) else p.stem
        if cell not in samples or p.name.endswith(ANALOGY_SUFFIX):
            samples[cell] = p
    return Results(root, env, runs, curves, timing, grad, samples, problems, sources, outside=grid.outside,
                   part_provenance=grid.provenance, busy_seconds=busy_seconds(list(grid.records.values())))


def _load_timing(root: Path, env: dict, problems: List[str], compare: Sequence, own: Optional[pd.DataFrame] = None):
    frames, sources = [], []
    for i, folder in enumerate([root, *[Path(c) for c in compare]]):
        label = "this run" if i == 0 else str(folder)
        t = own if i == 0 and own is not None else _read_csv(Folder(folder).table("timing"), problems)
        fenv = env if i == 0 else (_read_json(Folder(folder).env, problems)
                                   if Folder(folder).env.exists() else {}) or {}
        need = {"estimator", "aux", "step_kind", "median_ms"}
        if len(t) and not need <= set(t.columns):
            problems.append(f"{folder / 'timing.csv'}: missing columns {sorted(need - set(t.columns))}")
            continue
        if not len(t):
            continue
        t = t.copy()
        t["aux"] = t["aux"].map(as_bool)
        for key in ("device", "device_name"):
            if key not in t:
                t[key] = fenv.get(key, "?")
            t[key] = t[key].fillna(fenv.get(key, "?")).astype(str)
        for key in ("median_ms", "q1_ms", "q3_ms", "batch_size", "n_steps"):
            t[key] = pd.to_numeric(t[key], errors="coerce") if key in t else np.nan
        for key in OVERHEAD_COLUMNS:  # absent in folders written before the probe timed the reference
            if key in t:
                t[key] = pd.to_numeric(t[key], errors="coerce")
        if "ref_step" in t:
            t["ref_step"] = t["ref_step"].where(t["ref_step"].notna(), "").astype(str)
        t["source"] = label
        frames.append(t)
        sources.append((label, fenv))
    if not frames:
        return pd.DataFrame(), sources
    timing = pd.concat(frames, ignore_index=True)
    # one measurement per (device, estimator, aux, step kind): this folder's wins, then the order given
    timing = timing.drop_duplicates(["device", "device_name", "estimator", "aux", "step_kind"], keep="first")
    return timing.reset_index(drop=True), sources
