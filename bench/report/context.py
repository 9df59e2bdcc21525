"""The report's building blocks: :class:`Section` (what one section puts on the page), :class:`Table`,
:class:`Figure`, and :class:`Context` (what a section reads from and writes through).

A section module has one function, ``build(ctx) -> Section | None``: it computes its frames (shared
ones through ``ctx.frame(fn)``, computed once per report), writes its files with
``ctx.write_table`` / ``ctx.save_figure`` and returns what the page shows. ``None``: the section has
nothing to say for this folder and is left off the page.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import matplotlib.pyplot as plt
import pandas as pd

from .common import provenance
from .data import Results
from .render import markdown_table

PNG_METADATA = {"Software": None}


@dataclass
class Table:
    caption: str
    frame: pd.DataFrame             # what the page shows (formatted strings or numbers)
    name: str                       # tables/<name>.csv|md; the HTML id of the table
    csv: List[str] = field(default_factory=list)  # the CSV files the caption links to (default: <name>.csv)


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Section:
    id: str                         # the anchor on the page (report.html#<id>)
    title: str
    text: List[str] = field(default_factory=list)          # paragraphs (markdown: `code`, **bold**)
    bullets: List[str] = field(default_factory=list)       # a list after the paragraphs
    tables: List[Table] = field(default_factory=list)
    figures: List[Figure] = field(default_factory=list)
    side_by_side: bool = False      # tables in one row (html)
    notes: List[str] = field(default_factory=list)         # paragraphs after the tables and figures


@dataclass
class Context:
    res: Results
    plots: bool = True              # False: no PNG is drawn (save_figure returns None)
    _frames: Dict[Callable, object] = field(default_factory=dict)

    @property
    def env(self) -> dict:
        return self.res.env

    @property
    def root(self) -> Path:
        return self.res.root

    @property
    def tables_dir(self) -> Path:
        return self.root / "tables"

    @property
    def plots_dir(self) -> Path:
        return self.root / "plots"

    @property
    def grid(self) -> dict:
        return self.env.get("grid") or {}

    def frame(self, fn: Callable[[Results], object]):
        """``fn(res)``, computed once per report (``fn`` from :mod:`bench.report.frames`)."""
        if fn not in self._frames:
            self._frames[fn] = fn(self.res)
        return self._frames[fn]

    def write_table(self, df: pd.DataFrame, name: str, caption: str = "") -> str:
        """tables/<name>.csv (as is) and tables/<name>.md (caption, table, one provenance line)."""
        self.tables_dir.mkdir(parents=True, exist_ok=True)
        df.to_csv(self.tables_dir / f"{name}.csv", index=False, lineterminator="\n")
        md = (f"{caption}\n\n" if caption else "") + markdown_table(df) + f"\n_{provenance(self.env)}_\n"
        (self.tables_dir / f"{name}.md").write_text(md)
        return f"{name}.csv"

    def write_text(self, name: str, text: str) -> Path:
        """tables/<name> as given (e.g. the summary the README quotes)."""
        self.tables_dir.mkdir(parents=True, exist_ok=True)
        path = self.tables_dir / name
        path.write_text(text)
        return path

    def save_figure(self, fig, name: str, title: str) -> Optional[Path]:
        """plots/<name>.png with the title on top and the provenance line at the foot (inside the image)."""
        path = self.plots_dir / f"{name}.png"
        fig.suptitle(title, fontsize=12)
        fig.text(0.0, 0.0, provenance(self.env), fontsize=6.5, color="0.35", ha="left", va="top",
                 transform=fig.transFigure)
        path.parent.mkdir(parents=True, exist_ok=True)
        # bbox "tight" grows the canvas to every artist (legend outside the axes, the provenance line):
        # nothing is clipped
        fig.savefig(path, dpi=110, metadata=PNG_METADATA, bbox_inches="tight", pad_inches=0.15)
        plt.close(fig)
        return path


def slug(text: str) -> str:
    """An HTML id from a title: lower case, words joined by '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
