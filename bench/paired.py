"""Paired statistics over seeds, per-setting verdicts and the generated summary: pure functions of the tables.

Seeds are paired: two cells with the same seed (and label count) share the labeled subset, the
initial weights and, for the SS-VAE estimators, the order of the mini-batches (``ssvae.train``).
So a variant is compared with a reference seed by seed::

    d_s = acc(variant, seed s) - acc(reference, seed s)        (test accuracy at the best validation epoch)
    mean d, 95 % interval  mean d +- t_{0.975, n-1} sd(d) / sqrt(n)   (scipy.stats.t; n = 1: no interval)

at every setting (labels x aux), against enum + aux and against the supervised baseline.

**Verdict** (per setting and variant, against the reference): with an equivalence margin m
(default 1 point) and a time fraction f (default 60 %), the variant is "equivalent within m at <= f of
the time" only when the *whole* 95 % interval lies inside (-m, +m) (two one-sided tests at 2.5 %
each) *and* its time per epoch is at most f of the reference's. Times come from the isolated timing
probe only (``timing.csv``: one task at a time, fixed threads): the per-epoch estimate sums the
probe's median step times over the epoch's schedule (:func:`isolated_epoch_ms`), never the cells'
own wall times (cells run two at a time disturb each other). Each verdict states n, the epochs and
where it fails (interval beyond the margin, time above the fraction, n too small, no timing).

Inputs are the report's tables as pandas DataFrames: ``runs`` (``runs.csv``: cell, estimator, aux,
labels, seed, status, epochs, best_epoch, test_acc_at_best_valid, ...) and ``timing``
(``timing.csv``: estimator, aux, device, step_kind, batch_size, median_ms, ...).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from scipy import stats

from .schema import CONTENDED_LOAD

METRIC = "test_acc_at_best_valid"
CONFIDENCE = 0.95
#: Equivalence margin (accuracy, 0.01 = 1 point) and time fraction of the verdict: options.
DEFAULT_MARGIN = 0.01
DEFAULT_TIME_FRACTION = 0.60
#: (estimator, aux) of the references; aux ``None`` matches the reference's cells whatever their flag.
ENUM_AUX = ("enum", True)
BASELINE = ("baseline", None)
REFERENCES = (ENUM_AUX, BASELINE)

PAIRED_COLUMNS = ["reference", "labels", "aux", "estimator", "variant", "n", "seeds", "mean_diff", "ci_low",
                  "ci_high", "sd_diff", "variant_mean", "reference_mean", "diffs", "epochs",
                  "best_at_last_epoch", "cells", "cell_ids", "rising_ids", "unpaired", "note"]
#: estimators that are no SS-VAE (no ELBO, no timing probe): compared, never candidates of the verdict
SUPERVISED = ("baseline",)
VERDICT_COLUMNS = ["reference", "labels", "aux", "variant", "n", "epochs", "mean_diff", "ci_low", "ci_high",
                   "accuracy", "time_fraction", "time_ok", "verdict", "fails"]


def variant_label(estimator: str, aux) -> str:
    return f"{estimator} + aux" if bool(aux) else estimator


def reference_label(reference: Tuple[str, Optional[bool]]) -> str:
    est, aux = reference
    return est if aux is None else variant_label(est, aux)


# -- intervals -------------------------------------------------------------------------------------
def paired_interval(diffs: Sequence[float], confidence: float = CONFIDENCE) -> Tuple[float, float, float, str]:
    """(mean, low, high, note) of the paired differences: a Student-t interval from scipy.stats.

    n = 1 gives no interval (low = high = NaN, and the note says so); n = 0 gives NaN throughout.
    Identical differences give the degenerate interval [d, d].
    """
    d = np.asarray(list(diffs), dtype=float)
    n = len(d)
    if n == 0:
        return math.nan, math.nan, math.nan, "no paired seeds"
    mean = float(d.mean())
    if n == 1:
        return mean, math.nan, math.nan, "n = 1: no interval"
    sem = float(stats.sem(d))
    if sem == 0:
        return mean, mean, mean, ""
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=sem)
    return mean, float(low), float(high), ""


# -- paired table ----------------------------------------------------------------------------------
def _ok(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    r = runs.copy()
    r["aux"] = r["aux"].map(_as_bool)
    ok = (r["status"] == "ok") & pd.to_numeric(r[metric], errors="coerce").notna()
    r = r[ok].copy()
    r[metric] = pd.to_numeric(r[metric])
    return r


def _as_bool(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    return bool(v)


def _reference_cells(ok: pd.DataFrame, reference) -> pd.DataFrame:
    est, aux = reference
    ref = ok[ok["estimator"] == est]
    if aux is not None:
        ref = ref[ref["aux"] == aux]
    else:  # one cell per (labels, seed): the one without aux first
        ref = ref.sort_values("aux").drop_duplicates(["labels", "seed"], keep="first")
    return ref


def paired_table(runs: pd.DataFrame, reference=ENUM_AUX, metric: str = METRIC,
                 confidence: float = CONFIDENCE) -> pd.DataFrame:
    """One row per (labels, aux, variant): the paired difference variant - reference over seeds.

    ``diffs`` holds the per-seed differences (in ``seeds`` order) for plotting as points; ``unpaired``
    lists the seeds where one side has no finished cell (failed, diverged, missing: left out of n).
    ``best_at_last_epoch`` counts the pair's cells whose best validation epoch was their last (still rising).
    """
    ok = _ok(runs, metric)
    ref = _reference_cells(ok, reference)
    ref_name = reference_label(reference)
    everyone = runs.copy()
    everyone["aux"] = everyone["aux"].map(_as_bool)
    rows = []
    for (labels, aux, est), var in ok.groupby(["labels", "aux", "estimator"], sort=True):
        if (est, aux) == tuple(reference) or (reference[1] is None and est == reference[0]):
            continue
        r = ref[ref["labels"] == labels]
        merged = var.merge(r, on="seed", suffixes=("", "_ref"))
        merged = merged.sort_values("seed")
        diffs = (merged[metric] - merged[f"{metric}_ref"]).tolist()
        mean, low, high, note = paired_interval(diffs, confidence)
        seeds_var = set(everyone[(everyone["labels"] == labels) & (everyone["estimator"] == est)
                                 & (everyone["aux"] == aux)]["seed"])
        unpaired = sorted((seeds_var | set(r["seed"])) - set(merged["seed"])) if len(r) else sorted(seeds_var)
        epochs = sorted(set(pd.to_numeric(merged["epochs"], errors="coerce").dropna().astype(int))
                        | set(pd.to_numeric(merged.get("epochs_ref", pd.Series(dtype=float)),
                                            errors="coerce").dropna().astype(int)))
        cell_ids, rising = [], []
        for side in ("", "_ref"):
            ids = merged[f"cell{side}"].astype(str).tolist()
            cell_ids += ids
            if f"best_epoch{side}" in merged:
                be = pd.to_numeric(merged[f"best_epoch{side}"], errors="coerce")
                ep = pd.to_numeric(merged[f"epochs{side}"], errors="coerce")
                rising += [c for c, last in zip(ids, (be == ep).tolist()) if last]
        rows.append({
            "reference": ref_name, "labels": int(labels), "aux": bool(aux), "estimator": est,
            "variant": variant_label(est, aux), "n": len(diffs),
            "seeds": ",".join(str(int(s)) for s in merged["seed"]), "mean_diff": mean, "ci_low": low,
            "ci_high": high, "sd_diff": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else math.nan,
            "variant_mean": float(merged[metric].mean()) if len(merged) else math.nan,
            "reference_mean": float(merged[f"{metric}_ref"].mean()) if len(merged) else math.nan,
            "diffs": diffs, "epochs": ",".join(map(str, epochs)), "best_at_last_epoch": len(rising),
            "cells": len(cell_ids), "cell_ids": ";".join(cell_ids), "rising_ids": ";".join(rising), "unpaired": ",".join(str(int(s)) for s in unpaired),
            "note": note if len(r) else f"no finished {ref_name} cell at {labels} labels"})
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def paired_tables(runs: pd.DataFrame, references: Iterable = REFERENCES, metric: str = METRIC,
                  confidence: float = CONFIDENCE) -> pd.DataFrame:
    """:func:`paired_table` against every reference (default: enum + aux, then the baseline), stacked."""
    return pd.concat([paired_table(runs, ref, metric, confidence) for ref in references], ignore_index=True)


# -- isolated times --------------------------------------------------------------------------------
def isolated_epoch_ms(timing: pd.DataFrame, labels: int, aux: bool, device: str = "cpu",
                      batch_size: Optional[int] = None, train_size: int = 50_000) -> pd.Series:
    """Estimated training milliseconds per epoch, per estimator, from the timing probe's median step times.

    An epoch of the SS-VAE (``ssvae.train.epoch_schedule``) has S labeled and U unlabeled batches;
    its estimate is ``S (sup + aux if aux) + U unsup`` median ms. Estimators the probe did not time
    (the supervised baseline) and probes that shared the machine (``other_cpu_load`` at least
    ``bench.schema.CONTENDED_LOAD`` cores) are absent. ``batch_size`` defaults to the probe's. Under the ``pyro``
    protocol an epoch also takes U empty auxiliary steps (an Adam update with zero gradients), which the
    probe does not time: the estimate leaves them out.
    """
    from ssvae.train import epoch_schedule

    t = timing.copy()
    t["aux"] = t["aux"].map(_as_bool)
    t = t[(t["device"] == device) & (t["aux"] == bool(aux))]
    if "other_cpu_load" in t:  # a probe that shared the machine is no isolated measurement (unknown: kept)
        t = t[~(pd.to_numeric(t["other_cpu_load"], errors="coerce") >= CONTENDED_LOAD)]
    if t.empty:
        return pd.Series(dtype=float)
    bs = int(batch_size or t["batch_size"].iloc[0])
    kinds = epoch_schedule(labels, train_size - labels, bs, train_size)
    n_sup, n_unsup = kinds.count("sup"), kinds.count("unsup")
    med = t.pivot_table(index="estimator", columns="step_kind", values="median_ms", aggfunc="first")
    need = ["sup", "unsup"] + (["aux"] if aux else [])
    med = med.dropna(subset=[k for k in need if k in med.columns])
    if any(k not in med.columns for k in need):
        return pd.Series(dtype=float)
    ms = n_sup * med["sup"] + n_unsup * med["unsup"] + (n_sup * med["aux"] if aux else 0.0)
    return ms.rename("epoch_ms")


def time_fraction(timing: Optional[pd.DataFrame], estimator: str, aux: bool, reference, labels: int,
                  device: str = "cpu") -> float:
    """Isolated time per epoch of (estimator, aux) over the reference's, at ``labels``; NaN if not probed."""
    if timing is None or len(timing) == 0:
        return math.nan
    mine = isolated_epoch_ms(timing, labels, aux, device)
    ref_est, ref_aux = reference
    theirs = isolated_epoch_ms(timing, labels, bool(ref_aux), device)
    if estimator not in mine.index or ref_est not in theirs.index:
        return math.nan
    return float(mine[estimator] / theirs[ref_est])


