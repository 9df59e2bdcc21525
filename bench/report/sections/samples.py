"""Generated digits: one row per class y, decoded from p(x | y, z).

Kingma et al.'s analogy figure holds z fixed down each column and varies y along the rows:
``samples/<cell>.analogy.npy`` holds it, (10, n, 28, 28), one shared z ~ N(0, I) per column. Folders
written before the harness saved it hold ``samples/<cell>.npy`` with an independent z per image; the
figure says which it shows.
"""
from __future__ import annotations

from typing import Optional

import matplotlib.pyplot as plt
import numpy as np

from ...core.schema import ANALOGY_SUFFIX
from ..context import Context, Figure, Section


def choose_samples_cell(res) -> Optional[str]:
    """enum+aux with the most labels and the lowest seed; else any ok cell with samples, same rule."""
    ok = res.runs[(res.runs.status == "ok") & res.runs.cell.isin(set(res.samples))]
    if not len(ok):
        return None
    ok = ok.assign(_pref=~((ok.estimator == "enum") & ok.aux))
    ok = ok.sort_values(["_pref", "labels", "seed", "cell"], ascending=[True, False, True, True])
    return str(ok.iloc[0].cell)


def plot(ctx: Context, cell: str):
    res = ctx.res
    try:
        arr = np.load(res.samples[cell], allow_pickle=False)
        if arr.ndim != 4 or arr.shape[0] < 1:
            raise ValueError(f"shape {arr.shape}, expected (10, n, 28, 28)")
    except Exception as exc:
        res.problems.append(f"samples/{cell}.npy: unreadable ({type(exc).__name__}: {exc})")
        return None
    n_cls, n, h, w = arr.shape
    n = min(n, 12)
    pad = 2
    grid = np.full((n_cls * (h + pad) - pad, n * (w + pad) - pad), 255, dtype=np.uint8)
    for c in range(n_cls):
        for j in range(n):
            grid[c * (h + pad): c * (h + pad) + h, j * (w + pad): j * (w + pad) + w] = 255 - arr[c, j]
    fig, ax = plt.subplots(figsize=(max(0.5 * n + 2.0, 7.5), 0.5 * n_cls + 1.4), layout="constrained")
    ax.imshow(grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.grid(False)
    ax.set_yticks([c * (h + pad) + h / 2 for c in range(n_cls)], [str(c) for c in range(n_cls)])
    ax.set_xticks([])
    ax.set_ylabel("class y given to the decoder")
    if analogy(res, cell):
        ax.set_xlabel("one z ~ N(0, I) per column, shared by every row: style held, class varied; "
                      "pixel probability of p(x | y, z), dark = 1")
        caption = f"Analogies (Kingma et al. 2014, fig. 1): z fixed per column, y per row (cell {cell})"
    else:
        ax.set_xlabel("x ~ p(x | y, z), an independent z ~ N(0, I) per image; pixel probability, dark = 1")
        caption = (f"Generated digits, one row per class, an independent z per image (cell {cell}; this folder "
                   "predates the analogy figure)")
    return ctx.save_figure(fig, "samples", caption)


def analogy(res, cell: str) -> bool:
    """Whether the cell's samples share one z per column (the analogy layout)."""
    return res.samples[cell].name.endswith(ANALOGY_SUFFIX)


def build(ctx: Context) -> Section:
    sec = Section("samples", "Generated digits")
    cell = choose_samples_cell(ctx.res)
    fig = plot(ctx, cell) if cell and ctx.plots else None
    if cell is None or (ctx.plots and fig is None):
        sec.text.append("No readable samples/*.npy for an ok cell.")
        return sec
    chosen = f"Cell `{cell}` (enum + aux with the most labels, lowest seed, when present)."
    if analogy(ctx.res, cell):
        sec.text.append(f"{chosen} Kingma et al.'s analogy figure: each column decodes one style z ~ N(0, I) under "
                        "every label y = 0…9, so a good model keeps the slant and stroke down a column and changes "
                        "only the digit.")
        caption = "Analogies from the trained decoder: z fixed per column, y per row."
    else:
        sec.text.append(f"{chosen} This folder was written before the harness saved the analogy figure: each image "
                        "has its own z, so rows show the classes but columns do not share a style.")
        caption = "Ten draws per class from the trained decoder (rows: y = 0…9), an independent z per image."
    if fig:
        sec.figures.append(Figure(fig, caption))
    return sec
