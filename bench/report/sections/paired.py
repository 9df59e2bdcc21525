"""Paired differences: every variant against enum + aux and against the supervised-only baseline, seed by
seed, at every label count with and without the auxiliary loss (:mod:`bench.analysis.paired`), the verdicts
(better, as good within the margin, inconclusive, worse; none where enum + aux is not learning), each
variant's time per epoch beside its verdict (timing probe), the per-seed points, and the generated
text. The margin is an option of ``python -m bench report`` (``--margin``) and the interval's level one of
``build_report`` (``level``); the page states both.

Files: ``paired_differences.csv`` (numbers; per-seed differences ';'-joined), ``verdicts.csv``,
``learning.csv`` (enum + aux minus the baseline per label count), ``paired_vs_enum_aux.csv`` and
``paired_vs_baseline.csv`` (the tables shown), ``paired.md`` (the text); plots ``paired_differences.png``,
``accuracy_points.png``.

The sentences the Summary and the Headline take from here (:func:`headline_line`,
:func:`elsewhere_line`, :func:`caveat_line`) are :mod:`bench.analysis.paired_verdicts`'s, from the same verdict table, so
the page has one verdict.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import pandas as pd

from ...analysis import paired_verdicts
from ...analysis.paired import BASELINE, ENUM_AUX, plot_accuracy_points, plot_paired, reference_label
from ...analysis.paired_verdicts import ci_text, rule_text, setting_sentence, settings_sentences
from ...core.stats import t_quantile
from ..plotting import readable_palette
from ..common import palette, provenance, rank_label_counts, variant_label, variants
from ..context import Context, Figure, Section, Table
from ..data import Results
from ..frames import early_stopping, protocols, status, this_timing

ENUM_REF, BASE_REF = reference_label(ENUM_AUX), reference_label(BASELINE)


def paired_frames(res: Results, margin: float, level: float) -> Tuple[pd.DataFrame, pd.DataFrame, str]:
    """(paired differences, verdicts, generated text) of :func:`bench.analysis.paired_verdicts.conclusions`: seeds paired,
    against enum + aux and the supervised baseline, times from this folder's timing probe only."""
    runs = res.runs.assign(protocol=", ".join(protocols(res)))
    return paired_verdicts.conclusions(runs, this_timing(res), margin, res.env.get("device", "cpu"),
                                    confidence=level)


def conclusions(ctx: Context) -> Tuple[pd.DataFrame, pd.DataFrame, str]:
    """(paired differences, verdicts, text) at this page's margin and level, computed once."""
    return ctx.frame(paired_frames, ctx.margin, ctx.level)


def learning(ctx: Context) -> pd.DataFrame:
    """enum + aux minus the baseline per label count, and whether it learns there
    (:func:`bench.analysis.paired_verdicts.learning`)."""
    return paired_verdicts.learning(conclusions(ctx)[0])


def not_learning(ctx: Context) -> list:
    """The label counts where enum + aux does not beat the supervised-only baseline: no verdict there."""
    learn = learning(ctx)
    return [int(l) for l in learn["labels"] if paired_verdicts.learns(learn, l) is False]


def pts(x: float) -> str:
    """An accuracy difference in points, signed, one decimal (as :mod:`bench.analysis.paired` writes it)."""
    return f"{round(x * 100, 1) + 0.0:+.1f}"


def level_text(ctx: Context) -> str:
    return f"{ctx.level * 100:g} %"


def headline_setting(ctx: Context) -> Optional[Tuple[int, str]]:
    """(label count, how chosen) of the headline: 3000 labels with the auxiliary loss, else the largest."""
    _, v, _ = conclusions(ctx)
    v = v[(v.reference == ENUM_REF) & v.aux]
    choice = rank_label_counts(v.labels)
    return choice[0] if choice else None


def _setting_verdicts(ctx: Context, labels: int, aux: bool) -> pd.DataFrame:
    _, v, _ = conclusions(ctx)
    return v[(v.reference == ENUM_REF) & (v.labels == labels) & (v.aux == aux)]


