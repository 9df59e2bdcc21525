"""``python -m bench report RESULTS_DIR``: tables, plots and a self-contained HTML report.

The report is a pure function of the results folder (plus any ``--compare-timing`` folders, whose
``timing.csv`` is shown beside this folder's so CPU and GPU step times can be read side by side).
It writes into RESULTS_DIR:

* ``tables/*.csv`` (numbers) and ``tables/*.md`` (formatted, with a provenance line);
* ``plots/*.png`` (seaborn; one colour per estimator in every plot, aux shown by line style/marker);
* ``report.md`` (links the plots) and ``report.html`` (plots inline as base64 PNG; opens from disk).

Tables are byte-identical when the report is run twice on the same folder: nothing in them depends
on the clock; the date shown is the one the harness wrote into ``env.json``. PNGs are saved without
matplotlib's version/date metadata, so in practice the plots and report.html are reproducible too.

CPU and GPU side by side. A results folder holds one device. To compare step times across devices,
run the same preset on each device and name the other folders::

    python -m bench report results/quick-cpu --compare-timing results/quick-cuda [--compare-timing ...]

The timing table, the enum/trace cost ratio and the timing plot then have one block per device;
the section lists which folder (device, preset, commit) each timing came from. Only ``timing.csv``
is taken from the other folders; accuracy, variance and samples are this folder's alone. Nothing is
read implicitly (e.g. from ``results/reference/``), so the report stays a function of its arguments;
to show a stored reference, pass it: ``--compare-timing results/reference/<name>``.

What the tables hold:

* Table 1 (``tables/table1.*``): rows = label counts, columns = variants (trace, trace + aux, enum,
  enum + aux, further estimators without/with aux in the grid's order, then the baseline); each
  cell = mean test_acc_at_best_valid of the ok seeds ± the 95% t half-width
  (:func:`ssvae.metrics.accuracy_interval`), "(n=1)" without an interval for one seed; failed,
  diverged, corrupt, stale and missing seeds are left out of the mean and counted in brackets.
  ``table1_pyro`` is Pyro's published Table 1 (data: ``bench/pyro_table1.csv``) and
  ``table1_diff_vs_pyro`` our mean minus theirs where both exist; ``table1_long.csv`` has the numbers.
* ``timing``: median ms per step [q1–q3] per device, variant and step kind; ``timing_relative``:
  each variant's unsupervised step over trace's on the same device (enum / trace = the cost of
  enumeration relative to sampling).
* ``grad_variance`` (and ``_wide``): at the *common* checkpoints only, the median over checkpoints
  and seeds of variance and SNR per label count, step kind, parameter group and variant, and the
  median of the per-checkpoint ratio variance / enum's variance; ``grad_variance_by_checkpoint.csv``
  has every checkpoint.
* ``status_summary`` / ``status_cells`` / ``cells``: every expected cell and what became of it.
* ``pyro_overhead``: per device, estimator and step kind, Pyro's median ms beside the hand-written
  step's (timing.csv's ``ref_*`` columns), their ratio, the step's GFLOP and the reference step's
  % of the matmul rate; empty for folders written before the probe timed the reference.
* ``rank_accuracy``, ``rank_grad_variance``, ``rank_time``: variants ranked by mean test accuracy,
  by encoder_y's gradient variance on the unlabeled step at the common checkpoints, and by median
  seconds per epoch (with the ratio to enum + aux), at 3000 and 100 labels (else the largest and
  smallest label counts, named in ``chosen``).
* ``published_anchors``: ``bench/published_anchors.csv`` (Liu et al. 2019, Jang et al. 2017) beside
  our closest numbers.
* ``headline`` (the verdict) and ``headline_candidates``: which estimators with aux reach enum + aux's
  mean test accuracy within VERDICT_ACC_TOLERANCE at no more than VERDICT_TIME_FRACTION of its time
  per epoch, at 3000 labels (else the largest label count).

Pipeline: :func:`load_results` (tolerant reading: corrupt or missing files become "corrupt" /
"missing" cells, never a crash) -> ``table_*`` functions (DataFrames) -> ``plot_*`` functions
(PNG files) -> :func:`render_markdown` / :func:`render_html`. :func:`build_report` runs all four.
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from .store import load_grid, read_result

PYRO_TABLE1 = Path(__file__).with_name("pyro_table1.csv")
CELL_RE = re.compile(r"^(?P<estimator>.+?)(?P<aux>\+aux)?_L(?P<labels>\d+)_s(?P<seed>\d+)$")
#: "stale": runs.csv says the file was written for another configuration than the grid's
STATUS_ORDER = ("ok", "failed", "diverged", "corrupt", "stale", "missing")
#: estimators shown first, in Pyro's order; the rest follow in the grid's order; baselines go last
LEADING = ("trace", "enum")
BASELINES = ("baseline",)
#: fixed colours for the estimators we know; others get the next free colour of the palette
FIXED_COLOURS = {"trace": 0, "enum": 1, "enum-seq": 2, "baseline": 7}
RUN_NUMERIC = ("test_acc_at_best_valid", "best_valid_acc", "best_epoch", "final_test_acc",
               "final_valid_acc", "epochs", "steps", "train_seconds", "seconds_per_epoch")
CURVE_COLUMNS = ("cell", "estimator", "aux", "labels", "seed", "epoch", "global_step", "valid_acc",
                 "test_acc", "loss_sup", "loss_unsup", "loss_aux", "elapsed_seconds")
PNG_METADATA = {"Software": None}
PUBLISHED_ANCHORS = Path(__file__).with_name("published_anchors.csv")
#: timing.csv columns of the reference-step timing (Pyro's overhead), numeric
OVERHEAD_COLUMNS = ("ref_median_ms", "ref_q1_ms", "ref_q3_ms", "pyro_overhead", "gflop", "matmul_gflops",
                    "pct_of_matmul_peak")
#: the headline verdict: within this much test accuracy of enum + aux ...
VERDICT_ACC_TOLERANCE = 0.01
#: ... at no more than this fraction of its time per epoch
VERDICT_TIME_FRACTION = 0.60
#: label counts the rankings and the verdict prefer (else the largest / smallest in the folder)
RANK_LABELS = (3000, 100)


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------

@dataclass
class Results:
    root: Path
    env: dict
    runs: pd.DataFrame          # one row per expected or present cell (status ok/failed/diverged/corrupt/missing)
    curves: pd.DataFrame        # per-epoch rows of ok cells
    timing: pd.DataFrame        # this folder's timing.csv plus any --compare-timing folders' (column source)
    grad: pd.DataFrame          # grad_variance.csv
    samples: Dict[str, Path]    # cell -> samples/<cell>.npy
    problems: List[str] = field(default_factory=list)
    timing_sources: List[Tuple[str, dict]] = field(default_factory=list)  # (label, env) per timing folder
    outside: List[dict] = field(default_factory=list)  # records of the folder outside its grid (in no table)
    part_provenance: Dict[str, dict] = field(default_factory=dict)  # cells/probes: commits and threads


def parse_cell(cell: str) -> Optional[dict]:
    """``enum+aux_L3000_s0`` -> {estimator: enum, aux: True, labels: 3000, seed: 0}; None if not a cell id."""
    m = CELL_RE.match(cell)
    if not m:
        return None
    return {"estimator": m["estimator"], "aux": bool(m["aux"]), "labels": int(m["labels"]),
            "seed": int(m["seed"])}


def _bool(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return False
    return bool(v)


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


def _run_row(cell: str, record: Optional[dict]) -> dict:
    """One row of the runs table from a runs/<cell>.json record (None: corrupt)."""
    ident = parse_cell(cell) or {"estimator": "?", "aux": False, "labels": -1, "seed": -1}
    row = {"cell": cell, **ident, "status": "corrupt", "error": "corrupt or truncated JSON", "source": "json"}
    if record is None:
        return row
    cfg = record.get("config") if isinstance(record.get("config"), dict) else {}
    for key in ("estimator", "labels", "seed"):
        if cfg.get(key) is not None:
            row[key] = cfg[key]
    if "aux" in cfg:
        row["aux"] = _bool(cfg["aux"])
    row["status"] = _status(record.get("status"))
    row["error"] = record.get("error")
    metrics = record.get("metrics") if isinstance(record.get("metrics"), dict) else {}
    for key in RUN_NUMERIC:
        row[key] = metrics.get(key)
    if row["status"] == "ok" and row.get("test_acc_at_best_valid") is None:
        row["status"], row["error"] = "failed", row["error"] or "status ok but no test_acc_at_best_valid"
    return row


def load_results(results_dir, compare_timing: Sequence = ()) -> Results:
    """Read a results folder; never raises on a corrupt or missing piece (see ``problems``)."""
    root = Path(results_dir)
    problems: List[str] = []
    env = _read_json(root / "env.json", problems) if (root / "env.json").exists() else None
    if not isinstance(env, dict):
        problems.append("env.json missing or unreadable: provenance unknown")
        env = {}

    # The grid of env.json, from its JSON records (bench.store.load_grid). A folder whose env.json lists
    # its task specs is read from its records alone: CSVs are caches, and a record outside the grid
    # (another configuration, other data or torch) is in no table. Older folders: as they were written.
    grid = load_grid(root)
    paths = sorted((root / "runs").glob("*.json"))
    if not grid.legacy:
        expected_ids = set(_expected_cells(env))
        paths = [p for p in paths if p.stem in grid.records or (p.stem in expected_ids and read_result(p)[0] is None)]
        for o in grid.outside:
            problems.append(f"outside this grid: {o['id']} ({o['status']}, {o['why']}"
                            + (f", commit {o['git_commit'][:7]}" if o.get("git_commit") else "") + ")")
    rows, json_curves = {}, []
    for path in paths:
        record = _read_json(path, problems)
        if record is not None and not isinstance(record, dict):
            problems.append(f"{path.name}: not a JSON object")
            record = None
        cell = str(record.get("cell") or path.stem) if record else path.stem
        try:
            rows[cell] = _run_row(cell, record)
        except Exception as exc:  # a well-formed file with ill-typed content
            problems.append(f"{path.name}: unexpected content ({type(exc).__name__}: {exc})")
            rows[cell] = _run_row(cell, None)
            continue
        if record and rows[cell]["status"] == "ok" and isinstance(record.get("curves"), list):
            for c in record["curves"]:
                if isinstance(c, dict):
                    json_curves.append({"cell": cell, **{k: c.get(k) for k in CURVE_COLUMNS[5:]}})

    csv_runs = _read_csv(root / "runs.csv", problems) if grid.legacy else pd.DataFrame()
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
            for key in ("estimator", "labels", "seed", "status", "error", *RUN_NUMERIC):
                if key in rec and not (isinstance(rec[key], float) and math.isnan(rec[key])):
                    row[key] = rec[key]
            row["aux"] = _bool(rec.get("aux", row.get("aux")))
            row["status"] = _status(row.get("status"))
            rows[cell] = row

    expected = _expected_cells(env)
    for cell in expected:
        if cell not in rows:
            ident = parse_cell(cell) or {"estimator": "?", "aux": False, "labels": -1, "seed": -1}
            rows[cell] = {"cell": cell, **ident, "status": "missing", "error": "no result file", "source": ""}
    runs = pd.DataFrame(list(rows.values()))
    for key in RUN_NUMERIC:
        runs[key] = pd.to_numeric(runs[key], errors="coerce") if key in runs else np.nan
    runs["labels"] = pd.to_numeric(runs["labels"], errors="coerce").fillna(-1).astype(int)
    runs["seed"] = pd.to_numeric(runs["seed"], errors="coerce").fillna(-1).astype(int)
    runs["aux"] = runs["aux"].map(_bool)
    runs["estimator"] = runs["estimator"].astype(str)
    runs["status"] = runs["status"].astype(str)
    runs["expected"] = runs["cell"].isin(set(expected))
    runs["error"] = runs["error"].where(runs["error"].notna(), "")
    runs = runs.sort_values(["labels", "estimator", "aux", "seed", "cell"]).reset_index(drop=True)

    ok_cells = set(runs.loc[runs.status == "ok", "cell"])
    curves = pd.DataFrame(json_curves, columns=["cell", *CURVE_COLUMNS[5:]])
    csv_curves = _read_csv(root / "curves.csv", problems) if grid.legacy else pd.DataFrame()
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
    grad = _read_csv(root / "grad_variance.csv", problems) if grid.legacy else pd.DataFrame(grid.tables["grad_variance"])
    if len(grad):
        need = {"estimator", "aux", "labels", "seed", "trajectory", "step", "param_group", "step_kind",
                "variance"}
        if not need <= set(grad.columns):
            problems.append(f"grad_variance.csv: missing columns {sorted(need - set(grad.columns))}")
            grad = pd.DataFrame()
        else:
            grad["aux"] = grad["aux"].map(_bool)
            for key in ("labels", "seed", "step", "n_samples", "variance", "mean_sq", "snr"):
                if key in grad:
                    grad[key] = pd.to_numeric(grad[key], errors="coerce")

    samples = {p.stem: p for p in sorted((root / "samples").glob("*.npy"))}
    return Results(root, env, runs, curves, timing, grad, samples, problems, sources, outside=grid.outside,
                   part_provenance=grid.provenance)


def _load_timing(root: Path, env: dict, problems: List[str], compare: Sequence, own: Optional[pd.DataFrame] = None):
    frames, sources = [], []
    for i, folder in enumerate([root, *[Path(c) for c in compare]]):
        label = "this run" if i == 0 else str(folder)
        t = own if i == 0 and own is not None else _read_csv(folder / "timing.csv", problems)
        fenv = env if i == 0 else (_read_json(folder / "env.json", problems)
                                   if (folder / "env.json").exists() else {}) or {}
        need = {"estimator", "aux", "step_kind", "median_ms"}
        if len(t) and not need <= set(t.columns):
            problems.append(f"{folder / 'timing.csv'}: missing columns {sorted(need - set(t.columns))}")
            continue
        if not len(t):
            continue
        t = t.copy()
        t["aux"] = t["aux"].map(_bool)
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


# --------------------------------------------------------------------------------------------
# variants, colours, provenance
# --------------------------------------------------------------------------------------------

def variant_label(estimator: str, aux: bool) -> str:
    return f"{estimator} + aux" if aux else estimator


def estimator_order(res: Results) -> List[str]:
    seen = list((res.env.get("grid") or {}).get("estimators", []))
    seen += sorted(set(res.runs["estimator"]) - set(seen) - {"?"})
    first = [e for e in LEADING if e in seen]
    last = [e for e in seen if e in BASELINES]
    return first + [e for e in seen if e not in first and e not in last] + last


def variants(res: Results) -> List[Tuple[str, bool]]:
    """(estimator, aux) pairs in Table 1's column order: trace, trace + aux, enum, enum + aux, ..., baseline."""
    present = set(zip(res.runs["estimator"], res.runs["aux"]))
    return [(e, a) for e in estimator_order(res) for a in (False, True) if (e, a) in present]


