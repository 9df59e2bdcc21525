"""Paired differences: every variant against enum + aux and against the supervised-only baseline, seed by
seed, at every label count with and without the auxiliary loss (:mod:`bench.paired`), the verdicts
(equivalent within the margin at no more than the time fraction, times from the timing probe), the
per-seed points, and the generated text. The margin and the time fraction are options of
``python -m bench report`` (``--margin``, ``--time-fraction``) and are stated on the page.

Files: ``paired_differences.csv`` (numbers; per-seed differences ';'-joined), ``verdicts.csv``,
``paired_vs_enum_aux.csv`` and ``paired_vs_baseline.csv`` (the tables shown), ``paired.md`` (the text);
plots ``paired_differences.png``, ``accuracy_points.png``.

The sentences the Summary and the Headline take from here (:func:`headline_line`,
:func:`elsewhere_line`, :func:`caveat_line`) are built from the same verdict table, so the page has
one verdict.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import pandas as pd
from scipy import stats

from ...paired import (BASELINE, ENUM_AUX, SUPERVISED, plot_accuracy_points, plot_paired, qualifies,
                       reference_label)
from ..common import palette, provenance, rank_label_counts, variant_label, variants
from ..context import Context, Figure, Section, Table
from ..frames import paired, protocols, status

ENUM_REF, BASE_REF = reference_label(ENUM_AUX), reference_label(BASELINE)


def conclusions(ctx: Context) -> Tuple[pd.DataFrame, pd.DataFrame, str]:
    """(paired differences, verdicts, text) at this page's margin and time fraction, computed once."""
    return ctx.frame(paired, ctx.margin, ctx.time_fraction)


def pts(x: float) -> str:
    """An accuracy difference in points, signed, one decimal (as :mod:`bench.paired` writes it)."""
    return f"{round(x * 100, 1) + 0.0:+.1f}"


def ci_text(r) -> str:
    """'-0.1 points (95 % CI -1.1 to +0.9, n = 2)'."""
    if np.isfinite(r.ci_low):
        return f"{pts(r.mean_diff)} points (95 % CI {pts(r.ci_low)} to {pts(r.ci_high)}, n = {r.n})"
    return f"{pts(r.mean_diff)} points (n = {r.n}, no interval)"


def criterion(ctx: Context) -> str:
    m = ctx.margin * 100
    return (f"equivalent to {ENUM_REF} within ±{m:g} point{'s' if m != 1 else ''} (the whole paired 95 % interval) "
            f"at no more than {ctx.time_fraction:.0%} of its time per epoch (timing probe)")


def headline_setting(ctx: Context) -> Optional[Tuple[int, str]]:
    """(label count, how chosen) of the headline: 3000 labels with the auxiliary loss, else the largest."""
    _, v, _ = conclusions(ctx)
    v = v[(v.reference == ENUM_REF) & v.aux]
    choice = rank_label_counts(v.labels)
    return choice[0] if choice else None


def closest(g: pd.DataFrame):
    """The SS-VAE variant whose mean difference is nearest zero (ties: the narrower interval), as
    :func:`bench.paired.summary_text` picks it; None if none has a difference."""
    cand = g[~g.variant.isin(SUPERVISED)].dropna(subset=["mean_diff"])
    if cand.empty:
        return None
    cand = cand.assign(_d=cand.mean_diff.abs(), _w=(cand.ci_high - cand.ci_low).fillna(np.inf))
    return next(cand.sort_values(["_d", "_w", "variant"], kind="stable").itertuples())


def _time(r) -> str:
    return f" at {r.time_fraction:.0%} of its time" if np.isfinite(r.time_fraction) else " (no isolated timing)"


def _setting_verdicts(ctx: Context, labels: int, aux: bool) -> pd.DataFrame:
    _, v, _ = conclusions(ctx)
    return v[(v.reference == ENUM_REF) & (v.labels == labels) & (v.aux == aux)]


def headline_line(ctx: Context) -> str:
    """The one verdict of the page, at the headline setting."""
    choice = headline_setting(ctx)
    if choice is None:
        return f"No verdict: no variant with the auxiliary loss has seeds paired with finished {ENUM_REF} cells."
    labels, chosen = choice
    g = _setting_verdicts(ctx, labels, True)
    where = f"At {chosen} with the auxiliary loss"
    if not (g.n > 0).any():
        return (f"No verdict at {chosen} with the auxiliary loss: no variant has seeds paired with finished "
                f"{ENUM_REF} cells.")
    win = g[qualifies(g)].sort_values(["time_fraction", "variant"], kind="stable")
    if len(win):
        r = next(win.itertuples())
        more = "" if len(win) == 1 else f" ({', '.join(win.variant.iloc[1:])} too)"
        return (f"**{where}, {r.variant} is {criterion(ctx)}**{more}: {ci_text(r)} from {ENUM_REF}, "
                f"{r.epochs} epochs,{_time(r)}.")
    r = closest(g)
    tail = "" if r is None else (f"; the closest, {r.variant}, is {ci_text(r)} from {ENUM_REF}{_time(r)} "
                                 f"({_short_fails(r)})")
    return f"**{where}, no variant is shown {criterion(ctx)}**{tail}."


