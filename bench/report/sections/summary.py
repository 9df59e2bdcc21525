"""Summary: the lines a reader takes away, each computed from the report's tables, caveats included.
They are written to ``tables/summary.md``, which the README quotes (a test holds the two equal), and
``tables/run_cost.md`` says what the run cost (the README's "how long").

1. the headline verdict in one sentence: the paired verdict (Headline and Paired differences sections);
2. elsewhere: the other label count with the auxiliary loss, and enum + aux against the supervised baseline;
3. the caveats: n, epochs, protocol, cells still improving at their last epoch;
4. the cost of enumeration per step (timing probe) and Pyro's overhead over the hand-written step;
5. gradient error against the exact gradient, and the trained baselines against trace (Gradient error
   section), where the folder has the probe's error columns.
"""
from __future__ import annotations

from typing import Optional

import pandas as pd

from ..common import num
from ..context import Context, Section
from ..frames import timing
from .grad_mse import summary_lines as gradient_lines
from .overview import run_cost_line
from .paired import caveat_line, elsewhere_line, headline_line


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
    lines = [headline_line(ctx), elsewhere_line(ctx), caveat_line(ctx), cost_line(ctx), *gradient_lines(ctx)]
    lines = [l for l in lines if l]
    ctx.write_text("summary.md", "".join(f"- {l}\n" for l in lines))
    cost = run_cost_line(ctx)
    if cost:
        ctx.write_text("run_cost.md", cost + "\n")
    return Section("summary", "Summary", bullets=lines)