def palette(res: Results) -> Dict[str, tuple]:
    """estimator -> colour, the same in every plot of the report."""
    import seaborn as sns
    colours = sns.color_palette("colorblind", 10)
    taken = set(FIXED_COLOURS.values())
    free = [i for i in range(10) if i not in taken]
    out = {}
    for est in estimator_order(res):
        if est in FIXED_COLOURS:
            out[est] = colours[FIXED_COLOURS[est]]
        else:
            out[est] = colours[free.pop(0)] if free else (0.3, 0.3, 0.3)
    return out


AUX_STYLE = {False: {"linestyle": "-", "marker": "o"}, True: {"linestyle": "--", "marker": "s"}}


def provenance(env: dict) -> str:
    """One line: preset, seeds, epochs, device, library versions, data sha256, commit, date."""
    grid = env.get("grid") or {}
    seeds = ",".join(str(s) for s in grid.get("seeds", [])) or "?"
    device = env.get("device", "?")
    name = env.get("device_name") or env.get("cpu_name") or "?"
    sha = str(env.get("data_sha256") or "?")[:12]
    commit = str(env.get("git_commit") or "?")
    commit = commit[:10] + ("-dirty" if commit.endswith("-dirty") else "")
    return (f"preset {env.get('preset', '?')} · seeds {seeds} · {grid.get('epochs', '?')} epochs · "
            f"{device}: {name} · torch {env.get('torch', '?')}, pyro {env.get('pyro', '?')}, "
            f"python {env.get('python', '?')} · data sha256 {sha} · commit {commit} · {env.get('date', '?')}")


# --------------------------------------------------------------------------------------------
# tables (DataFrames; `*_display` frames hold the formatted strings shown in md/html)
# --------------------------------------------------------------------------------------------

def _fmt(x, digits=4) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _fmt_ms(x) -> str:
    """Milliseconds: 3 significant digits, never in exponent notation."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _fmt_sig(x, sig=3) -> str:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return "–" if x is None or math.isnan(x) else "inf"
    return f"{x:.{sig}g}"


def load_pyro_table1() -> pd.DataFrame:
    ref = pd.read_csv(PYRO_TABLE1, comment="#")
    ref["aux"] = ref["aux"].map(_bool)
    return ref


def table_status(res: Results) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """(summary counts, one row per cell that is not ok)."""
    r = res.runs
    counts = {s: int((r.status == s).sum()) for s in STATUS_ORDER}
    other = sorted(set(r.status) - set(STATUS_ORDER))
    for s in other:
        counts[s] = int((r.status == s).sum())
    n_expected = int(r.expected.sum())
    summary = pd.DataFrame([{"expected": n_expected, "present": int(n_expected - counts["missing"]),
                             "unexpected": int((~r.expected).sum()), **counts}])
    bad = r[r.status != "ok"][["cell", "estimator", "aux", "labels", "seed", "status", "error"]]
    bad = bad.assign(error=bad["error"].astype(str).str.replace(r"\s+", " ", regex=True).str.slice(0, 160))
    return summary, bad.reset_index(drop=True)


def table1(res: Results) -> pd.DataFrame:
    """Long form: one row per (label count, variant) with mean, 95% half-width and Pyro's value."""
    from ssvae.metrics import accuracy_interval

    ref = load_pyro_table1().set_index(["labels", "estimator", "aux"])
    r = res.runs
    rows = []
    for labels in sorted(set(r.labels) - {-1}):
        for est, aux in variants(res):
            cells = r[(r.labels == labels) & (r.estimator == est) & (r.aux == aux)]
            if not len(cells):
                continue
            ok = cells[cells.status == "ok"]["test_acc_at_best_valid"].dropna().tolist()
            iv = accuracy_interval(ok)
            mean, half = (iv if iv else (None, None))
            key = (labels, est, aux)
            p_mean = float(ref.loc[key, "mean"]) if key in ref.index else None
            p_bound = float(ref.loc[key, "bound"]) if key in ref.index else None
            rows.append({
                "labels": int(labels), "variant": variant_label(est, aux), "estimator": est, "aux": bool(aux),
                "n_ok": len(ok), "n_cells": len(cells),
                "n_failed": int((cells.status == "failed").sum()),
                "n_diverged": int((cells.status == "diverged").sum()),
                "n_corrupt": int((cells.status == "corrupt").sum()),
                "n_stale": int((cells.status == "stale").sum()),
                "n_other": int((~cells.status.isin(STATUS_ORDER)).sum()),
                "n_missing": int((cells.status == "missing").sum()),
                "mean": _round(mean), "ci95_halfwidth": _round(half),
                "pyro_mean": p_mean, "pyro_bound": p_bound,
                "diff_vs_pyro": _round(mean - p_mean) if mean is not None and p_mean is not None else None,
            })
    return pd.DataFrame(rows, columns=["labels", "variant", "estimator", "aux", "n_ok", "n_cells", "n_failed",
                                       "n_diverged", "n_corrupt", "n_stale", "n_other", "n_missing", "mean", "ci95_halfwidth", "pyro_mean", "pyro_bound",
                                       "diff_vs_pyro"])


def _round(x, nd=6):
    return None if x is None else round(float(x), nd)


def _table1_cell(row) -> str:
    counts = [(row.n_failed, "failed"), (row.n_diverged, "diverged"), (row.n_corrupt, "corrupt"),
              (row.n_stale, "stale"), (row.n_other, "other status"), (row.n_missing, "missing")]
    notes = [f"{n} {what}" for n, what in counts if n]
    if row.n_ok == 0:  # nothing to average: say what happened, worst first
        return " / ".join(notes) if len(notes) > 1 else (notes[0].split(" ", 1)[1] if notes else "missing")
    if row.ci95_halfwidth is None or pd.isna(row.ci95_halfwidth):
        text = f"{row['mean']:.4f} (n=1)"
    else:
        text = f"{row['mean']:.4f} ± {row.ci95_halfwidth:.4f} (n={row.n_ok})"
    return text + (f" [{', '.join(notes)}]" if notes else "")


