"""Accuracy at equal wall time: per setting and variant, the test accuracy (at the best validation epoch
among the epochs that fit) each variant reaches within the time enum + aux takes for its whole run,
paired by seed with enum + aux's own (:func:`bench.analysis.paired.equal_time`). Times are the isolated timing
probe's time per epoch (never the cells' wall times); the device and threads of the probe are stated.
Beside it, the time each variant takes to come within the verdicts' margin of enum + aux's best validation
accuracy (:func:`bench.analysis.paired.time_to_target`). Files: ``equal_time.csv`` (numbers),
``equal_time_shown.csv`` (the table shown), ``time_to_target.csv``, ``time_to_target_shown.csv``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from ...analysis import paired as paired_stats
from ..common import variant_label, variants
from ..context import Context, Section, Table
from ..data import Results
from ..frames import this_timing
from .paired import ENUM_REF, diff_cell, level_text, not_learning, pts


def equal_time_frame(res: Results, level: float) -> pd.DataFrame:
    return paired_stats.equal_time(res.runs, res.curves, this_timing(res), res.env.get("device", "cpu"), level)


def probe_text(ctx: Context) -> str:
    """'cpu (Intel Xeon), 2 threads': the timing probe's device and threads (else env.json's)."""
    t = this_timing(ctx.res)
    dev = ctx.env.get("device", "cpu")
    t = t[t.device == dev] if len(t) and "device" in t else t
    names = sorted(set(t["device_name"].dropna().astype(str))) if "device_name" in t else []
    threads = sorted(set(pd.to_numeric(t["threads"], errors="coerce").dropna().astype(int))) if "threads" in t else []
    threads = threads or ([int(ctx.env["threads"])] if ctx.env.get("threads") else [])
    return (f"{dev} ({', '.join(names) or ctx.env.get('device_name', '?')}), "
            + (f"{', '.join(map(str, threads))} thread{'s' if threads != [1] else ''}" if threads else "threads unknown"))


def time_to_target_frame(res: Results, margin: float) -> pd.DataFrame:
    return paired_stats.time_to_target(res.runs, res.curves, this_timing(res), res.env.get("device", "cpu"), margin)


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
        ctx.write_table(tt, "time_to_target", f"Time to come within {margin} of {ENUM_REF}'s best validation "
                                              f"accuracy (timing probe: {probe_text(ctx)})")
        tt_shown = display_time_to_target(tt, ctx.res)
        ctx.write_table(tt_shown, "time_to_target_shown", "Time to the validation target (the table shown)")
        sec.text.append(
            f"Time to a validation target: per seed, the target is {ENUM_REF}'s best validation accuracy on that seed "
            f"minus the verdicts' margin ({margin}); a variant's time is the end of its first epoch at or "
            f"above it (epochs times its isolated time per epoch, {probe_text(ctx)}), beside {ENUM_REF}'s own time to "
            f"the same target. Medians over the seeds that got there; the ratio is per seed. Validation only.")
        sec.tables.append(Table("Time to the validation target, per setting", tt_shown, "time_to_target",
                                ["time_to_target.csv", "time_to_target_shown.csv"]))
    idle = not_learning(ctx)
    if idle:
        sec.notes.append(f"At {', '.join(map(str, idle))} labels {ENUM_REF} does not beat the supervised-only "
                         f"baseline (not learning; Paired differences): the numbers there are no estimator verdict.")
    return sec
