"""Headline: the page's one verdict, at 3000 labels with the auxiliary loss (else the largest label
count): which variants are better than enum + aux, as good (the paired interval's lower end above
-margin), inconclusive or worse, each with its time per epoch beside it (timing probe); or "not
learning" where enum + aux does not beat the supervised-only baseline, and then no verdict. It is the
Paired differences section's verdict at that setting (:mod:`.paired`), not a comparison of its own.
Files: ``headline.csv`` (the verdict), ``headline_candidates.csv`` (every variant's verdict there).
"""
from __future__ import annotations

import pandas as pd

from ...analysis.paired_verdicts import can_switch
from ..context import Context, Section, Table
from .paired import ENUM_REF, conclusions, headline_line, headline_setting, level_text, not_learning, verdict_display


def build(ctx: Context) -> Section:
    _, v, _ = conclusions(ctx)
    text = headline_line(ctx)
    choice = headline_setting(ctx)
    cands = v.iloc[0:0]
    if choice is not None:
        cands = v[(v.reference == ENUM_REF) & (v.labels == choice[0]) & v.aux]
    switch = cands[can_switch(cands)] if len(cands) else cands
    head = pd.DataFrame([{"labels": choice[0] if choice else None, "chosen": choice[1] if choice else "",
                          "reference": ENUM_REF, "margin": ctx.margin, "level": ctx.level,
                          "learning": bool(choice) and choice[0] not in not_learning(ctx),
                          "better": ";".join(switch[switch.accuracy == "better"].variant),
                          "as_good": ";".join(switch[switch.accuracy == "non-inferior"].variant),
                          "verdict": text}])
    ctx.write_table(head, "headline", text)
    ctx.write_table(cands, "headline_candidates", f"Headline: every variant's paired verdict against {ENUM_REF}")
    sec = Section("headline", "Headline", text=[text])
    sec.text.append(f"The verdict of the Paired differences section at this setting, for \"can I switch from "
                    f"{ENUM_REF}?\": seeds paired, {level_text(ctx)} intervals, the margin {ctx.margin * 100:g} "
                    f"point{'s' if ctx.margin != 0.01 else ''} (`--margin`); the time per epoch beside each verdict "
                    f"is estimated from the timing probe and is no part of it.")
    if len(cands):
        sec.tables.append(Table(f"Every variant at {choice[1]} with the auxiliary loss", verdict_display(cands),
                                "headline", ["headline.csv", "headline_candidates.csv"]))
    return sec