def table1_display(t1: pd.DataFrame, res: Results) -> Tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(ours wide, Pyro's published Table 1 wide, ours − Pyro wide) with label counts as rows."""
    cols = [variant_label(e, a) for e, a in variants(res)]
    labels = sorted(t1["labels"].unique()) if len(t1) else []
    ours = pd.DataFrame({"labels": [str(l) for l in labels]})
    diff = pd.DataFrame({"labels": [str(l) for l in labels]})
    for col in cols:
        sub = t1[t1.variant == col].set_index("labels")
        ours[col] = [_table1_cell(sub.loc[l]) if l in sub.index else "–" for l in labels]
        if sub["pyro_mean"].notna().any():
            diff[col] = [("–" if l not in sub.index or pd.isna(sub.loc[l, "diff_vs_pyro"])
                          else f"{sub.loc[l, 'diff_vs_pyro']:+.4f}") for l in labels]
    ref = load_pyro_table1()
    pyro = pd.DataFrame({"labels": [str(l) for l in sorted(ref["labels"].unique())]})
    for (est, aux, name), sub in ref.groupby(["estimator", "aux", "pyro_variant"], sort=False):
        sub = sub.set_index("labels")
        pyro[f"{variant_label(est, aux)} ({name})"] = [
            f"{sub.loc[l, 'mean']:.4f} ± {sub.loc[l, 'bound']:.4f}" for l in sorted(ref["labels"].unique())]
    return ours, pyro, diff


def table_timing(res: Results) -> Tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(long numbers, wide display: median [q1–q3] ms per step kind, unsup cost relative to trace)."""
    t = res.timing
    if not len(t):
        return pd.DataFrame(), pd.DataFrame(), pd.DataFrame()
    order = {v: i for i, v in enumerate(variants(res))}
    t = t.assign(variant=[variant_label(e, a) for e, a in zip(t.estimator, t.aux)],
                 _o=[order.get((e, a), len(order)) for e, a in zip(t.estimator, t.aux)])
    t = t.sort_values(["device", "device_name", "_o", "estimator", "aux", "step_kind"])
    long = t[["device", "device_name", "estimator", "aux", "variant", "step_kind", "batch_size", "n_steps",
              "median_ms", "q1_ms", "q3_ms", "source"]].reset_index(drop=True)
    kinds = [k for k in ("sup", "unsup", "aux") if k in set(t.step_kind)]
    kinds += sorted(set(t.step_kind) - set(kinds))
    wide_rows = []
    for (dev, name, _o, var), sub in t.groupby(["device", "device_name", "_o", "variant"], sort=True):
        row = {"device": f"{dev} ({name})", "variant": var}
        by = sub.set_index("step_kind")
        for k in kinds:
            if k in by.index:
                b = by.loc[k]
                row[f"{k} ms"] = f"{_fmt_ms(b.median_ms)} [{_fmt_ms(b.q1_ms)}–{_fmt_ms(b.q3_ms)}]"
            else:
                row[f"{k} ms"] = "–"
        wide_rows.append(row)
    wide = pd.DataFrame(wide_rows)

    rel_rows = []
    for (dev, name), sub in t[t.step_kind == "unsup"].groupby(["device", "device_name"], sort=True):
        ref = sub[(sub.estimator == "trace") & (~sub.aux)]
        ref_ms = float(ref.median_ms.iloc[0]) if len(ref) else float("nan")
        for r in sub.itertuples():
            rel_rows.append({"device": dev, "device_name": name, "variant": r.variant,
                             "unsup_median_ms": _round(r.median_ms),
                             "relative_to_trace": _round(r.median_ms / ref_ms) if ref_ms == ref_ms else None})
    rel = pd.DataFrame(rel_rows, columns=["device", "device_name", "variant", "unsup_median_ms",
                                          "relative_to_trace"])
    return long, wide, rel


def table_grad_variance(res: Results) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """Common-checkpoint gradient variance: (per checkpoint with ratio to enum, median over checkpoints)."""
    g = res.grad
    if not len(g):
        return pd.DataFrame(), pd.DataFrame()
    g = g[g.trajectory == "common"].copy()
    if not len(g):
        return pd.DataFrame(), pd.DataFrame()
    keys = ["labels", "seed", "step", "param_group", "step_kind"]
    ref = g[g.estimator == "enum"].sort_values("aux").drop_duplicates(keys, keep="first")
    g = g.merge(ref[keys + ["variance"]].rename(columns={"variance": "enum_variance"}), on=keys, how="left")
    g["ratio_to_enum"] = g["variance"] / g["enum_variance"]
    g["variant"] = [variant_label(e, a) for e, a in zip(g.estimator, g.aux)]
    order = {variant_label(e, a): i for i, (e, a) in enumerate(variants(res))}
    g["_o"] = g["variant"].map(lambda v: order.get(v, len(order)))
    per = g.sort_values(["labels", "step_kind", "param_group", "_o", "variant", "seed", "step"])
    per = per[["labels", "seed", "step", "step_kind", "param_group", "variant", "n_samples", "variance",
               "mean_sq", "snr", "ratio_to_enum"]].reset_index(drop=True)
    med_rows = []
    for (labels, kind, group, _o, var), sub in g.groupby(["labels", "step_kind", "param_group", "_o", "variant"],
                                                         sort=True):
        med_rows.append({"labels": int(labels), "step_kind": kind, "param_group": group, "variant": var,
                         "n_checkpoints": len(sub),
                         "median_variance": _sig(sub["variance"].median()),
                         "median_snr": _sig(sub["snr"].median()) if "snr" in sub else None,
                         "median_ratio_to_enum": _sig(sub["ratio_to_enum"].median())})
    med = pd.DataFrame(med_rows)
    # unsupervised steps first (that is where the estimators differ), then encoder_y, encoder_z, decoder
    med["_k"] = med["step_kind"].map({"unsup": 0, "sup": 1}).fillna(2)
    med["_g"] = med["param_group"].map({"encoder_y": 0, "encoder_z": 1, "decoder": 2}).fillna(3)
    med = med.sort_values(["_k", "labels", "_g"], kind="stable").drop(columns=["_k", "_g"]).reset_index(drop=True)
    return per, med


def grad_variance_display(med: pd.DataFrame, res: Results) -> pd.DataFrame:
    """Wide: one row per (step kind, label count, param group); per variant "variance (×enum) / SNR"."""
    if not len(med):
        return pd.DataFrame()
    cols = [v for v in (variant_label(e, a) for e, a in variants(res)) if v in set(med.variant)]
    cols += sorted(set(med.variant) - set(cols))
    rows = []
    for (kind, labels, group), sub in med.groupby(["step_kind", "labels", "param_group"], sort=False):
        row = {"step kind": kind, "labels": str(labels), "param group": group}
        by = sub.set_index("variant")
        for v in cols:
            if v not in by.index:
                row[v] = "–"
                continue
            b = by.loc[v]
            row[v] = (f"{_fmt_sig(b.median_variance)} (×{_fmt_sig(b.median_ratio_to_enum)}) / "
                      f"{_fmt_sig(b.median_snr)}")
        rows.append(row)
    return pd.DataFrame(rows)


def _sig(x, sig=6):
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return x
    return float(f"{x:.{sig}g}")


def table_cells(res: Results) -> pd.DataFrame:
    cols = ["cell", "estimator", "aux", "labels", "seed", "status", "test_acc_at_best_valid", "best_valid_acc",
            "best_epoch", "final_test_acc", "epochs", "steps", "train_seconds", "seconds_per_epoch"]
    return res.runs.reindex(columns=cols)


# -- Pyro's overhead (timing.csv's reference columns) -------------------------------------------

def _num(row, key) -> Optional[float]:
    """A finite float from a row (Series or dict), else None."""
    try:
        v = row[key] if key in row else None
    except (KeyError, TypeError):
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def has_overhead(res: Results) -> bool:
    t = res.timing
    return bool(len(t)) and "ref_median_ms" in t and bool(t["ref_median_ms"].notna().any())


def table_overhead(res: Results) -> pd.DataFrame:
    """Per device, estimator and step kind: Pyro's median ms beside the hand-written step's.

    The ``sup`` and ``unsup`` steps are the same objective with or without the auxiliary loss, so
    the row measured without it is shown (with it where that is all there is); ``aux`` comes from
    the runs with it. Empty frame when timing.csv has no reference columns (an older folder).
    """
    cols = ["device", "device_name", "estimator", "aux", "step_kind", "pyro_median_ms", "ref_step",
            "ref_median_ms", "pyro_overhead", "gflop", "pct_of_matmul_peak", "matmul_gflops"]
    if not has_overhead(res):
        return pd.DataFrame(columns=cols)
    t = res.timing
    order = {e: i for i, e in enumerate(estimator_order(res))}
    kind_order = {"sup": 0, "unsup": 1, "aux": 2}
    rows = []
    for (dev, name), d in t.groupby(["device", "device_name"], sort=True):
        for est in sorted(set(d.estimator), key=lambda e: (order.get(e, len(order)), e)):
            de = d[d.estimator == est]
            for kind in sorted(set(de.step_kind), key=lambda k: (kind_order.get(k, 3), k)):
                r = de[de.step_kind == kind].sort_values("aux", kind="stable").iloc[0]
                pyro_ms, ref_ms = _num(r, "median_ms"), _num(r, "ref_median_ms")
                ratio = _num(r, "pyro_overhead")
                if ratio is None and pyro_ms and ref_ms:
                    ratio = pyro_ms / ref_ms
                rows.append({"device": dev, "device_name": name, "estimator": est, "aux": bool(r["aux"]),
                             "step_kind": kind, "pyro_median_ms": _round(pyro_ms),
                             "ref_step": str(r["ref_step"]) if "ref_step" in r and ref_ms is not None else "",
                             "ref_median_ms": _round(ref_ms), "pyro_overhead": _round(ratio, 4),
                             "gflop": _round(_num(r, "gflop"), 5) if ref_ms is not None else None,
                             "pct_of_matmul_peak": _round(_num(r, "pct_of_matmul_peak"), 2),
                             "matmul_gflops": _round(_num(r, "matmul_gflops"), 2)})
    return pd.DataFrame(rows, columns=cols)


def overhead_display(ov: pd.DataFrame) -> pd.DataFrame:
    if not len(ov):
        return pd.DataFrame()
    multi = len(set(zip(ov.device, ov.device_name))) > 1
    rows = []
    for r in ov.itertuples():
        has_ref = r.ref_median_ms is not None and not pd.isna(r.ref_median_ms)
        row = {"device": f"{r.device} ({r.device_name})"} if multi else {}
        row.update({"estimator": r.estimator, "step kind": r.step_kind, "Pyro ms": _fmt_ms(r.pyro_median_ms),
                    "reference step": r.ref_step if has_ref else "no hand-written counterpart",
                    "reference ms": _fmt_ms(r.ref_median_ms) if has_ref else "–",
                    "Pyro / reference": f"{r.pyro_overhead:.2f}×" if has_ref and not pd.isna(r.pyro_overhead) else "–",
                    "GFLOP": _fmt_sig(r.gflop) if has_ref else "–",
                    "% of matmul rate": (f"{r.pct_of_matmul_peak:.0f}%" if has_ref and not pd.isna(r.pct_of_matmul_peak)
                                         else "–")})
        rows.append(row)
    return pd.DataFrame(rows)


def overhead_text(ov: pd.DataFrame) -> List[str]:
    """The headline numbers of the overhead table, one sentence per device."""
    out = []
    for (dev, name), d in ov.groupby(["device", "device_name"], sort=True):
        paired = d.dropna(subset=["pyro_overhead"])
        if not len(paired):
            continue
        parts = []
        enum = paired[(paired.estimator == "enum") & (paired.step_kind == "unsup")]
        if len(enum):
            e = enum.iloc[0]
            parts.append(f"enum's unlabeled step (all ten labels in one batched pass) takes {_fmt_ms(e.pyro_median_ms)} ms "
                         f"in Pyro against {_fmt_ms(e.ref_median_ms)} ms by hand: **{e.pyro_overhead:.2f}×**")
        lo, hi = paired.loc[paired.pyro_overhead.idxmin()], paired.loc[paired.pyro_overhead.idxmax()]
        parts.append(f"over the {len(paired)} steps with a hand-written twin Pyro costs {lo.pyro_overhead:.2f}× "
                     f"({lo.estimator} {lo.step_kind}) to {hi.pyro_overhead:.2f}× ({hi.estimator} {hi.step_kind}) "
                     f"the reference, median {paired.pyro_overhead.median():.2f}×")
        pct = paired.dropna(subset=["pct_of_matmul_peak"])
        pct = pct[pct.step_kind != "aux"]  # the aux step is one small network: not a compute-bound step
        if len(pct):
            rate = pct.matmul_gflops.dropna()
            best = pct.loc[pct.pct_of_matmul_peak.idxmax()]
            text = (f"the reference steps run at {pct.pct_of_matmul_peak.min():.0f}–{best.pct_of_matmul_peak:.0f}% "
                    f"of the measured matmul rate"
                    + (f" ({rate.iloc[0]:.1f} GFLOP/s)" if len(rate) else ""))
            en = pct[(pct.estimator == "enum") & (pct.step_kind == "unsup")]
            if len(en) and en.iloc[0].pct_of_matmul_peak > 0:
                text += (f"; the enumerated one within {100 / en.iloc[0].pct_of_matmul_peak:.2f}× of the time its "
                         f"matmuls alone would take")
            parts.append(text)
        out.append(f"**{dev} ({name}):** " + "; ".join(parts) + ".")
    return out


# -- rankings, published anchors, headline verdict ----------------------------------------------

def rank_label_counts(labels: Sequence[int]) -> List[Tuple[int, str]]:
    """[(label count, how it was chosen)]: 3000 and 100 where present, else the largest and the smallest."""
    have = sorted({int(l) for l in labels if l is not None and int(l) > 0})
    if not have:
        return []
    out = []
    for want, pick, word in ((RANK_LABELS[0], have[-1], "largest"), (RANK_LABELS[1], have[0], "smallest")):
        if want in have:
            choice = (want, f"{want} labels")
        else:
            choice = (pick, f"{pick} labels (the {word} label count here; {want} absent)")
        if choice[0] not in [c[0] for c in out]:
            out.append(choice)
    return out


def _ok_runs(res: Results) -> pd.DataFrame:
    return res.runs[res.runs.status == "ok"]


def median_seconds_per_epoch(res: Results, estimator: str, aux: bool, labels: int) -> Tuple[Optional[float], int]:
    """(median seconds_per_epoch over the ok seeds, how many), from runs.csv / the run files."""
    r = _ok_runs(res)
    v = r[(r.estimator == estimator) & (r.aux == aux) & (r.labels == labels)]["seconds_per_epoch"].dropna()
    return (float(v.median()), len(v)) if len(v) else (None, 0)


def _t1_mean(t1: pd.DataFrame, estimator: str, aux: bool, labels: int) -> Tuple[Optional[float], int, Optional[float]]:
    """(mean test accuracy, n ok seeds, 95% half-width) of a variant at a label count from Table 1."""
    if not len(t1):
        return None, 0, None
    sub = t1[(t1.labels == labels) & (t1.estimator == estimator) & (t1.aux == aux)]
    if not len(sub) or sub.iloc[0]["mean"] is None or pd.isna(sub.iloc[0]["mean"]):
        return None, 0, None
    row = sub.iloc[0]
    half = None if row.ci95_halfwidth is None or pd.isna(row.ci95_halfwidth) else float(row.ci95_halfwidth)
    return float(row["mean"]), int(row.n_ok), half


def _ranked(rows: List[dict], key: str, ascending: bool) -> List[dict]:
    """Rank rows by ``key`` (ties: the report's variant order); rows without a value last, unranked."""
    have = [r for r in rows if r.get(key) is not None and not pd.isna(r[key])]
    none = [r for r in rows if r not in have]
    have = sorted(have, key=lambda r: (r[key] if ascending else -r[key], r["_o"]))
    for i, r in enumerate(have):
        r["rank"] = i + 1
    for r in none:
        r["rank"] = None
    return [{k: v for k, v in r.items() if k != "_o"} for r in have + none]


def rank_accuracy(res: Results, t1: pd.DataFrame) -> pd.DataFrame:
    cols = ["labels", "chosen", "rank", "variant", "estimator", "aux", "mean_test_acc", "ci95_halfwidth", "n_ok",
            "diff_vs_enum_aux"]
    out = []
    for labels, chosen in rank_label_counts(t1["labels"] if len(t1) else []):
        ref, _, _ = _t1_mean(t1, "enum", True, labels)
        rows = []
        for i, (est, aux) in enumerate(variants(res)):
            sub = t1[(t1.labels == labels) & (t1.estimator == est) & (t1.aux == aux)]
            if not len(sub):
                continue
            mean, n, half = _t1_mean(t1, est, aux, labels)
            rows.append({"labels": labels, "chosen": chosen, "variant": variant_label(est, aux), "estimator": est,
                         "aux": aux, "mean_test_acc": _round(mean), "ci95_halfwidth": _round(half), "n_ok": n,
                         "diff_vs_enum_aux": _round(mean - ref) if mean is not None and ref is not None else None,
                         "_o": i})
        out += _ranked(rows, "mean_test_acc", ascending=False)
    return pd.DataFrame(out, columns=cols)


def rank_grad_variance(res: Results, grad_per: pd.DataFrame) -> pd.DataFrame:
    """encoder_y's gradient variance on the unlabeled step at the common checkpoints (median), ranked low first."""
    cols = ["labels", "chosen", "rank", "variant", "step_kind", "checkpoints", "n_checkpoints",
            "median_variance", "median_ratio_to_enum"]
    if not len(grad_per) or not {"param_group", "step_kind", "variance", "ratio_to_enum"} <= set(grad_per.columns):
        return pd.DataFrame(columns=cols)
    g = grad_per[grad_per.param_group == "encoder_y"]
    kind = "unsup" if (g.step_kind == "unsup").any() else (sorted(set(g.step_kind))[0] if len(g) else None)
    g = g[g.step_kind == kind]
    if not len(g):
        return pd.DataFrame(columns=cols)
    later = g[g.step > 0]
    which = "checkpoints > 0" if len(later) else "all checkpoints"
    g = later if len(later) else g
    order = {variant_label(e, a): i for i, (e, a) in enumerate(variants(res))}
    out = []
    for labels, chosen in rank_label_counts(g["labels"].dropna().astype(int)):
        rows = []
        for var, sub in g[g.labels == labels].groupby("variant", sort=True):
            rows.append({"labels": labels, "chosen": chosen, "variant": var, "step_kind": kind, "checkpoints": which,
                         "n_checkpoints": int(len(sub)), "median_variance": _sig(float(sub["variance"].median())),
                         "median_ratio_to_enum": _sig(float(sub["ratio_to_enum"].median())),
                         "_o": order.get(var, len(order))})
        out += _ranked(rows, "median_variance", ascending=True)
    return pd.DataFrame(out, columns=cols)


def rank_time(res: Results) -> pd.DataFrame:
    """Median seconds per epoch (ok cells) per variant, ranked fast first, with the ratio to enum + aux."""
    cols = ["labels", "chosen", "rank", "variant", "estimator", "aux", "n_ok", "median_seconds_per_epoch",
            "ratio_to_enum_aux"]
    r = _ok_runs(res).dropna(subset=["seconds_per_epoch"])
    out = []
    for labels, chosen in rank_label_counts(r["labels"]):
        ref, _ = median_seconds_per_epoch(res, "enum", True, labels)
        rows = []
        for i, (est, aux) in enumerate(variants(res)):
            sec, n = median_seconds_per_epoch(res, est, aux, labels)
            if not n:
                continue
            rows.append({"labels": labels, "chosen": chosen, "variant": variant_label(est, aux), "estimator": est,
                         "aux": aux, "n_ok": n, "median_seconds_per_epoch": _round(sec),
                         "ratio_to_enum_aux": _round(sec / ref, 4) if ref else None, "_o": i})
        out += _ranked(rows, "median_seconds_per_epoch", ascending=True)
    return pd.DataFrame(out, columns=cols)


def rank_display(df: pd.DataFrame, labels: int, kind: str) -> pd.DataFrame:
    d = df[df.labels == labels]
    rank = lambda r: "–" if r is None or pd.isna(r) else str(int(r))
    if kind == "accuracy":
        return pd.DataFrame([{"rank": rank(r.rank), "variant": r.variant,
                              "test accuracy": ("–" if pd.isna(r.mean_test_acc) else
                                                f"{r.mean_test_acc:.4f}" + ("" if pd.isna(r.ci95_halfwidth)
                                                                            else f" ± {r.ci95_halfwidth:.4f}")),
                              "n": str(r.n_ok),
                              "− enum + aux": "–" if pd.isna(r.diff_vs_enum_aux) else f"{r.diff_vs_enum_aux:+.4f}"}
                             for r in d.itertuples()])
    if kind == "variance":
        return pd.DataFrame([{"rank": rank(r.rank), "estimator": r.variant,
                              "encoder_y variance": _fmt_sig(r.median_variance),
                              "× enum": _fmt_sig(r.median_ratio_to_enum), "checkpoints": str(r.n_checkpoints)}
                             for r in d.itertuples()])
    return pd.DataFrame([{"rank": rank(r.rank), "variant": r.variant,
                          "s / epoch": _fmt_sig(r.median_seconds_per_epoch),
                          "× enum + aux": "–" if pd.isna(r.ratio_to_enum_aux) else f"{r.ratio_to_enum_aux:.2f}×",
                          "n": str(r.n_ok)} for r in d.itertuples()])


def load_anchors() -> pd.DataFrame:
    a = pd.read_csv(PUBLISHED_ANCHORS, comment="#")
    a["value"] = pd.to_numeric(a["value"], errors="coerce")
    a["labels"] = pd.to_numeric(a["labels"], errors="coerce")
    return a


def _closest_labels(have: Sequence[int], target) -> Optional[int]:
    have = sorted({int(l) for l in have if int(l) > 0})
    if not have:
        return None
    if target is None or pd.isna(target) or target <= 0:
        return have[-1]
    return min(have, key=lambda l: (abs(math.log(l / float(target))), -l))


def _unsup_ms(res: Results, estimator: str) -> Optional[float]:
    """This folder's unlabeled-step median ms of ``estimator`` (the run without aux where there is one)."""
    t = res.timing
    if not len(t):
        return None
    t = t[(t.estimator == estimator) & (t.step_kind == "unsup")]
    if "source" in t:
        t = t[t.source == "this run"]
    if not len(t):
        return None
    return _num(t.sort_values("aux", kind="stable").iloc[0], "median_ms")


def table_anchors(res: Results, t1: pd.DataFrame) -> pd.DataFrame:
    """The published anchors, each beside our closest number (same estimator, closest label count)."""
    cols = ["source", "setting", "labels", "epochs", "estimator", "unit", "value", "published", "vs_marginalisation",
            "our_estimator", "our_variant", "our_labels", "our_value", "our_vs_enum", "our_setting"]
    a = load_anchors()
    epochs = (res.env.get("grid") or {}).get("epochs", "?")
    t1_labels = t1["labels"].tolist() if len(t1) else []
    run_labels = _ok_runs(res).dropna(subset=["seconds_per_epoch"])["labels"].tolist()
    rows = []
    for r in a.itertuples():
        theirs_enum = a[(a.source == r.source) & (a.unit == r.unit) & (a.our_estimator == "enum")]
        base = float(theirs_enum.value.iloc[0]) if len(theirs_enum) else None
        row = {"source": r.source, "setting": r.setting, "labels": r.labels, "epochs": r.epochs,
               "estimator": r.estimator, "unit": r.unit,
               "value": r.value, "published": r.published, "vs_marginalisation": None,
               "our_estimator": r.our_estimator, "our_variant": None, "our_labels": None, "our_value": None,
               "our_vs_enum": None, "our_setting": ""}
        if r.unit in ("test_acc", "seconds_per_epoch"):
            if base is not None:
                row["vs_marginalisation"] = _round(r.value - base if r.unit == "test_acc" else r.value / base, 4)
            labels = _closest_labels(t1_labels if r.unit == "test_acc" else run_labels, r.labels)
            if labels is not None:
                # the auxiliary loss is part of the published M2 models (Kingma et al.'s alpha term)
                for aux in (True, False):
                    if r.unit == "test_acc":
                        ours, n, _ = _t1_mean(t1, r.our_estimator, aux, labels)
                        ref, _, _ = _t1_mean(t1, "enum", aux, labels)
                    else:
                        ours, n = median_seconds_per_epoch(res, r.our_estimator, aux, labels)
                        ref, _ = median_seconds_per_epoch(res, "enum", aux, labels)
                    if ours is not None:
                        row.update(our_variant=variant_label(r.our_estimator, aux), our_labels=labels,
                                   our_value=_round(ours))
                        if ref is not None:
                            row["our_vs_enum"] = _round(ours - ref if r.unit == "test_acc" else ours / ref, 4)
                        row["our_setting"] = (f"{labels} labels, {epochs} epochs, {n} seed(s)"
                                              + (", median s/epoch" if r.unit == "seconds_per_epoch" else ""))
                        break
        elif r.unit == "speedup_vs_marginalisation":
            row["vs_marginalisation"] = _round(r.value, 4)
            e_ms, o_ms = _unsup_ms(res, "enum"), _unsup_ms(res, r.our_estimator)
            if e_ms and o_ms:
                row.update(our_variant=r.our_estimator, our_value=_round(e_ms / o_ms, 4),
                           our_vs_enum=_round(e_ms / o_ms, 4),
                           our_setting=(f"unlabeled step, {r.our_estimator}/enum time per step "
                                        f"{o_ms / e_ms:.2f} ({res.env.get('device', '?')}, timing.csv)"))
        rows.append(row)
    out = pd.DataFrame(rows, columns=cols)
    for key in ("labels", "epochs", "our_labels"):
        out[key] = pd.to_numeric(out[key], errors="coerce").round().astype("Int64")
    return out


def anchors_display(an: pd.DataFrame) -> pd.DataFrame:
    def theirs(r):
        if r.unit == "test_acc":
            return f"{r.value:.3f}" + ("" if pd.isna(r.vs_marginalisation) or r.vs_marginalisation == 0 else
                                       f" ({r.vs_marginalisation:+.3f} vs marg.)")
        if r.unit == "seconds_per_epoch":
            return f"{r.value:g} s/epoch" + ("" if pd.isna(r.vs_marginalisation) or r.our_estimator == "enum" else
                                             f" ({r.vs_marginalisation:.2f}× marg.)")
        if r.unit == "speedup_vs_marginalisation":
            return f"{r.value:g}× the steps/s of marg."
        return str(r.published)

    def ours(r):
        if r.our_value is None or pd.isna(r.our_value):
            return "–"
        enum = variant_label("enum", str(r.our_variant).endswith(" + aux"))
        if pd.isna(r.our_vs_enum) or r.our_estimator == "enum":
            rel = ""
        elif r.unit == "test_acc":
            rel = f" ({r.our_vs_enum:+.4f} vs {enum})"
        else:
            rel = f" ({r.our_vs_enum:.2f}× {enum})"
        if r.unit == "test_acc":
            return f"{r.our_value:.4f}{rel}"
        if r.unit == "seconds_per_epoch":
            return f"{r.our_value:.3g} s/epoch{rel}"
        return f"{r.our_value:.2f}× the steps/s of enum"

    return pd.DataFrame([{"source": r.source, "setting": r.setting, "their estimator": r.estimator,
                          "theirs": theirs(r), "ours": "–" if r.our_variant is None or pd.isna(r.our_variant)
                          else r.our_variant, "our number": ours(r), "our setting": r.our_setting or "–"}
                         for r in an.itertuples()])


def headline(res: Results, t1: pd.DataFrame) -> Tuple[pd.DataFrame, pd.DataFrame, str]:
    """The verdict: which estimators, with the auxiliary loss, match enum + aux's accuracy within
    VERDICT_ACC_TOLERANCE at no more than VERDICT_TIME_FRACTION of its time per epoch.

    Returns (one-row summary with the verdict text, one row per candidate, the text).
    """
    cand_cols = ["labels", "variant", "estimator", "n_ok", "mean_test_acc", "acc_diff_vs_enum_aux",
                 "median_seconds_per_epoch", "time_ratio_vs_enum_aux", "within_accuracy", "within_time",
                 "qualifies"]
    tol, frac = VERDICT_ACC_TOLERANCE, VERDICT_TIME_FRACTION
    choice = rank_label_counts(t1["labels"] if len(t1) else [])
    crit = (f"within {tol * 100:g} point{'s' if tol != 0.01 else ''} ({tol:g}) of enum + aux's mean test accuracy "
            f"at no more than {frac:.0%} of its time per epoch")
    summary = {"labels": None, "chosen": "", "reference": "enum + aux", "reference_test_acc": None,
               "reference_n_ok": 0, "reference_seconds_per_epoch": None, "acc_tolerance": tol,
               "time_fraction": frac, "winners": "", "verdict": ""}
    if not choice:
        text = f"No verdict: no finished cell with a test accuracy in this folder (criterion: {crit})."
        return pd.DataFrame([{**summary, "verdict": text}]), pd.DataFrame(columns=cand_cols), text
    labels, chosen = choice[0]
    ref_acc, ref_n, ref_half = _t1_mean(t1, "enum", True, labels)
    ref_sec, _ = median_seconds_per_epoch(res, "enum", True, labels)
    summary.update(labels=labels, chosen=chosen, reference_test_acc=_round(ref_acc), reference_n_ok=ref_n,
                   reference_seconds_per_epoch=_round(ref_sec))
    where = f"at {chosen}, with the auxiliary loss"
    if ref_acc is None or ref_sec is None:
        text = (f"**Verdict ({where}):** none can be given: enum + aux has no finished cell with "
                f"{'a test accuracy' if ref_acc is None else 'a time per epoch'} here (criterion: {crit}).")
        return pd.DataFrame([{**summary, "verdict": text}]), pd.DataFrame(columns=cand_cols), text
    rows = []
    for est, aux in variants(res):
        if not aux or est == "enum":
            continue
        acc, n, _ = _t1_mean(t1, est, True, labels)
        sec, _ = median_seconds_per_epoch(res, est, True, labels)
        if acc is None and sec is None:
            continue
        diff = None if acc is None else acc - ref_acc
        ratio = None if sec is None else sec / ref_sec
        ok_acc = diff is not None and diff >= -tol - 1e-12
        ok_time = ratio is not None and ratio <= frac + 1e-12
        rows.append({"labels": labels, "variant": variant_label(est, True), "estimator": est, "n_ok": n,
                     "mean_test_acc": _round(acc), "acc_diff_vs_enum_aux": _round(diff),
                     "median_seconds_per_epoch": _round(sec), "time_ratio_vs_enum_aux": _round(ratio, 4),
                     "within_accuracy": ok_acc, "within_time": ok_time, "qualifies": ok_acc and ok_time})
    cands = pd.DataFrame(rows, columns=cand_cols)

    def describe(r) -> str:
        acc = "no test accuracy" if pd.isna(r.mean_test_acc) else \
            f"{r.mean_test_acc:.4f} ({r.acc_diff_vs_enum_aux:+.4f})"
        tm = "no time per epoch" if pd.isna(r.median_seconds_per_epoch) else \
            f"{r.time_ratio_vs_enum_aux:.0%} of the time, {r.median_seconds_per_epoch:.3g} s/epoch"
        return f"{r.variant}: {acc}, {tm}"

    ref_txt = (f"enum + aux: {ref_acc:.4f}" + (f" ± {ref_half:.4f}" if ref_half else "")
               + f" test accuracy (n={ref_n}), {ref_sec:.3g} s/epoch")
    win = cands[cands.qualifies].sort_values(["time_ratio_vs_enum_aux", "acc_diff_vs_enum_aux", "variant"],
                                             ascending=[True, False, True], kind="stable")
    if len(win):
        summary["winners"] = ";".join(win.estimator)
        text = (f"**Verdict ({where}):** {len(win)} estimator{'s' if len(win) > 1 else ''} "
                f"{'reach' if len(win) > 1 else 'reaches'} {crit}: **"
                + "; ".join(describe(r) for r in win.itertuples()) + f"** (reference {ref_txt}).")
    else:
        close = []
        fast = cands[cands.within_time & cands.mean_test_acc.notna()].sort_values(
            ["acc_diff_vs_enum_aux", "variant"], ascending=[False, True], kind="stable")
        if len(fast):
            close.append("the most accurate within the time: " + describe(fast.iloc[0]))
        good = cands[cands.within_accuracy & cands.median_seconds_per_epoch.notna()].sort_values(
            ["time_ratio_vs_enum_aux", "variant"], kind="stable")
        if len(good):
            close.append("the fastest within the accuracy: " + describe(good.iloc[0]))
        if not close and len(cands):
            best = cands.dropna(subset=["mean_test_acc"]).sort_values(["acc_diff_vs_enum_aux", "variant"],
                                                                       ascending=[False, True], kind="stable")
            if len(best):
                close.append("the most accurate: " + describe(best.iloc[0]))
        text = (f"**Verdict ({where}):** No estimator reaches {crit} (reference {ref_txt})."
                + (" Closest: " + "; ".join(close) + "." if close else " No other estimator with aux finished here."))
    return pd.DataFrame([{**summary, "verdict": text}]), cands, text


# --------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------

def _setup_mpl():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import seaborn as sns
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
    matplotlib.rcParams["svg.hashsalt"] = "ssvae-bench"


def _save(fig, path: Path, env: dict, title: str):
    import matplotlib.pyplot as plt
    fig.suptitle(title, fontsize=12, y=0.995)
    fig.tight_layout(rect=(0, 0.035, 1, 0.97))
    fig.text(0.005, 0.005, provenance(env), fontsize=6.5, color="0.35", ha="left", va="bottom")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata=PNG_METADATA)
    plt.close(fig)
    return path


def _legend_handles(res: Results, pairs):
    from matplotlib.lines import Line2D
    pal = palette(res)
    return [Line2D([], [], color=pal[e], label=variant_label(e, a), **AUX_STYLE[a]) for e, a in pairs]


def plot_accuracy_vs_labels(res: Results, t1: pd.DataFrame, path: Path) -> Optional[Path]:
    import matplotlib.pyplot as plt
    d = t1.dropna(subset=["mean"])
    if not len(d):
        return None
    pal = palette(res)
    fig, ax = plt.subplots(figsize=(8, 5))
    pairs = []
    labels_all = sorted(t1.labels.unique())
    nvar = max(len(variants(res)), 1)
    for i, (est, aux) in enumerate(variants(res)):
        sub = d[(d.estimator == est) & (d.aux == aux)].sort_values("labels")
        if not len(sub):
            continue
        pairs.append((est, aux))
        jitter = 1 + 0.012 * (i - (nvar - 1) / 2)  # spread overlapping error bars (log x axis)
        hw = sub.ci95_halfwidth.fillna(0).to_numpy(dtype=float)
        mean = sub["mean"].to_numpy(dtype=float)
        # an accuracy lies in [0, 1]: a wide t-interval (2 seeds: t = 12.7) is drawn clipped to it
        yerr = [np.minimum(hw, mean), np.minimum(hw, 1 - mean)]
        ax.errorbar(sub.labels * jitter, mean, yerr=yerr, color=pal[est], capsize=3, markersize=5, **AUX_STYLE[aux])
    ref = load_pyro_table1()
    ref = ref[ref.labels.isin(labels_all)]
    for est, aux in sorted(set(zip(ref.estimator, ref.aux))):
        if est in pal and (est, aux) in set(variants(res)):
            sub = ref[(ref.estimator == est) & (ref.aux == aux)]
            ax.scatter(sub.labels, sub["mean"], marker="x", color=pal[est], s=40, alpha=0.6, zorder=1)
    ax.set_xscale("log")
    ax.set_xticks(labels_all, [str(l) for l in labels_all])
    ax.minorticks_off()
    ax.set_xlabel("labeled training images (log scale)")
    ax.set_ylabel("test accuracy at best validation epoch (fraction)")
    ax.set_ylim(0, 1.02)
    handles = _legend_handles(res, pairs)
    from matplotlib.lines import Line2D
    handles.append(Line2D([], [], color="0.4", marker="x", linestyle="", label="Pyro tutorial Table 1"))
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _save(fig, path, res.env, "Test accuracy vs label count (mean, 95% t-interval over seeds, clipped to [0, 1])")


def _label_panels(c: pd.DataFrame):
    """A figure with one panel per label count in ``c``: (fig, [(ax, labels), ...])."""
    import matplotlib.pyplot as plt
    labels = sorted(c.labels.unique())
    fig, axes = plt.subplots(1, len(labels), figsize=(4.2 * len(labels) + 2, 4.2), sharey=True, squeeze=False)
    return fig, list(zip(axes[0], labels))


def _variant_rows(res: Results, c: pd.DataFrame, labels, seen: list):
    """(estimator, aux, rows) of each variant with rows at ``labels``, in report order; adds it to ``seen``."""
    for est, aux in variants(res):
        sub = c[(c.labels == labels) & (c.estimator == est) & (c.aux == aux)]
        if len(sub):
            if (est, aux) not in seen:
                seen.append((est, aux))
            yield est, aux, sub


def plot_learning_curves(res: Results, path: Path) -> Optional[Path]:
    from matplotlib.ticker import MaxNLocator
    c = res.curves.dropna(subset=["valid_acc"])
    if not len(c):
        return None
    pal = palette(res)
    fig, panels = _label_panels(c)
    pairs = []
    for ax, l in panels:
        for est, aux, sub in _variant_rows(res, c, l, pairs):
            agg = sub.groupby("epoch")["valid_acc"].agg(["mean", "min", "max"])
            ax.plot(agg.index, agg["mean"], color=pal[est], markersize=3, **AUX_STYLE[aux])
            ax.fill_between(agg.index, agg["min"], agg["max"], color=pal[est], alpha=0.12, linewidth=0)
        ax.set_title(f"{l} labels")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    panels[0][0].set_ylabel("validation accuracy (fraction)")
    panels[-1][0].legend(handles=_legend_handles(res, pairs), loc="center left", bbox_to_anchor=(1.02, 0.5),
                       frameon=False)
    return _save(fig, path, res.env, "Validation accuracy per epoch (line: mean over seeds; band: min–max)")


def plot_grad_variance(res: Results, per: pd.DataFrame, path: Path) -> Optional[Path]:
    import matplotlib.pyplot as plt
    if not len(per):
        return None
    pal = palette(res)
    kinds = [k for k in ("unsup", "sup") if k in set(per.step_kind)]
    groups = [g for g in ("encoder_y", "encoder_z", "decoder") if g in set(per.param_group)]
    groups += sorted(set(per.param_group) - set(groups))
    rows = [(l, k) for k in kinds for l in sorted(per.labels.unique())]
    fig, axes = plt.subplots(len(rows), len(groups), figsize=(3.8 * len(groups) + 2, 2.9 * len(rows)),
                             squeeze=False, sharex=True)
    order = {variant_label(e, a): (e, a) for e, a in variants(res)}
    pairs = []
    for i, (l, k) in enumerate(rows):
        for j, grp in enumerate(groups):
            ax = axes[i][j]
            sub = per[(per.labels == l) & (per.step_kind == k) & (per.param_group == grp)]
            if not len(sub):  # e.g. encoder_y gets no gradient from a labeled batch without aux
                ax.text(0.5, 0.5, "no gradient measured\n(group not used by this step)", ha="center",
                        va="center", transform=ax.transAxes, fontsize=8, color="0.4")
                ax.set_yticks([])
            for var, (est, aux) in order.items():
                s = sub[sub.variant == var]
                if not len(s):
                    continue
                if (est, aux) not in pairs:
                    pairs.append((est, aux))
                agg = s.groupby("step")["variance"].median()
                ax.plot(agg.index, agg.values, color=pal[est], markersize=4, **AUX_STYLE[aux])
            if len(sub):
                ax.set_yscale("log")
            ax.set_title(f"{grp} · {k} step · {l} labels", fontsize=9)
            if i == len(rows) - 1:
                ax.set_xlabel("training step of checkpoint (global step)")
            if j == 0:
                ax.set_ylabel("gradient variance\n(mean per coordinate, log)")
    axes[0][-1].legend(handles=_legend_handles(res, pairs), loc="center left", bbox_to_anchor=(1.02, 0.5),
                       frameon=False)
    return _save(fig, path, res.env,
                 "Gradient variance at common checkpoints (median over seeds)")


def plot_timing(res: Results, long: pd.DataFrame, path: Path) -> Optional[Path]:
    import matplotlib.pyplot as plt
    if not len(long):
        return None
    pal = palette(res)
    devices = list(dict.fromkeys(zip(long.device, long.device_name)))
    kinds = [k for k in ("sup", "unsup", "aux") if k in set(long.step_kind)]
    kinds += sorted(set(long.step_kind) - set(kinds))
    pairs = [p for p in variants(res) if ((long.estimator == p[0]) & (long.aux == p[1])).any()]
    pairs += sorted(set(zip(long.estimator, long.aux)) - set(pairs))
    fig, axes = plt.subplots(1, len(devices), figsize=(max(5.5, 1.2 * len(pairs) + 3) * len(devices) + 2, 4.6),
                             squeeze=False, sharey=True)
    width = 0.8 / max(len(pairs), 1)
    from matplotlib.patches import Patch
    for ax, (dev, name) in zip(axes[0], devices):
        d = long[(long.device == dev) & (long.device_name == name)]
        for i, (est, aux) in enumerate(pairs):
            for x, k in enumerate(kinds):
                r = d[(d.estimator == est) & (d.aux == aux) & (d.step_kind == k)]
                if not len(r):
                    continue
                r = r.iloc[0]
                lo = max(r.median_ms - r.q1_ms, 0) if r.q1_ms == r.q1_ms else 0
                hi = max(r.q3_ms - r.median_ms, 0) if r.q3_ms == r.q3_ms else 0
                ax.bar(x - 0.4 + width * (i + 0.5), r.median_ms, width * 0.92, color=pal.get(est, "0.5"),
                       hatch="//" if aux else None, edgecolor="white", linewidth=0.5,
                       yerr=[[lo], [hi]], capsize=2, error_kw={"elinewidth": 0.8})
        ax.set_xticks(range(len(kinds)), [f"{k} step" for k in kinds])
        ax.set_yscale("log")
        ax.set_title(f"{dev}: {name}", fontsize=10)
        ax.set_xlabel("step kind")
    axes[0][0].set_ylabel("median time per step (ms, log)")
    handles = [Patch(facecolor=pal.get(e, "0.5"), hatch="//" if a else None, edgecolor="white",
                     label=variant_label(e, a)) for e, a in pairs]
    axes[0][-1].legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return _save(fig, path, res.env, "Time per optimisation step (bar: median; whisker: q1–q3)")


def plot_accuracy_vs_time(res: Results, path: Path) -> Optional[Path]:
    c = res.curves.dropna(subset=["test_acc", "elapsed_seconds"])
    if not len(c):
        return None
    pal = palette(res)
    fig, panels = _label_panels(c)
    pairs = []
    for ax, l in panels:
        for est, aux, sub in _variant_rows(res, c, l, pairs):
            for _, s in sub.groupby("seed"):
                s = s.sort_values("elapsed_seconds")
                ax.plot(s.elapsed_seconds, s.test_acc, color=pal[est], markersize=3, alpha=0.85, **AUX_STYLE[aux])
        ax.set_xscale("log")
        ax.set_title(f"{l} labels")
        ax.set_xlabel("cumulative training wall time (s, log)")
    panels[0][0].set_ylabel("test accuracy (fraction)")
    panels[-1][0].legend(handles=_legend_handles(res, pairs), loc="center left", bbox_to_anchor=(1.02, 0.5),
                       frameon=False)
    return _save(fig, path, res.env, "Test accuracy vs training time (one line per seed)")


def choose_samples_cell(res: Results) -> Optional[str]:
    """enum+aux with the most labels and the lowest seed; else any ok cell with samples, same rule."""
    ok = res.runs[(res.runs.status == "ok") & res.runs.cell.isin(set(res.samples))]
    if not len(ok):
        return None
    ok = ok.assign(_pref=~((ok.estimator == "enum") & ok.aux))
    ok = ok.sort_values(["_pref", "labels", "seed", "cell"], ascending=[True, False, True, True])
    return str(ok.iloc[0].cell)


def plot_samples(res: Results, path: Path) -> Tuple[Optional[Path], Optional[str]]:
    import matplotlib.pyplot as plt
    cell = choose_samples_cell(res)
    if cell is None:
        return None, None
    try:
        arr = np.load(res.samples[cell], allow_pickle=False)
        if arr.ndim != 4 or arr.shape[0] < 1:
            raise ValueError(f"shape {arr.shape}, expected (10, n, 28, 28)")
    except Exception as exc:
        res.problems.append(f"samples/{cell}.npy: unreadable ({type(exc).__name__}: {exc})")
        return None, None
    n_cls, n, h, w = arr.shape
    n = min(n, 12)
    pad = 2
    grid = np.full((n_cls * (h + pad) - pad, n * (w + pad) - pad), 255, dtype=np.uint8)
    for c in range(n_cls):
        for j in range(n):
            grid[c * (h + pad): c * (h + pad) + h, j * (w + pad): j * (w + pad) + w] = 255 - arr[c, j]
    fig, ax = plt.subplots(figsize=(max(0.5 * n + 2.0, 9.5), 0.5 * n_cls + 1.6))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.grid(False)
    ax.set_yticks([c * (h + pad) + h / 2 for c in range(n_cls)], [str(c) for c in range(n_cls)])
    ax.set_xticks([])
    ax.set_ylabel("class y the decoder was given")
    ax.set_xlabel("samples x ~ p(x | y, z), z ~ N(0, I); pixel probability, dark = 1")
    return _save(fig, path, res.env, f"Generated digits, one row per class\n(cell {cell})"), cell


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------

@dataclass
class Section:
    title: str
    text: List[str] = field(default_factory=list)
    tables: List[Tuple[str, pd.DataFrame, str]] = field(default_factory=list)  # (caption, frame, html id)
    images: List[Path] = field(default_factory=list)
    side_by_side: bool = False


def _cell_text(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, float):
        return _fmt_sig(v, 4)
    return str(v)


def markdown_table(df: pd.DataFrame) -> str:
    if not len(df.columns):
        return "_(no data)_\n"
    esc = lambda s: _cell_text(s).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(esc(c) for c in df.columns) + " |",
             "|" + "|".join("---" for _ in df.columns) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def html_table(df: pd.DataFrame, table_id: str = "") -> str:
    if not len(df.columns):
        return "<p><em>(no data)</em></p>"
    ident = f' id="{html.escape(table_id)}"' if table_id else ""
    head = "".join(f"<th>{html.escape(_cell_text(c))}</th>" for c in df.columns)
    body = []
    for row in df.itertuples(index=False):
        tds = []
        for v in row:
            t = _cell_text(v)
            cls = ' class="bad"' if t.startswith(("failed", "missing", "corrupt", "diverged")) else ""
            tds.append(f"<td{cls}>{html.escape(t)}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def write_table(df: pd.DataFrame, tables_dir: Path, name: str, env: dict, caption: str = "") -> None:
    """tables/<name>.csv (as is) and tables/<name>.md (caption, table, provenance)."""
    tables_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(tables_dir / f"{name}.csv", index=False, lineterminator="\n")
    md = (f"{caption}\n\n" if caption else "") + markdown_table(df) + f"\n_{provenance(env)}_\n"
    (tables_dir / f"{name}.md").write_text(md)


def render_markdown(title: str, env: dict, sections: List[Section], root: Path) -> str:
    prov = provenance(env)
    out = [f"# {title}\n", f"_{prov}_\n"]
    for s in sections:
        out.append(f"## {s.title}\n")
        out += [t + "\n" for t in s.text]
        for caption, df, _id in s.tables:
            if caption:
                out.append(f"**{caption}**\n")
            out.append(markdown_table(df))
            out.append(f"_{prov}_\n")
        for img in s.images:
            out.append(f"![{img.stem}]({img.relative_to(root).as_posix()})\n")
    return "\n".join(out)


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1500px;margin:1.5em auto;
padding:0 1.5em;color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.8em}
table{border-collapse:collapse;margin:.4em 0 .2em;font-size:.86em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}td.bad{color:#a00;font-weight:600}
.prov{font-size:.75em;color:#666;margin:.1em 0 1em}.cap{font-weight:600;margin:.8em 0 .1em}
.row{display:flex;flex-wrap:wrap;gap:2em;align-items:flex-start}.row>div{min-width:0}
.tscroll{overflow-x:auto;max-width:100%}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.5em 0;display:block}
.problems{color:#a00}
"""


def render_html(title: str, env: dict, sections: List[Section]) -> str:
    prov = html.escape(provenance(env))
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>", f"<p class=\"prov\">{prov}</p>"]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        for t in s.text:
            parts.append(f"<p>{_inline_md(t)}</p>")
        blocks = []
        for caption, df, table_id in s.tables:
            cap = f"<p class=\"cap\">{html.escape(caption)}</p>" if caption else ""
            foot = "" if s.side_by_side else f"<p class=\"prov\">{prov}</p>"
            blocks.append(f"<div>{cap}<div class=\"tscroll\">{html_table(df, table_id)}</div>{foot}</div>")
        if s.side_by_side and blocks:  # one provenance line under the row, so it does not widen each block
            parts.append(f"<div class=\"row\">{''.join(blocks)}</div><p class=\"prov\">{prov}</p>")
        else:
            parts.append("".join(blocks))
        for img in s.images:
            data = base64.b64encode(img.read_bytes()).decode("ascii")
            parts.append(f"<img alt=\"{html.escape(img.stem)}\" src=\"data:image/png;base64,{data}\">")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _inline_md(text: str) -> str:
    """Escape, then the two markdown marks the report's prose uses: `code` and **bold**."""
    t = html.escape(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)
    return t


# --------------------------------------------------------------------------------------------
# the whole report
# --------------------------------------------------------------------------------------------

def build_report(results_dir, compare_timing: Sequence = (), plots: bool = True) -> Dict[str, Path]:
    """Write report.md, report.html, tables/ and plots/ into ``results_dir``; return their paths."""
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"results folder {root} does not exist")
    res = load_results(root, compare_timing)
    env = res.env
    tables_dir, plots_dir = root / "tables", root / "plots"
    if plots:
        _setup_mpl()

    # tables
    status_summary, status_bad = table_status(res)
    t1 = table1(res)
    ours, pyro, diff = table1_display(t1, res)
    timing_long, timing_wide, timing_rel = table_timing(res)
    grad_per, grad_med = table_grad_variance(res)
    cells = table_cells(res)
    write_table(t1, tables_dir, "table1_long", env, "Table 1 (long form): test accuracy at best validation epoch")
    captions = {"table1": "Table 1: test accuracy at best validation epoch, mean ± 95% t-interval half-width "
                          "over seeds",
                "table1_pyro": "Pyro tutorial Table 1 (5 seeds, 50 epochs): mean ± 95% bound",
                "table1_diff_vs_pyro": "Our mean minus Pyro's published mean"}
    for name, df in (("table1", ours), ("table1_pyro", pyro), ("table1_diff_vs_pyro", diff)):
        write_table(df, tables_dir, name, env, captions[name])
    # table1.md carries the reference block and the differences too
    (tables_dir / "table1.md").write_text("\n".join(
        f"**{captions[name]}**\n\n{markdown_table(df)}" for name, df in
        (("table1", ours), ("table1_pyro", pyro), ("table1_diff_vs_pyro", diff))) + f"\n_{provenance(env)}_\n")
    write_table(status_summary, tables_dir, "status_summary", env, "Cells by status")
    write_table(status_bad, tables_dir, "status_cells", env, "Cells that are not ok")
    write_table(cells, tables_dir, "cells", env, "Every cell")
    write_table(timing_long, tables_dir, "timing_long", env, "Time per step (ms)")
    write_table(timing_wide, tables_dir, "timing", env, "Median ms per step [q1–q3]")
    write_table(timing_rel, tables_dir, "timing_relative", env, "Unsupervised step cost relative to trace")
    write_table(grad_per, tables_dir, "grad_variance_by_checkpoint", env,
                "Gradient variance at each common checkpoint")
    write_table(grad_med, tables_dir, "grad_variance", env,
                "Gradient variance: median over common checkpoints and seeds")

    # plots
    figs: Dict[str, Optional[Path]] = {}
    sample_cell = None
    if plots:
        figs["accuracy_vs_labels"] = plot_accuracy_vs_labels(res, t1, plots_dir / "accuracy_vs_labels.png")
        figs["learning_curves"] = plot_learning_curves(res, plots_dir / "learning_curves.png")
        figs["grad_variance"] = plot_grad_variance(res, grad_per, plots_dir / "grad_variance.png")
        figs["timing"] = plot_timing(res, timing_long, plots_dir / "timing.png")
        figs["accuracy_vs_time"] = plot_accuracy_vs_time(res, plots_dir / "accuracy_vs_time.png")
        figs["samples"], sample_cell = plot_samples(res, plots_dir / "samples.png")
    img = lambda k: [figs[k]] if figs.get(k) else []

    grad_wide = grad_variance_display(grad_med, res)
    write_table(grad_wide, tables_dir, "grad_variance_wide", env,
                "Gradient variance (ratio to enum) / SNR: median over common checkpoints and seeds")

    # Pyro's overhead, rankings, published anchors, the headline verdict
    extra = {"overhead": table_overhead(res), "rank_accuracy": rank_accuracy(res, t1),
             "rank_grad_variance": rank_grad_variance(res, grad_per), "rank_time": rank_time(res),
             "anchors": table_anchors(res, t1)}
    extra["headline"], extra["headline_candidates"], extra["verdict"] = headline(res, t1)
    write_table(extra["overhead"], tables_dir, "pyro_overhead", env,
                "Pyro's overhead: Pyro's step over the hand-written plain-PyTorch step (timing probe)")
    write_table(extra["rank_accuracy"], tables_dir, "rank_accuracy", env,
                "Variants ranked by mean test accuracy at best validation epoch")
    write_table(extra["rank_grad_variance"], tables_dir, "rank_grad_variance", env,
                "Estimators ranked by encoder_y gradient variance at the common checkpoints (median)")
    write_table(extra["rank_time"], tables_dir, "rank_time", env,
                "Variants ranked by median seconds per epoch (ok cells)")
    write_table(extra["anchors"], tables_dir, "published_anchors", env,
                "Published anchors (bench/published_anchors.csv) beside our closest numbers")
    write_table(extra["headline"], tables_dir, "headline", env, extra["verdict"])
    write_table(extra["headline_candidates"], tables_dir, "headline_candidates", env,
                "Headline verdict: every candidate (with aux, other than enum) against enum + aux")
    sections = _sections(res, t1, ours, pyro, diff, status_summary, status_bad, timing_wide, timing_rel,
                         grad_wide, sample_cell, img, extra)
    title = f"ssvae-bench report: {env.get('preset', root.name)}"
    (root / "report.md").write_text(render_markdown(title, env, sections, root))
    (root / "report.html").write_text(render_html(title, env, sections))
    out = {"report.md": root / "report.md", "report.html": root / "report.html", "tables": tables_dir}
    out.update({f"plots/{k}.png": v for k, v in figs.items() if v})
    return out


def _sections(res, t1, ours, pyro, diff, status_summary, status_bad, timing_wide, timing_rel, grad_med,
              sample_cell, img, extra: Optional[dict] = None) -> List[Section]:
    extra = extra or {}
    env, grid = res.env, res.env.get("grid") or {}
    s = status_summary.iloc[0]
    n_absent = int(s["missing"])
    secs = []

    overview = Section("Run", text=[
        f"Command: `{env.get('command', '?')}`",
        f"Grid: estimators {', '.join(map(str, grid.get('estimators', []))) or '?'}"
        f"{' + supervised baseline' if grid.get('baseline') else ''}; aux "
        f"{', '.join(str(a).lower() for a in grid.get('aux', [])) or '?'}; labels "
        f"{', '.join(map(str, grid.get('labels', []))) or '?'}; seeds "
        f"{', '.join(map(str, grid.get('seeds', []))) or '?'}; {grid.get('epochs', '?')} epochs"
        f"{'' if not grid.get('steps_per_epoch') else ' of ' + str(grid['steps_per_epoch']) + ' steps'}.",
        f"Environment: python {env.get('python', '?')}, torch {env.get('torch', '?')}, pyro {env.get('pyro', '?')}, "
        f"torchvision {env.get('torchvision', '?')}; {env.get('platform', '?')}; device {env.get('device', '?')} "
        f"({env.get('device_name', '?')}); CPU {env.get('cpu_name', '?')}, {env.get('threads', '?')} threads; "
        f"data sha256 `{env.get('data_sha256', '?')}`; commit `{env.get('git_commit', '?')}`; "
        f"date {env.get('date', '?')}.",
        f"**Cells: {int(s['expected'])} expected, {int(s['present'])} present, {n_absent} absent (no result file); "
        + ", ".join(f"{int(s[k])} {k}" for k in s.index
                    if k not in ("expected", "present", "unexpected", "missing")
                    and (s[k] or k in ("ok", "failed", "diverged", "corrupt")))
        + (f"; {int(s['unexpected'])} not in the grid" if s["unexpected"] else "") + ".**"])
    probes = env.get("expected_probes")
    if isinstance(probes, list) and probes:
        have = {p.stem for p in (res.root / "probes").glob("*.json")}
        absent = [str(p) for p in probes if str(p) not in have]
        overview.text.append(f"Probes (timing, common-checkpoint variance): {len(probes)} expected, "
                             f"{len(probes) - len(absent)} present"
                             + (f"; absent: {', '.join(absent)}." if absent else "."))
    if res.problems:
        overview.text.append("Problems reading the folder: " + "; ".join(res.problems))
    secs.append(overview)
    if extra.get("verdict"):
        secs.append(_headline_section(extra))

    secs.append(Section("Table 1: test accuracy", text=[
        "Rows: labeled images; columns: estimator variants (`+ aux`: with the auxiliary classification loss). "
        "Each cell: mean test accuracy at the epoch of best validation accuracy, ± the half-width of the 95% "
        "Student-t interval over seeds (n = seeds that finished; with one seed, no interval). Failed, diverged "
        "and corrupt cells are left out of the mean and counted in brackets; absent cells are counted as missing.",
        f"Pyro's published Table 1 (5 seeds, 50 epochs; first variant = trace, second = enum, third = enum + aux) "
        f"is beside it, with our mean minus theirs for each cell we share. This run: {grid.get('epochs', '?')} "
        f"epochs, {len(grid.get('seeds', []))} seed(s)."],
        tables=[("This benchmark", ours, "table1"), ("Pyro tutorial, Table 1 (mean ± 95% bound)", pyro, "pyro-table1"),
                ("Ours − Pyro (mean accuracy)", diff, "table1-diff")],
        images=img("accuracy_vs_labels"), side_by_side=True))

    if extra:
        secs.append(_ranking_section(extra))
        secs.append(_anchors_section(res, extra))

    st = Section("Cell status", tables=[("Cells by status", status_summary, "status-summary")])
    if len(status_bad):
        st.tables.append(("Cells that are not ok", status_bad, "status-cells"))
    else:
        st.text.append("Every expected cell finished.")
    secs.append(st)

    secs.append(Section("Learning curves", images=img("learning_curves") + img("accuracy_vs_time")))

    tm = Section("Time per step")
    if len(timing_wide):
        srcs = [f"{label} ({e.get('device', '?')}: {e.get('device_name', '?')}; preset {e.get('preset', '?')}, "
                f"commit {str(e.get('git_commit', '?'))[:10]})" for label, e in res.timing_sources]
        tm.text.append("Median milliseconds per optimisation step with the interquartile range [q1–q3], per "
                       "estimator, step kind (`sup`: labeled batch, `unsup`: unlabeled batch, `aux`: the auxiliary "
                       "classification loss, the same for every estimator) and device. Timing sources: "
                       + "; ".join(srcs) + ".")
        rel = timing_rel[timing_rel.variant == "enum"].dropna(subset=["relative_to_trace"])
        if len(rel):
            tm.text.append("**Cost of enumeration relative to sampling (enum unsup / trace unsup):** " + "; ".join(
                f"{r.device} ({r.device_name}) {r.relative_to_trace:.2f}×" for r in rel.itertuples()) + ".")
        tm.tables = [("Median ms per step [q1–q3]", timing_wide, "timing"),
                     ("Unsupervised step relative to trace", timing_rel, "timing-relative")]
        tm.images = img("timing")
    else:
        tm.text.append("No timing.csv in this folder.")
    secs.append(tm)
    if extra:
        secs.append(_overhead_section(res, extra.get("overhead", pd.DataFrame())))

    gv = Section("Gradient variance")
    if len(grad_med):
        steps = sorted(set(res.grad.loc[res.grad.trajectory == "common", "step"].dropna().astype(int)))
        gv.text.append(
            "Every estimator measured at the same parameters: checkpoints of an enum + aux run of the same label "
            f"count and seed (steps {', '.join(map(str, steps))}). Variance: mean over coordinates of the "
            "per-coordinate variance of the gradient estimate; SNR: mean squared gradient over variance. "
            "The table gives the **median over checkpoints and seeds**; the ratio to enum is computed at each "
            "checkpoint first, then its median taken. Each cell reads `variance (×ratio to enum) / SNR`. "
            "Long form: `tables/grad_variance.csv`; per checkpoint: `tables/grad_variance_by_checkpoint.csv`.")
        gv.tables = [("Gradient variance (×: ratio to enum's) / SNR, median over common checkpoints and seeds",
                      grad_med, "grad-variance")]
        gv.images = img("grad_variance")
    else:
        gv.text.append("No common-checkpoint rows in grad_variance.csv.")
    secs.append(gv)

    sm = Section("Generated digits")
    if sample_cell:
        sm.text.append(f"Cell `{sample_cell}` (enum + aux with the most labels, lowest seed, when present).")
        sm.images = img("samples")
    else:
        sm.text.append("No samples/*.npy for an ok cell.")
    secs.append(sm)
    return secs


def _headline_section(extra: dict) -> Section:
    sec = Section("Headline", text=[extra["verdict"]])
    sec.text.append(
        f"Computed from this folder: mean test accuracy at the best validation epoch (Table 1) and the median "
        f"seconds per epoch of the ok cells (runs.csv), each candidate against enum + aux at the same label count; "
        f"a candidate qualifies within {VERDICT_ACC_TOLERANCE:g} of its accuracy at no more than "
        f"{VERDICT_TIME_FRACTION:.0%} of its time. Every candidate: `tables/headline_candidates.csv`; the verdict: "
        f"`tables/headline.csv`.")
    cands = extra.get("headline_candidates")
    if cands is not None and len(cands):
        show = pd.DataFrame([{
            "variant": r.variant, "n": str(r.n_ok),
            "test accuracy": "–" if pd.isna(r.mean_test_acc) else f"{r.mean_test_acc:.4f}",
            "− enum + aux": "–" if pd.isna(r.acc_diff_vs_enum_aux) else f"{r.acc_diff_vs_enum_aux:+.4f}",
            "s / epoch": _fmt_sig(r.median_seconds_per_epoch),
            "× enum + aux time": "–" if pd.isna(r.time_ratio_vs_enum_aux) else f"{r.time_ratio_vs_enum_aux:.2f}×",
            "qualifies": "yes" if r.qualifies else "no"} for r in cands.itertuples()])
        sec.tables.append((f"Candidates at {int(cands.labels.iloc[0])} labels", show, "headline"))
    return sec


def _ranking_section(extra: dict) -> Section:
    sec = Section("Estimators ranked", side_by_side=True)
    acc, var, tm = extra["rank_accuracy"], extra["rank_grad_variance"], extra["rank_time"]
    sec.text.append(
        "Three rankings of the variants (`+ aux`: with the auxiliary loss): by mean test accuracy at the best "
        "validation epoch; by the gradient variance of q(y|x)'s parameters (encoder_y) on the unlabeled step at the "
        "common checkpoints (every estimator at the same parameters, the ELBO gradient alone; median over "
        "checkpoints after the first, ratio to enum's median per checkpoint); by the median seconds per training "
        "epoch of the ok cells, with the ratio to enum + aux at the same label count. Ties keep the report's "
        "column order; variants with no number are listed last, unranked. Numbers: `tables/rank_accuracy.csv`, "
        "`tables/rank_grad_variance.csv`, `tables/rank_time.csv`.")
    for df, kind, what, tid in ((acc, "accuracy", "test accuracy", "rank-accuracy"),
                                (var, "variance", "encoder_y gradient variance (unlabeled step)", "rank-variance"),
                                (tm, "time", "seconds per epoch", "rank-time")):
        if not len(df):
            sec.text.append(f"No data to rank by {what}.")
            continue
        for labels, chosen in dict.fromkeys(zip(df["labels"], df["chosen"])):
            sec.tables.append((f"By {what}: {chosen}", rank_display(df, labels, kind), f"{tid}-{labels}"))
    return sec


def _anchors_section(res: Results, extra: dict) -> Section:
    an = extra.get("anchors", pd.DataFrame())
    grid = res.env.get("grid") or {}
    sec = Section("Published anchors", text=[
        "Numbers from the literature (`bench/published_anchors.csv`) beside our closest number: the same estimator, "
        "at our label count nearest theirs, with the auxiliary loss where we ran it (the published M2 models train "
        "the classifier on the labels too). The settings differ: Liu et al. 2019 used 5,000 labels and 100 epochs, "
        f"Jang et al. 2017 100 labels; this run has {', '.join(map(str, grid.get('labels', []))) or '?'} labels, "
        f"{grid.get('epochs', '?')} epochs, {len(grid.get('seeds', [])) or '?'} seed(s). Seconds per epoch depend "
        "on the machine: compare the ratios to marginalisation (enum), not the seconds."])
    sp = an[an.unit == "speedup_vs_marginalisation"] if len(an) else an
    if len(sp):
        r = sp.iloc[0]
        if r.our_value is not None and not pd.isna(r.our_value):
            sec.text.append(f"**Gumbel-softmax against marginalisation, per step:** Jang et al. report about "
                            f"{r.value:g}× the steps per second at 10 classes; our unlabeled gumbel step takes "
                            f"{1 / r.our_value:.2f}× enum's time, {r.our_value:.2f}× the steps per second.")
        else:
            sec.text.append("Gumbel-softmax against marginalisation, per step: no gumbel or enum unlabeled-step "
                            "timing in this folder.")
    if len(an):
        sec.tables.append(("Published numbers and ours", anchors_display(an), "anchors"))
    return sec


def _overhead_section(res: Results, ov: pd.DataFrame) -> Section:
    sec = Section("Pyro's overhead")
    if not len(ov):
        why = ("No timing.csv in this folder." if not len(res.timing) else
               "timing.csv has no reference-step columns (`ref_median_ms`, `pyro_overhead`, `gflop`, "
               "`pct_of_matmul_peak`): this folder was written before the timing probe timed the hand-written "
               "step. Run the preset again into a fresh folder (or with `--force`) to get them.")
        sec.text.append(why)
        return sec
    sec.text.append(
        "Each Pyro step beside the same objective written by hand in plain PyTorch (`ssvae/reference.py`: same "
        "networks and sizes, same batch, plain `torch.optim.Adam`), timed in the same probe right after it. "
        "Pyro / reference is Pyro's overhead; GFLOP counts the dense layers of one step (`ssvae/flops.py`); "
        "% of matmul rate is the reference step's achieved GFLOP/s over the dense matmul rate measured in the same "
        "probe (100% = as fast as its matmuls alone). `sup` and `unsup` rows come from the runs without aux, "
        "`aux` from those with it. Estimators with no hand-written counterpart for a step show none.")
    sec.text += overhead_text(ov)
    sec.tables.append(("Pyro's step against the hand-written step (median ms)", overhead_display(ov), "overhead"))
    return sec


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------

def add_report_parser(subparsers) -> argparse.ArgumentParser:
    """``report RESULTS_DIR [--compare-timing DIR ...] [--no-plots]``; sets ``func=cmd_report``."""
    p = subparsers.add_parser("report", help="write tables, plots, report.md and report.html into a results folder")
    p.add_argument("results_dir", help="a folder written by `python -m bench run`")
    p.add_argument("--compare-timing", action="append", default=[], metavar="DIR",
                   help="another results folder (e.g. the same preset on another device) whose timing.csv is "
                        "shown beside this one's; may be repeated")
    p.add_argument("--no-plots", action="store_true", help="tables and report only")
    p.set_defaults(func=cmd_report)
    return p


def cmd_report(args) -> int:
    from .errors import UsageError
    root = Path(args.results_dir)
    if not root.is_dir():
        raise UsageError(f"results folder {root} does not exist")
    for other in args.compare_timing:
        if not (Path(other) / "timing.csv").is_file():
            raise UsageError(f"--compare-timing {other}: no timing.csv there")
    out = build_report(root, compare_timing=args.compare_timing, plots=not args.no_plots)
    print(out["report.html"])
    return 0


def main(argv=None) -> int:
    """``python -m bench.report RESULTS_DIR``: the report alone, without the rest of the CLI."""
    from .errors import Parser, UsageError, fail
    parser = Parser(prog="python -m bench.report")
    sub = parser.add_subparsers(dest="command", parser_class=Parser)
    add_report_parser(sub)
    try:
        args = parser.parse_args(["report", *(argv if argv is not None else __import__("sys").argv[1:])])
        return args.func(args)
    except UsageError as exc:
        return fail(str(exc))


if __name__ == "__main__":
    raise SystemExit(main())
