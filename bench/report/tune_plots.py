"""The tuning study's pictures and provenance words (:mod:`.tune_study` writes the files).

:func:`plot_sensitivity` draws ``OUT/plots/tune_sensitivity.png``: a tuning grid as validation accuracy against
learning rate, one line per estimator (and per setting of its other tuned options); a search
(:func:`search_figure`) as a panel per setting with every trial at its learning rate. Provenance in the figure.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Dict, List

import seaborn as sns
from matplotlib.colors import LogNorm

from ..core.schema import Folder
from ..core.stats import variant_label
from ..run.tune import PYRO_LR, SELECT_ON
from .plotting import plt


def cell(v) -> str:
    """A value as the study's tables print it (4 significant digits; a dict as k=v, ...)."""
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={cell(x)}" for k, x in v.items())
    return str(v)


def lr_name(lr: float) -> str:
    """The words for the learning rate a search or grid starts from: "Pyro's lr" (4.2e-4), else "the grid's lr"."""
    return "Pyro's lr" if math.isclose(lr, PYRO_LR, rel_tol=1e-9) else "the grid's lr"


def provenance_line(prov: dict) -> str:
    """What made the study, in one line (the figure's footer and tune.md's first line)."""
    return (f"preset {prov.get('preset')} | labels {prov.get('labels')} | seeds {prov.get('seeds')} | "
            f"{prov.get('epochs')} epochs x {prov.get('steps_per_epoch') or 'all'} steps | {prov.get('device')} "
            f"({prov.get('cpu')}) | torch {prov.get('torch')}, pyro {prov.get('pyro')} | "
            f"{_commits(prov)} | {prov.get('date')} | selected on validation accuracy only")


def _commits(prov: dict) -> str:
    """'commit X', or for a folder made in parts 'commits X (n tasks), Y (m tasks)' ('records' for a search)."""
    if len(prov.get("record_commits") or {}) > 1:
        return "commits " + ", ".join(f"{c[:10]} ({n} records)" for c, n in prov["record_commits"].items())
    if prov.get("record_commits"):
        return f"commit {next(iter(prov['record_commits']))}"
    parts = [p for p in prov.get("parts") or [] if p.get("tasks_run")]
    if len(parts) < 2:
        return f"commit {prov.get('commit')}"
    return "commits " + ", ".join(f"{str(p.get('git_commit') or '?')[:10]} ({len(p['tasks_run'])} tasks)"
                                  for p in parts)


def search_figure(rows: List[dict], best: Dict[tuple, dict], prov: dict):
    """A search's sensitivity: one panel per setting, every trial at its learning rate: a finished trial's mean
    validation accuracy over seeds (its seeds as dots), coloured by its aux multiplier where it has one; a pruned
    trial hollow, at the mean of its seeds' best so far where it stopped; a diverged (or failed) trial a red cross
    on the panel's floor; the choice circled; the learning-rate range searched (and any narrower earlier one) as
    dotted lines."""
    settings = sorted({(r["estimator"], r["aux"], r["labels"]) for r in rows})
    ncol = min(2, len(settings))
    nrow = math.ceil(len(settings) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(6.2 * ncol, 4.3 * nrow), squeeze=False)
    mults = [r["values"]["aux_multiplier"] for r in rows if r["values"].get("aux_multiplier")]
    norm = LogNorm(min(mults), max(mults)) if len(set(mults)) > 1 else None
    cmap = plt.get_cmap("viridis")
    search, base_lr = prov.get("search") or {}, prov["lr"]  # the grid's (tune_study.provenance: Pyro's if unset)
    for ax, (est, aux, labels) in zip(axes.flat, settings):
        mine = [r for r in rows if (r["estimator"], r["aux"], r["labels"]) == (est, aux, labels)]
        done = [r for r in mine if r["eligible"]]
        stopped = [r for r in mine if {"diverged", "failed"} & set(r["statuses"].values())]
        failed = [r for r in stopped if "failed" in r["statuses"].values()]
        pruned = [r for r in mine if not r["eligible"] and r not in stopped and r.get("reached")]
        colour = lambda r: cmap(norm(r["values"]["aux_multiplier"])) if norm and r["values"].get("aux_multiplier") \
            else "tab:blue"
        for r in done:
            ax.scatter([r["options"]["lr"]] * len(r["seeds"]), list(r["seeds"].values()), s=6, color=colour(r),
                       alpha=0.6, zorder=2)
            ax.scatter([r["options"]["lr"]], [r["mean"]], s=46, color=colour(r), edgecolor="black", lw=0.5, zorder=3)
        for r in pruned:
            ax.scatter([r["options"]["lr"]], [r["best_so_far"]], s=34, facecolor="none",
                       edgecolor=colour(r), lw=1.2, zorder=3)
        ys = [a for r in done for a in r["seeds"].values()] + [a for r in pruned for _, a in r["reached"].values()]
        lo, hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
        pad = max(0.01, 0.08 * (hi - lo))
        floor = lo - 2 * pad
        ax.set_ylim(floor - pad, hi + pad)
        if stopped:
            ax.scatter([r["options"]["lr"] for r in stopped], [floor] * len(stopped), marker="x", color="red",
                       s=40, zorder=3)
            ax.text(0.01, floor, " diverged" + (" or failed" if failed else "") + " (x)",
                    transform=ax.get_yaxis_transform(), va="center", fontsize=7, color="red")
        chosen = best.get((est, aux, labels))
        if chosen is not None:
            ax.scatter([chosen["options"]["lr"]], [chosen["mean"]], s=170, facecolor="none", edgecolor="black",
                       lw=1.5, zorder=4)
        spaces = [*(search.get("widened") or {}).get(est, []), (search.get("space") or {}).get(est) or {}]
        for i, space in enumerate(spaces):
            kind, *rest = space.get("lr") or ("", None)
            if kind == "range":
                for bound in rest:
                    ax.axvline(bound, color="grey", lw=0.8, ls=":" if i == len(spaces) - 1 else (0, (1, 4)))
        ax.axvline(base_lr, color="grey", lw=0.8, ls="--")
        ax.text(base_lr, 0.99, f" {lr_name(base_lr)}", transform=ax.get_xaxis_transform(), va="top", fontsize=7,
                color="grey")
        ax.set_xscale("log")
        ax.set_title(f"{variant_label(est, aux)}, {labels} labels: {len(done)} finished, {len(pruned)} pruned, "
                     f"{len(stopped) - len(failed)} diverged" + (f", {len(failed)} failed" if failed else ""),
                     fontsize=9)
        ax.set_xlabel("learning rate (dotted: the range searched)", fontsize=8)
        ax.set_ylabel(f"validation accuracy ({SELECT_ON})", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(settings):]:
        ax.set_visible(False)
    # above the panels' own titles (a single panel's width wraps it onto three lines)
    title = ("Search sensitivity: every trial at its learning rate (filled: finished, mean over seeds, its seeds as "
             "dots; hollow: pruned, its seeds' best so far where it stopped; circled: the choice, or the leader of a "
             "setting still searching, which chooses nothing yet)")
    fig.suptitle(textwrap.fill(title, 100 if ncol == 1 else 130), fontsize=9.5,
                 y=fig.subplotpars.top + 0.32 / fig.get_figheight(), va="bottom")
    if norm is not None:
        bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes.ravel().tolist(), shrink=0.6, pad=0.02)
        bar.set_label("aux multiplier", fontsize=8)
    # below the panels (saved with bbox_inches="tight"): inside the figure it ran over a single panel's x label
    fig.text(0.01, -0.01, provenance_line(prov), fontsize=6.5, color="dimgrey", wrap=True, va="top")
    return fig