def headline_line(ctx: Context) -> str:
    """The one verdict of the page, at the headline setting: every variant grouped by verdict."""
    choice = headline_setting(ctx)
    if choice is None:
        learn = learning(ctx).sort_values("labels", ascending=False)
        if len(learn):  # enum + aux and the baseline only (the table1 grid): whether the setting learns at all
            parts = [f"at {r.labels} labels {ENUM_REF} minus the supervised-only baseline is {ci_text(r, ctx.level)} ("
                     + {True: "learning", False: "not shown to learn"}.get(paired_verdicts.learns(learn, r.labels),
                                                                          "not checked") + ")"
                     for r in learn.itertuples()]
            return (f"No estimator verdict: no other variant with the auxiliary loss is paired with {ENUM_REF} here; "
                    + "; ".join(parts) + ".")
        return f"No verdict: no variant with the auxiliary loss has seeds paired with finished {ENUM_REF} cells."
    labels, chosen = choice
    g = _setting_verdicts(ctx, labels, True)
    text = setting_sentence(g, learning(ctx), labels, True, ctx.margin, ctx.level, chosen, bold=True)
    return text or (f"No verdict at {chosen} with the auxiliary loss: no variant has seeds paired with finished "
                    f"{ENUM_REF} cells.")


def elsewhere_line(ctx: Context) -> Optional[str]:
    """The other settings with the auxiliary loss, and enum + aux against the supervised-only baseline where
    it learns (where it does not, the setting's sentence says so)."""
    _, v, _ = conclusions(ctx)
    choice = headline_setting(ctx)
    skip = [(l, a) for l, a in set(zip(v.labels, v.aux)) if not a or (choice and l == choice[0])]
    parts = [s[0].lower() + s[1:].rstrip(".") for s in settings_sentences(v, learning(ctx), ctx.margin, ctx.level,
                                                                          skip)]
    learn = learning(ctx)
    ok = learn[pd.Series([paired_verdicts.learns(learn, l) is True for l in learn.labels], index=learn.index,
                         dtype=bool)].sort_values("labels", ascending=False)
    if len(ok) and choice is not None:  # without a headline setting the verdict line has said it already
        parts.append(f"{ENUM_REF} minus the supervised-only baseline is "
                     + "; ".join(f"{ci_text(r, ctx.level)} at {r.labels} labels" for r in ok.itertuples()))
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
        half = t_quantile(n - 1, ctx.level)
        parts[0] += (f" (with n = {n} the {level_text(ctx)} interval spans ±{half:.1f} standard errors of the mean "
                     f"difference)")
    stop = early_stopping(ctx.res)
    parts.append(f"{'at most ' if stop else ''}{', '.join(epochs) or '?'} epoch{'s' if epochs != ['1'] else ''} per "
                 f"cell, {', '.join(protocols(ctx.res))} protocol{stop}")
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
def diff_cell(r) -> str:
    """A paired difference in points with its interval (or its n where it has none), '–' where undefined."""
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
            row[f"{labels} labels"] = diff_cell(next(sub.itertuples())) if len(sub) else "–"
            row[f"n ({labels})"] = str(n)
        rows.append(row)
    return pd.DataFrame(rows)


