"""Summary: three lines a reader takes away, each computed from the report's tables, caveats included.
They are written to ``tables/summary.md``, which the README quotes (a test holds the two equal), and
``tables/run_cost.md`` says what the run cost (the README's "how long").

1. the headline verdict in one sentence (Headline section);
2. where it does not hold: the same comparison at the other label count, and the caveat of n and epochs;
3. the cost of enumeration per step (timing probe) and Pyro's overhead over the hand-written step.
"""
from __future__ import annotations

from typing import List, Optional

import pandas as pd

from ..common import num, t1_mean, variant_label
from ..context import Context, Section
from ..data import BASELINES
from ..frames import table1, timing
from .headline import VERDICT_ACC_TOLERANCE, VERDICT_TIME_FRACTION, verdict
from .overview import compute_minutes


def _pts(x: float) -> str:
    return f"{abs(x) * 100:.1f} points"


def verdict_line(ctx: Context) -> str:
    head, cands, _ = verdict(ctx)
    h = head.iloc[0]
    if h["labels"] is None or pd.isna(h["labels"]) or h["reference_test_acc"] is None or pd.isna(h["reference_test_acc"]):
        return "No verdict: enum + aux has no finished cell in this folder."
    labels, ref = int(h["labels"]), float(h["reference_test_acc"])
    crit = (f"within {VERDICT_ACC_TOLERANCE * 100:g} point of enum + aux's test accuracy at no more than "
            f"{VERDICT_TIME_FRACTION:.0%} of its time per epoch")
    win = cands[cands.qualifies].sort_values(["time_ratio_vs_enum_aux", "variant"], kind="stable")
    if len(win):
        r = win.iloc[0]
        others = "" if len(win) == 1 else f" ({len(win) - 1} other{'s' if len(win) > 2 else ''} too)"
        return (f"**At {labels} labels with the auxiliary loss, {r.variant} comes {crit}**{others}: "
                f"{r.mean_test_acc:.3f} against {ref:.3f}, at {r.time_ratio_vs_enum_aux:.0%} of the time.")
    best = cands.dropna(subset=["mean_test_acc"]).sort_values(["acc_diff_vs_enum_aux", "variant"],
                                                              ascending=[False, True], kind="stable")
    tail = "" if not len(best) else (f"; the closest, {best.iloc[0].variant}, is {_pts(best.iloc[0].acc_diff_vs_enum_aux)}"
                                     f" {'behind' if best.iloc[0].acc_diff_vs_enum_aux < 0 else 'ahead'}")
    return f"**At {labels} labels with the auxiliary loss, no estimator comes {crit}**{tail}."


def caveat_line(ctx: Context) -> str:
    head, cands, _ = verdict(ctx)
    t1 = ctx.frame(table1)
    grid = ctx.grid
    parts: List[str] = []
    h = head.iloc[0]
    win = [w for w in str(h.get("winners") or "").split(";") if w]
    labels = sorted(set(t1.labels)) if len(t1) else []
    if win and h["labels"] is not None and not pd.isna(h["labels"]):
        for other in (l for l in labels if l != int(h["labels"])):
            acc, _, _ = t1_mean(t1, win[0], True, other)
            ref, _, _ = t1_mean(t1, "enum", True, other)
            if acc is not None and ref is not None:
                parts.append(f"at {other} labels {variant_label(win[0], True)} is {_pts(acc - ref)} "
                             f"{'behind' if acc < ref else 'ahead of'} enum + aux ({acc:.3f} against {ref:.3f})")
        base, _, _ = t1_mean(t1, "baseline", False, int(h["labels"]))
        semi = t1[(t1.labels == int(h["labels"])) & ~t1.estimator.isin(BASELINES)]["mean"].dropna()
        if base is not None and len(semi) and base > semi.max():
            parts.append(f"at {int(h['labels'])} labels the supervised-only baseline ({base:.3f}) beats every "
                         f"semi-supervised variant")
    n = len(grid.get("seeds", []))
    parts.append(f"{n} seed{'s' if n != 1 else ''} and {grid.get('epochs', '?')} epochs per cell, unpaired means: "
                 f"the intervals in Table 1 are wide")
    return "But " + "; ".join(parts) + "."


def cost_line(ctx: Context) -> Optional[str]:
    t = ctx.frame(timing)
    if not len(t):
        return None
    t = t[(t.source == "this run") & (t.step_kind == "unsup")].set_index("estimator")
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


def build(ctx: Context) -> Section:
    lines = [verdict_line(ctx), caveat_line(ctx)]
    cost = cost_line(ctx)
    if cost:
        lines.append(cost)
    ctx.write_text("summary.md", "".join(f"- {l}\n" for l in lines))
    run = compute_minutes(ctx)
    if run:
        total, workers, per = run
        ctx.write_text("run_cost.md", f"The `{ctx.env.get('preset', '?')}` preset's cells trained for {total:.0f} "
                                      f"minutes in all (evaluation and probes not counted): at least {per:.0f} "
                                      f"minutes of wall time with {workers} worker{'s' if workers > 1 else ''}.\n")
    return Section("summary", "Summary", bullets=lines)
