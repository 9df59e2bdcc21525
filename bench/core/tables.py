"""The CSV tables of an output folder and the grid it holds, rebuilt from its JSON records.

:func:`write_tables` rebuilds runs.csv, curves.csv, timing.csv and grad_variance.csv (caches of the
records; their columns are ``bench.core.schema``'s) after every task; :func:`load_grid` reads the grid of
``OUT/env.json`` and ties to it only the records it can, listing the rest apart (it never ties a record
to a grid it cannot read: docs/faults.md); :func:`span`, :func:`ran_beside` and :func:`busy_seconds`
read the records' start and end times. Every record is read through ``bench.core.store.read_result``.
"""
from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .provenance import commit_label
from .schema import CURVES_COLUMNS, DONE_STATUSES, TABLES, TIMING_COLUMNS, VARIANCE_COLUMNS, Folder
from .store import atomic_write_bytes, read_result, result_path, stale_reason

#: the metrics of a cell that runs.csv shows (the record's ``metrics`` holds these and more)
RUN_METRICS = ["test_acc_at_best_valid", "best_valid_acc", "best_epoch", "final_test_acc", "final_valid_acc",
               "steps", "steps_per_epoch", "train_seconds", "seconds_per_epoch", "eval_seconds", "protocol",
               "final_test_elbo", "elbo_images", "test_iwae", "iwae_k", "iwae_images"]


# -- tables ----------------------------------------------------------------------------------
def _write_csv(path: Path, columns: List[str], rows: List[dict]) -> None:
    """Write a table; a row with a column the header lacks, or lacking one of its columns, is an error
    (a column is never dropped or invented silently)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="raise", lineterminator="\n")
    w.writeheader()
    for i, r in enumerate(rows):
        unknown, missing = sorted(set(r) - set(columns)), [c for c in columns if c not in r]
        if unknown or missing:
            raise ValueError(f"{path.name} row {i}: " + "; ".join(
                p for p in (f"unknown column(s) {', '.join(unknown)}" if unknown else "",
                            f"missing column(s) {', '.join(missing)}" if missing else "") if p))
        w.writerow({k: _fmt(r[k]) for k in columns})
    atomic_write_bytes(path, buf.getvalue().encode())


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return v


def _commit(record: dict) -> Optional[str]:
    git = (record.get("identity") or {}).get("git")
    return commit_label(git) if git else None


def _cell_rows(spec: dict, record: Optional[dict], status: str) -> Tuple[dict, List[dict]]:
    cfg = spec["config"]
    keys = {"cell": spec["id"], "estimator": cfg["estimator"], "aux": cfg["aux"], "labels": cfg["labels"],
            "seed": cfg["seed"], "device": cfg["device"]}
    metrics = (record or {}).get("metrics") or {}
    row = {**keys, "status": status, **{k: metrics.get(k) for k in RUN_METRICS}, "epochs": cfg["epochs"],
           "data_sha256": (record or {}).get("data_sha256"), "git_commit": _commit(record or {}),
           "beside": None, "other_cpu_load": (record or {}).get("other_cpu_load"),
           "flush_denormal": (record or {}).get("flush_denormal"),
           "error": (record or {}).get("error")}
    curves = []
    if status in DONE_STATUSES:
        curves = [{**keys, **{k: c.get(k) for k in CURVES_COLUMNS[6:]}} for c in record.get("curves", [])]
    return row, curves


def _variance_rows(record: dict) -> List[dict]:
    return [{k: r.get(k) for k in VARIANCE_COLUMNS} for r in record.get("grad_variance", [])]


def span(record: dict) -> Optional[Tuple[float, float]]:
    """(started, finished) of a record, in seconds since the epoch; None for a record without both."""
    a, b = record.get("started"), record.get("finished")
    return (float(a), float(b)) if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None


def ran_beside(records: List[dict]) -> Dict[str, List[str]]:
    """What else of the folder ran beside each task: id -> ids of the other records on the same host
    whose [started, finished] overlaps its own (absent: the record has no times)."""
    timed = [r for r in records if span(r)]
    return {r["id"]: sorted(o["id"] for o in timed if o["id"] != r["id"] and o.get("host") == r.get("host")
                            and o["started"] < r["finished"] and o["finished"] > r["started"])
            for r in timed}


def busy_seconds(records: List[dict]) -> Optional[float]:
    """Wall seconds during which at least one of ``records`` was running: the union of their
    [started, finished] intervals (a run resumed later does not count the pause); None without times."""
    spans = sorted(filter(None, map(span, records)))
    if not spans:
        return None
    total, (lo, hi) = 0.0, spans[0]
    for a, b in spans[1:]:
        if a > hi:
            total, lo = total + hi - lo, a
        hi = max(hi, b)
    return total + hi - lo


def collect(out_dir, tasks: List[dict], ident: Optional[dict] = None) -> Dict[str, List[dict]]:
    """Rows of the four tables from the result files of ``tasks`` (absent cells: status 'missing';
    a record for another configuration, other data or other torch/pyro: 'stale', and no rows).

    A cell's ``beside`` counts the tasks of this folder that ran beside it (:func:`ran_beside`) and
    ``other_cpu_load`` the cores that anything else on the machine kept busy meanwhile (the worker's
    measurement, ``bench.core.provenance.other_cpu_load``); a timing row carries its probe's."""
    tables = {name: [] for name in TABLES}
    found = [(spec, *read_result(result_path(out_dir, spec))) for spec in tasks]
    beside = ran_beside([r for _, r, _ in found if r is not None])
    for spec, record, problem in found:
        stale = record is not None and stale_reason(record, spec, ident) is not None
        if spec["kind"] == "train":
            status = problem or ("stale" if stale else record["status"])
            row, curves = _cell_rows(spec, None if problem else record, status)
            if record is not None and spec["id"] in beside:
                row["beside"] = len(beside[spec["id"]])
            tables["runs"].append(row)
            tables["curves"] += curves
            if record is not None and not stale:
                tables["grad_variance"] += _variance_rows(record)
        elif record is not None and not stale:
            tables["grad_variance"] += _variance_rows(record)
            tables["timing"] += [{**{k: row.get(k) for k in TIMING_COLUMNS}, "device_name": record.get("device_name"),
                                  "other_cpu_load": record.get("other_cpu_load")}
                                 for row in record.get("timing", [])]
    return tables


