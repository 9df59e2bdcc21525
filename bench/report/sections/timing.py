"""Time per step: the timing probe's median ms [q1–q3] per device, estimator and step kind, each
measurement once (see :func:`bench.report.frames.timing`; one CPU and one GPU side by side, with the
GPU's speed-up), enumeration's cost relative to sampling, and a plot of points on a log axis, one panel
per step kind. Files: ``timing.csv`` (the table shown), ``timing_long.csv`` (numbers),
``timing_relative.csv`` (unlabeled step over trace's). A probe beside which other processes kept
``bench.core.schema.CONTENDED_LOAD`` cores or more busy is marked contended, and the verdicts do not take its
times.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from ...core.schema import CONTENDED_LOAD, cores
from ..common import fmt_ms, kinds_in, rnd
from ..plotting import plain_log_ticks, readable_palette
from ..context import Context, Figure, Section, Table
from ..frames import timing


def _rows(long: pd.DataFrame, d: pd.DataFrame, kinds) -> list:
    """One row per estimator of one device's measurements ``d``: median [q1–q3] ms per step kind, unsup
    relative to trace, how it was measured, peak memory."""
    tr = d[(d.estimator == "trace") & (d.step_kind == "unsup")]
    tr_ms = float(tr.median_ms.iloc[0]) if len(tr) else None
    rows = []
    for est, de in d.groupby("estimator", sort=False):
        row = {"estimator": est}
        by = de.set_index("step_kind")
        for k in kinds:
            row[f"{k} ms"] = (f"{fmt_ms(by.loc[k, 'median_ms'])} [{fmt_ms(by.loc[k, 'q1_ms'])}–"
                              f"{fmt_ms(by.loc[k, 'q3_ms'])}]" if k in by.index else "–")
        un = by.loc["unsup", "median_ms"] if "unsup" in by.index else None
        row["unsup × trace"] = f"{un / tr_ms:.2f}×" if un is not None and tr_ms else "–"
        if "other_cpu_load" in long:  # what else kept the machine busy while the probe ran
            load = pd.to_numeric(de.other_cpu_load, errors="coerce").max()
            row["measured"] = ("–" if pd.isna(load) else f"contended ({cores(load)} busy beside)"
                               if load >= CONTENDED_LOAD else "alone")
        if "peak_mb" in long:  # one more step of each kind, untimed (bench.core.peakmem)
            row[f"peak MB {' / '.join(kinds)}"] = " / ".join(
                fmt_ms(by.loc[k, "peak_mb"]) if k in by.index and pd.notna(by.loc[k, "peak_mb"]) else "–"
                for k in kinds)
        rows.append(row)
    return rows


def cpu_and_gpu(long: pd.DataFrame):
    """The (device, device_name) of the CPU and of the GPU when ``long`` holds exactly one of each, else None."""
    groups = list(dict.fromkeys(zip(long.device, long.device_name)))
    cpu = [g for g in groups if g[0] == "cpu"]
    gpu = [g for g in groups if str(g[0]).startswith("cuda")]
    return (cpu[0], gpu[0]) if len(groups) == 2 and len(cpu) == len(gpu) == 1 else None


def side_by_side(long: pd.DataFrame, cpu, gpu) -> pd.DataFrame:
    """One row per estimator: each column of :func:`_rows` for the CPU, then for the GPU, and the GPU's
    speed-up per step kind (CPU median over GPU median; above 1: the GPU is faster)."""
    kinds = kinds_in(long.step_kind)
    part = {g: long[(long.device == g[0]) & (long.device_name == g[1])] for g in (cpu, gpu)}
    per = {g: {r["estimator"]: r for r in _rows(long, part[g], kinds)} for g in (cpu, gpu)}
    cols = list(dict.fromkeys(c for g in (cpu, gpu) for r in per[g].values() for c in r if c != "estimator"))
    med = {g: part[g].set_index(["estimator", "step_kind"]).median_ms for g in (cpu, gpu)}
    rows = []
    for est in dict.fromkeys([*per[cpu], *per[gpu]]):
        row = {"estimator": est}
        for c in cols:
            for g in (cpu, gpu):
                row[f"{c} ({g[0]})"] = per[g].get(est, {}).get(c, "–")
        speed = [med[cpu].get((est, k)) for k in kinds], [med[gpu].get((est, k)) for k in kinds]
        row[f"{gpu[0]} speed-up {' / '.join(kinds)}"] = " / ".join(
            f"{c / g:.2f}×" if pd.notna(c) and pd.notna(g) and g > 0 else "–" for c, g in zip(*speed))
        rows.append(row)
    return pd.DataFrame(rows)


def wide(long: pd.DataFrame) -> pd.DataFrame:
    """One row per (device, estimator): median [q1–q3] ms per step kind, unsup relative to trace; with one
    CPU and one GPU, one row per estimator with the devices side by side (:func:`side_by_side`)."""
    pair = cpu_and_gpu(long)
    if pair:
        return side_by_side(long, *pair)
    kinds = kinds_in(long.step_kind)
    multi = len(set(zip(long.device, long.device_name))) > 1
    rows = []
    for (dev, name), d in long.groupby(["device", "device_name"], sort=False):
        rows += [({"device": f"{dev} ({name})"} if multi else {}) | r for r in _rows(long, d, kinds)]
    return pd.DataFrame(rows)


def relative(long: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (dev, name), d in long[long.step_kind == "unsup"].groupby(["device", "device_name"], sort=False):
        ref = d[d.estimator == "trace"]
        ref_ms = float(ref.median_ms.iloc[0]) if len(ref) else float("nan")
        for r in d.itertuples():
            rows.append({"device": dev, "device_name": name, "estimator": r.estimator,
                         "unsup_median_ms": rnd(r.median_ms),
                         "relative_to_trace": rnd(r.median_ms / ref_ms) if ref_ms == ref_ms else None})
    return pd.DataFrame(rows, columns=["device", "device_name", "estimator", "unsup_median_ms", "relative_to_trace"])


def plot(ctx: Context, long: pd.DataFrame):
    pal, _ = readable_palette(ctx.res)
    devices = list(dict.fromkeys(zip(long.device, long.device_name)))
    kinds = kinds_in(long.step_kind)
    ests = list(dict.fromkeys(long.estimator))
    fig, axes = plt.subplots(len(devices), len(kinds), figsize=(3.6 * len(kinds) + 1.5, 0.32 * len(ests) * len(devices) + 1.6),
                             squeeze=False, sharex=True, layout="constrained")
    for i, (dev, name) in enumerate(devices):
        for j, k in enumerate(kinds):
            ax = axes[i][j]
            d = long[(long.device == dev) & (long.device_name == name) & (long.step_kind == k)]
            for y, est in enumerate(ests):
                r = d[d.estimator == est]
                if not len(r):
                    continue
                r = r.iloc[0]
                lo = max(r.median_ms - r.q1_ms, 0) if r.q1_ms == r.q1_ms else 0
                hi = max(r.q3_ms - r.median_ms, 0) if r.q3_ms == r.q3_ms else 0
                ax.errorbar([r.median_ms], [y], xerr=[[lo], [hi]], fmt="o", color=pal.get(est, "0.4"),
                            markersize=6, capsize=2, elinewidth=1)
            ax.set_xscale("log")
            plain_log_ticks(ax.xaxis)
            ax.set_yticks(range(len(ests)), ests if j == 0 else [""] * len(ests))
            ax.set_ylim(len(ests) - 0.5, -0.5)
            ax.set_title(f"{k} step" + (f" · {dev}: {name}" if len(devices) > 1 else ""), fontsize=10)
            if i == len(devices) - 1:
                ax.set_xlabel("median ms per step (log)")
    return ctx.save_figure(fig, "timing", "Time per optimisation step (point: median; whisker: q1–q3)")


def build(ctx: Context) -> Section:
    res = ctx.res
    long = ctx.frame(timing)
    shown = wide(long) if len(long) else pd.DataFrame()
    rel = relative(long) if len(long) else pd.DataFrame()
    ctx.write_table(long, "timing_long", "Time per step (ms), each measurement once")
    ctx.write_table(shown, "timing", "Median ms per step [q1–q3]")
    ctx.write_table(rel, "timing_relative", "Unsupervised step cost relative to trace")
    sec = Section("timing", "Time per step")
    if not len(long):
        sec.text.append("No timing.csv in this folder.")
        return sec
    srcs = [f"{label} ({e.get('device', '?')}: {e.get('device_name', '?')}; preset {e.get('preset', '?')}, "
            f"commit {str(e.get('git_commit', '?'))[:10]})" for label, e in res.timing_sources]
    sec.text.append("Median milliseconds per optimisation step with the interquartile range [q1–q3], per "
                    "estimator, step kind (`sup`: labeled batch, `unsup`: unlabeled batch, `aux`: the auxiliary "
                    "classification loss) and device, from the timing probe (one task at a time). The `sup` and "
                    "`unsup` steps are the same with or without the auxiliary loss, so each estimator has one row. "
                    "Timing sources: " + "; ".join(srcs) + ".")
    if "peak_mb" in long:
        methods = sorted(set(long.peak_mb_method.dropna().astype(str))) if "peak_mb_method" in long else []
        sec.text.append("Peak memory: the growth of one more step of each kind after the timed ones, in MB"
                        + (f" ({'; '.join(methods)})" if methods else "") + ".")
    if "other_cpu_load" in long:
        load = pd.to_numeric(long.other_cpu_load, errors="coerce")
        busy = sorted(set(long.estimator[load >= CONTENDED_LOAD]))
        sec.text.append(f"**Contended:** other processes kept {CONTENDED_LOAD:g} cores or more busy beside the probe of "
                        f"{', '.join(busy)}: those times are labelled so and no verdict uses them." if busy else
                        "Every probe ran with the machine to itself (`measured`: alone; the worker's "
                        "`other_cpu_load` below " f"{CONTENDED_LOAD:g} cores).")
    pair = cpu_and_gpu(long)
    if pair:
        sec.text.append(f"CPU ({pair[0][1]}) and GPU ({pair[1][1]}) side by side: each column once per device, and "
                        f"the GPU's speed-up per step kind (CPU median ms over GPU median ms; above 1 the GPU is "
                        f"faster, below 1 slower: a step of this small model is bound by kernel launches).")
    en = rel[rel.estimator == "enum"].dropna(subset=["relative_to_trace"])
    if len(en):
        sec.text.append("**Cost of enumeration relative to sampling (enum unsup / trace unsup):** " + "; ".join(
            f"{r.device} ({r.device_name}) {r.relative_to_trace:.2f}×" for r in en.itertuples()) + ".")
    sec.tables.append(Table("Median ms per step [q1–q3]", shown, "timing",
                            ["timing.csv", "timing_long.csv", "timing_relative.csv"]))
    if ctx.plots:
        fig = plot(ctx, long)
        sec.figures.append(Figure(fig, "Median time per step of each estimator, one panel per step kind, on a log "
                                       "axis (whiskers: q1–q3); colours by estimator family."))
    return sec
