"""Plot helpers every section's figure uses: the theme, legend entries (colour = estimator, line
style and marker = with or without aux), one panel per label count.

Matplotlib runs headless (Agg). The provenance line and the title are added when a figure is saved
(:meth:`bench.report.context.Context.save_figure`).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Tuple

import matplotlib

matplotlib.use("Agg", force=True)
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from .common import AUX_STYLE, variant_label, variants  # noqa: E402
from .data import Results  # noqa: E402


def setup() -> None:
    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
    matplotlib.rcParams["svg.hashsalt"] = "ssvae-bench"


def legend_handles(pal: Dict[str, tuple], pairs: Iterable[Tuple[str, bool]]) -> List[Line2D]:
    return [Line2D([], [], color=pal[e], label=variant_label(e, a), **AUX_STYLE[a]) for e, a in pairs]


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


def label_panels(c: pd.DataFrame, width: float = 4.2, height: float = 4.2):
    """A figure with one panel per label count in ``c``: (fig, [(ax, labels), ...])."""
    labels = sorted(c.labels.unique())
    fig, axes = plt.subplots(1, len(labels), figsize=(width * len(labels) + 2, height), sharey=True,
                             squeeze=False, layout="constrained")
    return fig, list(zip(axes[0], labels))


def variant_rows(res: Results, c: pd.DataFrame, labels, seen: list):
    """(estimator, aux, rows) of each variant with rows at ``labels``, in report order; adds it to ``seen``."""
    for est, aux in variants(res):
        sub = c[(c.labels == labels) & (c.estimator == est) & (c.aux == aux)]
        if len(sub):
            if (est, aux) not in seen:
                seen.append((est, aux))
            yield est, aux, sub
