"""Gradient error against the exact gradient: estimators ranked by their MSE (variance plus squared bias,
per coordinate, one draw) at the last common checkpoint, and by the work-normalised MSE (MSE x seconds per
unlabeled step of the timing probe: :data:`bench.analysis.diagnostics.EFFICIENCY`), biased estimators marked,
with the log-log plot of MSE against seconds per step (:func:`bench.analysis.diagnostics.plot_efficiency`).

It also checks the trained baselines: at every common checkpoint after step 0, each estimator with a
stateful baseline (``Estimator.stateful``: trace-avg, trace-bx, nvil) against trace at the same parameters
(:func:`baseline_check`). The summary quotes both (:func:`summary_lines`).

Needs grad_variance.csv's error columns (``mse``, ``bias_sq``, ``cosine`` and their ``_lo``/``_hi``
intervals), written by the newer gradient probe; an older folder gets one line saying so.
Files: ``grad_mse.csv`` (every group and step kind's statistics), ``grad_efficiency.csv``,
``grad_ranking.csv``, ``grad_baselines.csv``; plots ``grad_efficiency_L<labels>.png``.
"""
from __future__ import annotations

from typing import List

import numpy as np
import pandas as pd

from ssvae.estimators import REGISTRY

from ...analysis.diagnostics import (EFFICIENCY, EFFICIENCY_LABEL, efficiency_table, is_biased, label, mse_table,
                            plot_efficiency, ranking, trajectory_ratios)
from ..common import fmt_sig, rank_label_counts
from ..context import Context, Figure, Section, Table
from ..frames import this_timing

GROUP = "encoder_y"
#: what an estimator with a trained baseline is checked against: the same score function without one
AGAINST = "trace"
#: the exact sum over y with one z draw per label: it has no y noise, so its error is z noise, and an
#: enumeration that averages k z draws (enum-k10: the registry's family and ``k``) says how much averaging removes
EXACT_Y = "enum"


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


def efficiency(res) -> pd.DataFrame:
    """The unlabeled step's MSE table with seconds per step and the work-normalised MSE (NaN without a
    timing table): :func:`bench.analysis.diagnostics.efficiency_table`."""
    timing = this_timing(res)
    eff = efficiency_table(res.grad, timing) if len(timing) else mse_table(res.grad).assign(seconds_per_step=np.nan)
    if EFFICIENCY not in eff:
        eff = eff.assign(**{EFFICIENCY: np.nan, "rank_efficiency": pd.NA})
    return eff


def baseline_check(res) -> pd.DataFrame:
    """Per (labels, estimator with a stateful baseline): its encoder_y error on the unlabeled step over
    trace's at the same common checkpoint (same labels, seed and step), at every checkpoint after step 0
    (where the baselines have been trained along the trajectory): how many checkpoints, at how many it is
    at most trace's, the median and the largest ratio. The error is the variance for an unbiased
    estimator and the MSE for a biased one (``stat``; nvil's normalisation rescales its gradient, so its
    variance alone would flatter it)."""
    cols = ["labels", "estimator", "stat", "against", "checkpoints", "seeds", "at_most_against", "median_ratio",
            "max_ratio"]
    g = res.grad
    stateful = [e for e in dict.fromkeys(g.estimator) if e in REGISTRY and REGISTRY[e].stateful] if len(g) else []
    if not stateful or not (g.estimator == AGAINST).any():
        return pd.DataFrame(columns=cols)
    parts = []
    for est in stateful:
        stat = "mse" if is_biased(est) else "variance"
        r = trajectory_ratios(g[g.step > 0], [est], against=AGAINST, stat=stat)
        if len(r):
            parts.append(r.assign(stat=stat))
    if not parts:
        return pd.DataFrame(columns=cols)
    r = pd.concat(parts, ignore_index=True)
    out = r.groupby(["labels", "estimator", "stat"], sort=False).agg(
        checkpoints=("ratio", "size"), seeds=("seed", "nunique"), at_most_against=("ratio", lambda x: int((x <= 1).sum())),
        median_ratio=("ratio", "median"), max_ratio=("ratio", "max")).reset_index()
    out.insert(3, "against", AGAINST)
    return out.sort_values(["labels", "estimator"], ascending=[False, True]).reset_index(drop=True)[cols]


