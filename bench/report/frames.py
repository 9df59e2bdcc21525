"""Frames several sections read: Table 1 in long form, cell statuses, gradient variance at the common
checkpoints, step times without duplicates, this folder's own timing rows and the training protocols. Each is a pure function of :class:`Results`; the
:class:`~bench.report.context.Context` computes each once per report (``ctx.frame(table1)``).
"""
from __future__ import annotations

from typing import Tuple

import pandas as pd

from ssvae.statistics import ERROR_STATS

from ..core.stats import mean_interval
from .common import kinds_in, load_pyro_table1, rnd, sig, variant_label, variants
from .data import STATUS_ORDER, Results

TABLE1_COLUMNS = ["labels", "variant", "estimator", "aux", "n_ok", "n_cells", "n_failed", "n_diverged", "n_corrupt",
                  "n_stale", "n_other", "n_missing", "mean", "ci95_halfwidth", "pyro_mean", "pyro_bound",
                  "diff_vs_pyro"]


def table1(res: Results) -> pd.DataFrame:
    """Long form: one row per (label count, variant) with mean, 95% half-width and Pyro's value."""
    ref = load_pyro_table1().set_index(["labels", "estimator", "aux"])
    r = res.runs
    rows = []
    for labels in sorted(set(r.labels) - {-1}):
        for est, aux in variants(res):
            cells = r[(r.labels == labels) & (r.estimator == est) & (r.aux == aux)]
            if not len(cells):
                continue
            ok = cells[cells.status == "ok"]["test_acc_at_best_valid"].dropna().tolist()
            iv = mean_interval(ok)
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
                "mean": rnd(mean), "ci95_halfwidth": rnd(half),
                "pyro_mean": p_mean, "pyro_bound": p_bound,
                "diff_vs_pyro": rnd(mean - p_mean) if mean is not None and p_mean is not None else None,
            })
    return pd.DataFrame(rows, columns=TABLE1_COLUMNS)


def status(res: Results) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """(summary counts, one row per cell that is not ok)."""
    r = res.runs
    counts = {s: int((r.status == s).sum()) for s in STATUS_ORDER}
    for s in sorted(set(r.status) - set(STATUS_ORDER)):
        counts[s] = int((r.status == s).sum())
    n_expected = int(r.expected.sum())
    summary = pd.DataFrame([{"expected": n_expected, "present": int(n_expected - counts["missing"]),
                             "unexpected": int((~r.expected).sum()), **counts}])
    bad = r[r.status != "ok"][["cell", "estimator", "aux", "labels", "seed", "status", "error"]]
    bad = bad.assign(error=bad["error"].astype(str).str.replace(r"\s+", " ", regex=True).str.slice(0, 160))
    return summary, bad.reset_index(drop=True)


def grad_variance(res: Results) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """Common-checkpoint gradient variance: (per checkpoint with ratio to enum, median over checkpoints).

    Where grad_variance.csv has the error against the exact gradient (``mse``, ``bias_sq``, ``cosine``:
    folders written by the newer probe), both frames carry them too, with the MSE's ratio to enum's."""
    g = res.grad
    if not len(g):
        return pd.DataFrame(), pd.DataFrame()
    g = g[g.trajectory == "common"].copy()
    if not len(g):
        return pd.DataFrame(), pd.DataFrame()
    has_mse = "mse" in g and g["mse"].notna().any()
    keys = ["labels", "seed", "step", "param_group", "step_kind"]
    ref = g[g.estimator == "enum"].sort_values("aux").drop_duplicates(keys, keep="first")
    g = g.merge(ref[keys + ["variance"]].rename(columns={"variance": "enum_variance"}), on=keys, how="left")
    g["ratio_to_enum"] = g["variance"] / g["enum_variance"]
    extra = []
    if has_mse:
        g = g.merge(ref[keys + ["mse"]].rename(columns={"mse": "enum_mse"}), on=keys, how="left")
        g["mse_ratio_to_enum"] = g["mse"] / g["enum_mse"]
        extra = [c for c in (*ERROR_STATS, "mse_ratio_to_enum") if c in g]
    g["variant"] = [variant_label(e, a) for e, a in zip(g.estimator, g.aux)]
    order = {variant_label(e, a): i for i, (e, a) in enumerate(variants(res))}
    g["_o"] = g["variant"].map(lambda v: order.get(v, len(order)))
    per = g.sort_values(["labels", "step_kind", "param_group", "_o", "variant", "seed", "step"])
    per = per[["labels", "seed", "step", "step_kind", "param_group", "variant", "n_samples", "variance",
               "mean_sq", "snr", "ratio_to_enum", *extra]].reset_index(drop=True)
    med_rows = []
    for (labels, kind, group, _o, var), sub in g.groupby(["labels", "step_kind", "param_group", "_o", "variant"],
                                                         sort=True):
        row = {"labels": int(labels), "step_kind": kind, "param_group": group, "variant": var,
               "n_checkpoints": len(sub),
               "median_variance": sig(sub["variance"].median()),
               "median_snr": sig(sub["snr"].median()) if "snr" in sub else None,
               "median_ratio_to_enum": sig(sub["ratio_to_enum"].median())}
        if has_mse:
            row.update(median_mse=sig(sub["mse"].median()),
                       median_mse_ratio_to_enum=sig(sub["mse_ratio_to_enum"].median()))
        med_rows.append(row)
    med = pd.DataFrame(med_rows)
    # unsupervised steps first (that is where the estimators differ), then encoder_y, encoder_z, decoder
    med["_k"] = med["step_kind"].map({"unsup": 0, "sup": 1}).fillna(2)
    med["_g"] = med["param_group"].map({"encoder_y": 0, "encoder_z": 1, "decoder": 2}).fillna(3)
    med = med.sort_values(["_k", "labels", "_g"], kind="stable").drop(columns=["_k", "_g"]).reset_index(drop=True)
    return per, med