def plot_sensitivity(out: Path, rows: List[dict], best: Dict[tuple, dict], prov: dict) -> Path:
    """Validation accuracy against learning rate, one line per estimator (and per setting of its
    other tuned options), the chosen combination circled; provenance in the figure. A search: :func:`search_figure`."""
    path = Folder(out).plots / "tune_sensitivity.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    if prov.get("search"):
        fig = search_figure(rows, best, prov)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        return path
    ests = sorted({r["estimator"] for r in rows})
    palette = sns.color_palette("tab20")
    colours = dict(zip(ests, palette[::2] + palette[1::2]))
    styles = ["-", "--", ":", "-."]
    fig, ax = plt.subplots(figsize=(11, 6.5))
    for e_i, est in enumerate(ests):
        dodge = math.exp(0.03 * (e_i - (len(ests) - 1) / 2))  # estimators side by side, not on top
        lines: Dict[str, List[dict]] = {}
        for r in rows:
            if r["estimator"] != est or not r["seeds"]:
                continue
            rest = {k: v for k, v in r["values"].items() if k != "lr"}
            label = variant_label(est, r["aux"]) + (f" ({cell(rest)})" if rest else "")
            lines.setdefault(label, []).append(r)
        for i, (label, rs) in enumerate(sorted(lines.items())):
            rs = sorted(rs, key=lambda r: r["options"]["lr"])
            xs = [r["options"]["lr"] * dodge for r in rs]
            ys = [r["mean"] for r in rs]
            ax.plot(xs, ys, styles[i % len(styles)], marker="os^D"[i % 4], color=colours[est], label=label)
            for x, r in zip(xs, rs):
                for s, a in r["seeds"].items():
                    ax.plot([x], [a], ".", color=colours[est], alpha=0.5, ms=4)
                if best.get((r["estimator"], r["aux"], r["labels"])) is r:
                    ax.plot([x], [r["mean"]], "o", mfc="none", mec="black", ms=12, mew=1.5)
    base_lr = prov["lr"]
    ax.axvline(base_lr, color="grey", lw=0.8, ls="--")
    ax.text(base_lr, 1.0, f" {lr_name(base_lr)}", transform=ax.get_xaxis_transform(), va="top", fontsize=8,
            color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (estimators drawn a few percent apart at each tried value, for legibility)")
    ax.set_ylabel(f"validation accuracy ({SELECT_ON}, mean over seeds)")
    ax.set_ylim(0, 1)
    ax.set_title("Sensitivity to the learning rate (lines: mean over seeds; small dots: each seed; "
                 "circled: the choice)", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.text(0.01, 0.01, provenance_line(prov), fontsize=6.5, color="dimgrey", wrap=True)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
