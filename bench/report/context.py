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

from ..analysis.paired import CONFIDENCE, DEFAULT_MARGIN
from ..analysis.wall_time import DEFAULT_BUDGET
from ..core.schema import Folder
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
    margin: float = DEFAULT_MARGIN  # the paired verdict's non-inferiority margin (accuracy; 0.01 = 1 point)
    level: float = CONFIDENCE       # ... and its intervals' confidence level
    budget: float = DEFAULT_BUDGET  # the fixed time budget of the wall-time section (seconds per run)
    _frames: Dict[Callable, object] = field(default_factory=dict)

    @property
    def env(self) -> dict:
        return self.res.env

    @property
    def root(self) -> Path:
        return self.res.root

    @property
    def tables_dir(self) -> Path:
        return Folder(self.root).tables

    @property
    def plots_dir(self) -> Path:
        return Folder(self.root).plots

    @property
    def grid(self) -> dict:
        return self.env.get("grid") or {}

    def frame(self, fn: Callable[..., object], *args):
        """``fn(res, *args)``, computed once per report (``fn`` from :mod:`bench.report.frames`)."""
        key = (fn, *args)
        if key not in self._frames:
            self._frames[key] = fn(self.res, *args)
        return self._frames[key]

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

    def adopt_png(self, path, title: str) -> Optional[Path]:
        """A PNG drawn by a plotting function outside the report (``bench.analysis.paired``,
        ``bench.analysis.diagnostics``), given the report's frame: the title on top, the provenance line at the
        foot, saved without matplotlib's metadata. The drawn pixels are copied one to one, not resampled."""
        if path is None or not Path(path).is_file():
            return None
        path = Path(path)
        img = plt.imread(path)
        h, w = img.shape[:2]
        dpi, top, foot = 110, 30, 16
        fig = plt.figure(figsize=(w / dpi, (h + top + foot) / dpi), dpi=dpi)
        fig.figimage(img, xo=0, yo=foot, origin="upper")
        fig.text(0.5, 1 - top / 2 / (h + top + foot), title, fontsize=12, ha="center", va="center")
        note = fig.text(4 / w, foot / 2 / (h + top + foot), provenance(self.env), fontsize=6.5, color="0.35",
                        ha="left", va="center")
        width = note.get_window_extent(fig.canvas.get_renderer()).x1 + 8
        if width > w:  # a narrow plot: widen the canvas so the provenance line is not clipped
            fig.set_size_inches(width / dpi, (h + top + foot) / dpi)
            note.set_x(4 / width)
            fig.texts[0].set_x(w / 2 / width)
        fig.savefig(path, dpi=dpi, metadata=PNG_METADATA)
        plt.close(fig)
        return path


def slug(text: str) -> str:
    """An HTML id from a title: lower case, words joined by '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
