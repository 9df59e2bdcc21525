"""Gradient variance at the common checkpoints: every estimator measured at the same parameters
(checkpoints of an enum + aux run of the same label count and seed). Files: ``grad_variance.csv``
(median over checkpoints and seeds), ``grad_variance_wide.csv`` (the table shown),
``grad_variance_by_checkpoint.csv`` (every checkpoint).
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from ..plotting import legend_handles, legend_right, readable_palette
from ..common import AUX_STYLE, estimator_order, fmt_sig, variant_label, variants
from ..context import Context, Figure, Section, Table
from ..frames import grad_variance


def display(med: pd.DataFrame, res) -> pd.DataFrame:
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
            row[v] = (f"{fmt_sig(b.median_variance)} (×{fmt_sig(b.median_ratio_to_enum)}) / "
                      f"{fmt_sig(b.median_snr)}")
        rows.append(row)
    return pd.DataFrame(rows)


def _probe_variants(res, per: pd.DataFrame) -> dict:
    """variant name in the probe -> (estimator, aux), in report order: the probe names a variant by its
    estimator (and ``+ aux``), whether or not the run grid trained that variant."""
    names = list(dict.fromkeys(per.variant))
    known = {variant_label(e, a): (e, a) for e, a in variants(res)}
    parsed = {v: known.get(v, (v[:-len(" + aux")], True) if v.endswith(" + aux") else (v, False)) for v in names}
    rank = {e: i for i, e in enumerate(estimator_order(res))}
    return dict(sorted(parsed.items(), key=lambda kv: (rank.get(kv[1][0], len(rank)), kv[1][1], kv[0])))


def plot(ctx: Context, per: pd.DataFrame):
    res = ctx.res
    pal, marks = readable_palette(res)
    kinds = [k for k in ("unsup", "sup") if k in set(per.step_kind)]
    groups = [g for g in ("encoder_y", "encoder_z", "decoder") if g in set(per.param_group)]
    groups += sorted(set(per.param_group) - set(groups))
    rows = [(l, k) for k in kinds for l in sorted(per.labels.unique())]
    fig, axes = plt.subplots(len(rows), len(groups), figsize=(3.8 * len(groups) + 2, 2.9 * len(rows)),
                             squeeze=False, sharex=True, layout="constrained")
    order = _probe_variants(res, per)
    steps = sorted(per.step.dropna().unique())
    # one checkpoint: a line over steps would be one point on a bare axis; draw the variants side by side
    single = len(steps) == 1
    pairs = []
    for i, (l, k) in enumerate(rows):
        for j, grp in enumerate(groups):
            ax = axes[i][j]
            sub = per[(per.labels == l) & (per.step_kind == k) & (per.param_group == grp)]
            if not len(sub):  # e.g. encoder_y gets no gradient from a labeled batch without aux
                ax.text(0.5, 0.5, f"{grp} · {k} step · {l} labels:\nno gradient measured\n(group not used by "
                        "this step)", ha="center", va="center", transform=ax.transAxes, fontsize=8, color="0.4")
                ax.axis("off")
                continue
            for var, (est, aux) in order.items():
                s = sub[sub.variant == var]
                if not len(s):
                    continue
                if (est, aux) not in pairs:
                    pairs.append((est, aux))
                agg = s.groupby("step")["variance"].median()
                style = {**AUX_STYLE[aux], **({"marker": marks[est]} if est in marks else {})}
                x = [list(order).index(var)] if single else agg.index
                ax.plot(x, agg.values, color=pal.get(est, "0.4"), markersize=6 if single else 4,
                        **({**style, "linestyle": "none"} if single else style))
            if len(sub):
                ax.set_yscale("log")
            ax.set_title(f"{grp} · {k} step · {l} labels", fontsize=9)
            if single:
                ax.set_xticks(range(len(order)), list(order), rotation=60, ha="right")  # shown on the bottom row
                ax.set_xlim(-0.6, len(order) - 0.4)
            if i == len(rows) - 1:
                ax.set_xlabel(f"estimator (the one checkpoint: step {int(steps[0])})" if single
                              else "training step of checkpoint")
            if j == 0:
                ax.set_ylabel("gradient variance\n(mean per coordinate, log)")
    legend_right(axes[0][-1], legend_handles(pal, pairs, marks))
    return ctx.save_figure(fig, "grad_variance", "Gradient variance at common checkpoints (median over seeds)")


def build(ctx: Context) -> Section:
    res = ctx.res
    per, med = ctx.frame(grad_variance)
    shown = display(med, res)
    ctx.write_table(per, "grad_variance_by_checkpoint", "Gradient variance at each common checkpoint")
    ctx.write_table(med, "grad_variance", "Gradient variance: median over common checkpoints and seeds")
    ctx.write_table(shown, "grad_variance_wide",
                    "Gradient variance (ratio to enum) / SNR: median over common checkpoints and seeds")
    sec = Section("variance", "Gradient variance")
    if not len(med):
        sec.text.append("No common-checkpoint rows in grad_variance.csv.")
        return sec
    steps = sorted(set(res.grad.loc[res.grad.trajectory == "common", "step"].dropna().astype(int)))
    sec.text.append(
        "Every estimator measured at the same parameters: checkpoints of an enum + aux run of the same label "
        f"count and seed (steps {', '.join(map(str, steps))}). Variance: mean over coordinates of the "
        "per-coordinate variance of the gradient estimate; SNR: mean squared gradient over variance. "
        "The table gives the **median over checkpoints and seeds**; the ratio to enum is computed at each "
        "checkpoint first, then its median taken. Each cell reads `variance (×ratio to enum) / SNR`.")
    sec.tables.append(Table("Gradient variance (×: ratio to enum's) / SNR, median over common checkpoints and seeds",
                            shown, "grad_variance_wide",
                            ["grad_variance_wide.csv", "grad_variance.csv", "grad_variance_by_checkpoint.csv"]))
    if ctx.plots:
        fig = plot(ctx, per)
        sec.figures.append(Figure(fig, "Gradient variance (log) at each common checkpoint, per parameter group, "
                                       "step kind and label count; median over seeds."))
    return sec