def _short_fails(r) -> str:
    """Where a verdict fails, without the still-rising count (the caveats carry it)."""
    parts = [f for f in str(r.fails).split("; ") if f and "still rising" not in f]
    return "; ".join(parts) or r.accuracy


def elsewhere_line(ctx: Context) -> Optional[str]:
    """The other settings with the auxiliary loss, and enum + aux against the supervised-only baseline."""
    p, v, _ = conclusions(ctx)
    choice = headline_setting(ctx)
    parts = []
    for labels in sorted(set(v[(v.reference == ENUM_REF) & v.aux].labels), reverse=True):
        if choice and labels == choice[0]:
            continue
        g = _setting_verdicts(ctx, labels, True)
        win = g[qualifies(g)]
        if len(win):
            parts.append(f"at {labels} labels with the auxiliary loss {', '.join(win.variant)} "
                         f"qualif{'y' if len(win) > 1 else 'ies'}")
            continue
        r = closest(g)
        if r is not None:
            parts.append(f"at {labels} labels with the auxiliary loss no variant qualifies (the closest, "
                         f"{r.variant}, is {ci_text(r)}{_time(r)})")
    b = p[(p.reference == BASE_REF) & (p.variant == ENUM_REF) & (p.n > 0)].sort_values("labels", ascending=False)
    if len(b):
        parts.append(f"{ENUM_REF} minus the supervised-only baseline is "
                     + "; ".join(f"{ci_text(r)} at {r.labels} labels" for r in b.itertuples()))
    return ("Elsewhere: " + "; ".join(parts) + ".") if parts else None


def caveat_line(ctx: Context) -> str:
    p, v, _ = conclusions(ctx)
    ns = sorted(set(int(n) for n in v.n if n > 0)) if len(v) else []
    epochs = sorted(set(e for es in v.epochs for e in str(es).split(",") if e), key=int) if len(v) else []
    if not epochs and ctx.grid.get("epochs"):  # no paired cell yet: the grid's
        epochs = [str(ctx.grid["epochs"])]
    parts = [f"n = {', '.join(map(str, ns)) or '0'} paired seed{'s' if ns != [1] else ''} per comparison"]
    small = [n for n in ns if n >= 2]
    if small and min(small) <= 5:
        n = min(small)
        parts[0] += (f" (with n = {n} the 95 % interval spans ±{stats.t.ppf(0.975, n - 1):.1f} standard errors of "
                     f"the mean difference)")
    parts.append(f"{', '.join(epochs) or '?'} epoch{'s' if epochs != ['1'] else ''} per cell, "
                 f"{', '.join(protocols(ctx.res))} protocol")
    ids = lambda col: {c for x in p[col] for c in str(x).split(";") if c}
    rising, cells = len(ids("rising_ids")), len(ids("cell_ids"))
    if rising:
        parts.append(f"{rising} of {cells} paired cells had their best validation epoch at their last one "
                     f"(still improving: longer runs may change the ordering)")
    s = ctx.frame(status)[0].iloc[0]
    if s["missing"]:
        parts.append(f"the run is incomplete: {int(s['missing'])} of {int(s['expected'])} cells have no result yet "
                     f"(the same command resumes it)")
    left = p[p.unpaired != ""]
    if len(left):
        parts.append(f"{len(left)} comparison{'s' if len(left) > 1 else ''} left out seeds whose cell failed, "
                     f"diverged or is missing")
    return "Caveats: " + "; ".join(parts) + "."


# -- tables ----------------------------------------------------------------------------------------
def _cell(r) -> str:
    if not np.isfinite(r.mean_diff):
        return "–"
    if np.isfinite(r.ci_low):
        return f"{pts(r.mean_diff)} [{pts(r.ci_low)}, {pts(r.ci_high)}]"
    return f"{pts(r.mean_diff)} (n = {r.n})"


def difference_table(ctx: Context, reference: str) -> pd.DataFrame:
    """Wide: one row per variant (report order), one column per label count: mean [95 % CI] in points."""
    p, _, _ = conclusions(ctx)
    p = p[p.reference == reference]
    if p.empty:
        return pd.DataFrame()
    order = [variant_label(e, a) for e, a in variants(ctx.res)]
    rows = []
    for var in [o for o in order if o in set(p.variant)] + sorted(set(p.variant) - set(order)):
        row = {"variant": var}
        for labels in sorted(set(p.labels)):
            sub = p[(p.variant == var) & (p.labels == labels)]
            n = int(sub.n.iloc[0]) if len(sub) else 0
            row[f"{labels} labels"] = _cell(next(sub.itertuples())) if len(sub) else "–"
            row[f"n ({labels})"] = str(n)
        rows.append(row)
    return pd.DataFrame(rows)


