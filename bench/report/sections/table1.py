"""Table 1: test accuracy at the best validation epoch, variants as rows, label counts as columns, with
Pyro's published value and our difference beside each, and the accuracy-vs-labels plot.

Each cell: the mean over the seeds that finished ± the half-width of the 95 % Student-t interval
(:func:`bench.core.stats.mean_interval`); the column header gives n, a cell with fewer seeds says its
own. Failed, diverged, corrupt, stale and missing seeds are left out of the mean and counted in
brackets. The best mean of each column is in bold. Files: ``table1.csv`` (numbers, one row per variant),
``table1_long.csv`` (one row per variant and label count), ``table1_pyro.csv`` (Pyro's table).
"""
from __future__ import annotations

from collections import Counter
from typing import Optional

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from ssvae.config import DEFAULT_RUN, sci

from ...analysis.paired_verdicts import and_list
from ...core.schema import parse_setting_id

from ..plotting import MAX_SERIES, group_palette, legend_handles, legend_right, variant_groups
from ..common import AUX_STYLE, load_pyro_table1, palette, provenance, variant_label, variants
from ..context import Context, Figure, Section, Table
from ..data import BASELINES
from ..frames import protocols, table1
from ..render import markdown_table

def _tuned_variants(tuned) -> list:
    """What a ``--tuned`` choice file set values for (env.json ``tuned.chosen``): each setting's variant as the
    tables name it, or an estimator, every setting of it (a per-estimator file)."""
    chosen = (tuned.get("chosen") if isinstance(tuned, dict) else None) or {}
    settings = [parse_setting_id(key) or {"estimator": key, "aux": False} for key in chosen]
    return sorted({variant_label(s["estimator"], s["aux"]) for s in settings})


def pyro_note(grid: dict, protocols: list, tuned: Optional[dict] = None) -> str:
    """Where Pyro's Table 1 comes from, and how this folder's setting and training loop stand to it (a run with
    ``--tuned`` names the variants that ran with the choice file's values instead of the preset's)."""
    lr, mult = grid.get("lr", DEFAULT_RUN.lr), grid.get("aux_multiplier", DEFAULT_RUN.aux_multiplier)
    same = mult == 300 and grid.get("epochs") == 100 and protocols == ["pyro"]
    loop = ("Its cells ran the `pyro` protocol, that script's loop (every loss stepped on every batch, the "
            "auxiliary loss included), at the table's setting: the comparison is a reproduction, up to the data (the "
            "training images are rebuilt from a PNG export), the labeled subsets and the seeds "
            "(docs/study-100-labels.md)." if same else
            f"Its cells ran the {', '.join(f'`{p}`' for p in protocols)} protocol"
            + (", but not at the table's setting (multiplier 300, 100 epochs)" if protocols == ["pyro"] else
               ", not that script's loop (which steps every loss on every batch, the auxiliary loss included)")
            + ", so the differences are a yardstick, not a replication.")
    return ("Pyro's values are the Table 1 of Pyro's semi-supervised VAE tutorial: mean and 95 % bound over \"five "
            "random selections of supervised data\". The table was added to the tutorial in November 2017, when its "
            "script (`ss_vae_M2.py`) defaulted to an auxiliary-loss multiplier of 300 and 100 epochs; the defaults "
            f"of today (multiplier {DEFAULT_RUN.aux_multiplier:g}, learning rate {sci(DEFAULT_RUN.lr)}, 50 epochs) "
            f"arrived in April 2018. This folder: multiplier {mult:g}, learning rate {sci(lr)}, "
            f"{grid.get('epochs', '?')} epochs{_tuned_clause(tuned)}. {loop}")


def _tuned_clause(tuned) -> str:
    names = _tuned_variants(tuned)
    return f", except the values a tuning run chose for {and_list(names)} (the Tuning section)" if names else ""


def _notes(row) -> list:
    counts = [(row.n_failed, "failed"), (row.n_diverged, "diverged"), (row.n_corrupt, "corrupt"),
              (row.n_stale, "stale"), (row.n_other, "other status"), (row.n_missing, "missing")]
    return [f"{n} {what}" for n, what in counts if n]


def _cell(row, n_header: int, best: bool) -> str:
    notes = _notes(row)
    if row.n_ok == 0:  # nothing to average: say what happened, worst first
        return " / ".join(notes) if len(notes) > 1 else (notes[0].split(" ", 1)[1] if notes else "missing")
    text = f"{row['mean']:.3f}"
    if not pd.isna(row.ci95_halfwidth):
        text += f" ± {row.ci95_halfwidth:.3f}"
    if best:
        text = f"**{text}**"
    if row.n_ok != n_header:
        text += f" (n={row.n_ok})"
    return text + (f" [{', '.join(notes)}]" if notes else "")


