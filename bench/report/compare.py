"""``python -m bench compare OLD NEW``: two results folders side by side, differences beyond noise flagged.

Both folders are read with :func:`bench.report.data.load_results` (the report's tolerant loader), so a
corrupt or missing piece becomes a status, never a crash. The same cells are matched and four
measures compared; each row is flagged when the difference is larger than its noise:

* **status** -- a cell ``ok`` in OLD that is ``failed``, ``diverged``, ``corrupt`` or ``stale`` in NEW
  is flagged. Cells present in one folder only (absent or ``missing`` in the other) are listed, not
  flagged.
* **accuracy** -- per variant (estimator, aux, labels), ``test_acc_at_best_valid`` of the ``ok`` seeds
  of each side: old mean, new mean, difference. Flagged when ``|new - old| > max(acc_tol, t95 * SE)``:
  with 2+ seeds a side, SE and the degrees of freedom are Welch's (``SE^2 = s_old^2/n_old +
  s_new^2/n_new``, two-sided 95 %); with 2+ seeds on one side only, that side's standard deviation is
  used for both; with one seed a side there is no noise estimate and ``acc_tol`` (default 0.01) alone
  decides. Cells of the same id that are ok in both and have exactly the same accuracy figures are
  counted as identical (a reproducibility check: same seed, same code, same machine -> identical).
* **time** -- ``timing.csv`` medians per (estimator, aux, device, step kind): ratio new / old. The noise
  is the relative interquartile range ``(q3 - q1) / median`` of each side, combined in quadrature.
  A slowdown is flagged when ``ratio > 1 + max(time_tol, noise)`` (time_tol default 0.25); speedups are
  shown, never flagged. When the folders come from different machines (env.json ``device``,
  ``device_name``, ``cpu_name`` or ``threads`` differ) absolute times are not comparable: a warning is
  printed and the flagged quantity becomes each step time relative to trace's (same aux, same step
  kind) *within its folder*, new relative / old relative, with the four IQRs combined in quadrature;
  ``--strict-time`` flags the absolute ratios as well. The same rule applies row by row where both env.json
  files agree but a probe row's own ``device_name`` or ``threads`` differ (a folder made in parts).
* **variance** -- ``grad_variance.csv`` rows of the *common* trajectory (every estimator at the same
  parameters) matched on (estimator, aux, labels, seed, step, param_group, step_kind): ratio new / old of
  ``variance``. A variance estimated from n draws has a relative standard error of about
  ``sqrt(2 / (n - 1))`` (exact for one Gaussian coordinate; conservative for the mean over many
  coordinates), which is also the standard error of its logarithm; a row is flagged when
  ``|ln(new / old)| > k * sqrt(2/(n_old - 1) + 2/(n_new - 1))`` with k = 3 (``--var-k``).

Output: a text table per measure on stdout (flagged rows start with ``!!``), then the summary line
``compare: N cells in both, K flagged (...)``. ``--csv OUT`` writes every comparison row (all measures,
long format). Exit status 0 when nothing is flagged, 1 when something is, 2 on bad input (two folders of
different grids, :func:`bench.core.schema.grid_difference`, are bad input: their cells are not comparable).

This module holds the comparison (:func:`compare`: loading, the four measures, their rules); the text tables,
the summary line and the CSV are :mod:`bench.report.compare_render`'s, the command's parser :mod:`bench.report.compare_cli`'s.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd


from ..core.errors import UsageError
from ..core.schema import Folder, grid_difference
from ..core.stats import t_quantile
from .common import estimator_order, variant_label
from .data import Results, load_results

ACC_METRIC = "test_acc_at_best_valid"
#: a cell is "identical" in both folders when all of these are equal
IDENTITY_METRICS = ("test_acc_at_best_valid", "best_valid_acc", "best_epoch", "final_test_acc")
#: statuses that are a regression when the old cell was ok
BAD_STATUSES = ("failed", "diverged", "corrupt", "stale")
MACHINE_KEYS = ("device", "device_name", "cpu_name", "threads")
VAR_KEYS = ["estimator", "aux", "labels", "seed", "step", "param_group", "step_kind"]
MEASURES = ("status", "accuracy", "time", "variance")
CSV_COLUMNS = ["measure", "item", "estimator", "aux", "labels", "seed", "device", "step_kind", "param_group",
               "step", "old", "new", "difference", "ratio", "threshold", "n_old", "n_new", "rule", "flagged",
               "note"]


@dataclass
class Options:
    acc_tol: float = 0.01
    time_tol: float = 0.25
    var_k: float = 3.0
    strict_time: bool = False


@dataclass
class Comparison:
    old: Results
    new: Results
    options: Options
    rows: List[dict] = field(default_factory=list)   # every comparison, all measures (CSV_COLUMNS)
    cells_both: List[str] = field(default_factory=list)
    only_old: List[str] = field(default_factory=list)
    only_new: List[str] = field(default_factory=list)
    ok_both: int = 0
    identical: int = 0
    machine_diff: List[str] = field(default_factory=list)  # "cpu_name: 'A' vs 'B'"

    def flagged(self, measure: Optional[str] = None) -> List[dict]:
        return [r for r in self.rows if r["flagged"] and (measure is None or r["measure"] == measure)]


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------

def load_folder(folder, role: str) -> Results:
    """``load_results`` plus the checks that make a folder comparable; bad input -> UsageError."""
    root = Path(folder)
    if not root.exists():
        raise UsageError(f"{role} results folder {root} does not exist")
    if not root.is_dir():
        raise UsageError(f"{role} results folder {root} is not a folder")
    if not Folder(root).table("runs").is_file():
        raise UsageError(f"{role} results folder {root} has no runs.csv (not written by `python -m bench run`?)")
    res = load_results(root)
    if not len(res.runs):
        raise UsageError(f"{role} results folder {root}: runs.csv lists no cells")
    return res


def _present(res: Results) -> pd.DataFrame:
    return res.runs[res.runs.status != "missing"].drop_duplicates("cell").set_index("cell")


def _num(x) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return float("nan")
    return x


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _row(measure: str, item: str, **kw) -> dict:
    row = {c: None for c in CSV_COLUMNS}
    row.update(measure=measure, item=item, flagged=False, note="")
    row.update(kw)
    return row


# --------------------------------------------------------------------------------------------
# the four measures
# --------------------------------------------------------------------------------------------

def compare_cells(cmp: Comparison) -> None:
    """Cells in both / one folder only, status changes, identical cells."""
    old, new = _present(cmp.old), _present(cmp.new)
    both = [c for c in old.index if c in new.index]
    cmp.cells_both = both
    cmp.only_old = [c for c in old.index if c not in new.index]
    cmp.only_new = [c for c in new.index if c not in old.index]
    for cell in both:
        o, n = old.loc[cell], new.loc[cell]
        ident = dict(estimator=o.estimator, aux=bool(o.aux), labels=int(o.labels), seed=int(o.seed))
        if o.status != n.status:
            bad = o.status == "ok" and n.status in BAD_STATUSES
            cmp.rows.append(_row("status", cell, **ident, old=o.status, new=n.status, flagged=bad,
                                 rule="ok -> failed/diverged/corrupt/stale",
                                 note=str(n.get("error") or "")[:200] if bad else ""))
        if o.status == "ok" and n.status == "ok":
            cmp.ok_both += 1
            same = all(_same(o.get(m), n.get(m)) for m in IDENTITY_METRICS)
            cmp.identical += same
            cmp.rows.append(_row("cell", cell, **ident, old=_num(o.get(ACC_METRIC)), new=_num(n.get(ACC_METRIC)),
                                 difference=_num(n.get(ACC_METRIC)) - _num(o.get(ACC_METRIC)),
                                 rule="identical" if same else "differs"))
    for cell in cmp.only_old:
        cmp.rows.append(_row("cell", cell, old=old.loc[cell].status, rule="only in old"))
    for cell in cmp.only_new:
        cmp.rows.append(_row("cell", cell, new=new.loc[cell].status, rule="only in new"))


def _same(a, b) -> bool:
    a, b = _num(a), _num(b)
    return (math.isnan(a) and math.isnan(b)) or a == b


def accuracy_test(old: Sequence[float], new: Sequence[float], tol: float):
    """(difference, threshold, rule, df) for two samples of seed accuracies; flag when |diff| > threshold."""
    n1, n2 = len(old), len(new)
    diff = float(np.mean(new) - np.mean(old))
    v1 = float(np.var(old, ddof=1)) if n1 > 1 else None
    v2 = float(np.var(new, ddof=1)) if n2 > 1 else None
    if v1 is not None and v2 is not None:
        a, b = v1 / n1, v2 / n2
        se = math.sqrt(a + b)
        df = (a + b) ** 2 / (a * a / (n1 - 1) + b * b / (n2 - 1)) if se > 0 else float(n1 + n2 - 2)
        rule = "welch"
    elif v1 is not None or v2 is not None:
        v, n = (v1, n1) if v1 is not None else (v2, n2)
        se = math.sqrt(v * (1 / n1 + 1 / n2))
        df = float(n - 1)
        rule = "t, sd of one side"
    else:
        return diff, tol, "acc_tol (1 seed a side)", None
    half = t_quantile(max(1, int(math.floor(df)))) * se  # floor(df): the conservative side
    return diff, max(tol, half), rule, df


def _estimator_rank(cmp: Comparison) -> Dict[str, int]:
    """The report's order (trace, enum, the grid's others, baseline last), new folder first."""
    names = estimator_order(cmp.new) + [e for e in estimator_order(cmp.old) if e not in estimator_order(cmp.new)]
    return {e: i for i, e in enumerate(names)}


def compare_accuracy(cmp: Comparison) -> None:
    tol = cmp.options.acc_tol
    old, new = cmp.old.runs, cmp.new.runs
    keys = ["labels", "estimator", "aux"]
    variants_ = pd.concat([old[keys], new[keys]]).drop_duplicates()
    rank = _estimator_rank(cmp)
    variants_ = variants_[variants_.estimator != "?"]
    variants_ = variants_.assign(_r=variants_.estimator.map(lambda e: rank.get(e, len(rank))))
    variants_ = variants_.sort_values(["labels", "_r", "estimator", "aux"])
    same_cells = {r["item"] for r in cmp.rows if r["measure"] == "cell" and r["rule"] == "identical"}
    for v in variants_.itertuples(index=False):
        sel_o = old[(old.labels == v.labels) & (old.estimator == v.estimator) & (old.aux == v.aux)]
        sel_n = new[(new.labels == v.labels) & (new.estimator == v.estimator) & (new.aux == v.aux)]
        a = sel_o.loc[sel_o.status == "ok", ACC_METRIC].dropna().tolist()
        b = sel_n.loc[sel_n.status == "ok", ACC_METRIC].dropna().tolist()
        shared = set(sel_o.loc[sel_o.status == "ok", "cell"]) & set(sel_n.loc[sel_n.status == "ok", "cell"])
        item = f"{variant_label(v.estimator, v.aux)} L{v.labels}"
        base = dict(estimator=v.estimator, aux=bool(v.aux), labels=int(v.labels), n_old=len(a), n_new=len(b))
        ident_note = f"{len(shared & same_cells)}/{len(shared)} identical"
        if not a or not b:
            cmp.rows.append(_row("accuracy", item, **base, old=np.mean(a) if a else None,
                                 new=np.mean(b) if b else None, note=f"no ok seed in {'old' if not a else 'new'}"))
            continue
        diff, thr, rule, df = accuracy_test(a, b, tol)
        if df is not None:
            rule += f" df={df:.1f}"
        cmp.rows.append(_row("accuracy", item, **base, old=float(np.mean(a)), new=float(np.mean(b)),
                             difference=diff, threshold=thr, rule=rule, flagged=abs(diff) > thr + 1e-12,
                             note=ident_note))


def machine_differences(old_env: dict, new_env: dict) -> List[str]:
    out = []
    for key in MACHINE_KEYS:
        a, b = old_env.get(key), new_env.get(key)
        if a is not None and b is not None and str(a) != str(b):
            out.append(f"{key}: {a!r} vs {b!r}")
    return out


def _known(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) or str(v) == "?" else str(v)


def _machine(r: dict) -> str:
    """The machine a timing row was measured on: its ``device_name`` and its ``threads`` (a probe run with
    another thread count is another machine for its times; "" where neither is known)."""
    name, threads = _known(r.get("device_name")), _known(r.get("threads"))
    threads = f"{float(threads):g} thread(s)" if threads else ""
    return ", ".join(x for x in (name, threads) if x)


def _rel_iqr(r) -> float:
    med, q1, q3 = _num(r.get("median_ms")), _num(r.get("q1_ms")), _num(r.get("q3_ms"))
    if not (_finite(med) and _finite(q1) and _finite(q3)) or med <= 0:
        return 0.0
    return max(q3 - q1, 0.0) / med


def _timing_table(res: Results, with_device: bool) -> Dict[tuple, dict]:
    t = res.timing
    if not len(t):
        return {}
    t = t[pd.to_numeric(t.median_ms, errors="coerce") > 0]
    out = {}
    for r in t.to_dict("records"):
        key = (r["estimator"], bool(r["aux"]), r["step_kind"]) + ((str(r["device"]),) if with_device else ())
        out.setdefault(key, r)
    return out


def _trace_ref(table: Dict[tuple, dict], key: tuple) -> Optional[dict]:
    est, aux, kind, *dev = key
    if est == "trace":
        return None
    return table.get(("trace", aux, kind, *dev)) or table.get(("trace", False, kind, *dev))


def compare_timing(cmp: Comparison) -> None:
    opts = cmp.options
    cmp.machine_diff = machine_differences(cmp.old.env, cmp.new.env)
    devs_o = set(cmp.old.timing.device) if len(cmp.old.timing) else set()
    devs_n = set(cmp.new.timing.device) if len(cmp.new.timing) else set()
    with_device = devs_o == devs_n
    if not with_device and len(devs_o) == 1 and len(devs_n) == 1:
        diff = f"device: {next(iter(devs_o))!r} vs {next(iter(devs_n))!r}"
        if not any(d.startswith("device:") for d in cmp.machine_diff):
            cmp.machine_diff.insert(0, diff)
    told, tnew = _timing_table(cmp.old, with_device), _timing_table(cmp.new, with_device)
    other_machine = bool(cmp.machine_diff)
    # a folder made in parts on two machines: env.json names the last command's, each probe row its own
    pairs = sorted({(_machine(told[k]), _machine(tnew[k])) for k in set(told) & set(tnew)
                    if _machine(told[k]) != _machine(tnew[k])})
    if pairs and not other_machine:
        cmp.machine_diff += [f"machine of some probes (device_name, threads): {a!r} vs {b!r}" for a, b in pairs]
    order, rank = {"sup": 0, "unsup": 1, "aux": 2}, _estimator_rank(cmp)
    for key in sorted(set(told) & set(tnew), key=lambda k: (k[3:], rank.get(k[0], len(rank)), k[0], k[1],
                                                             order.get(k[2], 9), k[2])):
        o, n = told[key], tnew[key]
        est, aux, kind = key[:3]
        device = str(n.get("device"))
        ratio = float(n["median_ms"]) / float(o["median_ms"])
        noise = math.hypot(_rel_iqr(o), _rel_iqr(n))
        thr = 1 + max(opts.time_tol, noise)
        row = _row("time", f"{variant_label(est, aux)} {kind} ({device})", estimator=est, aux=aux, device=device,
                   step_kind=kind, old=float(o["median_ms"]), new=float(n["median_ms"]), ratio=ratio, threshold=thr,
                   rule="new/old > 1 + max(time_tol, rIQR)")
        rel = {}
        ro, rn = _trace_ref(told, key), _trace_ref(tnew, key)
        here = other_machine or _machine(o) != _machine(n)  # this row's two times come from two machines
        if ro is not None and rn is not None and _machine(ro) == _machine(o) and _machine(rn) == _machine(n):
            rel_old = float(o["median_ms"]) / float(ro["median_ms"])
            rel_new = float(n["median_ms"]) / float(rn["median_ms"])
            rel_noise = math.sqrt(_rel_iqr(o) ** 2 + _rel_iqr(n) ** 2 + _rel_iqr(ro) ** 2 + _rel_iqr(rn) ** 2)
            rel = dict(rel_old=rel_old, rel_new=rel_new, rel_change=rel_new / rel_old,
                       rel_threshold=1 + max(opts.time_tol, rel_noise))
        row.update(rel)
        if not here or opts.strict_time:
            row["flagged"] = ratio > thr
        if here and rel:
            if rel["rel_change"] > rel["rel_threshold"]:
                row["flagged"] = True
                row["note"] = (f"relative to trace {rel['rel_old']:.3g}x -> {rel['rel_new']:.3g}x "
                               f"(change {rel['rel_change']:.3g} > {rel['rel_threshold']:.3g})")
        if here and not rel and not opts.strict_time:
            row["note"] = "two machines, no trace time on the same machine in each folder: not compared"
        elif ratio < 1 / thr and not row["flagged"]:
            row["note"] = row["note"] or "faster"
        cmp.rows.append(row)
    for key in sorted(set(told) ^ set(tnew), key=str):
        side = "old" if key in told else "new"
        cmp.rows.append(_row("time", f"{variant_label(key[0], key[1])} {key[2]}", estimator=key[0], aux=key[1],
                             step_kind=key[2], note=f"only in {side}"))


def _common(res: Results) -> pd.DataFrame:
    g = res.grad
    if not len(g) or "trajectory" not in g:
        return pd.DataFrame(columns=VAR_KEYS + ["n_samples", "variance"])
    g = g[g.trajectory.astype(str) == "common"].copy()
    if "n_samples" not in g:
        g["n_samples"] = np.nan
    g["param_group"] = g["param_group"].astype(str)
    g["step_kind"] = g["step_kind"].astype(str)
    g["estimator"] = g["estimator"].astype(str)
    return g.drop_duplicates(VAR_KEYS)[VAR_KEYS + ["n_samples", "variance"]]


def compare_variance(cmp: Comparison) -> None:
    k = cmp.options.var_k
    m = _common(cmp.old).merge(_common(cmp.new), on=VAR_KEYS, suffixes=("_old", "_new"))
    m = m.sort_values(["labels", "estimator", "step_kind", "param_group", "seed", "step"])
    for r in m.to_dict("records"):
        vo, vn, no, nn = (_num(r["variance_old"]), _num(r["variance_new"]), _num(r["n_samples_old"]),
                          _num(r["n_samples_new"]))
        item = f"{r['estimator']} L{int(r['labels'])} s{int(r['seed'])} step {int(r['step'])} {r['step_kind']} " \
               f"{r['param_group']}"
        row = _row("variance", item, estimator=r["estimator"], aux=bool(r["aux"]), labels=int(r["labels"]),
                   seed=int(r["seed"]), step=int(r["step"]), param_group=r["param_group"], step_kind=r["step_kind"],
                   old=vo, new=vn, n_old=no, n_new=nn, rule=f"|ln ratio| > {k:g} x sqrt(2/(n_old-1)+2/(n_new-1))")
        if vo == vn:
            row.update(ratio=1.0)
        elif _finite(vo) and _finite(vn) and vo > 0 and vn > 0:
            row["ratio"] = vn / vo
        else:
            row["note"] = "variance not positive or missing"
        if _finite(no) and _finite(nn) and no > 1 and nn > 1:
            se = math.sqrt(2 / (no - 1) + 2 / (nn - 1))
            row["threshold"] = math.exp(k * se)  # as a factor: flagged beyond x threshold or / threshold
            if row["ratio"] is not None:
                row["flagged"] = abs(math.log(row["ratio"])) > k * se
        elif not row["note"]:
            row["note"] = "n_samples missing: no noise estimate"
        cmp.rows.append(row)


def compare(old_dir, new_dir, options: Optional[Options] = None) -> Comparison:
    options = options or Options()
    cmp = Comparison(load_folder(old_dir, "old"), load_folder(new_dir, "new"), options)
    old_grid, new_grid = cmp.old.env.get("grid"), cmp.new.env.get("grid")
    why = grid_difference(old_grid, new_grid) if isinstance(old_grid, dict) and isinstance(new_grid, dict) else None
    if why:  # same cell ids, other settings: a difference would be the settings', not the code's
        raise UsageError(f"{old_dir} and {new_dir} ran different grids ({why}): compare two runs of one grid")
    compare_cells(cmp)
    compare_accuracy(cmp)
    compare_timing(cmp)
    compare_variance(cmp)
    return cmp
