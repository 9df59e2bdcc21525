"""Cell status: counts by status, every cell that is not ok with its reason, and every problem met while
reading the folder (this section is built last, so it sees the problems of every other one)."""
from __future__ import annotations

from ..context import Context, Section, Table
from ..frames import status


def build(ctx: Context) -> Section:
    summary, bad = ctx.frame(status)
    cells = ctx.res.runs.reindex(columns=[
        "cell", "estimator", "aux", "labels", "seed", "status", "test_acc_at_best_valid", "best_valid_acc",
        "best_epoch", "final_test_acc", "epochs", "steps", "train_seconds", "seconds_per_epoch"])
    ctx.write_table(summary, "status_summary", "Cells by status")
    ctx.write_table(bad, "status_cells", "Cells that are not ok")
    ctx.write_table(cells, "cells", "Every cell")
    sec = Section("status", "Cell status", tables=[Table("Cells by status", summary, "status_summary",
                                                         ["status_summary.csv", "cells.csv"])])
    if len(bad):
        sec.tables.append(Table("Cells that are not ok", bad, "status_cells"))
    else:
        sec.text.append("Every expected cell finished.")
    if ctx.res.problems:
        sec.text.append("Problems reading the folder: " + "; ".join(ctx.res.problems))
    return sec
