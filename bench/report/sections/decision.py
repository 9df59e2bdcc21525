"""The decision table: one row per variant with what choosing an estimator turns on, from the report's
own tables (``tables/decision.csv`` and ``.md``; the summary and the README quote it word for word).

Per label count: the variant's test accuracy (mean over seeds at the best validation epoch, Table 1), its
paired difference from enum + aux with the interval (Paired differences) and the verdict in a user's words:
better, as good, worse, inconclusive, or "setting not learning" where enum + aux does not beat the
supervised-only baseline (no verdict is drawn there); the baseline's own row reads "the bar (supervised only)". Then the time per epoch as a multiple of enum + aux's
(``bench.report.common.epoch_seconds``: the median over seeds of the cells' own seconds per epoch where every
cell trained on one machine, else the isolated timing probe's estimate; median over label counts; device and
threads named in the header) and the gradient error: the MSE of one draw of encoder_y's gradient on an unlabeled
batch against the exact gradient, as a multiple of enum's at the same checkpoint (median over label counts
and checkpoints); "biased" marks an estimator whose expectation is not the ELBO's gradient, which is
why it is ranked by this error and not by its variance.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import List, Optional

import numpy as np
import pandas as pd

from ..common import epoch_seconds, epoch_time_words, variant_label, variants
from ..context import Context
from ..data import BASELINES
from ..frames import early_stopping, protocols, table1
from .grad_mse import efficiency, has_error
from .paired import ENUM_REF, conclusions, diff_cell

#: the verdict categories of ``bench.analysis.paired_verdicts`` in a user's words
WORDS = {"better": "better", "as good": "as good", "worse": "worse", "inconclusive": "inconclusive",
         "not learning": "setting not learning"}
#: the supervised-only baseline's row: the bar enum + aux must clear for a verdict to be drawn
BAR = "the bar (supervised only)"


def _time_multiple(ctx: Context, est: str, aux: bool, labels: List[int]) -> Optional[float]:
    ratios = []
    for L in labels:
        mine, _ = epoch_seconds(ctx.res, est, aux, L)
        ref, _ = epoch_seconds(ctx.res, "enum", True, L)
        if mine and ref:
            ratios.append(mine / ref)
    return float(np.median(ratios)) if ratios else None


def _mse_multiples(ctx: Context) -> pd.DataFrame:
    """estimator -> (median MSE multiple of enum's, biased) for encoder_y's unlabeled gradient, at checkpoints
    along training only: none where the run probed its initial parameters alone (step 0 says little about the
    gradients of training: issue 25), nor in a folder written before the probe compared with the exact gradient."""
    eff = ctx.frame(efficiency) if has_error(ctx) else pd.DataFrame()
    if not len(eff) or "mse" not in eff:
        return pd.DataFrame(columns=["estimator", "mse_x_enum", "biased"])
    e = eff[(eff.param_group == "encoder_y") & (eff.step > 0)]
    ref = e[e.estimator == "enum"].set_index(["labels", "step"])["mse"]
    rows = []
    for est, g in e.groupby("estimator", sort=False):
        r = [m / ref[(L, s)] for L, s, m in zip(g.labels, g.step, g.mse) if (L, s) in ref and ref[(L, s)] > 0]
        if r:
            rows.append({"estimator": est, "mse_x_enum": float(np.median(r)), "biased": bool(g.biased.iloc[0])})
    return pd.DataFrame(rows, columns=["estimator", "mse_x_enum", "biased"])


def decision_frame(ctx: Context) -> pd.DataFrame:
    """One row per variant (enum + aux first): the columns of the module docstring, as numbers and words."""
    _, verdicts, _ = conclusions(ctx)
    t1 = ctx.frame(table1)
    labels = sorted(int(L) for L in t1.labels.dropna().unique()) if len(t1) else []
    v = verdicts[verdicts.reference == ENUM_REF] if len(verdicts) else verdicts
    mse = _mse_multiples(ctx).set_index("estimator")
    order = [("enum", True)] + [va for va in variants(ctx.res) if va != ("enum", True)]
    rows = []
    for est, aux in order:
        name = variant_label(est, aux)
        row = {"variant": name}
        for L in labels:
            acc = t1[(t1.labels == L) & (t1.estimator == est) & (t1.aux == aux)]
            row[f"acc_{L}"] = float(acc.iloc[0]["mean"]) if len(acc) and pd.notna(acc.iloc[0]["mean"]) else np.nan
            row[f"half_{L}"] = (float(acc.iloc[0]["ci95_halfwidth"]) if len(acc) and pd.notna(acc.iloc[0]["ci95_halfwidth"])
                                else np.nan)
            hit = v[(v.labels == L) & (v.variant == name)] if len(v) else v
            if est == "enum" and aux:
                row[f"diff_{L}"], row[f"lo_{L}"], row[f"hi_{L}"], row[f"verdict_{L}"] = 0.0, np.nan, np.nan, "reference"
            elif len(hit) and int(hit.iloc[0].n) > 0:
                h = hit.iloc[0]
                row[f"diff_{L}"], row[f"lo_{L}"], row[f"hi_{L}"] = h.mean_diff, h.ci_low, h.ci_high
                # the baseline is the bar a semi-supervised variant must clear, not a candidate estimator
                row[f"verdict_{L}"] = BAR if est in BASELINES else WORDS.get(h.accuracy, h.accuracy)
            else:
                row[f"diff_{L}"] = row[f"lo_{L}"] = row[f"hi_{L}"] = np.nan
                row[f"verdict_{L}"] = "not compared"
            row[f"n_{L}"] = int(hit.iloc[0].n) if len(hit) else (int(acc.iloc[0]["n"]) if len(acc) and "n" in acc else 0)
        row["time_x_enum_aux"] = _time_multiple(ctx, est, aux, labels)
        if est in BASELINES:
            row["grad_mse_x_enum"], row["biased"] = np.nan, None
        elif est in mse.index:
            row["grad_mse_x_enum"], row["biased"] = mse.loc[est, "mse_x_enum"], bool(mse.loc[est, "biased"])
        else:  # a latent y, not probed along training here: "–", not "no latent y"
            row["grad_mse_x_enum"], row["biased"] = np.nan, False
        rows.append(row)
    return pd.DataFrame(rows)


def display(ctx: Context, d: pd.DataFrame) -> pd.DataFrame:
    """The table a reader sees: accuracy with the difference and its interval, the verdict, time, error."""
    labels = [int(c.split("_")[1]) for c in d.columns if c.startswith("acc_")]
    out = pd.DataFrame({"variant": d.variant})
    for L in labels:
        def acc(r):
            if pd.isna(r[f"acc_{L}"]):
                return "–"
            text = f"{r[f'acc_{L}']:.3f}"
            if r[f"verdict_{L}"] != "reference" and pd.notna(r[f"diff_{L}"]):
                diff = SimpleNamespace(mean_diff=r[f"diff_{L}"], ci_low=r[f"lo_{L}"], ci_high=r[f"hi_{L}"], n=r[f"n_{L}"])
                text += f" ({diff_cell(diff)})"
            return text
        out[f"{L} labels: accuracy (vs enum + aux, points [95% CI])"] = d.apply(acc, axis=1)
        out[f"{L} labels: verdict (n)"] = [f"{w} (n = {n})" if w not in ("reference", "not compared") else w
                                            for w, n in zip(d[f"verdict_{L}"], d[f"n_{L}"])]
    out[f"time per epoch × enum + aux ({epoch_time_words(ctx.res, short=True)})"] = [
        "–" if t is None or pd.isna(t) else f"{t:.2f}×" for t in d.time_x_enum_aux]
    if probed_along(d):  # else a column of dashes: the run probed its initial parameters only (or nothing)
        out["encoder_y gradient MSE × enum's"] = [
            "– (no latent y)" if b is None and pd.isna(m) else ("–" if pd.isna(m) else
                                                                 f"{m:.3g}×" + (" (biased)" if b else ""))
            for m, b in zip(d.grad_mse_x_enum, d.biased)]
    return out


def probed_along(d: pd.DataFrame) -> bool:
    """Whether any variant has a gradient multiple from checkpoints along training (not step 0 alone)."""
    return bool(len(d)) and bool(d.grad_mse_x_enum.notna().any())


def caption(ctx: Context, d: pd.DataFrame) -> str:
    epochs, stop = ctx.grid.get("epochs", "?"), early_stopping(ctx.res)
    return (f"**Which estimator?** One row per variant (n paired seeds, {'at most ' if stop else ''}{epochs} epochs, "
            f"{', '.join(protocols(ctx.res)) or 'bench'} protocol{stop}; test accuracy at the best "
            "validation epoch). The verdict against enum + aux is paired by seed; \"setting not learning\": enum + "
            "aux does not beat the supervised-only baseline there, so no verdict is drawn. Time: "
            f"{epoch_time_words(ctx.res)}. "
            + ("Gradient MSE: one draw of encoder_y's gradient on an unlabeled batch against the exact gradient, "
               "as a multiple of enum's (biased estimators are ranked by it, not by their variance), at the "
               "probe's checkpoints after step 0: \"–\" where the run probed only its initial parameters."
               if probed_along(d) else
               "No gradient column: this run probed its gradients at the initial parameters only, which say "
               "little about the gradients of training (the quick preset probes along training)."))

