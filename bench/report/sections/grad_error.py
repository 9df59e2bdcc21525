"""Gradient error relative to enum, as a heatmap: one row per variant, one column per (parameter group,
label count) on the unlabeled step, colour = log10 of the estimator's error over enum's.

The error shown is the mean squared error against the exact gradient (variance plus squared bias,
so a relaxation's bias counts) relative to enum's, where grad_variance.csv has it (the newer probe:
:data:`METRIC`); in older folders it is the gradient *variance* relative to enum's (:data:`FALLBACK`),
which measures noise, not bias. Either way the median over the common checkpoints of the
per-checkpoint ratio (:func:`bench.report.frames.grad_variance`); the page says which.
File: ``grad_error_vs_enum.csv``.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..common import variant_label, variants
from ..context import Context, Figure, Section, Table
from ..frames import grad_variance

#: (column of the median table, frames.grad_variance()[1], relative to enum: enum = 1; words for the page)
METRIC = ("median_mse_ratio_to_enum", "gradient MSE against the exact gradient relative to enum's")
#: what the heatmap shows when the folder has no MSE column
FALLBACK = ("median_ratio_to_enum", "gradient variance relative to enum's")
GROUP_ORDER = ("encoder_y", "encoder_z", "decoder")


def metric(ctx: Context):
    """(column, words): the MSE ratio where the folder has it, else the variance ratio."""
    _, med = ctx.frame(grad_variance)
    return METRIC if METRIC[0] in med else FALLBACK


def matrix(ctx: Context) -> pd.DataFrame:
    """Long: variant, step_kind, labels, param_group, relative error; the unlabeled step where measured."""
    _, med = ctx.frame(grad_variance)
    column = metric(ctx)[0]
    cols = ["variant", "step_kind", "labels", "param_group", column]
    if not len(med) or column not in med:
        return pd.DataFrame(columns=cols)
    kind = "unsup" if (med.step_kind == "unsup").any() else sorted(set(med.step_kind))[0]
    m = med[med.step_kind == kind]
    order = {variant_label(e, a): i for i, (e, a) in enumerate(variants(ctx.res))}
    g = {p: i for i, p in enumerate(GROUP_ORDER)}
    m = m.assign(_v=m.variant.map(lambda v: order.get(v, len(order))),
                 _g=m.param_group.map(lambda p: g.get(p, len(g))))
    return m.sort_values(["_v", "labels", "_g", "param_group"])[cols].reset_index(drop=True)


def plot(ctx: Context, m: pd.DataFrame):
    column, words = metric(ctx)
    m = m.assign(column=[f"{p}\n{l} labels" for p, l in zip(m.param_group, m.labels)])
    columns = list(dict.fromkeys(m.sort_values(["labels"], kind="stable").column))
    rows = list(dict.fromkeys(m.variant))
    grid = m.pivot_table(index="variant", columns="column", values=column, aggfunc="first").reindex(index=rows,
                                                                                                   columns=columns)
    logs = np.log10(grid.astype(float).clip(lower=1e-12))
    notes = grid.map(lambda v: "–" if pd.isna(v) else (f"×{v:.2g}" if v < 100 else f"×{v:,.0f}"))
    fig, ax = plt.subplots(figsize=(1.15 * len(columns) + 3.5, 0.42 * len(rows) + 1.8), layout="constrained")
    lim = max(1.0, float(np.nanmax(np.abs(logs.to_numpy()))) if np.isfinite(logs.to_numpy()).any() else 1.0)
    sns.heatmap(logs, ax=ax, cmap="vlag", center=0, vmin=-lim, vmax=lim, annot=notes, fmt="", linewidths=0.5,
                annot_kws={"fontsize": 7.5}, cbar_kws={"label": f"log10 of {words}"})
    ax.set_xlabel(f"parameter group · label count ({m.step_kind.iloc[0]} step)")
    ax.set_ylabel("")
    ax.tick_params(axis="x", labelrotation=0, labelsize=8)
    return ctx.save_figure(fig, "grad_error_vs_enum", f"Gradient error relative to enum: {words}")


def build(ctx: Context) -> Section:
    m = matrix(ctx)
    column, words = metric(ctx)
    ctx.write_table(m, "grad_error_vs_enum", f"Gradient error relative to enum ({words}), unlabeled step")
    sec = Section("grad-error", "Gradient error relative to enum")
    if not len(m):
        sec.text.append("No common-checkpoint gradient measurements in this folder.")
        return sec
    sec.text.append(f"Each estimator's {words} at the common checkpoints (median over checkpoints and "
                    f"seeds), on the {m.step_kind.iloc[0]} step, per parameter group and label count. Blue: less "
                    "than enum's, red: more; enum is 1 by construction. "
                    + ("The MSE is the error of one draw against the exact (enumerated) gradient: variance plus "
                       "squared bias, so a relaxation's bias counts. " if column == METRIC[0] else
                       "This folder's grad_variance.csv has no MSE against the exact gradient (written before the "
                       "probe measured it), so the heatmap shows the variance: noise only, a relaxation's bias does "
                       "not show here. ") + "Numbers: `tables/grad_error_vs_enum.csv`.")
    if ctx.plots:
        fig = plot(ctx, m)
        sec.figures.append(Figure(fig, f"Heatmap of {words} (log colour scale, annotated with the ratio): "
                                       "one row per variant, one column per parameter group and label count."))
    else:
        sec.tables.append(Table(f"{words} (unlabeled step)", m, "grad_error_vs_enum"))
    return sec
