"""Gradient diagnostics for the report: estimators ranked by their error, and by their error per second.

Pure functions of the result tables (``grad_variance.csv`` and ``timing.csv`` as pandas
DataFrames): no file is read here, nothing is printed.

Columns of ``grad_variance.csv`` (one row per estimator, auxiliary-loss flag, label count, seed,
trajectory, checkpoint step, parameter group and step kind; ``ssvae.metrics`` states the maths):

* ``trajectory``: ``common`` (every estimator at the parameters of one enum + aux run, its
  stateful baseline trained along that run, its temperature that of its own run at that step)
  or ``own`` (the estimator's own run, at ``own_checkpoints``);
* ``n_samples``: independent gradient draws; ``variance``: mean per-coordinate variance of one draw;
* ``mean_sq``: squared sample mean per coordinate (kept for continuity: it carries variance/n);
* ``signal`` = mean_sq - variance/n (debiased) and ``snr`` = signal / variance (debiased SNR);
* ``bias_sq``: debiased squared bias per coordinate against the reference gradient (can be
  slightly negative for an unbiased estimator: it is an unbiased estimate of zero);
* ``mse`` = bias_sq + variance: the error of one draw against the exact gradient, per coordinate;
* ``cosine``: cosine of the mean gradient with the reference;
* ``<stat>_lo`` / ``<stat>_hi`` for variance, snr, bias_sq, mse, cosine: 95 % percentile
  bootstrap interval over the draws;
* ``ref_sq``: squared reference gradient per coordinate (the scale); ``ref_err``: the
  reference's own squared error per coordinate; ``ref_draws``: z draws it averages;
* ``temperature``: the relaxation's temperature at that step (empty for other estimators);
* ``baseline_updates``: common trajectory only: updates the stateful baselines had taken.

The one efficiency definition used by every table, ranking and plot: **work-normalised MSE**
= ``mse`` x seconds per unlabeled step (median of the isolated timing probe, ``timing.csv``),
lower is better: an estimator that is twice as slow must halve its error to tie (averaging
two draws halves the variance of an unbiased estimator).

Biased estimators (``unbiased=False`` in the registry: the relaxations, and nvil, whose variance normalisation
rescales encoder_y's expected gradient) are marked ``biased`` wherever they are ranked.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

import numpy as np
import pandas as pd

from ssvae.estimators import REGISTRY
from ssvae.statistics import TABLE_STATS

from ..core.schema import CONTENDED_LOAD

EFFICIENCY = "work_normalised_mse"
EFFICIENCY_LABEL = "work-normalised MSE (MSE x seconds per unlabeled step)"
#: the statistics tabulated with their intervals (their records' ``table`` order)
STATS = TABLE_STATS


def work_normalised_mse(mse, seconds_per_step):
    """The efficiency definition (see the module docstring): MSE x seconds per unlabeled step."""
    return mse * seconds_per_step


def is_biased(estimator: str) -> bool:
    est = REGISTRY.get(estimator)
    return bool(est is not None and not est.unbiased)


def label(estimator: str) -> str:
    """The estimator's name, with ``(biased)`` for a relaxation: how rankings print it."""
    return f"{estimator} (biased)" if is_biased(estimator) else estimator


def at_checkpoint(grad: pd.DataFrame, trajectory: str = "common", step_kind: str = "unsup",
                  checkpoint: str = "last") -> pd.DataFrame:
    """Rows of one trajectory and step kind at one checkpoint per (labels, seed): ``"last"``,
    ``"first"`` or an integer step."""
    g = grad[(grad["trajectory"] == trajectory) & (grad["step_kind"] == step_kind)]
    if g.empty:
        return g
    if checkpoint in ("last", "first"):
        pick = g.groupby(["labels", "seed"])["step"].transform("max" if checkpoint == "last" else "min")
        return g[g["step"] == pick]
    return g[g["step"] == int(checkpoint)]


def mse_table(grad: pd.DataFrame, trajectory: str = "common", step_kind: str = "unsup",
              checkpoint: str = "last") -> pd.DataFrame:
    """Per (labels, param_group, estimator): the statistics and their intervals at one checkpoint.

    Over seeds: the mean of each statistic and of its interval bounds (one seed: that seed's
    bootstrap interval), with ``n_seeds``. Ranked by MSE within (labels, param_group): ``rank_mse``.
    """
    g = at_checkpoint(grad, trajectory, step_kind, checkpoint)
    cols = [c for s in STATS for c in (s, f"{s}_lo", f"{s}_hi") if c in g.columns]
    if g.empty:
        return pd.DataFrame(columns=["labels", "param_group", "estimator", "biased", "n_seeds", "step", *cols,
                                     "rank_mse"])
    agg = g.groupby(["labels", "param_group", "estimator"], as_index=False).agg(
        n_seeds=("seed", "nunique"), step=("step", "max"), **{c: (c, "mean") for c in cols})
    agg.insert(3, "biased", agg["estimator"].map(is_biased))
    agg["rank_mse"] = agg.groupby(["labels", "param_group"])["mse"].rank(method="min").astype(int)
    return agg.sort_values(["labels", "param_group", "rank_mse"]).reset_index(drop=True)


