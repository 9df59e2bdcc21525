"""Gradient error against the exact gradient: estimators ranked by their MSE (variance plus squared bias,
per coordinate, one draw) at the last common checkpoint, and by the work-normalised MSE (MSE x seconds per
unlabeled step of the timing probe: :data:`bench.diagnostics.EFFICIENCY`), relaxations marked biased,
with the log-log plot of MSE against seconds per step (:func:`bench.diagnostics.plot_efficiency`).

Needs grad_variance.csv's error columns (``mse``, ``bias_sq``, ``cosine`` and their ``_lo``/``_hi``
intervals), written by the newer gradient probe; an older folder gets one line saying so.
Files: ``grad_mse.csv`` (every group and step kind's statistics), ``grad_efficiency.csv``,
``grad_ranking.csv``; plots ``grad_efficiency_L<labels>.png``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ...diagnostics import EFFICIENCY, EFFICIENCY_LABEL, efficiency_table, label, mse_table, plot_efficiency, ranking
from ..common import fmt_sig
from ..context import Context, Figure, Section, Table
from ..frames import this_timing

GROUP = "encoder_y"


def has_error(ctx: Context) -> bool:
    g = ctx.res.grad
    return len(g) > 0 and "mse" in g and g["mse"].notna().any() and (g.trajectory == "common").any()


def _iv(r, stat: str) -> str:
    v, lo, hi = (getattr(r, stat, np.nan), getattr(r, f"{stat}_lo", np.nan), getattr(r, f"{stat}_hi", np.nan))
    if pd.isna(v):
        return "–"
    return fmt_sig(v) + (f" [{fmt_sig(lo)}, {fmt_sig(hi)}]" if not (pd.isna(lo) or pd.isna(hi)) else "")


def display(eff: pd.DataFrame, labels: int) -> pd.DataFrame:
    d = eff[(eff.labels == labels) & (eff.param_group == GROUP)].sort_values(["rank_mse", "estimator"])
    rank = lambda x: "–" if pd.isna(x) else str(int(x))
    return pd.DataFrame([{
        "rank (MSE)": rank(r.rank_mse), "rank (work)": rank(r.rank_efficiency), "estimator": label(r.estimator),
        "seeds": str(r.n_seeds), "MSE [95 %]": _iv(r, "mse"), "bias²": _iv(r, "bias_sq"),
        "variance": _iv(r, "variance"), "cosine": _iv(r, "cosine"),
        "s / unlabeled step": fmt_sig(r.seconds_per_step), "MSE × s [95 %]": _iv(r, EFFICIENCY)}
        for r in d.itertuples()])


def build(ctx: Context) -> Section:
    sec = Section("grad-mse", "Gradient error against the exact gradient")
    if not has_error(ctx):
        sec.text.append("No gradient error in this folder: its grad_variance.csv has no `mse` column (written "
                        "before the gradient probe compared each estimator with the exact gradient).")
        return sec
    grad, timing = ctx.res.grad, this_timing(ctx.res)
    stats = pd.concat([mse_table(grad, step_kind=k) for k in ("unsup", "sup")], keys=["unsup", "sup"],
                      names=["step_kind", None]).reset_index(level=0).reset_index(drop=True)
    eff = efficiency_table(grad, timing) if len(timing) else mse_table(grad).assign(seconds_per_step=np.nan)
    if EFFICIENCY not in eff:
        eff = eff.assign(**{EFFICIENCY: np.nan, "rank_efficiency": pd.NA})
    ranks = pd.concat([ranking(eff, "mse"), ranking(eff, EFFICIENCY)], ignore_index=True)
    ranks = ranks.sort_values(["labels", "param_group", "by"], kind="stable").reset_index(drop=True)
    ctx.write_table(stats, "grad_mse", "Gradient error against the exact gradient at the last common checkpoint, "
                                       "mean over seeds (per coordinate)")
    ctx.write_table(eff, "grad_efficiency", f"Unlabeled step: MSE and {EFFICIENCY_LABEL}, ranked")
    ctx.write_table(ranks, "grad_ranking", "Estimators in order of MSE and of work-normalised MSE (lower first)")
    step = int(eff.step.max()) if len(eff) else 0
    sec.text.append(
        "Every estimator at the parameters of the same enum + aux run (the common trajectory), at its last "
        f"checkpoint (step {step}), on the unlabeled step: the mean squared error of one gradient draw against the "
        "exact gradient, per coordinate, split into squared bias and variance, with the cosine of the mean "
        "gradient with the exact one; brackets: 95 % bootstrap intervals over the draws (mean over seeds). "
        f"**Work-normalised MSE** = MSE × seconds per unlabeled step (timing probe, median): an estimator twice as "
        f"slow must halve its error to tie. Relaxations are marked biased: their bias does not shrink with more "
        f"draws. Rows: {GROUP}; every parameter group in `tables/grad_efficiency.csv`.")
    if not len(timing):
        sec.text.append("No timing.csv in this folder: no work-normalised ranking.")
    shown = ranks[ranks.param_group == GROUP].assign(by=lambda d: d.by.map({"mse": "MSE", EFFICIENCY: "MSE × s"}))
    sec.tables.append(Table(f"Order ({GROUP}, lower first)", shown[["labels", "by", "order"]], "grad_ranking"))
    for labels in sorted(set(eff.labels), reverse=True):
        sec.tables.append(Table(f"{labels} labels, {GROUP}, unlabeled step", display(eff, labels),
                                f"grad_efficiency-{labels}", ["grad_efficiency.csv", "grad_mse.csv"]))
        if ctx.plots and len(timing):
            path = plot_efficiency(eff, ctx.plots_dir / f"grad_efficiency_L{labels}.png", labels, GROUP)
            if ctx.adopt_png(path, f"Gradient MSE against time per step, {labels} labels"):
                sec.figures.append(Figure(path, f"MSE of one {GROUP} gradient draw (log) against seconds per "
                                                f"unlabeled step (log), {labels} labels, with the MSE's 95 % interval; "
                                                "hollow: biased (relaxation); dotted: equal MSE × seconds."))
    return sec
