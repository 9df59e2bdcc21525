"""Accuracy at equal wall time: per setting and variant, the test accuracy (at the best validation epoch
among the epochs that fit) each variant reaches within the time enum + aux takes for its whole run,
paired by seed with enum + aux's own (:func:`bench.analysis.wall_time.equal_time`). Times are the isolated timing
probe's time per epoch (never the cells' wall times); the device and threads of the probe are stated.
Beside it, the time each variant takes to come within the verdicts' margin of enum + aux's best validation
accuracy (:func:`bench.analysis.wall_time.time_to_target`), and what each reaches within a fixed budget of
seconds, the same for all (``--budget``; :func:`bench.analysis.wall_time.fixed_budget`), with the figure of
accuracy against the budget. Files: ``equal_time.csv`` (numbers), ``equal_time_shown.csv`` (the table shown),
``time_to_target.csv``, ``time_to_target_shown.csv``, ``fixed_budget.csv``, ``fixed_budget_shown.csv``,
``accuracy_by_budget.csv`` (the figure's points), ``plots/accuracy_by_budget.png``. :func:`clock_line` puts the
headline setting's budget and target in one line of the summary.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from ...analysis import wall_time
from ...analysis.diagnostics import isolated_timing
from ..common import AUX_STYLE, variant_label, variants
from ..context import Context, Figure, Section, Table
from ..plotting import plain_log_ticks, variant_panels
from ..data import Results
from ..frames import this_timing
from ...analysis.paired_verdicts import and_list, ci_text
from .paired import ENUM_REF, diff_cell, headline_setting, level_text, not_learning, pts


def equal_time_frame(res: Results, level: float) -> pd.DataFrame:
    return wall_time.equal_time(res.runs, res.curves, this_timing(res), res.env.get("device", "cpu"), level)


def probe_text(ctx: Context) -> str:
    """'cpu (Intel Xeon), 2 threads': the device and threads of the timing rows the times come from
    (:func:`bench.analysis.diagnostics.isolated_timing`; else env.json's)."""
    t = this_timing(ctx.res)
    dev = ctx.env.get("device", "cpu")
    t = isolated_timing(t, dev) if len(t) and "device" in t else t
    names = sorted(set(t["device_name"].dropna().astype(str))) if "device_name" in t else []
    threads = sorted(set(pd.to_numeric(t["threads"], errors="coerce").dropna().astype(int))) if "threads" in t else []
    threads = threads or ([int(ctx.env["threads"])] if ctx.env.get("threads") else [])
    return (f"{dev} ({', '.join(names) or ctx.env.get('device_name', '?')}), "
            + (f"{', '.join(map(str, threads))} thread{'s' if threads != [1] else ''}" if threads else "threads unknown"))


def time_to_target_frame(res: Results, margin: float) -> pd.DataFrame:
    return wall_time.time_to_target(res.runs, res.curves, this_timing(res), res.env.get("device", "cpu"), margin)


def fixed_budget_frame(res: Results, seconds: float, level: float) -> pd.DataFrame:
    return wall_time.fixed_budget(res.runs, res.curves, this_timing(res), seconds, res.env.get("device", "cpu"), level)


def by_budget_frame(res: Results) -> pd.DataFrame:
    return wall_time.accuracy_by_budget(res.runs, res.curves, this_timing(res), res.env.get("device", "cpu"))


def _ordered(frame: pd.DataFrame, res: Results) -> pd.DataFrame:
    order = {variant_label(e, a): i for i, (e, a) in enumerate(variants(res))}
    frame = frame.assign(_o=frame.variant.map(lambda v: order.get(v, len(order))))
    return frame.sort_values(["labels", "aux", "_o"], ascending=[False, False, True], kind="stable")


def _fmt(x, f: str) -> str:
    return "–" if not np.isfinite(x) else f.format(x)


def display_time_to_target(tt: pd.DataFrame, res: Results) -> pd.DataFrame:
    return pd.DataFrame([{
        "labels": str(r.labels), "variant": r.variant, "reached (of n seeds)": f"{r.reached} of {r.n}",
        "target (validation)": _fmt(r.target_mean, "{:.4f}"), "epochs": _fmt(r.epochs_median, "{:.0f}"),
        "seconds": _fmt(r.seconds_median, "{:.0f}"), "enum + aux's seconds": _fmt(r.reference_seconds_median, "{:.0f}"),
        "time × enum + aux's": _fmt(r.time_ratio_median, "{:.2f}×"), "note": r.note}
        for r in _ordered(tt, res).itertuples()],
        columns=["labels", "variant", "reached (of n seeds)", "target (validation)", "epochs", "seconds",
                 "enum + aux's seconds", "time × enum + aux's", "note"])


def display(et: pd.DataFrame, res: Results) -> pd.DataFrame:
    et = _ordered(et, res)
    fmt = _fmt
    return pd.DataFrame([{
        "labels": str(r.labels), "variant": r.variant, "n": str(r.n),
        "time per epoch × enum + aux": fmt(r.time_fraction, "{:.2f}×"),
        "epochs in the budget": fmt(r.budget_epochs, "{:.1f}"),
        "test accuracy at equal time": fmt(r.mean_acc, "{:.4f}"),
        "enum + aux (whole run)": fmt(r.reference_mean, "{:.4f}"),
        "difference [CI], points": diff_cell(r), "note": r.note}
        for r in et.itertuples()], columns=["labels", "variant", "n", "time per epoch × enum + aux",
                                            "epochs in the budget", "test accuracy at equal time",
                                            "enum + aux (whole run)", "difference [CI], points", "note"])


def display_fixed_budget(fb: pd.DataFrame, res: Results) -> pd.DataFrame:
    return pd.DataFrame([{
        "labels": str(r.labels), "variant": r.variant, "n": str(r.n),
        "seconds per epoch": _fmt(r.epoch_seconds, "{:.1f}"), "epochs in the budget": _fmt(r.budget_epochs, "{:.1f}"),
        "test accuracy": _fmt(r.mean_acc, "{:.4f}"), "enum + aux's epochs": _fmt(r.reference_budget_epochs, "{:.1f}"),
        "enum + aux's test accuracy": _fmt(r.reference_mean, "{:.4f}"), "difference [CI], points": diff_cell(r),
        "note": r.note} for r in _ordered(fb, res).itertuples()],
        columns=["labels", "variant", "n", "seconds per epoch", "epochs in the budget", "test accuracy",
                 "enum + aux's epochs", "enum + aux's test accuracy", "difference [CI], points", "note"])


def plot_accuracy_by_budget(ctx: Context, bb: pd.DataFrame):
    """Mean test accuracy (validation-selected) within each budget, one line per variant, one panel per label
    count; dotted where a seed's run had ended before the budget (a lower bound); the table's budget marked."""
    def draw(ax, colour, aux, sub):
        sub = sub.sort_values("budget_seconds")
        ax.plot(sub.budget_seconds, sub.mean_acc, color=colour, linewidth=0.9, linestyle=":")
        full = sub[sub.runs_ended == 0]
        ax.plot(full.budget_seconds, full.mean_acc, color=colour, markersize=3, **AUX_STYLE[aux])

    fig, panels = variant_panels(ctx.res, bb, draw)
    for ax, _ in panels:
        ax.set_xscale("log")
        plain_log_ticks(ax.xaxis)
        ax.axvline(ctx.budget, color="0.5", linewidth=0.8, linestyle="--")
        ax.set_xlabel("time budget per run (s, log)")
    for ax, _ in panels[::len({l for _, l in panels})]:
        ax.set_ylabel("test accuracy")
    return ctx.save_figure(fig, "accuracy_by_budget", f"Accuracy within a time budget (mean over seeds; "
                                                      f"{probe_text(ctx)})")


def _add_table(ctx: Context, sec: Section, name: str, numbers: pd.DataFrame, caption: str, shown: pd.DataFrame,
               shown_caption: str, title: str, text: str) -> None:
    """tables/<name>.csv (numbers) and <name>_shown.csv (the table shown), the paragraph and the table on the page."""
    ctx.write_table(numbers, name, caption)
    ctx.write_table(shown, f"{name}_shown", shown_caption)
    sec.text.append(text)
    sec.tables.append(Table(title, shown, name, [f"{name}.csv", f"{name}_shown.csv"]))


def add_fixed_budget(ctx: Context, sec: Section) -> None:
    fb = ctx.frame(fixed_budget_frame, ctx.budget, ctx.level)
    if fb.empty:
        return
    budget = f"{ctx.budget:g} s"
    _add_table(
        ctx, sec, "fixed_budget", fb, f"Test accuracy within a fixed budget of {budget} of training per run (timing "
        f"probe: {probe_text(ctx)})", display_fixed_budget(fb, ctx.res), "Test accuracy within a fixed budget (the table "
        f"shown)", f"Test accuracy within {budget} of training, per setting",
        f"Within a fixed budget: what each variant and {ENUM_REF} reach in {budget} of training per run (`--budget`; "
        f"the same for all), each held to the epochs that end within it at its isolated time per epoch "
        f"({probe_text(ctx)}); the best validation accuracy among those epochs picks the test accuracy, paired by seed "
        f"({level_text(ctx)} interval). Where no epoch of {ENUM_REF} fits there is no comparison (note).")
    bb = ctx.frame(by_budget_frame)
    if bb.empty:
        return
    ctx.write_table(bb, "accuracy_by_budget", f"Mean test accuracy within each time budget (timing probe: "
                                              f"{probe_text(ctx)})")
    path = plot_accuracy_by_budget(ctx, bb) if ctx.plots else None
    if path:
        sec.figures.append(Figure(path, "Accuracy per second: the mean over seeds of the test accuracy at the best "
                                        "validation epoch among the epochs that fit each budget (log scale), from the "
                                        "learning curves and the isolated time per epoch; dotted where a seed's run "
                                        f"had already ended (a lower bound); dashed line: the table's {budget}. "
                                        "Points: `accuracy_by_budget.csv`."))


def clock_line(ctx: Context) -> Optional[str]:
    """The headline setting against the clock, for the summary: what each variant reaches within the fixed
    budget, paired with enum + aux within the same seconds, and how long it takes to come within the margin of
    enum + aux's best validation accuracy, as a multiple of enum + aux's own time. None where the setting does
    not learn (no estimator verdict there) or has no isolated timing."""
    choice = headline_setting(ctx)
    if choice is None or choice[0] in not_learning(ctx):
        return None
    labels = choice[0]
    mine = lambda f: f[(f["labels"] == labels) & f["aux"].astype(bool) & (f["variant"] != ENUM_REF)]
    fb = mine(ctx.frame(fixed_budget_frame, ctx.budget, ctx.level)).sort_values("mean_diff", ascending=False)
    tt = mine(ctx.frame(time_to_target_frame, ctx.margin))
    notes = lambda note: "; ".join(x for x in str(note or "").split("; ") if x and not x.startswith("n = "))
    budget = [f"{r.variant} {ci_text(r, ctx.level)}" + (f" ({note})" if note else "")
              for r in fb.itertuples() if r.n > 0 for note in [notes(r.note)]]
    if not budget:
        return None
    margin = f"{ctx.margin * 100:g} point{'' if ctx.margin == 0.01 else 's'}"
    got = tt[tt["reached"] > 0].sort_values("time_ratio_median")
    target = [f"{r.variant} takes {r.time_ratio_median:.2f}× {ENUM_REF}'s time (median over the {r.reached} of {r.n}"
              f" seeds that get there)" for r in got.itertuples() if np.isfinite(r.time_ratio_median)]
    never = tt[(tt["reached"] == 0) & (tt["n"] > 0)]
    if len(never):
        target.append(f"{and_list(list(never['variant']))} do{'es' if len(never) == 1 else ''} not get there within "
                      f"{'its run' if len(never) == 1 else 'their runs'} (no seed)")
    return (f"Against the clock at {labels} labels with the auxiliary loss (times from the isolated timing probe, "
            f"{probe_text(ctx)}): in {ctx.budget:g} s of training per run, {and_list(budget)} against {ENUM_REF} in "
            f"the same {ctx.budget:g} s"
            + (f"; to come within {margin} of {ENUM_REF}'s best validation accuracy (per seed), {'; '.join(target)}"
               if target else "") + ".")


def build(ctx: Context) -> Optional[Section]:
    et = ctx.frame(equal_time_frame, ctx.level)
    if et.empty:
        return None
    ctx.write_table(et, "equal_time", f"Test accuracy at equal wall time: within {ENUM_REF}'s whole-run time "
                                      f"(timing probe: {probe_text(ctx)})")
    shown = display(et, ctx.res)
    ctx.write_table(shown, "equal_time_shown", "Test accuracy at equal wall time (the table shown)")
    sec = Section("equal-time", "Accuracy at equal wall time", text=[
        f"What each variant reaches in the time {ENUM_REF} takes for its whole run. A variant's epoch e ends at e "
        f"times its time per epoch, estimated from the isolated timing probe on {probe_text(ctx)} (the median step "
        f"times summed over an epoch's schedule, as the verdicts' times; never the cells' own wall times); of the "
        f"epochs that end within {ENUM_REF}'s epochs times its time per epoch, the best validation accuracy picks "
        f"the test accuracy. The difference is paired by seed with {ENUM_REF}'s test accuracy at its best "
        f"validation epoch ({level_text(ctx)} interval). A run that ended before the last epoch that fits gives a "
        f"lower bound (note): a faster variant could have trained for more epochs in that time."
        + (f" The cells themselves trained with {ctx.env['threads']} thread{'s' if ctx.env['threads'] != 1 else ''}"
           f" each." if ctx.env.get("threads") else "")],
        tables=[Table("Test accuracy at equal wall time, per setting", shown, "equal_time",
                      ["equal_time.csv", "equal_time_shown.csv"])])
    tt = ctx.frame(time_to_target_frame, ctx.margin)
    if not tt.empty:
        margin = f"{ctx.margin * 100:g} point{'' if ctx.margin == 0.01 else 's'}"
        _add_table(
            ctx, sec, "time_to_target", tt, f"Time to come within {margin} of {ENUM_REF}'s best validation accuracy "
            f"(timing probe: {probe_text(ctx)})", display_time_to_target(tt, ctx.res), "Time to the validation target "
            "(the table shown)", "Time to the validation target, per setting",
            f"Time to a validation target: per seed, the target is {ENUM_REF}'s best validation accuracy on that seed "
            f"minus the verdicts' margin ({margin}); a variant's time is the end of its first epoch at or "
            f"above it (epochs times its isolated time per epoch, {probe_text(ctx)}), beside {ENUM_REF}'s own time to "
            f"the same target. Medians over the seeds that got there; the ratio is per seed. Validation only.")
    add_fixed_budget(ctx, sec)
    idle = not_learning(ctx)
    if idle:
        sec.notes.append(f"At {', '.join(map(str, idle))} labels {ENUM_REF} does not beat the supervised-only "
                         f"baseline (not learning; Paired differences): the numbers there are no estimator verdict.")
    return sec
