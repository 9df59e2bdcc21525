"""Accuracy per second: the learning curves read against the isolated timing probe's time per epoch.

A variant's epoch e ends at ``e x`` its isolated time per epoch (:func:`bench.analysis.paired.isolated_epoch_ms`:
the probe's median step times summed over an epoch's schedule; never the cells' own wall times). Within a
time budget the variant may use the epochs that end inside it, and among those the best validation accuracy
picks the test accuracy (the first best wins, as in ``ssvae.train``). Every table pairs each seed with enum +
aux on the same seed:

- :func:`equal_time`: the budget is enum + aux's whole run (its epochs x its time per epoch);
- :func:`fixed_budget`: the budget is a number of seconds, the same for every variant and for enum + aux;
- :func:`accuracy_by_budget`: each variant's mean accuracy within each of a range of budgets (unpaired: the figure);
- :func:`time_to_target`: the time to come within a margin of enum + aux's best validation accuracy.

Inputs: ``runs`` (``runs.csv``), ``curves`` (``curves.csv``: cell, epoch, valid_acc, test_acc) and ``timing``
(``timing.csv``), as pandas DataFrames. The supervised-only baseline has no timing probe: it is left out.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from ..core.stats import CONFIDENCE, paired_interval, variant_label
from .paired import (DEFAULT_MARGIN, ENUM_AUX, METRIC, SUPERVISED, _ok, _reference_cells, isolated_epoch_ms,
                     time_fraction)

EQUAL_TIME_COLUMNS = ["labels", "aux", "variant", "estimator", "n", "time_fraction", "budget_epochs", "budget_used",
                      "mean_acc", "reference_mean", "mean_diff", "ci_low", "ci_high", "note"]
TIME_TO_TARGET_COLUMNS = ["labels", "aux", "variant", "estimator", "n", "reached", "margin", "target_mean",
                          "epochs_median", "seconds_median", "reference_seconds_median", "time_ratio_median", "note"]
FIXED_BUDGET_COLUMNS = ["labels", "aux", "variant", "estimator", "n", "budget_seconds", "epoch_seconds",
                        "budget_epochs", "reference_budget_epochs", "mean_acc", "reference_mean", "mean_diff", "ci_low",
                        "ci_high", "note"]
BY_BUDGET_COLUMNS = ["labels", "aux", "variant", "estimator", "budget_seconds", "epoch_seconds", "n", "mean_acc",
                     "runs_ended"]
#: the fixed budget of the report's table (seconds of training per run on the probe's device): an option
DEFAULT_BUDGET = 60.0


def _settings(runs: pd.DataFrame) -> Iterator[Tuple[int, bool, str, pd.DataFrame]]:
    """Per setting (labels, aux) and SS-VAE estimator: its finished cells merged by seed with enum + aux's
    (columns of the latter end in ``_ref``), in seed order."""
    ok = _ok(runs, METRIC)
    ref = _reference_cells(ok, ENUM_AUX)
    for (labels, aux, est), var in ok.groupby(["labels", "aux", "estimator"], sort=True):
        if est in SUPERVISED:
            continue
        merged = var.merge(ref[ref["labels"] == labels], on="seed", suffixes=("", "_ref")).sort_values("seed")
        yield int(labels), bool(aux), est, merged


def _curve(curves: pd.DataFrame, cell: str) -> pd.DataFrame:
    return curves[curves["cell"] == cell] if len(curves) else curves


def isolated_epoch_seconds(timing: Optional[pd.DataFrame], labels: int, aux: bool, estimator: str,
                           device: str) -> float:
    """The isolated seconds per epoch of (estimator, aux) at ``labels``; NaN where the probe has none."""
    if timing is None or not len(timing):
        return math.nan
    return float(isolated_epoch_ms(timing, labels, aux, device).get(estimator, math.nan)) / 1000


def _epochs_run(cell, side: str = "") -> float:
    """The epochs a cell trained: its record's ``epochs_run`` (early stopping can end it before its ``epochs``),
    else ``epochs`` (a cell from before the field ran them all)."""
    ran = getattr(cell, f"epochs_run{side}", math.nan)
    return float(ran) if ran is not None and np.isfinite(ran) else float(getattr(cell, f"epochs{side}"))


def _best_within(curve: pd.DataFrame, last_epoch: float) -> Tuple[float, int]:
    """(test accuracy, epoch) at the best validation epoch among epochs <= last_epoch (the first best wins,
    as in ``ssvae.train``); (NaN, 0) when no epoch fits."""
    c = curve[(curve["epoch"] <= last_epoch + 1e-9)].dropna(subset=["valid_acc"]).sort_values("epoch")
    if c.empty:
        return math.nan, 0
    best = c.loc[c["valid_acc"].idxmax()]
    return float(best["test_acc"]), int(best["epoch"])


def _fits(curve: pd.DataFrame, epochs: float) -> Optional[Tuple[int, int]]:
    """(epochs run, epochs that fit) when the run ended before the last epoch that fits the budget, else None."""
    ran, fit = int(curve["epoch"].max()), math.floor(epochs + 1e-9)
    return (ran, fit) if ran < fit else None


def _row(labels, aux, est, accs, diffs, confidence, **cols) -> Tuple[dict, list]:
    """A paired row's common columns, and the interval's note (as a list of notes)."""
    mean, low, high, note = paired_interval(diffs, confidence)
    return ({"labels": labels, "aux": aux, "variant": variant_label(est, aux), "estimator": est, "n": len(diffs),
             "mean_acc": float(np.mean(accs)) if accs else math.nan, "mean_diff": mean, "ci_low": low,
             "ci_high": high, **cols}, [note] if note else [])


# -- accuracy at equal wall time -------------------------------------------------------------------
def equal_time(runs: pd.DataFrame, curves: pd.DataFrame, timing: Optional[pd.DataFrame], device: str = "cpu",
               confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per setting (labels, aux) and SS-VAE variant: the test accuracy each seed reaches within the time enum +
    aux takes for its whole run, paired by seed with enum + aux's own.

    A variant's budget is enum + aux's epochs (those it ran: early stopping may end it before its ``epochs``) times
    enum + aux's time per epoch, so it may use the epochs up to ``budget_epochs`` = those epochs / ``time_fraction``. A run that ended before the last epoch that
    fits gives a lower bound of what the variant reaches (note).
    """
    rows = []
    for labels, aux, est, merged in _settings(runs):
        frac = 1.0 if (est, aux) == ENUM_AUX else time_fraction(timing, est, aux, ENUM_AUX, labels, device)
        accs, diffs, used, budgets, short = [], [], [], [], []
        for m in merged.itertuples():
            budget = _epochs_run(m, "_ref") / frac if np.isfinite(frac) and frac > 0 else math.nan
            curve = _curve(curves, m.cell)
            acc, _ = _best_within(curve, budget) if np.isfinite(budget) and len(curve) else (math.nan, 0)
            if np.isfinite(acc):
                accs.append(acc)
                diffs.append(acc - getattr(m, f"{METRIC}_ref"))
                used.append(min(1.0, int(curve["epoch"].max()) / budget))
                budgets.append(budget)
                short += [s for s in [_fits(curve, budget)] if s]
        row, notes = _row(labels, aux, est, accs, diffs, confidence, time_fraction=frac,
                   budget_epochs=float(np.mean(budgets)) if budgets else math.nan,
                   budget_used=min(used) if used else math.nan,
                   reference_mean=float(merged[f"{METRIC}_ref"].mean()) if len(merged) else math.nan)
        if not np.isfinite(frac):
            notes = ["no isolated timing"]
        elif len(merged) and not accs:
            notes = ["no epoch within the budget"]
        elif short:
            notes.append(f"its run ended at epoch {min(short)[0]} of the {min(short)[1]} that fit: a lower bound")
        rows.append({**row, "note": "; ".join(notes)})
    return pd.DataFrame(rows, columns=EQUAL_TIME_COLUMNS)