# -- verdicts --------------------------------------------------------------------------------------
def accuracy_verdict(low: float, high: float, margin: float) -> str:
    """equivalent | better | worse | inconclusive | no interval: where the interval lies against +-margin."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "no interval"
    if -margin < low and high < margin:
        return "equivalent"
    if low > margin:
        return "better"
    if high < -margin:
        return "worse"
    return "inconclusive"


def _pts(x: float) -> str:
    return f"{round(x * 100, 1) + 0.0:+.1f}"


def verdicts(paired: pd.DataFrame, timing: Optional[pd.DataFrame] = None, margin: float = DEFAULT_MARGIN,
             fraction: float = DEFAULT_TIME_FRACTION, device: str = "cpu") -> pd.DataFrame:
    """One verdict per row of ``paired`` (setting x variant x reference), stating n, epochs and where it fails.

    The time condition applies against enum + aux only (the baseline is the accuracy bar, not a cost
    to beat); ``time_fraction`` is NaN where the timing probe has no rows for one side.
    """
    rows = []
    for r in paired.itertuples(index=False):
        acc = accuracy_verdict(r.ci_low, r.ci_high, margin)
        timed = r.reference == reference_label(ENUM_AUX)
        frac = time_fraction(timing, r.estimator, r.aux, ENUM_AUX, r.labels, device) if timed else math.nan
        time_ok = bool(frac <= fraction) if timed and np.isfinite(frac) else None
        fails = []
        if acc == "no interval":
            fails.append(f"n = {r.n}: no interval" if r.n == 1 else "no paired seeds")
        elif acc != "equivalent":
            lo_bad, hi_bad = r.ci_low <= -margin, r.ci_high >= margin
            side = ("below " + _pts(-margin) if lo_bad else "") + (" and " if lo_bad and hi_bad else "") + \
                   ("above " + _pts(margin) if hi_bad else "")
            fails.append(f"interval [{_pts(r.ci_low)}, {_pts(r.ci_high)}] points reaches {side} points")
        if timed:
            if time_ok is None:
                fails.append("no isolated timing")
            elif not time_ok:
                fails.append(f"time {frac:.0%} > {fraction:.0%}")
        if r.best_at_last_epoch:
            fails.append(f"{r.best_at_last_epoch} of {r.cells} cells best at their last epoch (still rising)")
        ep = f"{r.epochs} epoch{'s' if r.epochs != '1' else ''}"
        if acc == "equivalent" and (not timed or time_ok):
            verdict = (f"equivalent within {margin * 100:g} point{'s' if margin != 0.01 else ''}"
                       + (f" at {frac:.0%} <= {fraction:.0%} of the time" if timed else "")
                       + f" (n = {r.n}, {ep})")
        else:
            what = {"equivalent": "equivalent in accuracy but not cheap enough", "better": "better",
                    "worse": "worse", "inconclusive": "not shown equivalent",
                    "no interval": "no verdict"}[acc]
            verdict = f"{what} (n = {r.n}, {ep})"
        rows.append({"reference": r.reference, "labels": r.labels, "aux": r.aux, "variant": r.variant, "n": r.n,
                     "epochs": r.epochs, "mean_diff": r.mean_diff, "ci_low": r.ci_low, "ci_high": r.ci_high,
                     "accuracy": acc, "time_fraction": frac, "time_ok": time_ok, "verdict": verdict,
                     "fails": "; ".join(fails)})
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


def qualifies(v: pd.DataFrame) -> pd.Series:
    """Rows whose verdict is "equivalent within the margin at <= the time fraction" (against enum + aux)."""
    return (v["reference"] == reference_label(ENUM_AUX)) & (v["accuracy"] == "equivalent") & \
        (v["time_ok"] == True)  # noqa: E712 (None is not True)


# -- summary ---------------------------------------------------------------------------------------
def _ci(r) -> str:
    if np.isfinite(r.ci_low):
        return f"{_pts(r.mean_diff)} points (95 % CI {_pts(r.ci_low)} to {_pts(r.ci_high)}, n = {r.n})"
    return f"{_pts(r.mean_diff)} points (n = {r.n}, no interval)"


def summary_text(paired: pd.DataFrame, verdict_table: pd.DataFrame, margin: float = DEFAULT_MARGIN,
                 fraction: float = DEFAULT_TIME_FRACTION, protocol: Optional[str] = None) -> str:
    """A few plain sentences for the README, generated from the paired table and the verdicts, caveats included."""
    if verdict_table.empty:
        return "No paired comparison can be made: no setting has finished cells of a variant and of enum + aux.\n"
    enum_ref, base_ref = reference_label(ENUM_AUX), reference_label(BASELINE)
    v = verdict_table
    ns = sorted(set(int(n) for n in v["n"]))
    epochs = sorted(set(e for es in v["epochs"] for e in str(es).split(",") if e))
    out = [f"Test accuracy at the best validation epoch, paired by seed (same labeled subset, initial weights and "
           f"batch order), 95 % t-intervals on the per-seed differences; n = {_list(ns)} seed"
           f"{'s' if ns != [1] else ''} per comparison, {_list(epochs)} epoch{'s' if epochs != ['1'] else ''}"
           + (f", {protocol} protocol" if protocol else "") + ". "
           f"A variant counts as equivalent to {enum_ref} only when the whole interval lies within "
           f"±{margin * 100:g} point{'s' if margin != 0.01 else ''} and its time per epoch, estimated from the "
           f"isolated timing probe, is at most {fraction:.0%} of {enum_ref}'s."]
    for (labels, aux), g in v[v["reference"] == enum_ref].groupby(["labels", "aux"], sort=True):
        where = f"At {labels} labels {'with' if aux else 'without'} the auxiliary loss"
        ok = g[qualifies(g)]
        if len(ok):
            out.append(f"{where}, {_list(list(ok['variant']))} qualif{'y' if len(ok) > 1 else 'ies'}: " +
                       "; ".join(f"{r.variant} {_ci(r)} at {r.time_fraction:.0%} of the time" for r in ok.itertuples())
                       + ".")
        else:
            cand = g[~g["variant"].isin(SUPERVISED)].dropna(subset=["mean_diff"]).copy()
            if cand.empty:
                out.append(f"{where}, no variant has paired cells.")
                continue
            # the closest: the mean difference nearest to zero (ties: the narrower interval)
            cand["distance"] = cand["mean_diff"].abs()
            cand["width"] = (cand["ci_high"] - cand["ci_low"]).fillna(np.inf)
            best = next(cand.sort_values(["distance", "width"]).itertuples())
            reason = "; ".join(f for f in str(best.fails).split("; ") if f and not f.startswith("n = ")) or best.accuracy
            out.append(f"{where}, no variant qualifies; the closest, {best.variant}, is {_ci(best)} from "
                       f"{enum_ref}" + (f" at {best.time_fraction:.0%} of its time" if np.isfinite(best.time_fraction)
                                        else "") + f" ({reason}).")
        b = paired[(paired["reference"] == base_ref) & (paired["labels"] == labels)
                   & (paired["variant"] == enum_ref)]
        if aux and len(b):
            r = next(b.itertuples())
            out.append(f"There {enum_ref} minus the supervised-only baseline is {_ci(r)}.")
    ids = lambda col: {c for v in paired[col] for c in str(v).split(";") if c}
    rising, cells = len(ids("rising_ids")), len(ids("cell_ids"))
    caveats = [f"n = {_list(ns)} seeds"]
    if rising:
        caveats.append(f"{rising} of {cells} paired cells had their best validation epoch at their last one "
                       f"(still improving: longer runs may change the ordering)")
    unpaired = paired[paired["unpaired"] != ""]
    if len(unpaired):
        caveats.append(f"{len(unpaired)} comparison{'s' if len(unpaired) > 1 else ''} left out seeds with a failed, "
                       f"diverged or missing cell")
    out.append("Caveats: " + "; ".join(caveats) + ".")
    return " ".join(out) + "\n"


def _list(items: list) -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1] if items else "none"


# -- concurrency -----------------------------------------------------------------------------------
# -- plots -----------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _ordered(variants, order: Optional[List[str]]) -> List[str]:
    """Variant labels top to bottom: those of ``order`` first, in its order, then the rest as they come."""
    present = list(dict.fromkeys(variants))
    head = [v for v in (order or []) if v in present]
    return (head + [v for v in present if v not in head])[::-1]


def plot_paired(paired: pd.DataFrame, path, margin: float = DEFAULT_MARGIN, palette: Optional[dict] = None,
                order: Optional[List[str]] = None):
    """Paired differences (points) per variant, one panel per reference x setting: per-seed points, the mean
    and its 95 % interval, the ±margin band shaded. ``palette``: estimator -> colour; ``order``: variant
    labels top to bottom. Returns the path written."""
    plt = _plt()
    refs = list(dict.fromkeys(paired["reference"]))
    settings = sorted(set(zip(paired["labels"], paired["aux"])))
    variants = _ordered(paired["variant"], order)
    fig, axes = plt.subplots(len(refs), len(settings), figsize=(3.4 * len(settings) + 1, 0.32 * len(variants) * len(refs) + 1.5),
                             squeeze=False, sharey=True)
    for i, ref in enumerate(refs):
        for j, (labels, aux) in enumerate(settings):
            ax = axes[i][j]
            g = paired[(paired["reference"] == ref) & (paired["labels"] == labels) & (paired["aux"] == aux)]
            ax.axvspan(-margin * 100, margin * 100, color="0.85", zorder=0)
            ax.axvline(0, color="0.4", lw=0.8)
            for r in g.itertuples():
                y = variants.index(r.variant)
                colour = (palette or {}).get(r.estimator, "C0")
                d = np.asarray(r.diffs, dtype=float) * 100
                ax.scatter(d, np.full(len(d), y) + np.linspace(-0.15, 0.15, len(d)), s=10, color=colour, alpha=0.6)
                if np.isfinite(r.ci_low):
                    ax.plot([r.ci_low * 100, r.ci_high * 100], [y, y], color=colour, lw=2)
                ax.plot([r.mean_diff * 100], [y], "|", color="k", ms=10)
            ax.set_yticks(range(len(variants)), variants)
            ax.set_title(f"{labels} labels, {'aux' if aux else 'no aux'}\nvs {ref}", fontsize=9)
            ax.set_xlabel("difference in test accuracy (points)")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_accuracy_points(runs: pd.DataFrame, path, metric: str = METRIC, palette: Optional[dict] = None,
                         order: Optional[List[str]] = None):
    """Test accuracy per variant, one panel per label count: every seed a point, the mean with its 95 % interval."""
    plt = _plt()
    ok = _ok(runs, metric)
    ok["variant"] = [variant_label(e, a) for e, a in zip(ok["estimator"], ok["aux"])]
    variants = _ordered(ok.sort_values(["estimator", "aux"])["variant"], order)
    labels = sorted(set(ok["labels"]))
    fig, axes = plt.subplots(1, len(labels), figsize=(4 * len(labels) + 1, 0.3 * len(variants) + 1.5),
                             squeeze=False, sharey=True)
    for j, lab in enumerate(labels):
        ax = axes[0][j]
        for (est, var), g in ok[ok["labels"] == lab].groupby(["estimator", "variant"]):
            y = variants.index(var)
            colour = (palette or {}).get(est, "C0")
            vals = g[metric].to_numpy()
            ax.scatter(vals, np.full(len(vals), y) + np.linspace(-0.15, 0.15, len(vals)), s=10, color=colour, alpha=0.6)
            mean, low, high, _ = paired_interval(vals)
            if np.isfinite(low):
                ax.plot([low, high], [y, y], color=colour, lw=2)
            ax.plot([mean], [y], "|", color="k", ms=10)
        ax.set_yticks(range(len(variants)), variants)
        ax.set_title(f"{lab} labels", fontsize=9)
        ax.set_xlabel("test accuracy at best validation epoch")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- all at once -----------------------------------------------------------------------------------
def conclusions(runs: pd.DataFrame, timing: Optional[pd.DataFrame] = None, margin: float = DEFAULT_MARGIN,
                fraction: float = DEFAULT_TIME_FRACTION, device: str = "cpu",
                references: Iterable = REFERENCES) -> Tuple[pd.DataFrame, pd.DataFrame, str]:
    """(paired table, verdicts, summary text) of a results folder's runs and timing tables.

    The protocol named in the text is read from the runs' ``protocol`` column (absent: the default,
    ``bench``; several: all of them, comma-separated).
    """
    p = paired_tables(runs, references)
    v = verdicts(p, timing, margin, fraction, device)
    protocols = sorted(set(runs["protocol"].dropna().astype(str)) - {""}) if "protocol" in runs else []
    return p, v, summary_text(p, v, margin, fraction, ", ".join(protocols) or "bench")