def timing(res: Results) -> pd.DataFrame:
    """One row per (device, estimator, step kind): the measurement, once.

    The probe times the ``sup`` and ``unsup`` steps once per estimator (the objective is the same with
    or without the auxiliary loss) and timing.csv repeats that row for aux and no-aux; the ``aux`` step
    exists only with aux. So ``sup``/``unsup`` come from the row without aux (with it where that is all
    there is) and ``aux`` from the row with it. ``from_aux_run`` says which.
    """
    t = res.timing
    cols = ["device", "device_name", "estimator", "from_aux_run", "step_kind", "batch_size", "n_steps",
            "median_ms", "q1_ms", "q3_ms", "source"]
    if not len(t):
        return pd.DataFrame(columns=cols)
    order = {e: i for i, (e, _a) in enumerate(variants(res))}
    kind_rank = {k: i for i, k in enumerate(kinds_in(t.step_kind))}
    t = t.assign(_o=[order.get(e, len(order)) for e in t.estimator], _k=t.step_kind.map(kind_rank),
                 from_aux_run=t.aux)
    t = t.sort_values(["device", "device_name", "_o", "estimator", "_k", "aux"], kind="stable")
    t = t.drop_duplicates(["device", "device_name", "estimator", "step_kind"], keep="first")
    cols += [c for c in ("peak_mb", "peak_mb_method", "other_cpu_load") if c in t and t[c].notna().any()]  # newer probes only
    return t[cols].reset_index(drop=True)


def this_timing(res: Results) -> pd.DataFrame:
    """This folder's timing.csv rows only (not the ``--compare-timing`` folders')."""
    t = res.timing
    return t[t.source == "this run"].reset_index(drop=True) if len(t) else t


def protocols(res: Results) -> list:
    """The training protocols of the folder's cells (``runs.csv`` ``protocol``; a folder written before the
    column: ``bench``, the only loop there was)."""
    p = res.runs["protocol"] if "protocol" in res.runs else pd.Series(dtype=object)
    have = sorted(set(p.dropna().astype(str)) - {"", "nan"})
    return have or ["bench"]


def early_stopping(res: Results) -> str:
    """"" for a grid without early stopping; else how it ended the cells, for the captions and caveats:
    ``; early stopping: a cell ends 60 epochs after its best validation epoch (7 of 25 cells ended before the cap)``
    (a cell ended early where its record's ``epochs_run`` is below ``epochs``)."""
    patience = (res.env.get("grid") or {}).get("patience")
    if not patience:
        return ""
    ok = res.runs[res.runs.status == "ok"]
    ended = int((pd.to_numeric(ok["epochs_run"], errors="coerce") < pd.to_numeric(ok["epochs"], errors="coerce")).sum())
    return (f"; early stopping: a cell ends {patience} epochs after its best validation epoch ({ended} of {len(ok)} "
            f"cells ended before the cap)")