def verdict_display(v: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame([{
        "labels": str(r.labels), "variant": r.variant, "n": str(r.n), "difference [CI], points": diff_cell(r),
        "verdict": r.verdict,
        "time per epoch × enum + aux": "–" if not np.isfinite(r.time_fraction) else f"{r.time_fraction:.2f}×",
        "notes": short_notes(r)}
        for r in v.itertuples()], columns=["labels", "variant", "n", "difference [CI], points", "verdict",
                                           "time per epoch × enum + aux", "notes"])


def short_notes(r) -> str:
    """A verdict's notes without the still-rising count (the caveats carry it)."""
    return "; ".join(f for f in str(r.notes).split("; ") if f and "still rising" not in f)


def _csv(p: pd.DataFrame) -> pd.DataFrame:
    return p.assign(diffs=[";".join(f"{d:.6g}" for d in ds) for ds in p.diffs])


def build(ctx: Context) -> Section:
    p, v, text = conclusions(ctx)
    m, lv = ctx.margin, level_text(ctx)
    sec = Section("paired", "Paired differences")
    ctx.write_table(_csv(p), "paired_differences", "Paired differences (variant − reference) in test accuracy at the "
                                                   f"best validation epoch, per setting, with {lv} t-intervals")
    ctx.write_table(v, "verdicts", f"Verdicts against enum + aux: better, as good (lower end above -{m:g}), "
                                   f"inconclusive, worse, or none (not learning); {lv} intervals")
    ctx.write_table(learning(ctx), "learning", f"{ENUM_REF} minus the supervised-only baseline per label count "
                                               f"({lv} interval): learning where the lower end is above 0")
    ctx.write_text("paired.md", f"{text}\n_{provenance(ctx.env)}_\n")
    if p.empty:
        sec.text.append(text.strip())
        return sec
    sec.text.append(
        "Cells with the same seed share the labeled subset, the initial weights and the batch order, so each variant "
        "is compared with a reference seed by seed: d = accuracy(variant) − accuracy(reference), test accuracy at "
        f"the best validation epoch, and a {lv} Student-t interval on the mean of d (`bench/analysis/paired.py`). References: "
        f"{ENUM_REF} and the supervised-only baseline, at every label count with and without the auxiliary loss. "
        + rule_text(m) + " The time per epoch is summed from the timing probe's median step times over an epoch's "
        f"schedule (never the cells' own wall times). This page: `--margin {m:g}`, level {lv}.")
    sec.text.append(text.strip())
    for ref, name in ((ENUM_REF, "paired_vs_enum_aux"), (BASE_REF, "paired_vs_baseline")):
        d = difference_table(ctx, ref)
        if len(d):
            ctx.write_table(d, name, f"Paired difference against {ref}, points: mean [{lv} CI]")
            sec.tables.append(Table(f"Against {ref}: mean paired difference [{lv} CI] in points, per label count",
                                    d, name, [f"{name}.csv", "paired_differences.csv"]))
    order = {variant_label(e, a): i for i, (e, a) in enumerate(variants(ctx.res))}
    mine = v[v.reference == ENUM_REF]
    shown = verdict_display(mine.assign(_o=mine.variant.map(lambda x: order.get(x, len(order))))
                            .sort_values(["labels", "_o", "variant"], ascending=[False, True, True], kind="stable"))
    sec.tables.append(Table(f"Verdicts against {ENUM_REF} (those against the baseline: verdicts.csv)", shown,
                            "verdicts", ["verdicts.csv", "learning.csv"]))
    if ctx.plots:
        pal, _ = readable_palette(ctx.res)
        order = [variant_label(e, a) for e, a in variants(ctx.res)]
        path = plot_paired(p, ctx.plots_dir / "paired_differences.png", m, pal, order)
        if ctx.adopt_png(path, "Paired differences in test accuracy, seed by seed"):
            sec.figures.append(Figure(path, f"Per-seed differences (points), their mean (black tick) and {lv} "
                                            f"interval (bar), per setting, against {ENUM_REF} (top) and the baseline "
                                            f"(bottom); shaded: the {m * 100:g} point{'s' if m != 0.01 else ''} "
                                            f"below 0 that \"as good\" allows."))
        path = plot_accuracy_points(ctx.res.runs, ctx.plots_dir / "accuracy_points.png", palette=pal, order=order)
        if ctx.adopt_png(path, "Test accuracy per seed"):
            sec.figures.append(Figure(path, "Test accuracy at the best validation epoch: every seed a point, the mean "
                                            "(black tick) and its 95 % interval (bar), one panel per label count."))
    return sec
