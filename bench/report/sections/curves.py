"""Learning curves: validation accuracy per epoch (mean over seeds, each seed as a thin line) and test
accuracy against cumulative training time (one line per seed), one panel per label count (and
per family where more variants than a panel can show)."""
from __future__ import annotations

from matplotlib.ticker import MaxNLocator

from ..plotting import plain_log_ticks, variant_panels
from ..common import AUX_STYLE
from ..context import Context, Figure, Section


def plot_learning_curves(ctx: Context):
    c = ctx.res.curves.dropna(subset=["valid_acc"])
    if not len(c):
        return None

    def draw(ax, colour, aux, sub):
        for _, s in sub.groupby("seed"):  # each seed, thin
            s = s.sort_values("epoch")
            ax.plot(s.epoch, s.valid_acc, color=colour, linewidth=0.7, alpha=0.35,
                    linestyle=AUX_STYLE[aux]["linestyle"])
        mean = sub.groupby("epoch")["valid_acc"].mean()
        ax.plot(mean.index, mean.values, color=colour, markersize=3.5, linewidth=1.6,
                markevery=max(1, len(mean) // 20), **AUX_STYLE[aux])  # 100 epochs: a marker every 5th, not a band

    fig, panels = variant_panels(ctx.res, c, draw)
    for ax, _ in panels:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax, _ in panels[::len({l for _, l in panels})]:
        ax.set_ylabel("validation accuracy")
    return ctx.save_figure(fig, "learning_curves", "Validation accuracy per epoch (thick: mean over seeds; thin: each seed)")


def plot_accuracy_vs_time(ctx: Context):
    c = ctx.res.curves.dropna(subset=["test_acc", "elapsed_seconds"])
    if not len(c):
        return None

    def draw(ax, colour, aux, sub):
        for _, s in sub.groupby("seed"):
            s = s.sort_values("elapsed_seconds")
            ax.plot(s.elapsed_seconds, s.test_acc, color=colour, markersize=3, alpha=0.85, **AUX_STYLE[aux])

    fig, panels = variant_panels(ctx.res, c, draw)
    for ax, _ in panels:
        ax.set_xscale("log")
        plain_log_ticks(ax.xaxis)
        ax.set_xlabel("cumulative training wall time (s, log)")
    for ax, _ in panels[::len({l for _, l in panels})]:
        ax.set_ylabel("test accuracy")
    return ctx.save_figure(fig, "accuracy_vs_time", "Test accuracy vs training time (one line per seed)")


def build(ctx: Context) -> Section:
    sec = Section("curves", "Learning curves")
    if not len(ctx.res.curves):
        sec.text.append("No per-epoch curves in this folder.")
        return sec
    if ctx.plots:
        lc, at = plot_learning_curves(ctx), plot_accuracy_vs_time(ctx)
        if lc:
            sec.figures.append(Figure(lc, "Validation accuracy after each epoch, one panel per label count: the mean "
                                          "over seeds (thick, markers) and each seed (thin)."))
        if at:
            sec.figures.append(Figure(at, "Test accuracy against cumulative training time (log), one line per seed: "
                                          "what each estimator buys per second. Cells ran two at a time, so times "
                                          "carry the noise of a shared machine; the timing probe is the clean measure."))
    sec.text.append("Curves per epoch and cell: `curves.csv` in the results folder.")
    return sec
