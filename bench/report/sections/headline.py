"""Headline: the page's one verdict, at 3000 labels with the auxiliary loss (else the largest label
count): which variant is equivalent to enum + aux within the margin (the whole paired 95 % interval)
at no more than the time fraction of its time per epoch (timing probe). It is the Paired differences
section's verdict at that setting (:mod:`.paired`), not a comparison of its own.
Files: ``headline.csv`` (the verdict), ``headline_candidates.csv`` (every variant's verdict there).
"""
from __future__ import annotations

import pandas as pd

from ...paired import qualifies
from ..context import Context, Section, Table
from .paired import ENUM_REF, conclusions, headline_line, headline_setting, verdict_display


def build(ctx: Context) -> Section:
    _, v, _ = conclusions(ctx)
    text = headline_line(ctx)
    choice = headline_setting(ctx)
    cands = v.iloc[0:0]
    if choice is not None:
        cands = v[(v.reference == ENUM_REF) & (v.labels == choice[0]) & v.aux]
    win = cands[qualifies(cands)] if len(cands) else cands
    head = pd.DataFrame([{"labels": choice[0] if choice else None, "chosen": choice[1] if choice else "",
                          "reference": ENUM_REF, "margin": ctx.margin, "time_fraction": ctx.time_fraction,
                          "winners": ";".join(win.variant), "verdict": text}])
    ctx.write_table(head, "headline", text)
    ctx.write_table(cands, "headline_candidates", f"Headline: every variant's paired verdict against {ENUM_REF}")
    sec = Section("headline", "Headline", text=[text])
    sec.text.append(f"The verdict of the Paired differences section at this setting: seeds paired, the margin "
                    f"±{ctx.margin * 100:g} point{'s' if ctx.margin != 0.01 else ''} "
                    f"(`--margin`), the time fraction {ctx.time_fraction:.0%} (`--time-fraction`) of {ENUM_REF}'s "
                    f"time per epoch estimated from the timing probe.")
    if len(cands):
        sec.tables.append(Table(f"Every variant at {choice[1]} with the auxiliary loss", verdict_display(cands),
                                "headline", ["headline.csv", "headline_candidates.csv"]))
    return sec