# -- accuracy within a fixed budget ----------------------------------------------------------------
def fixed_budget(runs: pd.DataFrame, curves: pd.DataFrame, timing: Optional[pd.DataFrame],
                 seconds: float = DEFAULT_BUDGET, device: str = "cpu", confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per setting (labels, aux) and SS-VAE variant: the test accuracy each seed reaches within ``seconds`` of
    training (isolated time per epoch, ``device``), paired by seed with what enum + aux reaches within the
    same seconds. Enum + aux is held to the budget too: where none of its epochs fits, there is no comparison.
    A variant (or enum + aux) whose run ended before the last epoch that fits gives a lower bound (note).
    """
    if not seconds > 0:
        raise ValueError(f"a time budget must be positive (got {seconds!r})")
    rows = []
    for labels, aux, est, merged in _settings(runs):
        sec, ref_sec = (isolated_epoch_seconds(timing, labels, aux, est, device),
                        isolated_epoch_seconds(timing, labels, True, ENUM_AUX[0], device))
        fit, ref_fit = seconds / sec, seconds / ref_sec  # NaN without timing
        accs, refs, diffs, short = [], [], [], []
        for m in merged.itertuples():
            curve, ref_curve = _curve(curves, m.cell), _curve(curves, m.cell_ref)
            if not (np.isfinite(fit) and np.isfinite(ref_fit) and len(curve) and len(ref_curve)):
                continue
            (acc, _), (ref_acc, _) = _best_within(curve, fit), _best_within(ref_curve, ref_fit)
            if np.isfinite(acc) and np.isfinite(ref_acc):
                accs.append(acc)
                refs.append(ref_acc)
                diffs.append(acc - ref_acc)
                short += [who for who, c, e in (("its", curve, fit), (f"{variant_label(*ENUM_AUX)}'s", ref_curve,
                                                                        ref_fit)) if _fits(c, e)]
        row, notes = _row(labels, aux, est, accs, diffs, confidence, budget_seconds=float(seconds), epoch_seconds=sec,
                   budget_epochs=fit, reference_budget_epochs=ref_fit,
                   reference_mean=float(np.mean(refs)) if refs else math.nan)
        if not (np.isfinite(fit) and np.isfinite(ref_fit)):
            notes = ["no isolated timing"]
        elif len(merged) and not diffs:
            notes = [f"no epoch within {seconds:g} s" + ("" if fit >= 1 else f" ({sec:.0f} s per epoch)")
                     + ("" if ref_fit >= 1 else f" for {variant_label(*ENUM_AUX)} ({ref_sec:.0f} s per epoch)")]
        elif short:
            notes.append(" and ".join(dict.fromkeys(short)) + " run ended before the budget: a lower bound")
        rows.append({**row, "note": "; ".join(notes)})
    return pd.DataFrame(rows, columns=FIXED_BUDGET_COLUMNS)


def accuracy_by_budget(runs: pd.DataFrame, curves: pd.DataFrame, timing: Optional[pd.DataFrame], device: str = "cpu",
                       points: int = 24) -> pd.DataFrame:
    """Per setting, SS-VAE variant and budget: the mean over seeds of the test accuracy at the best validation
    epoch among the epochs that end within the budget (not paired: every variant's own seeds). The budgets run,
    log-spaced, from the shortest isolated epoch to the longest whole run of the folder. ``runs_ended``
    counts the seeds whose run ended before the budget (from there on the number is a lower bound)."""
    ok = _ok(runs, METRIC)
    per_variant = []
    for (labels, aux, est), var in ok.groupby(["labels", "aux", "estimator"], sort=True):
        sec = math.nan if est in SUPERVISED else isolated_epoch_seconds(timing, int(labels), bool(aux), est, device)
        cells = [c for c in (_curve(curves, cell) for cell in var["cell"]) if len(c)]
        if np.isfinite(sec) and sec > 0 and cells:
            per_variant.append((int(labels), bool(aux), est, sec, cells))
    if not per_variant:
        return pd.DataFrame(columns=BY_BUDGET_COLUMNS)
    low = min(sec for *_, sec, _ in per_variant)
    high = max(sec * max(int(c["epoch"].max()) for c in cells) for *_, sec, cells in per_variant)
    rows = []
    for labels, aux, est, sec, cells in per_variant:
        for seconds in np.geomspace(low, max(high, low), points):
            accs = [a for a, _ in (_best_within(c, seconds / sec) for c in cells) if np.isfinite(a)]
            if accs:
                rows.append({"labels": labels, "aux": aux, "variant": variant_label(est, aux), "estimator": est,
                             "budget_seconds": float(seconds), "epoch_seconds": sec, "n": len(accs),
                             "mean_acc": float(np.mean(accs)),
                             "runs_ended": sum(_fits(c, seconds / sec) is not None for c in cells)})
    return pd.DataFrame(rows, columns=BY_BUDGET_COLUMNS)


# -- time to a validation target -------------------------------------------------------------------
def _first_epoch_at(curve: pd.DataFrame, target: float) -> Optional[int]:
    """The first epoch whose validation accuracy is at least ``target`` (None: none is)."""
    c = curve.dropna(subset=["valid_acc"]).sort_values("epoch")
    hit = c[c["valid_acc"] >= target - 1e-12]
    return int(hit["epoch"].iloc[0]) if len(hit) else None


def time_to_target(runs: pd.DataFrame, curves: pd.DataFrame, timing: Optional[pd.DataFrame], device: str = "cpu",
                   margin: float = DEFAULT_MARGIN) -> pd.DataFrame:
    """Per setting (labels, aux) and SS-VAE variant: how long each seed takes to come within ``margin`` of enum +
    aux's best validation accuracy on the same seed (validation only: the target and the hit are validation
    accuracies), against the time enum + aux itself takes to get there.

    A variant's time to the target is the end of its first epoch at or above the target. ``reached`` counts the
    seeds that get there within their run; the medians are over those seeds, the ratio is per seed (variant
    over enum + aux).
    """
    rows = []
    for labels, aux, est, merged in _settings(runs):
        ms = isolated_epoch_seconds(timing, labels, aux, est, device) * 1000
        ref_ms = isolated_epoch_seconds(timing, labels, True, ENUM_AUX[0], device) * 1000
        targets, epochs, secs, ref_secs, ratios = [], [], [], [], []
        for m in merged.itertuples():
            curve, ref_curve = _curve(curves, m.cell), _curve(curves, m.cell_ref)
            if not len(curve) or not len(ref_curve):
                continue
            target = float(ref_curve["valid_acc"].max()) - margin
            targets.append(target)
            e, e_ref = _first_epoch_at(curve, target), _first_epoch_at(ref_curve, target)
            if e is None:
                continue
            epochs.append(e)
            secs.append(e * ms / 1000)
            ref_secs.append(e_ref * ref_ms / 1000)
            ratios.append(e * ms / (e_ref * ref_ms) if ref_ms > 0 else math.nan)
        note = "no isolated timing" if targets and not np.isfinite(ms) else ""
        if targets and len(epochs) < len(targets):
            note = "; ".join(x for x in (note, f"{len(targets) - len(epochs)} of {len(targets)} seeds never got "
                                                f"there in their run") if x)
        med = lambda xs: float(np.median(xs)) if xs else math.nan
        rows.append({"labels": labels, "aux": aux, "variant": variant_label(est, aux), "estimator": est,
                     "n": len(targets), "reached": len(epochs), "margin": margin,
                     "target_mean": float(np.mean(targets)) if targets else math.nan,
                     "epochs_median": med(epochs), "seconds_median": med(secs),
                     "reference_seconds_median": med(ref_secs), "time_ratio_median": med(ratios), "note": note})
    return pd.DataFrame(rows, columns=TIME_TO_TARGET_COLUMNS)
