"""Accuracy at equal wall time: per setting and variant, the test accuracy (at the best validation epoch
among the epochs that fit) each variant reaches within the time enum + aux takes for its whole run,
paired by seed with enum + aux's own (:func:`bench.analysis.paired.equal_time`). Times are the isolated timing
probe's time per epoch (never the cells' wall times); the device and threads of the probe are stated.
Files: ``equal_time.csv`` (numbers), ``equal_time_shown.csv`` (the table shown).
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


def display(et: pd.DataFrame, res: Results) -> pd.DataFrame:
    order = {variant_label(e, a): i for i, (e, a) in enumerate(variants(res))}
    et = et.assign(_o=et.variant.map(lambda v: order.get(v, len(order))))
    et = et.sort_values(["labels", "aux", "_o"], ascending=[False, False, True], kind="stable")
    fmt = lambda x, f: "–" if not np.isfinite(x) else f.format(x)
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
    idle = not_learning(ctx)
    if idle:
        sec.notes.append(f"At {', '.join(map(str, idle))} labels {ENUM_REF} does not beat the supervised-only "
                         f"baseline (not learning; Paired differences): the numbers there are no estimator verdict.")
    return sec
