"""Test ELBO: the objective every SS-VAE estimator is compared on, the discrete model's test ELBO with y
summed exactly (``ssvae.evaluate``), per epoch against training step and against the cell's training
time (one line per cell, small multiples by family where more variants than a panel can show), and each
variant's final test ELBO and
importance-weighted bound (runs.csv ``final_test_elbo``, ``test_iwae``). The supervised baseline has
no generative model: it has neither. Folders written before the evaluation computed them get one line.
Files: ``test_elbo.csv``; plots ``test_elbo_vs_step.png``, ``test_elbo_vs_time.png``.
"""
from __future__ import annotations

import pandas as pd

from ..common import AUX_STYLE, fmt_sig, ok_runs, variant_label, variants
from ..context import Context, Figure, Section, Table
from ..plotting import variant_panels

#: the x axes of the test ELBO figures: curves.csv column -> axis label
AXES = {"global_step": "training step", "elapsed_seconds": "training time of the cell (s)"}


def frame(ctx: Context) -> pd.DataFrame:
    """One row per (labels, variant): mean, min and max over the ok seeds of the final test ELBO and the IWAE bound."""
    r = ok_runs(ctx.res)
    rows = []
    for labels in sorted(set(r.labels), reverse=True):
        for est, aux in variants(ctx.res):
            sub = r[(r.labels == labels) & (r.estimator == est) & (r.aux == aux)]
            elbo, iwae = sub.final_test_elbo.dropna(), sub.test_iwae.dropna()
            if not len(elbo) and not len(iwae):
                continue
            rows.append({"labels": int(labels), "variant": variant_label(est, aux), "estimator": est, "n": len(elbo),
                         "final_test_elbo": elbo.mean(), "elbo_min": elbo.min(), "elbo_max": elbo.max(),
                         "n_iwae": len(iwae), "test_iwae": iwae.mean(), "iwae_min": iwae.min(),
                         "iwae_max": iwae.max()})
    return pd.DataFrame(rows, columns=["labels", "variant", "estimator", "n", "final_test_elbo", "elbo_min",
                                       "elbo_max", "n_iwae", "test_iwae", "iwae_min", "iwae_max"])


def plot(ctx: Context, x: str, name: str, title: str):
    """Test ELBO per epoch against ``x`` (:data:`AXES`), one line per cell: a panel per label count, rows by
    family where the variants do not fit one panel, the auxiliary loss as the line style."""
    c = ctx.res.curves.assign(test_elbo=lambda d: pd.to_numeric(d["test_elbo"], errors="coerce"))
    c = c.dropna(subset=["test_elbo", x])  # the supervised baseline has no generative model: no ELBO

    def draw(ax, colour, aux, sub):
        for _, s in sub.groupby("cell"):
            s = s.sort_values("epoch")
            ax.plot(s[x], s.test_elbo, color=colour, markersize=3, lw=1, alpha=0.85, **AUX_STYLE[aux])

    fig, panels = variant_panels(ctx.res, c, draw)
    for ax, _ in panels:
        ax.set_xlabel(AXES[x])
    for ax, _ in panels[::len({l for _, l in panels})]:
        ax.set_ylabel("test ELBO (nats / image)")
    return ctx.save_figure(fig, name, title)


def _range(mean, lo, hi, n) -> str:
    if pd.isna(mean):
        return "–"
    return fmt_sig(mean, 5) + ("" if n < 2 else f" [{fmt_sig(lo, 5)}, {fmt_sig(hi, 5)}]")


def build(ctx: Context) -> Section:
    sec = Section("test-elbo", "Test ELBO")
    c = ctx.res.curves
    has_curves = "test_elbo" in c and c["test_elbo"].notna().any()
    df = frame(ctx)
    if not has_curves and not len(df):
        sec.text.append("No test ELBO in this folder: its curves and runs have no `test_elbo`, `final_test_elbo` or "
                        "`test_iwae` (written before the evaluation computed them).")
        return sec
    ctx.write_table(df, "test_elbo", "Final test ELBO and IWAE bound (nats per image): mean [min, max] over ok seeds")
    sec.text.append(
        "The discrete model's test ELBO (nats per image, y summed exactly), the objective every SS-VAE estimator is "
        "compared on, relaxations included: after every epoch (curves), and after the last one with the "
        "importance-weighted bound on log p(x) (IWAE, higher is better, never below the ELBO in expectation). The "
        "time axis is each cell's own training time; cells that ran beside others were slowed by them, so compare "
        "times with the timing probe.")
    if len(df):
        shown = pd.DataFrame([{"labels": str(r.labels), "variant": r.variant, "n": str(r.n),
                               "final test ELBO [min, max]": _range(r.final_test_elbo, r.elbo_min, r.elbo_max, r.n),
                               "test IWAE [min, max]": _range(r.test_iwae, r.iwae_min, r.iwae_max, r.n_iwae)}
                              for r in df.itertuples()])
        sec.tables.append(Table("Final test ELBO and IWAE bound, nats per image (mean over ok seeds)", shown,
                                "test_elbo"))
    if ctx.plots and has_curves:
        step = plot(ctx, "global_step", "test_elbo_vs_step", "Test ELBO per epoch against training step")
        time = plot(ctx, "elapsed_seconds", "test_elbo_vs_time", "Test ELBO per epoch against training time")
        sec.figures.append(Figure(step, "Test ELBO after each epoch against the training step, one line per cell, "
                                        "one panel per label count (and per family where more variants than a "
                                        "panel can show); dashed: with the auxiliary loss."))
        sec.figures.append(Figure(time, "The same against each cell's cumulative training time (evaluation "
                                        "excluded)."))
    return sec