def _num(x: float) -> str:
    """Two significant digits, without an exponent for the magnitudes the summary shows."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2g}"


def summary_lines(ctx: Context) -> List[str]:
    """The summary's gradient lines at 3000 labels (else the largest count): the MSE order with the
    relaxations' place in it, the work-normalised order, and the trained baselines against trace. A run that
    probed only step 0 gets none (issue 25: no summary line from the initial parameters; its numbers stay in the
    report's gradient section)."""
    if not has_error(ctx):
        return []
    eff = ctx.frame(efficiency)
    eff = eff[eff.param_group == GROUP]
    choice = rank_label_counts(eff.labels)
    if not choice:
        return []
    labels, chosen = choice[0]
    d = eff[eff.labels == labels].sort_values(["rank_mse", "estimator"])
    n, steps = sorted(set(int(x) for x in d.n_seeds)), sorted(set(int(x) for x in d.step))
    draws = sorted(set(int(x) for x in ctx.res.grad.n_samples.dropna())) if "n_samples" in ctx.res.grad else []
    if steps == [0]:  # the initial parameters only: no summary line about the gradients of training
        return []
    head = (f"Gradient error at {chosen}, {GROUP}, unlabeled step, at the last checkpoint of the common trajectory "
            f"(step {', '.join(map(str, steps))}; mean over n = {', '.join(map(str, n))} seed{'s' if n != [1] else ''}"
            + (f", {', '.join(map(str, draws))} draws" if draws else "") + ")")
    best = d.iloc[0]
    top = ", ".join(f"{label(r.estimator)} {_num(r.mse)}" for r in d.head(3).itertuples())
    text = f"{head}: lowest MSE against the exact gradient {top}"
    g = ctx.res.grad
    if "ref_sq" in g:  # the exact gradient's own mean square: the MSE of always answering zero
        ref = g[(g.trajectory == "common") & (g.labels == labels) & (g.param_group == GROUP) & (g.step_kind == "unsup")
                & g.step.isin(steps)]["ref_sq"].mean()
        if pd.notna(ref):
            text += f" (the exact gradient's own mean square, the MSE of a zero gradient: {_num(ref)})"
    biased = d[d.estimator.map(is_biased) & (d.rank_mse > 3)]
    if len(biased):
        text += "; " + ", ".join(f"{label(r.estimator)} {_num(r.mse)} (rank {int(r.rank_mse)} of {len(d)}, "
                                 f"{_num(r.mse / best.mse)}× {best.estimator}'s)" for r in biased.itertuples())
    text += z_noise(d, ctx.grid.get("options") or {})
    w = d.dropna(subset=[EFFICIENCY]).sort_values([EFFICIENCY, "estimator"])
    if len(w):
        text += ("; lowest work-normalised MSE (MSE × seconds per unlabeled step, timing probe) "
                 + ", ".join(label(e) for e in w.estimator.head(3)))
        untimed = sorted(set(d.estimator) - set(w.estimator))
        if untimed:
            text += (f" ({', '.join(map(label, untimed))}: no time per step measured alone on the machine of the "
                     "others' probes, so not in that order)")
    lines = [text + "."]
    b = ctx.frame(baseline_check)
    b = b[b.labels == labels]
    if len(b):
        parts = [f"{r.estimator}{' (biased: MSE)' if r.stat == 'mse' else ''} at {r.at_most_against} of "
                 f"{r.checkpoints} (median {_num(r.median_ratio)}×, largest {_num(r.max_ratio)}×)" for r in b.itertuples()]
        held = (b.at_most_against == b.checkpoints).all()
        lines.append(f"Trained baselines at {chosen}, {GROUP} variance (MSE for a biased estimator) on the unlabeled "
                     f"step against {AGAINST}'s at the same common checkpoints after step 0 (seeds × checkpoints): "
                     f"at most {AGAINST}'s for "
                     + "; ".join(parts) + ("." if held else
                                           " — not at every checkpoint: see the Gradient error section."))
    return lines


def z_noise(d: pd.DataFrame, options: dict) -> str:
    """Where enum and an enumeration averaging k z draws (enum-k10) were both probed: the latter's MSE against
    enum's (enum sums y out exactly, so its error is z noise), and the unbiased estimators below enum, whose lead
    is then less z noise, not a better gradient through y."""
    mse = dict(zip(d.estimator, d.mse))
    one = EXACT_Y
    averaged = [e for e in mse if e in REGISTRY and REGISTRY[e].family == REGISTRY[one].family
                and REGISTRY[e].defaults.get("k", 1) > 1]
    if one not in mse or not averaged or not mse[one] > 0:
        return ""
    many = averaged[0]
    k = (options.get(many) or {}).get("k", REGISTRY[many].defaults["k"])  # the run's k (the smoke preset's is 2)
    text = (f"; {many} (the same exact sum over y, averaged over {k} z draws per label) {_num(mse[many])}, "
            f"{_num(mse[many] / mse[one])}× {one}'s ({one} sums y out exactly: its error is z noise, which the "
            f"{k} draws average)")
    below = [e for e in d.estimator if e not in (one, many) and not is_biased(e) and mse[e] < mse[one]]
    if below:
        who = f"{below[0]}'s" if len(below) == 1 else f"the {', '.join(below)}"
        text += (f", so {who} lower MSE than {one}'s is less z noise, not a better gradient through y "
                 f"({one}'s is exact)")
    return text


def build(ctx: Context) -> Section:
    sec = Section("grad-mse", "Gradient error against the exact gradient")
    if not has_error(ctx):
        sec.text.append("No gradient error in this folder: its grad_variance.csv has no `mse` column (written "
                        "before the gradient probe compared each estimator with the exact gradient).")
        return sec
    grad, timing = ctx.res.grad, this_timing(ctx.res)
    stats = pd.concat([mse_table(grad, step_kind=k) for k in ("unsup", "sup")], keys=["unsup", "sup"],
                      names=["step_kind", None]).reset_index(level=0).reset_index(drop=True)
    eff = ctx.frame(efficiency)
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
        f"slow must halve its error to tie. Biased estimators are marked (the relaxations, and nvil, whose variance "
        f"normalisation rescales encoder_y's gradient): their bias does not shrink with more "
        f"draws. Rows: {GROUP}; every parameter group in `tables/grad_efficiency.csv`.")
    if not len(timing):
        sec.text.append("No timing.csv in this folder: no work-normalised ranking.")
    base = ctx.frame(baseline_check)
    ctx.write_table(base, "grad_baselines", f"Trained baselines: {GROUP} variance (`stat`: MSE for a biased "
                                            f"estimator) on the unlabeled step over {AGAINST}'s at the same common "
                                            f"checkpoints after step 0")
    if len(base):
        sec.text.append(
            f"**Trained baselines.** Along the common trajectory trace-avg's average, trace-bx's b(x) and nvil's C(x) "
            f"and statistics are trained on its batches without changing it; at each checkpoint after step 0 their "
            f"{GROUP} variance (MSE for a biased estimator: `stat`) on the unlabeled step is compared with "
            f"{AGAINST}'s at the same parameters (ratio: "
            f"theirs over {AGAINST}'s; a ratio at most 1 is a checkpoint where the baseline helped).")
        sec.tables.append(Table("Trained baselines against trace", base.assign(
            median_ratio=base.median_ratio.map(fmt_sig), max_ratio=base.max_ratio.map(fmt_sig)), "grad_baselines"))
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
                                                "hollow: biased; dotted: equal MSE × seconds."))
    return sec
