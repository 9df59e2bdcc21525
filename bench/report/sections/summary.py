"""Summary: the lines a reader takes away, each computed from the report's tables, caveats included.
They are written to ``tables/summary.md``, which the README quotes (a test holds the two equal), and
``tables/run_cost.md`` says what the run cost (the README's "how long").

1. the headline verdict in one sentence: the paired verdict (Headline and Paired differences sections);
2. elsewhere: the other label count with the auxiliary loss, and enum + aux against the supervised baseline;
   then the headline setting against the clock (a fixed budget of seconds, the time to a validation target);
3. the caveats: n, epochs, protocol, cells still improving at their last epoch;
4. the cost of enumeration per step (timing probe) and Pyro's overhead over the hand-written step;
5. gradient error against the exact gradient, and the trained baselines against trace (Gradient error
   section), where the folder has the probe's error columns.

Above them, on a run too short to support its verdicts (the smoke preset, truncated epochs, one seed), a
banner that says so; below them the hero figure (``plots/hero.png``, the README's first figure): test
accuracy against time per epoch, one point per variant with its interval, one panel per label count, the
Pareto front and the supervised baseline as a line.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import pandas as pd

import matplotlib.pyplot as plt
import numpy as np

from ...analysis.diagnostics import isolated_timing
from ...core.provenance import REPO
from ...core.schema import Folder
from ..common import AUX_STYLE, epoch_seconds, epoch_time_source, epoch_time_words, num, variant_label, variants
from ..context import Context, Figure, Section, Table
from ..data import BASELINES
from ..frames import table1, timing
from ..plotting import plain_log_ticks, readable_palette
from ..render import markdown_table
from .decision import caption as decision_caption
from .decision import decision_frame
from .decision import display as decision_display
from .equal_time import clock_line
from .grad_mse import summary_lines as gradient_lines
from .overview import run_cost_line
from .paired import caveat_line, elsewhere_line, headline_line


def cost_line(ctx: Context) -> Optional[str]:
    t = ctx.frame(timing)
    if not len(t):
        return None
    t = t[t.source == "this run"]
    if "device" in t and ctx.env.get("device") in set(t.device):  # a folder timed on two devices: the run's own
        t = t[t.device == ctx.env.get("device")]
    t = isolated_timing(t)  # measured alone, on one machine: no ratio of two CPUs' milliseconds
    t = t[t.step_kind == "unsup"].drop_duplicates("estimator").set_index("estimator")
    if not {"enum", "trace"} <= set(t.index):
        return None
    e, tr = float(t.loc["enum", "median_ms"]), float(t.loc["trace", "median_ms"])
    text = (f"Per unlabeled step ({ctx.env.get('device', '?')}, timing probe, batch "
            f"{int(t.loc['enum', 'batch_size']) if not pd.isna(t.loc['enum', 'batch_size']) else '?'}): enum takes "
            f"{e:.3g} ms, {e / tr:.1f}× trace's {tr:.3g} ms")
    ts = ctx.res.timing
    ov = ts[(ts.estimator == "enum") & (ts.step_kind == "unsup") & (ts.source == "this run")]
    if len(ov) and "pyro_overhead" in ov and num(ov.iloc[0], "pyro_overhead"):
        text += f"; Pyro's enum step is {num(ov.iloc[0], 'pyro_overhead'):.2f}× the same objective written by hand"
    return text + "."


def too_short(ctx: Context) -> Optional[str]:
    """Why this run supports no verdict (smoke preset, truncated epochs, one seed), else None."""
    grid = ctx.grid
    seeds = len(grid.get("seeds") or []) or ctx.res.runs["seed"].nunique()
    why = [w for w, bad in ((f"the {ctx.env.get('preset')} preset", ctx.env.get("preset") == "smoke"),
                            (f"epochs cut to {grid.get('steps_per_epoch')} steps", bool(grid.get("steps_per_epoch"))),
                            ("one seed (no interval)", seeds < 2)) if bad]
    return "; ".join(why) or None


#: a run of at most this many epochs is a budget run: its summary says what it can and cannot support
BUDGET_EPOCHS = 5


def budget_line(ctx: Context) -> Optional[str]:
    """What a short run (the default preset: minutes) supports, and where the rest is; None for a longer run."""
    epochs = ctx.grid.get("epochs")
    if not isinstance(epochs, int) or epochs > BUDGET_EPOCHS or too_short(ctx):
        return None
    return (f"What this budget supports ({epochs} epoch{'s' if epochs != 1 else ''} per cell): the gradient "
            "error and variance and the time per step, which are measured at fixed parameters and do not wait "
            "for convergence; accuracy verdicts only where the paired interval already separates the variants "
            "(the caveats count the cells still improving at their last epoch). For accuracy at convergence read "
            f"the committed long reference ({LONG_REFERENCE}{_grid_words(REPO / LONG_REFERENCE)}), and Pyro's "
            "Table 1 setting in results/reference/table1-cpu.")


#: the committed converged reference the short runs' summaries point to
LONG_REFERENCE = "results/reference/long-cpu"


def _grid_words(folder: Path) -> str:
    """': 50 epochs, 5 paired seeds' from the folder's env.json (the committed folder says what it holds), or ''."""
    try:
        grid = json.loads(Folder(folder).env.read_text()).get("grid") or {}
    except (OSError, ValueError):
        return ""
    seeds = grid.get("seeds")
    if not isinstance(grid.get("epochs"), int) or not isinstance(seeds, list):
        return ""
    return f": {grid['epochs']} epochs, {len(seeds)} paired seeds"


