"""The page: the list of sections, and :func:`build_report`, which builds each section in turn and
renders them all through the two templates.

To add a section, write ``sections/<name>.py`` with ``build(ctx) -> Section`` and add it to
:data:`SECTIONS` (docs/report.md walks through one).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence

from ..analysis.paired import CONFIDENCE, DEFAULT_MARGIN
from ..analysis.wall_time import DEFAULT_BUDGET
from .common import provenance
from .context import Context
from .data import load_results
from .plotting import setup
from .render import render_html, render_markdown
from .sections import (anchors, curves, equal_time, grad_error, grad_mse, headline, overhead, overview, paired,
                       rankings, samples, status, summary, table1, test_elbo, timing, tuning, variance)

#: the page, top to bottom; each entry a module with ``build(ctx) -> Section | None``
SECTIONS = [summary, headline, table1, paired, equal_time, rankings, anchors, curves, test_elbo, timing, overhead,
            variance, grad_error, grad_mse, samples, tuning, overview, status]


def build_report(results_dir, compare_timing: Sequence = (), plots: bool = True, margin: float = DEFAULT_MARGIN,
                 level: float = CONFIDENCE, budget: float = DEFAULT_BUDGET) -> Dict[str, Path]:
    """Write report.md, report.html, tables/ and plots/ into ``results_dir``; return their paths.
    ``margin`` and ``level``: the paired verdict's non-inferiority margin and intervals' confidence level
    (:mod:`bench.analysis.paired`); time per epoch is stated beside each verdict, never inside it. ``budget``:
    the fixed time budget (seconds of training per run) of the accuracy-per-second table
    (:func:`bench.analysis.wall_time.fixed_budget`)."""
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"results folder {root} does not exist")
    if plots:
        setup()
    ctx = Context(load_results(root, compare_timing), plots=plots, margin=margin, level=level,
                  budget=budget)
    sections = [s for s in (module.build(ctx) for module in SECTIONS) if s is not None]
    for s in sections:  # a table's caption links to its CSV when one of that name was written
        for t in s.tables:
            if not t.csv and (ctx.tables_dir / f"{t.name}.csv").is_file():
                t.csv = [f"{t.name}.csv"]
    title = f"ssvae-bench report: {ctx.env.get('preset', root.name)}"
    prov = provenance(ctx.env)
    (root / "report.md").write_text(render_markdown(title, prov, sections, root))
    (root / "report.html").write_text(render_html(title, prov, sections))
    out = {"report.md": root / "report.md", "report.html": root / "report.html", "tables": ctx.tables_dir}
    out.update({f"plots/{f.path.name}": f.path for s in sections for f in s.figures})
    return out
