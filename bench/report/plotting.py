"""Plot helpers every section's figure uses: the theme, legend entries (colour = estimator, line
style and marker = with or without aux), one panel per label count.

Matplotlib runs headless (Agg). The provenance line and the title are added when a figure is saved
(:meth:`bench.report.context.Context.save_figure`).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

import matplotlib

matplotlib.use("Agg", force=True)
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter  # noqa: E402

from .common import (AUX_STYLE, estimator_order, family, family_palette, member_markers, palette,  # noqa: E402
                     variant_label, variants)
from .data import BASELINES  # noqa: E402
from .data import Results  # noqa: E402


#: the most series one panel may show: past it a reader cannot tell the colours apart (small multiples instead)
MAX_SERIES = 8


def setup() -> None:
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
    matplotlib.rcParams["svg.hashsalt"] = "ssvae-bench"


def legend_handles(pal: Dict[str, tuple], pairs: Iterable[Tuple[str, bool]],
                   markers: Optional[Dict[str, str]] = None) -> List[Line2D]:
    """One entry per variant: its colour, aux's line style, its marker (``markers``, else aux's)."""
    markers = markers or {}
    return [Line2D([], [], color=pal.get(e, "0.4"), label=variant_label(e, a),
                   **{**AUX_STYLE[a], **({"marker": markers[e]} if e in markers else {})}) for e, a in pairs]


class _PlainLogLocator(LogLocator):
    """Major ticks at 1, 2, 5 x 10^k; at 1, 1.5, 2, 3, ..., 9 x 10^k where the view spans under a decade (5.8 to 16
    would otherwise carry the one label 10)."""

    def tick_values(self, vmin, vmax):
        lo, hi = sorted((abs(vmin) or 1e-300, abs(vmax) or 1e-300))
        self.set_params(subs=(1, 2, 5) if hi / lo >= 10 else (1, 1.5, 2, 3, 4, 5, 6, 7, 8, 9))
        return super().tick_values(vmin, vmax)


def plain_log_ticks(axis) -> None:
    """A log axis labelled 1, 2, 5, 10, 20, ... in plain numbers (1, 1.5, 2, 3, ..., 9 x 10^k on an axis spanning
    under a decade), minor ticks unlabelled (matplotlib's default labels minor ticks as "2x10^0" on an axis
    spanning about a decade, and they overlap)."""
    axis.set_major_locator(_PlainLogLocator(base=10, subs=(1, 2, 5)))
    axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_formatter(NullFormatter())


LEGEND_SHARE = 0.75  # the most of the figure's height a legend beside the panels may take (title, footer)


def legend_right(ax, handles) -> None:
    """The legend right of ``ax``: one column where it fits beside the panels, else two, and where two do
    not fit either, a taller figure. (A legend taller than its figure makes constrained layout squash the
    panels into a strip: 27 variants, one column, beside a 4.2-inch figure.)"""
    fig = ax.figure
    for ncol in (1, 2):
        legend = ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False,
                           ncol=ncol)
        height = legend.get_window_extent(fig.canvas.get_renderer()).height / fig.dpi
        if height <= LEGEND_SHARE * fig.get_figheight():
            return
    fig.set_figheight(height / LEGEND_SHARE)


def readable_palette(res: Results) -> Tuple[Dict[str, tuple], Dict[str, str]]:
    """(estimator -> colour, estimator -> marker) for a panel showing every estimator: the report's shades
    where there are at most :data:`MAX_SERIES` estimators, else one colour per family and a marker per member
    (past that many, shades of one hue cannot be told apart)."""
    ests = estimator_order(res)
    if len(ests) <= MAX_SERIES:
        return palette(res), {}
    return family_palette(ests), member_markers(ests)


def label_panels(c: pd.DataFrame, width: float = 4.2, height: float = 4.2):
    """A figure with one panel per label count in ``c``: (fig, [(ax, labels), ...])."""
    labels = sorted(c.labels.unique())
    fig, axes = plt.subplots(1, len(labels), figsize=(width * len(labels) + 2, height), sharey=True,
                             squeeze=False, layout="constrained")
    return fig, list(zip(axes[0], labels))


def variant_groups(pairs: List[Tuple[str, bool]], limit: int = MAX_SERIES,
                   by_aux: bool = True) -> List[Tuple[str, List[Tuple[str, bool]]]]:
    """The rows of a figure's small multiples, [(name, variants)]: every variant in one row where they fit
    in ``limit``, else one row per family (one past the limit split by aux: ``by_aux``), the supervised
    baseline in each row for reference."""
    base = [p for p in pairs if p[0] in BASELINES]
    rest = [p for p in pairs if p not in base]
    if len(pairs) <= limit:
        return [("", list(pairs))]
    groups = []
    for fam in dict.fromkeys(family(e) for e, _ in rest):
        members = [p for p in rest if family(p[0]) == fam]
        halves = [[p for p in members if p[1] == a] for a in (False, True)]
        if by_aux and len(members) + len(base) > limit and all(halves):
            groups += [(f"{fam or 'other'}, {'with' if a else 'without'} aux", h + base)
                       for a, h in zip((False, True), halves)]
        else:
            groups.append((fam or "other", members + base))
    return groups


def group_palette(res: Results, groups) -> Dict[str, tuple]:
    """Colours for small multiples: the report's own in a single row; in one row per family, distinct hues
    within each row (tab10; the report's shades of one family cannot be told apart), the baseline grey."""
    pal = palette(res)
    if len(groups) == 1:
        return [pal] * 1
    out = []
    for _, pairs in groups:
        ests = [e for e in dict.fromkeys(e for e, _ in pairs) if e not in BASELINES]
        row = {e: tuple(float(x) for x in sns.color_palette("tab10")[[0, 1, 2, 3, 4, 5, 6, 8, 9][i % 9]])
               for i, e in enumerate(ests)}
        out.append({**pal, **row})
    return out


def variant_panels(res: Results, c: pd.DataFrame, draw):
    """One panel per label count (columns) and group of variants (rows: all in one where they fit, else one
    per family), ``draw(ax, colour, aux, rows)`` per variant; titles and one legend per row."""
    present = [(e, a) for e, a in variants(res) if ((c.estimator == e) & (c.aux == a)).any()]
    groups = variant_groups(present)
    pals = group_palette(res, groups)
    labels = sorted(c.labels.unique())
    fig, axes = plt.subplots(len(groups), len(labels), sharey=True, squeeze=False, layout="constrained",
                             # one label count alone is drawn wider: the provenance line at the foot sets the width
                             figsize=(max(4.2 * len(labels) + 2, 9.5), 4.2 if len(groups) == 1 else 3.0 * len(groups)))
    for row, (name, pairs), pal in zip(axes, groups, pals):
        shown = []
        for ax, l in zip(row, labels):
            for est, aux in pairs:
                sub = c[(c.labels == l) & (c.estimator == est) & (c.aux == aux)]
                if len(sub):
                    draw(ax, pal[est], aux, sub)
                    shown += [(est, aux)] if (est, aux) not in shown else []
            ax.set_title(f"{l} labels" + (f" · {name}" if name else ""), fontsize=10)
        legend_right(row[-1], legend_handles(pal, shown))
    return fig, [(ax, l) for row in axes for ax, l in zip(row, labels)]


# -- what a figure draws -------------------------------------------------------------------------------


def _finite_points(xy) -> int:
    xy = np.asarray(xy, dtype=float).reshape(-1, 2) if np.size(xy) else np.zeros((0, 2))
    return int(np.isfinite(xy).all(axis=1).sum())


def _line_draws(line) -> bool:
    """A Line2D in data coordinates that puts ink on the page: a marker on one finite point, or two points."""
    n = _finite_points(line.get_xydata())
    has_marker = line.get_marker() not in (None, "", "None", " ", "none")
    has_line = line.get_linestyle() not in ("None", "", " ", "none")
    return line.get_visible() and (n >= 1 and has_marker or n >= 2 and has_line)


def _collection_draws(coll) -> bool:
    """A scatter with a finite point, or any other collection (error bars, bands, a heatmap) with a path."""
    if not coll.get_visible():
        return False
    if isinstance(coll, PathCollection):
        return _finite_points(coll.get_offsets()) > 0
    return len(coll.get_paths()) > 0


def _in_data(artist, ax) -> bool:
    """Drawn in the panel's data coordinates (not a reference line or band spanning the axes, e.g. axvline)."""
    t = artist.get_transform()
    off = getattr(artist, "get_offset_transform", None)
    return t == ax.transData or (off is not None and off() == ax.transData)


def _colour_key(c):
    rgb = tuple(round(float(x), 2) for x in to_rgba(c)[:3])
    return None if max(rgb) - min(rgb) < 0.02 else rgb  # greys and black: references, means, the baseline


def _line_colour(line):
    """The colour a reader sees: the line's, or for markers alone their face (else their edge)."""
    if line.get_linestyle() not in ("None", "", " ", "none"):
        return _colour_key(line.get_color())
    face = line.get_markerfacecolor()
    face = None if isinstance(face, str) and face.lower() == "none" else _colour_key(face)
    return face or _colour_key(line.get_markeredgecolor())


def panel_summary(ax) -> dict:
    """What one panel draws: ``data`` (artists with data on the page) and ``series`` (distinct colours
    among its lines and scatters; greys and black, which mark references, means and the baseline, not
    counted: a reader tells series apart by colour, so more than :data:`MAX_SERIES` is a panel too many)."""
    lines = [l for l in ax.lines if _in_data(l, ax) and _line_draws(l)]
    colls = [c for c in ax.collections if _in_data(c, ax) and _collection_draws(c)]
    patches = [p for p in ax.patches if p.get_transform() == ax.transData and p.get_visible()]
    colours = {_line_colour(l) for l in lines}
    colours |= {_colour_key(c.get_facecolor()[0]) for c in colls
                if isinstance(c, PathCollection) and len(c.get_facecolor()) == 1}
    return {"title": ax.get_title() or ax.get_label(), "data": len(lines) + len(colls) + len(patches) + len(ax.images),
            "series": len(colours - {None})}


def figure_problems(fig, max_series: int = MAX_SERIES) -> List[str]:
    """Panels of ``fig`` that draw nothing, or more than ``max_series`` series: one line each (empty: fine)."""
    out = []
    for i, ax in enumerate(fig.axes):
        if not ax.axison or ax.get_label() == "<colorbar>":
            continue
        s = panel_summary(ax)
        name = f"panel {i + 1} ({s['title'] or 'untitled'})"
        if not s["data"]:
            out.append(f"{name}: empty")
        elif s["series"] > max_series:
            out.append(f"{name}: {s['series']} series (at most {max_series})")
    return out
