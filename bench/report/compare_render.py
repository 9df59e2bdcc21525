"""The output of ``python -m bench compare``: the text tables, the summary line and the CSV of a comparison.

:func:`render` writes a :class:`bench.report.compare.Comparison` as a text table per measure (flagged rows start with
``!!``) ending with :func:`summary_line`; :func:`write_csv` writes every comparison row (``--csv OUT``). The
measures and their rules are :mod:`bench.report.compare`'s.
"""
from __future__ import annotations

import csv
import math
from typing import List

import pandas as pd

from .compare import ACC_METRIC, CSV_COLUMNS, IDENTITY_METRICS, MEASURES, Comparison, _estimator_rank
from .common import variant_label
from .data import Results


def _f(x, fmt="{:.4f}") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return fmt.format(x)


def _ms(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def text_table(headers: List[str], rows: List[List[str]]) -> str:
    """Plain columns: first two and text columns left-aligned, the rest right-aligned."""
    cols = list(zip(headers, *rows)) if rows else [(h,) for h in headers]
    widths = [max(len(str(v)) for v in c) for c in cols]
    left = {0, 1} | {i for i, h in enumerate(headers) if h in ("variant", "rule", "note", "cell", "group",
                                                                     "device", "kind", "old status", "estimator",
                                                                     "new status", "error")}
    lines = []
    for r in [headers, *rows]:
        cells = [str(v).ljust(w) if i in left else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _mark(row) -> str:
    return "!!" if row["flagged"] else ""


def _provenance(res: Results) -> str:
    env = res.env
    commit = str(env.get("git_commit") or "?")
    commit = commit[:10] + ("-dirty" if commit.endswith("-dirty") else "")
    name = env.get("device_name") or env.get("cpu_name") or "?"
    return (f"{res.root} (preset {env.get('preset', '?')}, commit {commit}, {env.get('device', '?')}: {name}, "
            f"{env.get('date', '?')})")


def render(cmp: Comparison, flagged_only: bool = False) -> str:
    o = cmp.options
    out = [f"old: {_provenance(cmp.old)}", f"new: {_provenance(cmp.new)}"]
    for role, res in (("old", cmp.old), ("new", cmp.new)):
        for p in res.problems:
            out.append(f"note: {role} folder: {p}")
    keep = (lambda r: r["flagged"]) if flagged_only else (lambda r: True)

    # cells and statuses
    out += ["", f"Cells: {len(cmp.cells_both)} in both, {len(cmp.only_old)} only in old, "
                f"{len(cmp.only_new)} only in new (listed, not flagged); identical: {cmp.identical} of "
                f"{cmp.ok_both} cells ok in both have the same {', '.join(IDENTITY_METRICS)}"]
    for side, cells in (("old", cmp.only_old), ("new", cmp.only_new)):
        if cells:
            out.append(f"  only in {side}: " + ", ".join(cells[:40]) + (f", ... ({len(cells)} in all)"
                                                                       if len(cells) > 40 else ""))
    status = [r for r in cmp.rows if r["measure"] == "status" and keep(r)]
    out += ["", "Status changes (flagged: ok -> failed, diverged, corrupt or stale)"]
    if status:
        out.append(text_table(["flag", "cell", "old status", "new status", "error"],
                              [[_mark(r), r["item"], r["old"], r["new"], r["note"][:80]] for r in status]))
    else:
        out.append("  none")

    # accuracy
    acc = [r for r in cmp.rows if r["measure"] == "accuracy" and keep(r)]
    out += ["", f"Accuracy ({ACC_METRIC}, mean over ok seeds; flagged when |new - old| > max(acc_tol {o.acc_tol:g}, "
                f"t95 x SE): Welch SE/df with 2+ seeds a side, acc_tol alone with 1 seed a side)"]
    if acc:
        out.append(text_table(
            ["flag", "labels", "variant", "seeds", "old", "new", "new-old", "threshold", "identical", "rule"],
            [[_mark(r), r["labels"], variant_label(r["estimator"], r["aux"]), f"{r['n_old']}/{r['n_new']}",
              _f(r["old"]), _f(r["new"]), _f(r["difference"], "{:+.4f}"), _f(r["threshold"]),
              r["note"].replace(" identical", "") if "identical" in r["note"] else "-",
              r["rule"] or r["note"]] for r in acc]))
    else:
        out.append("  none" if not flagged_only else "  nothing flagged")

    # time
    tim = [r for r in cmp.rows if r["measure"] == "time" and r["ratio"] is not None and keep(r)]
    out += ["", f"Time per step (timing.csv medians, ms; a slowdown is flagged when new/old > 1 + max(time_tol "
                f"{o.time_tol:g}, rIQR), rIQR = relative IQRs (q3-q1)/median of both combined in quadrature; "
                f"speedups are not flagged)"]
    if cmp.machine_diff:
        how = ("absolute ratios are flagged too (--strict-time)" if o.strict_time else
               "flagging instead each step time relative to trace in its own folder (rel old -> rel new, "
               "same rule with four IQRs); --strict-time flags absolute ratios too")
        out.append(f"warning: timings come from different machines ({'; '.join(cmp.machine_diff)}): absolute "
                   f"step times are not comparable; {how}")
    if tim:
        out.append(text_table(
            ["flag", "device", "variant", "kind", "old ms", "new ms", "new/old", "limit", "rel old", "rel new",
             "rel change", "rel limit", "note"],
            [[_mark(r), r["device"], variant_label(r["estimator"], r["aux"]), r["step_kind"], _ms(r["old"]),
              _ms(r["new"]), _f(r["ratio"], "{:.2f}"), _f(r["threshold"], "{:.2f}"),
              _f(r.get("rel_old"), "{:.2f}"), _f(r.get("rel_new"), "{:.2f}"), _f(r.get("rel_change"), "{:.2f}"),
              _f(r.get("rel_threshold"), "{:.2f}"), r["note"] if r["note"] == "faster" else ""] for r in tim]))
    else:
        out.append("  nothing flagged" if flagged_only else "  no step kind timed in both folders")
    one_side = [r for r in cmp.rows if r["measure"] == "time" and r["ratio"] is None]
    if one_side and not flagged_only:
        out.append("  timed in one folder only: " + ", ".join(f"{r['item']} ({r['note']})" for r in one_side))

    # variance
    var = [r for r in cmp.rows if r["measure"] == "variance"]
    out += ["", f"Gradient variance (common trajectory, ratio new/old of the variance; the relative standard "
                f"error of a variance from n draws is about sqrt(2/(n-1)): flagged when |ln ratio| > {o.var_k:g} x "
                f"sqrt(2/(n_old-1) + 2/(n_new-1)))"]
    if var:
        df = pd.DataFrame(var)
        n_flag = int(df.flagged.sum())
        out.append(f"  {len(df)} points compared (label counts x seeds x checkpoints x parameter groups), {n_flag} "
                   f"flagged; per estimator and step kind:")
        rows = []
        rank = _estimator_rank(cmp)
        df["_r"] = df.estimator.map(lambda e: rank.get(e, len(rank)))
        for (_r, est, kind), sub in df.groupby(["_r", "estimator", "step_kind"], sort=True):
            ratios = pd.to_numeric(sub.ratio, errors="coerce").dropna()
            limit = pd.to_numeric(sub.threshold, errors="coerce").dropna()
            row = {"flagged": bool(sub.flagged.any())}
            if flagged_only and not row["flagged"]:
                continue
            rows.append([_mark(row), est, kind, len(sub),
                         _f(ratios.median() if len(ratios) else None, "{:.3g}"),
                         f"{ratios.min():.3g}-{ratios.max():.3g}" if len(ratios) else "-",
                         f"x{limit.min():.3g}" if len(limit) else "-", int(sub.flagged.sum())])
        if rows:
            out.append(text_table(["flag", "estimator", "kind", "points", "median ratio",
                                   "range", "limit", "flagged"], rows))
        flagged = [r for r in var if r["flagged"]]
        if flagged:
            out.append(f"  flagged points{' (first 20; all in --csv)' if len(flagged) > 20 else ''}:")
            out.append(text_table(["flag", "point", "old", "new", "new/old", "limit", "n old/new"],
                                  [[_mark(r), r["item"], _f(r["old"], "{:.4g}"), _f(r["new"], "{:.4g}"),
                                    _f(r["ratio"], "{:.3g}"), _f(r["threshold"], "x{:.3g}"),
                                    f"{_f(r['n_old'], '{:.0f}')}/{_f(r['n_new'], '{:.0f}')}"] for r in flagged[:20]]))
    else:
        out.append("  no common-trajectory point in both folders")

    out += ["", summary_line(cmp)]
    return "\n".join(out)


def summary_line(cmp: Comparison) -> str:
    parts = ", ".join(f"{m} {len(cmp.flagged(m))}" for m in MEASURES)
    return (f"compare: {len(cmp.cells_both)} cells in both, {len(cmp.flagged())} flagged ({parts}); "
            f"{len(cmp.only_old)} only in old, {len(cmp.only_new)} only in new")


def write_csv(cmp: Comparison, path) -> None:
    extra = ["rel_old", "rel_new", "rel_change", "rel_threshold"]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS + extra, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in cmp.rows:
            w.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else
                            repr(v) if isinstance(v, float) else v) for k, v in r.items()})