def header_n(t1: pd.DataFrame, labels: int) -> int:
    """The n a column's header states: the most common number of finished seeds in it."""
    counts = Counter(int(n) for n in t1.loc[t1.labels == labels, "n_ok"] if n)
    return counts.most_common(1)[0][0] if counts else 0


def display(t1: pd.DataFrame, res) -> pd.DataFrame:
    """Variants as rows; per label count: ours (n in the header), Pyro's, ours − Pyro's."""
    labels = sorted(t1["labels"].unique()) if len(t1) else []
    rows = {variant_label(e, a): {"variant": variant_label(e, a)} for e, a in variants(res)}
    for l in labels:
        col = t1[t1.labels == l].set_index("variant")
        n = header_n(t1, l)
        best = col["mean"].dropna().max() if col["mean"].notna().any() else None
        has_pyro = col["pyro_mean"].notna().any()
        for v, row in rows.items():
            if v not in col.index:
                row[f"{l} labels (n={n})"] = "–"
            else:
                r = col.loc[v]
                row[f"{l} labels (n={n})"] = _cell(r, n, best is not None and r["mean"] == best)
            if has_pyro:
                p = col.loc[v, "pyro_mean"] if v in col.index else None
                d = col.loc[v, "diff_vs_pyro"] if v in col.index else None
                row[f"Pyro {l}"] = "–" if p is None or pd.isna(p) else f"{p:.3f}"
                row[f"ours − Pyro {l}"] = "–" if d is None or pd.isna(d) else f"{d:+.3f}"
    return pd.DataFrame(list(rows.values()))


def numeric(t1: pd.DataFrame, res) -> pd.DataFrame:
    """table1.csv: one row per variant; per label count L: mean_L, ci95_L, n_L, pyro_L, diff_L."""
    out = []
    for e, a in variants(res):
        row = {"variant": variant_label(e, a), "estimator": e, "aux": a}
        for l in sorted(t1["labels"].unique()) if len(t1) else []:
            sub = t1[(t1.labels == l) & (t1.estimator == e) & (t1.aux == a)]
            r = sub.iloc[0] if len(sub) else None
            for key, col in (("mean", "mean"), ("ci95", "ci95_halfwidth"), ("n", "n_ok"), ("pyro", "pyro_mean"),
                             ("diff", "diff_vs_pyro")):
                row[f"{key}_L{l}"] = None if r is None else r[col]
        out.append(row)
    return pd.DataFrame(out)


def pyro_display() -> pd.DataFrame:
    ref = load_pyro_table1()
    labels = sorted(ref["labels"].unique())
    rows = []
    for (est, aux, name), sub in ref.groupby(["estimator", "aux", "pyro_variant"], sort=False):
        sub = sub.set_index("labels")
        rows.append({"variant": f"{variant_label(est, aux)} ({name})",
                     **{f"{l} labels": f"{sub.loc[l, 'mean']:.3f} ± {sub.loc[l, 'bound']:.3f}" for l in labels}})
    return pd.DataFrame(rows)


def plot(ctx: Context, t1: pd.DataFrame):
    """Two panels, without and with the auxiliary loss (the supervised baseline in both, for reference)."""
    res = ctx.res
    d = t1.dropna(subset=["mean"])
    if not len(d):
        return None
    labels_all = sorted(t1.labels.unique())
    ok = res.runs[res.runs.status == "ok"]
    ref = load_pyro_table1()
    ref = ref[ref.labels.isin(labels_all)]
    panels = [(False, "without the auxiliary loss"), (True, "with the auxiliary loss")]
    panels = [(a, name) for a, name in panels if any(x == a for e, x in variants(res) if e not in BASELINES)] or panels[:1]
    every = variants(res)
    per_panel = max(sum(1 for e, a in every if a == aux or e in BASELINES) for aux, _ in panels)
    groups = variant_groups(every, limit=0 if per_panel > MAX_SERIES else len(every), by_aux=False)
    pals = group_palette(res, groups)
    fig, axes = plt.subplots(len(groups), len(panels), figsize=(5.2 * len(panels) + 2.2, 4.8 if len(groups) == 1
                             else 3.4 * len(groups)), sharey=True, squeeze=False, layout="constrained")
    for row, (group, in_row), pal in zip(axes, groups, pals):
        pairs = []
        for ax, (aux_panel, name) in zip(row, panels):
            _draw_panel(ax, [(e, a) for e, a in in_row if a == aux_panel or e in BASELINES], d, ok, ref, pal, pairs)
            ax.set_xscale("log")
            ax.set_xticks(labels_all, [str(l) for l in labels_all])
            ax.minorticks_off()
            ax.set_title(name + (f" · {group}" if group else ""), fontsize=10)
            ax.set_xlabel("labeled training images (log scale)")
        handles = legend_handles(pal, pairs)
        handles.append(Line2D([], [], color="0.4", marker="o", markersize=3.5, linestyle="", label="one seed"))
        handles.append(Line2D([], [], color="0.4", marker="x", linestyle="", label="Pyro tutorial Table 1"))
        legend_right(row[-1], handles)
        row[0].set_ylabel("test accuracy at best validation epoch")
    axes[0][0].set_ylim(0, 1.02)
    return ctx.save_figure(fig, "accuracy_vs_labels",
                           "Test accuracy vs label count (mean, 95% t-interval clipped to [0, 1], seeds as dots)")


