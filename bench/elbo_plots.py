"""Plots of the common objective: the discrete model's test ELBO against training step and wall time.

Input: the curves table (``curves.csv``: cell, estimator, aux, labels, seed, epoch, global_step,
elapsed_seconds, test_elbo). One panel per (aux, labels) setting, one line per cell, one colour per
estimator; the supervised baseline (no generative model, empty ``test_elbo``) is left out. The wall
time is each cell's own cumulative training time (evaluation excluded); cells that ran beside others
were slowed by them, so compare times across estimators with the timing probe, not with this axis.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import pandas as pd

AXES = {"global_step": "training step", "elapsed_seconds": "training time of the cell (s)"}


def _as_bool(v) -> bool:
    return v.strip().lower() in ("true", "1", "yes") if isinstance(v, str) else bool(v)


def plot_test_elbo(curves: pd.DataFrame, path, x: str = "global_step", palette: Optional[Dict[str, tuple]] = None,
                   markers: Optional[Dict[str, str]] = None):
    """Test ELBO (nats per image, y summed exactly) against ``x`` (global_step or elapsed_seconds)."""
    if x not in AXES:
        raise ValueError(f"x must be one of {', '.join(AXES)} (got {x!r})")
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    c = curves.copy()
    c["test_elbo"] = pd.to_numeric(c.get("test_elbo"), errors="coerce")
    c = c.dropna(subset=["test_elbo"])
    c["aux"] = c["aux"].map(_as_bool)
    settings = sorted(set(zip(c["aux"], c["labels"])))
    fig, axes = plt.subplots(1, max(len(settings), 1), figsize=(4.2 * max(len(settings), 1) + 1.5, 3.6),
                             squeeze=False)
    estimators = list(dict.fromkeys(c["estimator"]))
    colours = palette or {e: f"C{i % 10}" for i, e in enumerate(estimators)}
    for j, (aux, labels) in enumerate(settings):
        ax = axes[0][j]
        g = c[(c["aux"] == aux) & (c["labels"] == labels)]
        for (est, cell), cc in g.groupby(["estimator", "cell"], sort=False):
            cc = cc.sort_values("epoch")
            ax.plot(cc[x], cc["test_elbo"], "-", marker=(markers or {}).get(est, "o"), ms=2.5, lw=1, alpha=0.8, color=colours.get(est, "0.3"),
                    label=est)
        ax.set_title(f"{labels} labels, {'aux' if aux else 'no aux'}", fontsize=9)
        ax.set_xlabel(AXES[x])
        ax.set_ylabel("test ELBO (nats / image)")
    if not settings:
        axes[0][0].text(0.5, 0.5, "no test ELBO in these curves", ha="center", va="center")
    handles, names = axes[0][0].get_legend_handles_labels()
    seen = dict(zip(names, handles))
    if seen:
        fig.legend(seen.values(), seen.keys(), loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.86 if seen else 1, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_test_elbo_both(curves: pd.DataFrame, plots_dir, palette: Optional[Dict[str, tuple]] = None,
                        markers: Optional[Dict[str, str]] = None) -> list:
    """``test_elbo_vs_step.png`` and ``test_elbo_vs_time.png`` under ``plots_dir``; returns their paths."""
    plots_dir = Path(plots_dir)
    return [plot_test_elbo(curves, plots_dir / "test_elbo_vs_step.png", "global_step", palette, markers),
            plot_test_elbo(curves, plots_dir / "test_elbo_vs_time.png", "elapsed_seconds", palette, markers)]
