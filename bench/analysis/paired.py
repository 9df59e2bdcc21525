"""Paired statistics over seeds: the paired tables, isolated times per epoch, accuracy at equal time, their plots.

Seeds are paired: two cells with the same seed (and label count) share the labeled subset, the
initial weights and, for the SS-VAE estimators, the order of the mini-batches (``ssvae.train``).
So a variant is compared with a reference seed by seed::

    d_s = acc(variant, seed s) - acc(reference, seed s)        (test accuracy at the best validation epoch)
    mean d, interval  mean d +- t_{(1+level)/2, n-1} sd(d) / sqrt(n)   (scipy.stats.t; level 95 %; n = 1: none)

at every setting (labels x aux), against enum + aux and against the supervised baseline (:func:`paired_table`).
Times come from the isolated timing probe only (``timing.csv``: one task at a time, fixed threads;
:func:`isolated_epoch_ms`), never the cells' own wall times; :mod:`bench.analysis.wall_time` puts them beside
the learning curves (accuracy at equal and at fixed wall time, time to a validation target).
:func:`plot_paired` and :func:`plot_accuracy_points` draw the per-seed points. The verdicts drawn from these
tables and the generated summary are :mod:`bench.analysis.paired_verdicts`'s.

Inputs are the report's tables as pandas DataFrames: ``runs`` (``runs.csv``: cell, estimator, aux,
labels, seed, status, epochs, best_epoch, test_acc_at_best_valid, ...), ``timing`` (``timing.csv``:
estimator, aux, device, step_kind, batch_size, median_ms, ...) and ``curves`` (epoch, valid_acc, test_acc).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

import numpy as np
import pandas as pd

from ssvae.train import epoch_schedule

from ..core.stats import CONFIDENCE, as_bool, paired_interval, variant_label
from .diagnostics import isolated_timing

METRIC = "test_acc_at_best_valid"
#: the non-inferiority margin (accuracy, 0.01 = 1 point): an option
DEFAULT_MARGIN = 0.01
#: (estimator, aux) of the references; aux ``None`` matches the reference's cells whatever their flag.
ENUM_AUX = ("enum", True)
BASELINE = ("baseline", None)
REFERENCES = (ENUM_AUX, BASELINE)

PAIRED_COLUMNS = ["reference", "labels", "aux", "estimator", "variant", "n", "seeds", "mean_diff", "ci_low",
                  "ci_high", "sd_diff", "variant_mean", "reference_mean", "diffs", "epochs",
                  "best_at_last_epoch", "ended_early", "cells", "cell_ids", "rising_ids", "unpaired", "note"]
#: estimators that are no SS-VAE (no ELBO, no timing probe): compared, never candidates of the verdict
SUPERVISED = ("baseline",)


def reference_label(reference: Tuple[str, Optional[bool]]) -> str:
    est, aux = reference
    return est if aux is None else variant_label(est, aux)


# -- paired table ----------------------------------------------------------------------------------
def _ok(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    r = runs.copy()
    r["aux"] = r["aux"].map(as_bool)
    ok = (r["status"] == "ok") & pd.to_numeric(r[metric], errors="coerce").notna()
    r = r[ok].copy()
    r[metric] = pd.to_numeric(r[metric])
    return r


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
    ``best_at_last_epoch`` counts the pair's cells whose best validation epoch was their last (still rising);
    ``ended_early`` those that early stopping ended before ``epochs`` (their record's ``epochs_run``; ``patience``).
    """
    ok = _ok(runs, metric)
    ref = _reference_cells(ok, reference)
    ref_name = reference_label(reference)
    everyone = runs.copy()
    everyone["aux"] = everyone["aux"].map(as_bool)
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
        cell_ids, rising, ended = [], [], 0
        for side in ("", "_ref"):
            ids = merged[f"cell{side}"].astype(str).tolist()
            cell_ids += ids
            if f"epochs_run{side}" in merged:
                ended += int((pd.to_numeric(merged[f"epochs_run{side}"], errors="coerce")
                              < pd.to_numeric(merged[f"epochs{side}"], errors="coerce")).sum())
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
            "ended_early": ended, "cells": len(cell_ids), "cell_ids": ";".join(cell_ids),
            "rising_ids": ";".join(rising), "unpaired": ",".join(str(int(s)) for s in unpaired),
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
    (the supervised baseline), probes that shared the machine and another machine's probes are absent
    (:func:`bench.analysis.diagnostics.isolated_timing`). ``batch_size`` defaults to the probe's. Under the ``pyro``
    protocol an epoch also takes U empty auxiliary steps (an Adam update with zero gradients), which the
    probe does not time: the estimate leaves them out.
    """
    t = isolated_timing(timing, device).copy()  # alone, on one machine
    t["aux"] = t["aux"].map(as_bool)
    t = t[t["aux"] == bool(aux)]
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
    and its interval, the margin below 0 shaded; one x scale per row (reference); each panel lists only the
    variants compared at its setting, and a setting with none is left blank. ``palette``: estimator -> colour; ``order``: labels top to bottom. Returns the path."""
    plt = _plt()
    refs, settings = list(dict.fromkeys(paired["reference"])), sorted(set(zip(paired["labels"], paired["aux"])))
    rows_per_panel = paired.groupby(["reference", "labels", "aux"])["variant"].nunique()
    fig, axes = plt.subplots(len(refs), len(settings), squeeze=False, figsize=(
        3.6 * len(settings) + 1, 0.32 * rows_per_panel.max() * len(refs) + 1.5))
    for i, ref in enumerate(refs):
        mine = paired[paired["reference"] == ref]
        span = [-margin * 100, 0.0] + [100 * float(x) for x in pd.concat([mine.ci_low, mine.ci_high, mine.diffs.explode()])
                                       if np.isfinite(float(x))]
        pad = 0.05 * (max(span) - min(span) or 1)
        for j, ((labels, aux), ax) in enumerate(zip(settings, axes[i])):
            g = mine[(mine["labels"] == labels) & (mine["aux"] == aux)]
            if not len(g):
                ax.axis("off")
                continue
            variants = _ordered(g["variant"], order)  # only this setting's rows: no empty row in a panel
            ax.axvspan(-margin * 100, 0, color="0.85", zorder=0)  # what "as good" allows below 0
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
            ax.set(xlim=(min(span) - pad, max(span) + pad), ylim=(-0.5, len(variants) - 0.5),
                   xlabel="difference in test accuracy (points)")
            ax.set_title(f"{labels} labels, {'aux' if aux else 'no aux'}\nvs {ref}", fontsize=9)
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