def isolated_timing(timing: pd.DataFrame, device: Optional[str] = None) -> pd.DataFrame:
    """The timing rows a comparison of times may use: measured alone (``other_cpu_load`` below
    ``bench.core.schema.CONTENDED_LOAD`` cores; unknown: kept) and on one machine, the (device, device_name)
    that timed the most estimators alone (the first in the table on a tie), so that no ratio or product mixes two
    machines' seconds. ``device``: that device kind only (cpu, cuda). A folder whose probes ran in parts on two
    CPUs keeps the majority's rows; the other's estimators have no isolated time here."""
    t = timing if device is None else timing[timing["device"] == device]
    if "other_cpu_load" in t:
        t = t[~(pd.to_numeric(t["other_cpu_load"], errors="coerce") >= CONTENDED_LOAD)]
    if t.empty or "device_name" not in t:
        return t
    key = (t["device"].astype(str) if "device" in t else "") + "\x00" + t["device_name"].astype(str)
    counts = t.groupby(key, sort=False)["estimator"].nunique()
    return t[key == counts.idxmax()]


def seconds_per_step(timing: pd.DataFrame, step_kind: str = "unsup") -> pd.Series:
    """estimator -> seconds per step of ``step_kind`` (median of the timing probe, rows of
    :func:`isolated_timing` only; one value per estimator: the timing probe times the step once for both
    auxiliary-loss flags)."""
    timing = isolated_timing(timing)
    t = timing[timing["step_kind"] == step_kind]
    return t.groupby("estimator")["median_ms"].median() / 1e3


def efficiency_table(grad: pd.DataFrame, timing: pd.DataFrame, param_group: Optional[str] = None,
                     trajectory: str = "common", checkpoint: str = "last") -> pd.DataFrame:
    """The MSE table (unlabeled steps) with seconds per unlabeled step and the work-normalised MSE.

    Ranked twice within (labels, param_group): ``rank_mse`` and ``rank_efficiency`` (1 = best).
    Interval columns of the efficiency scale the MSE interval (the timing median is taken as exact).
    """
    t = mse_table(grad, trajectory, "unsup", checkpoint)
    if param_group is not None:
        t = t[t["param_group"] == param_group]
    sec = seconds_per_step(timing)
    t = t.assign(seconds_per_step=t["estimator"].map(sec))
    for suffix in ("", "_lo", "_hi"):
        if f"mse{suffix}" in t.columns:
            t[f"{EFFICIENCY}{suffix}"] = work_normalised_mse(t[f"mse{suffix}"], t["seconds_per_step"])
    t["rank_efficiency"] = t.groupby(["labels", "param_group"])[EFFICIENCY].rank(method="min")
    t["rank_efficiency"] = t["rank_efficiency"].astype("Int64")
    return t.sort_values(["labels", "param_group", "rank_efficiency"]).reset_index(drop=True)


def ranking(eff: pd.DataFrame, by: str = EFFICIENCY) -> pd.DataFrame:
    """One line per (labels, param_group): estimators in order of ``by`` (``mse`` or the
    efficiency), relaxations labelled ``(biased)``."""
    rows = []
    for (labels, group), sub in eff.groupby(["labels", "param_group"]):
        sub = sub.dropna(subset=[by]).sort_values(by)
        rows.append({"labels": labels, "param_group": group, "by": by,
                     "order": " < ".join(label(e) for e in sub["estimator"])})
    return pd.DataFrame(rows, columns=["labels", "param_group", "by", "order"])


def trajectory_ratios(grad: pd.DataFrame, estimators: Iterable[str], against: str = "trace",
                      stat: str = "variance", trajectory: str = "common", step_kind: str = "unsup",
                      param_group: str = "encoder_y") -> pd.DataFrame:
    """``stat`` of each estimator over ``against``'s at every checkpoint (paired: same labels, seed,
    step), with whether the estimator's interval lies below ``against``'s value."""
    g = grad[(grad["trajectory"] == trajectory) & (grad["step_kind"] == step_kind)
             & (grad["param_group"] == param_group)]
    keys = ["labels", "seed", "step"]
    base = g[g["estimator"] == against][keys + [stat]].rename(columns={stat: f"{against}_{stat}"})
    out = []
    for est in estimators:
        e = g[g["estimator"] == est][keys + [stat] + [c for c in (f"{stat}_lo", f"{stat}_hi") if c in g]]
        m = e.merge(base, on=keys)
        m.insert(0, "estimator", est)
        m["ratio"] = m[stat] / m[f"{against}_{stat}"]
        out.append(m)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


# label offsets in points, nearer first: above right, below right, right, above left, below left, left, then the
# same farther out (with a thin line back to the point)
_LABEL_SPOTS = tuple((k * dx, k * dy, ha, va) for k in (1, 2.5) for dx, dy, ha, va in (
    (5, 4, "left", "bottom"), (5, -4, "left", "top"), (8, 0, "left", "center"),
    (-5, 4, "right", "bottom"), (-5, -4, "right", "top"), (-8, 0, "right", "center")))