def write_tables(out_dir, tasks: List[dict], ident: Optional[dict] = None) -> Dict[str, List[dict]]:
    """Rebuild runs.csv, curves.csv, timing.csv and grad_variance.csv (caches of the JSON records)."""
    out_dir = Path(out_dir)
    tables = collect(out_dir, tasks, ident)
    for name, columns in TABLES.items():
        _write_csv(Folder(out_dir).table(name), columns, tables[name])
    return tables


# -- one grid of a folder --------------------------------------------------------------------------
@dataclass
class GridResults:
    """What ``load_grid`` finds: the grid of env.json, its rows, and what else the folder holds."""

    env: dict
    tasks: List[dict]
    #: id -> record, for the tasks of this grid whose record is for this very spec (and identity)
    records: Dict[str, dict]
    #: the four tables, rebuilt from the records of this grid only
    tables: Dict[str, List[dict]]
    #: one entry per record of the folder that is not a result of this grid: id, kind, status, why
    outside: List[dict] = field(default_factory=list)
    #: per part (cells, probes): {"commits": {commit: n}, "threads": {threads: n}}
    provenance: Dict[str, dict] = field(default_factory=dict)
    #: True when env.json names its tasks by id only (written before records carried their identity)
    legacy: bool = False
    #: why no grid could be read (env.json absent or unreadable): then no record is in the grid
    problem: Optional[str] = None


def _summary(record: dict, why: str) -> dict:
    cfg = record.get("config") or {}
    return {"id": record.get("id"), "kind": record.get("kind"), "status": record.get("status"), "why": why,
            "git_commit": _commit(record), "config": {k: cfg.get(k) for k in ("estimator", "aux", "labels", "seed",
                                                                              "epochs", "lr") if k in cfg}}


def load_grid(out_dir) -> GridResults:
    """The results of the grid named in ``OUT/env.json``, rebuilt from the JSON records (the CSV tables
    are caches and are not read), and the records of the folder outside that grid, listed apart.

    A record belongs to the grid when its id is one of the grid's tasks, its spec is that task's spec
    and (for env.json written with identities) its data and torch/pyro versions are the grid's. A
    different git commit does not take a record out of the grid; ``provenance`` counts the commits
    (and thread counts) that made the cells and the probes.
    """
    out_dir = Path(out_dir)
    folder = Folder(out_dir)
    env, no_grid = _read_env(folder.env)
    specs = env.get("tasks") if no_grid is None else []
    legacy = not isinstance(specs, list)
    ident = env.get("identity_key") if not legacy else None
    if legacy:  # ids only: a record belongs by its id
        ids = list(env.get("expected_cells") or []) + list(env.get("expected_probes") or [])
        specs = []
        for tid in ids:
            record, _ = read_result(folder.records("common" if tid.startswith(("timing", "common")) else "train")
                                    / f"{tid}.json")
            spec = (record or {}).get("spec") or {"id": tid, "kind": "train" if not tid.startswith(
                ("timing", "common")) else tid.split("_", 1)[0]}
            if spec.get("kind") == "train" and "config" not in spec:
                continue  # a missing legacy cell: no config to show; the report lists it from env.json
            specs.append(spec)
    wanted = {s["id"]: s for s in specs}
    records, outside = {}, []
    for sub in (folder.runs, folder.probes):
        for path in sorted(sub.glob("*.json")):
            record, problem = read_result(path)
            tid = path.stem
            if record is None:
                if tid not in wanted:
                    outside.append({"id": tid, "kind": None, "status": "corrupt", "why": problem,
                                    "git_commit": None, "config": {}})
                continue
            if tid not in wanted:
                outside.append(_summary(record, no_grid and f"no grid to tie it to: {no_grid}"
                                        or "not a task of this grid"))
                continue
            why = stale_reason(record, wanted[tid], ident)
            if why is not None:
                outside.append(_summary(record, why))
                continue
            records[tid] = record
    tables = collect(out_dir, specs, ident)
    provenance = {}
    for part, kinds in (("cells", ("train",)), ("probes", ("common", "timing"))):
        recs = [r for r in records.values() if r.get("kind") in kinds]
        provenance[part] = {"commits": dict(Counter(_commit(r) or "unknown" for r in recs)),
                            "threads": dict(Counter(r.get("threads") for r in recs)), "records": len(recs)}
    return GridResults(env=env, tasks=specs, records=records, tables=tables, outside=outside,
                       provenance=provenance, legacy=legacy, problem=no_grid)


def _read_env(path: Path) -> Tuple[dict, Optional[str]]:
    """(env.json, None), or ({}, why it cannot be read): absent, not JSON, not a JSON object."""
    try:
        env = json.loads(path.read_text())
    except FileNotFoundError:
        return {}, f"{path.name} is missing"
    except (OSError, ValueError) as exc:
        return {}, f"{path.name} is unreadable ({type(exc).__name__})"
    return (env, None) if isinstance(env, dict) else ({}, f"{path.name} is not a JSON object")