def _draw_panel(ax, shown, d, ok, ref, pal, pairs) -> None:
    """One panel of the accuracy-vs-labels figure: each variant's mean and interval, its seeds, Pyro's value."""
    for i, (est, aux) in enumerate(shown):
        sub = d[(d.estimator == est) & (d.aux == aux)].sort_values("labels")
        if not len(sub):
            continue
        if (est, aux) not in pairs:
            pairs.append((est, aux))
        jitter = 1 + 0.03 * (i - (len(shown) - 1) / 2)  # spread the variants (log x axis)
        hw = sub.ci95_halfwidth.fillna(0).to_numpy(dtype=float)
        mean = sub["mean"].to_numpy(dtype=float)
        # an accuracy lies in [0, 1]: a wide t-interval (2 seeds: t = 12.7) is drawn clipped to it
        yerr = [np.minimum(hw, mean), np.minimum(hw, 1 - mean)]
        ax.errorbar(sub.labels * jitter, mean, yerr=yerr, color=pal[est], capsize=3, markersize=5,
                    elinewidth=1, alpha=0.9, **AUX_STYLE[aux])
        seeds = ok[(ok.estimator == est) & (ok.aux == aux)].dropna(subset=["test_acc_at_best_valid"])
        ax.scatter(seeds.labels * jitter, seeds.test_acc_at_best_valid, s=14, color=pal[est], alpha=0.6,
                   edgecolor="white", linewidth=0.4, zorder=3)
        theirs = ref[(ref.estimator == est) & (ref.aux == aux)]
        ax.scatter(theirs.labels, theirs["mean"], marker="x", color=pal[est], s=45, alpha=0.8, zorder=1)


def build(ctx: Context) -> Section:
    res, grid = ctx.res, ctx.grid
    t1 = ctx.frame(table1)
    shown = display(t1, res)
    pyro = pyro_display()
    note = pyro_note(grid, protocols(res), ctx.env.get("tuned"))
    ctx.write_table(t1, "table1_long", "Table 1 (long form): test accuracy at best validation epoch")
    ctx.write_table(numeric(t1, res), "table1", "Table 1: test accuracy at best validation epoch, per variant")
    ctx.write_table(pyro, "table1_pyro", "Pyro tutorial Table 1: mean ± 95% bound")
    ctx.write_text("table1.md", f"**Table 1: test accuracy at the best validation epoch, mean ± 95% t-interval "
                                f"half-width over seeds (best per column in bold)**\n\n{markdown_table(shown)}\n"
                                f"**Pyro tutorial Table 1 (mean ± 95% bound)**\n\n{markdown_table(pyro)}\n{note}\n\n"
                                f"_{provenance(ctx.env)}_\n")
    sec = Section("table-1", "Table 1: test accuracy", text=[
        "Rows: estimator variants (`+ aux`: with the auxiliary classification loss); columns: labeled images, "
        "n = seeds that finished. Each cell: mean test accuracy at the epoch of best validation accuracy ± the "
        "half-width of the 95% Student-t interval over seeds (one seed: no interval); the best mean of each "
        "column in bold. Failed, diverged and corrupt cells are left out of the mean and counted in brackets; "
        "absent cells are counted as missing. Beside each column: Pyro's published value and ours minus it, "
        f"where Pyro has the variant. This run: {grid.get('epochs', '?')} epochs, "
        f"{len(grid.get('seeds', []))} seed(s)."],
        tables=[Table("Test accuracy, mean ± 95% half-width (best per column in bold)", shown, "table1",
                      ["table1.csv", "table1_long.csv"])])
    fig = plot(ctx, t1) if ctx.plots else None
    if fig:
        sec.figures.append(Figure(fig, "Mean test accuracy per variant against the number of labels (log scale), "
                                       "with the 95% t-interval (clipped to [0, 1]), each seed as a dot and "
                                       "Pyro's Table 1 as crosses."))
    sec.notes += [note]
    sec.tables.append(Table("Pyro tutorial, Table 1 (mean ± 95% bound)", pyro, "table1_pyro"))
    return sec