def _place_labels(ax, names, x, y, fontsize: int = 8, passes: int = 3):
    """Label each point at one of :data:`_LABEL_SPOTS`: the spot whose box overlaps least with the other
    labels, the other texts on the axes and the other points, the nearer spot on a tie. A greedy placement
    from the top of the plot down, then ``passes`` rounds that move each label to its best spot given all
    the others. Deterministic."""
    renderer = ax.figure.canvas.get_renderer()
    points = ax.transData.transform(np.column_stack([x, y]))
    fixed = [t.get_window_extent(renderer) for t in ax.texts]

    def box(i, k):
        dx, dy, ha, va = _LABEL_SPOTS[k]
        t = ax.annotate(names[i], (x[i], y[i]), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize,
                        ha=ha, va=va)
        extent = t.get_window_extent(renderer)
        t.remove()
        return extent

    boxes = {(i, k): box(i, k) for i in range(len(names)) for k in range(len(_LABEL_SPOTS))}

    def cost(i, k, placed) -> float:
        """Pixels² shared with the other boxes, a marker's worth for each other point inside, and a little
        for a spot later in the list."""
        b = boxes[i, k]
        others = [boxes[j, placed[j]] for j in placed if j != i] + fixed
        area = sum(max(0.0, min(b.x1, o.x1) - max(b.x0, o.x0) + 2) * max(0.0, min(b.y1, o.y1) - max(b.y0, o.y0) + 2)
                   for o in others)
        p = np.delete(points, i, axis=0)
        inside = ((p[:, 0] > b.x0 - 4) & (p[:, 0] < b.x1 + 4) & (p[:, 1] > b.y0 - 4) & (p[:, 1] < b.y1 + 4)).sum()
        return area + 100.0 * inside + k

    placed = {}
    order = sorted(range(len(names)), key=lambda i: (-points[i, 1], points[i, 0]))
    for _ in range(1 + passes):
        for i in order:
            placed[i] = min(range(len(_LABEL_SPOTS)), key=lambda k: (cost(i, k, placed), k))
    for i, k in placed.items():
        dx, dy, ha, va = _LABEL_SPOTS[k]
        ax.annotate(names[i], (x[i], y[i]), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize,
                    ha=ha, va=va, arrowprops=dict(arrowstyle="-", color="0.6", lw=0.5) if k >= 6 else None)


def plot_efficiency(eff: pd.DataFrame, path, labels: Optional[int] = None, param_group: str = "encoder_y"):
    """Seconds per unlabeled step (x, log) against MSE (y, log), one point per estimator with its MSE
    interval, biased estimators hollow, and iso-efficiency diagonals (MSE x seconds constant, one per decade).
    Returns ``path``, or None when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = eff[(eff["param_group"] == param_group)].dropna(subset=["mse", "seconds_per_step"])
    if labels is None and not t.empty:
        labels = int(t["labels"].max())
    t = t[t["labels"] == labels]
    t = t[t["mse"] > 0]
    if t.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    x, y = t["seconds_per_step"].to_numpy(), t["mse"].to_numpy()
    lo = np.clip(y - t.get("mse_lo", pd.Series(y, index=t.index)).to_numpy(), 0, None)
    hi = np.clip(t.get("mse_hi", pd.Series(y, index=t.index)).to_numpy() - y, 0, None)
    ax.errorbar(x, y, yerr=[np.minimum(lo, y * 0.999), hi], fmt="none", ecolor="0.5", lw=1)
    for (est, xi, yi) in zip(t["estimator"], x, y):
        biased = is_biased(est)
        ax.plot([xi], [yi], "o", mfc="white" if biased else "C0", mec="C3" if biased else "C0", ms=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    # the steps often span less than a decade: ticks at 1, 2 and 5 of each, in milliseconds
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v * 1e3:g} ms"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    xl = (x.min() / 1.6, x.max() * 1.6)
    yl = (y.min() / 4, y.max() * 4)
    ax.set_xlim(*xl)
    ax.set_ylim(*yl)
    prod = x * y
    for e in range(math.floor(math.log10(prod.min())) - 1, math.ceil(math.log10(prod.max())) + 2):
        xs = np.geomspace(*xl, 50)
        ax.plot(xs, 10.0 ** e / xs, ":", color="0.7", lw=0.8)
        xm = math.sqrt(xl[0] * xl[1])
        if yl[0] < 10.0 ** e / xm < yl[1]:
            ax.annotate(f"1e{e}", (xm, 10.0 ** e / xm), fontsize=7, color="0.5")
    ax.set_xlabel("seconds per unlabeled step (timing probe, median)")
    ax.set_ylabel(f"MSE per coordinate, {param_group} (last common checkpoint)")
    ax.set_title("dotted: equal MSE × seconds per step (work-normalised MSE, labelled)", fontsize=9)
    fig.tight_layout()
    _place_labels(ax, [label(e) for e in t["estimator"]], x, y)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