def verdict_display(v: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame([{
        "labels": str(r.labels), "variant": r.variant, "n": str(r.n), "difference [95 % CI], points": _cell(r),
        "time × enum + aux": "–" if not np.isfinite(r.time_fraction) else f"{r.time_fraction:.0%}",
        "verdict": r.verdict, "where it fails": _short_fails(r) if r.fails else ""}
        for r in v.itertuples()], columns=["labels", "variant", "n", "difference [95 % CI], points",
                                           "time × enum + aux", "verdict", "where it fails"])


def _csv(p: pd.DataFrame) -> pd.DataFrame:
    return p.assign(diffs=[";".join(f"{d:.6g}" for d in ds) for ds in p.diffs])


def build(ctx: Context) -> Section:
    p, v, text = conclusions(ctx)
    m, f = ctx.margin, ctx.time_fraction
    sec = Section("paired", "Paired differences")
    ctx.write_table(_csv(p), "paired_differences", "Paired differences (variant − reference) in test accuracy at the "
                                                   "best validation epoch, per setting, with 95 % t-intervals")
    ctx.write_table(v, "verdicts", f"Verdicts: equivalent within ±{m:g} at no more than {f:.0%} of enum + aux's time")
    ctx.write_text("paired.md", f"{text}\n_{provenance(ctx.env)}_\n")
    if p.empty:
        sec.text.append(text.strip())
        return sec
    sec.text.append(
        "Cells with the same seed share the labeled subset, the initial weights and the batch order, so each variant "
        "is compared with a reference seed by seed: d = accuracy(variant) − accuracy(reference), test accuracy at "
        "the best validation epoch, and a 95 % Student-t interval on the mean of d (`bench/paired.py`). References: "
        f"{ENUM_REF} and the supervised-only baseline, at every label count with and without the auxiliary loss. "
        f"A variant is **equivalent to {ENUM_REF}** only when the whole interval lies within ±{m * 100:g} point"
        f"{'s' if m != 0.01 else ''} and its time per epoch, summed from the timing probe's median step times over "
        f"an epoch's schedule (never the cells' own wall times), is at most {f:.0%} of {ENUM_REF}'s. This page: "
        f"`--margin {m:g} --time-fraction {f:g}`.")
    sec.text.append(text.strip())
    for ref, name in ((ENUM_REF, "paired_vs_enum_aux"), (BASE_REF, "paired_vs_baseline")):
        d = difference_table(ctx, ref)
        if len(d):
            ctx.write_table(d, name, f"Paired difference against {ref}, points: mean [95 % CI]")
            sec.tables.append(Table(f"Against {ref}: mean paired difference [95 % CI] in points, per label count",
                                    d, name, [f"{name}.csv", "paired_differences.csv"]))
    order = {variant_label(e, a): i for i, (e, a) in enumerate(variants(ctx.res))}
    mine = v[v.reference == ENUM_REF]
    shown = verdict_display(mine.assign(_o=mine.variant.map(lambda x: order.get(x, len(order))))
                            .sort_values(["labels", "_o", "variant"], ascending=[False, True, True], kind="stable"))
    sec.tables.append(Table(f"Verdicts against {ENUM_REF} (those against the baseline: verdicts.csv)", shown,
                            "verdicts", ["verdicts.csv"]))
    if ctx.plots:
        pal = palette(ctx.res)
        order = [variant_label(e, a) for e, a in variants(ctx.res)]
        path = plot_paired(p, ctx.plots_dir / "paired_differences.png", m, pal, order)
        if ctx.adopt_png(path, "Paired differences in test accuracy, seed by seed"):
            sec.figures.append(Figure(path, f"Per-seed differences (points), their mean (black tick) and 95 % "
                                            f"interval (bar), per setting, against {ENUM_REF} (top) and the baseline "
                                            f"(bottom); shaded: ±{m * 100:g} point{'s' if m != 0.01 else ''}."))
        path = plot_accuracy_points(ctx.res.runs, ctx.plots_dir / "accuracy_points.png", palette=pal, order=order)
        if ctx.adopt_png(path, "Test accuracy per seed"):
            sec.figures.append(Figure(path, "Test accuracy at the best validation epoch: every seed a point, the mean "
                                            "(black tick) and its 95 % interval (bar), one panel per label count."))
    return sec