def banner(ctx: Context) -> Optional[str]:
    why = too_short(ctx)
    return None if why is None else (
        f"**A pipeline check, not a result** ({why}): this run shows that every step of the benchmark runs end "
        f"to end; its accuracies, differences from Pyro's table and verdicts support no conclusion.")


def hero_points(ctx: Context):
    """[(labels, [(estimator, aux, seconds per epoch, mean, half-width)], baseline (mean, half) or None)]."""
    t1 = ctx.frame(table1)
    out = []
    for labels in sorted(t1.labels.dropna().unique()):
        pts, base = [], None
        for est, aux in variants(ctx.res):
            row = t1[(t1.labels == labels) & (t1.estimator == est) & (t1.aux == aux)]
            if not len(row) or not np.isfinite(float(row.iloc[0]["mean"] if row.iloc[0]["mean"] is not None else np.nan)):
                continue
            mean, half = float(row.iloc[0]["mean"]), num(row.iloc[0], "ci95_halfwidth") or 0.0
            if est in BASELINES:
                base = (mean, half)
                continue
            sec, _ = epoch_seconds(ctx.res, est, aux, int(labels))
            if sec:
                pts.append((est, aux, sec, mean, half))
        if pts:
            out.append((int(labels), pts, base))
    return out


def pareto(points):
    """The points no other beats on both time (lower) and accuracy (higher), fastest first."""
    front, best = [], -np.inf
    for p in sorted(points, key=lambda p: (p[2], -p[3])):
        if p[3] > best:
            front.append(p)
            best = p[3]
    return front


def plot_hero(ctx: Context):
    panels = hero_points(ctx)
    if not panels:
        return None
    pal, marks = readable_palette(ctx.res)
    # one panel alone is drawn wider: the provenance line at the foot sets the image's width anyway
    fig, axes = plt.subplots(1, len(panels), figsize=(max(5.0 * len(panels) + 2.4, 9.5), 4.4), squeeze=False,
                             layout="constrained")
    for ax, (labels, pts, base) in zip(axes[0], panels):
        if base:
            ax.axhline(base[0], color="0.35", lw=1.2, ls="-.")
            ax.axhspan(base[0] - base[1], base[0] + base[1], color="0.85", zorder=0)
        front = pareto(pts)
        ax.plot([p[2] for p in front], [p[3] for p in front], color="0.5", lw=1, ls=":", zorder=1,
                drawstyle="steps-post")
        for est, aux, sec, mean, half in pts:
            style = {**AUX_STYLE[aux], **({"marker": marks[est]} if est in marks else {})}
            ax.errorbar([sec], [mean], yerr=[[min(half, mean)], [min(half, 1 - mean)]], color=pal[est], capsize=3,
                        markersize=7, linestyle="none", marker=style["marker"],
                        mfc=pal[est] if (est, aux, sec, mean, half) in front else "white", mew=1.4)
        ax.set_xscale("log")
        plain_log_ticks(ax.xaxis)
        ax.set_title(f"{labels} labels", fontsize=10)
        ax.set_xlabel(f"seconds per epoch, log scale\n({epoch_time_words(ctx.res, short=True)}"
                      f"{', median over seeds' if epoch_time_source(ctx.res) == 'cells' else ''})", fontsize=9)
        ax.set_ylabel("test accuracy at best validation epoch")
    handles = [plt.Line2D([], [], color=pal[e], marker={**AUX_STYLE[a], **({"marker": marks[e]} if e in marks else {})}
                          ["marker"], linestyle="none", label=variant_label(e, a))
               for e, a in dict.fromkeys((p[0], p[1]) for _, pts, _ in panels for p in pts)]
    handles += [plt.Line2D([], [], color="0.35", ls="-.", label="supervised-only baseline (band: 95% CI)"),
                plt.Line2D([], [], color="0.5", ls=":", label="Pareto front (filled: on it)")]
    axes[0][-1].legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False, fontsize=8,
                       ncol=1 if len(handles) <= 14 else 2)
    return ctx.save_figure(fig, "hero", "Test accuracy against time per epoch (mean and 95% t-interval)")


def build(ctx: Context) -> Section:
    lines = [headline_line(ctx), elsewhere_line(ctx), clock_line(ctx), caveat_line(ctx), budget_line(ctx),
             cost_line(ctx), *gradient_lines(ctx)]
    lines = [l for l in lines if l]
    decision = decision_frame(ctx)
    shown = decision_display(ctx, decision)
    ctx.write_table(decision, "decision", decision_caption(ctx, decision))
    table = f"{decision_caption(ctx, decision)}\n\n{markdown_table(shown)}\n\n" if len(decision) else ""
    ctx.write_text("summary.md", table + "".join(f"- {l}\n" for l in lines))
    cost = run_cost_line(ctx)
    if cost:
        ctx.write_text("run_cost.md", cost + "\n")
    sec = Section("summary", "Summary", bullets=lines)
    if len(decision):
        sec.tables.append(Table("Which estimator? (decision.csv)", shown, "decision", ["decision.csv"]))
    if banner(ctx):
        sec.text.append(banner(ctx))
    path = plot_hero(ctx) if ctx.plots else None
    if path:
        sec.figures.append(Figure(path, "The answer at a glance: each variant's test accuracy (mean over seeds, 95% "
                                        f"t-interval) against its seconds per epoch ({epoch_time_words(ctx.res)}), "
                                        "one panel per label count; filled markers lie on the Pareto front (no "
                                        "other variant is both faster and more accurate); the dash-dot line and "
                                        "band: the supervised-only baseline."))
    return sec
