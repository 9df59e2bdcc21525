"""Estimators ranked: by mean test accuracy, by encoder_y's gradient error on the unlabeled step at
the common checkpoints, and by median seconds per epoch, at 3000 and 100 labels (else the largest and
smallest label counts, named in ``chosen``). Files: ``rank_accuracy.csv``, ``rank_grad_variance.csv``,
``rank_time.csv``.

The gradient ranking is by the MSE against the exact gradient where grad_variance.csv has it (variance
plus squared bias); in older folders by the variance, and then a biased estimator (a relaxation,
:func:`bench.analysis.diagnostics.is_biased`) is listed unranked: its variance alone says nothing of its error.
At a label count where enum + aux does not beat the supervised-only baseline (not learning, :mod:`.paired`)
the accuracy ranking lists the variants unranked: no ranking there is evidence for an estimator.
"""
from __future__ import annotations

from typing import List, Sequence

import pandas as pd

from ...analysis.diagnostics import is_biased
from ..common import (epoch_seconds, epoch_time_source, epoch_time_words, fmt_sig, ok_runs, rank_label_counts, rnd,
                      sig, t1_mean, variant_label, variants)
from ..context import Context, Section, Table
from ..data import Results
from ..frames import grad_variance, table1
from .paired import ENUM_REF, not_learning


def _ranked(rows: List[dict], key: str, ascending: bool) -> List[dict]:
    """Rank rows by ``key`` (ties: the report's variant order); rows without a value last, unranked."""
    have = [r for r in rows if r.get(key) is not None and not pd.isna(r[key])]
    none = [r for r in rows if r not in have]
    have = sorted(have, key=lambda r: (r[key] if ascending else -r[key], r["_o"]))
    for i, r in enumerate(have):
        r["rank"] = i + 1
    for r in none:
        r["rank"] = None
    return [{k: v for k, v in r.items() if k != "_o"} for r in have + none]


def rank_accuracy(res: Results, t1: pd.DataFrame, idle: Sequence[int] = ()) -> pd.DataFrame:
    """Variants by mean test accuracy; at a label count in ``idle`` (enum + aux not learning) none is ranked."""
    cols = ["labels", "chosen", "rank", "variant", "estimator", "aux", "mean_test_acc", "ci95_halfwidth", "n_ok",
            "diff_vs_enum_aux", "learning"]
    out = []
    for labels, chosen in rank_label_counts(t1["labels"] if len(t1) else []):
        ref, _, _ = t1_mean(t1, "enum", True, labels)
        rows = []
        for i, (est, aux) in enumerate(variants(res)):
            sub = t1[(t1.labels == labels) & (t1.estimator == est) & (t1.aux == aux)]
            if not len(sub):
                continue
            mean, n, half = t1_mean(t1, est, aux, labels)
            rows.append({"labels": labels, "chosen": chosen, "variant": variant_label(est, aux), "estimator": est,
                         "aux": aux, "mean_test_acc": rnd(mean), "ci95_halfwidth": rnd(half), "n_ok": n,
                         "diff_vs_enum_aux": rnd(mean - ref) if mean is not None and ref is not None else None,
                         "learning": labels not in idle, "_o": i})
        ranked = _ranked(rows, "mean_test_acc", ascending=False)
        out += [{**r, "rank": None} for r in ranked] if labels in idle else ranked
    return pd.DataFrame(out, columns=cols)


def rank_grad_variance(res: Results, grad_per: pd.DataFrame) -> pd.DataFrame:
    """encoder_y's gradient error on the unlabeled step at the common checkpoints (median), ranked low first:
    by MSE where measured (``ranked_by`` mse), else by variance with the biased estimators unranked."""
    cols = ["labels", "chosen", "rank", "variant", "biased", "ranked_by", "step_kind", "checkpoints",
            "n_checkpoints", "median_mse", "median_variance", "median_ratio_to_enum"]
    if not len(grad_per) or not {"param_group", "step_kind", "variance", "ratio_to_enum"} <= set(grad_per.columns):
        return pd.DataFrame(columns=cols)
    g = grad_per[grad_per.param_group == "encoder_y"]
    kind = "unsup" if (g.step_kind == "unsup").any() else (sorted(set(g.step_kind))[0] if len(g) else None)
    g = g[g.step_kind == kind]
    if not len(g):
        return pd.DataFrame(columns=cols)
    later = g[g.step > 0]
    which = "checkpoints > 0" if len(later) else "all checkpoints"
    g = later if len(later) else g
    by_mse = "mse" in g and g["mse"].notna().any()
    ratio = "mse_ratio_to_enum" if by_mse else "ratio_to_enum"
    order = {variant_label(e, a): i for i, (e, a) in enumerate(variants(res))}
    estimator = {variant_label(e, a): e for e, a in variants(res)}
    out = []
    for labels, chosen in rank_label_counts(g["labels"].dropna().astype(int)):
        rows = []
        for var, sub in g[g.labels == labels].groupby("variant", sort=True):
            biased = is_biased(estimator.get(var, var.removesuffix(" + aux")))
            mse = sig(float(sub["mse"].median())) if by_mse else None
            variance = sig(float(sub["variance"].median()))
            rows.append({"labels": labels, "chosen": chosen, "variant": var, "biased": biased,
                         "ranked_by": "mse" if by_mse else ("variance" if not biased else "unranked (biased)"),
                         "step_kind": kind, "checkpoints": which, "n_checkpoints": int(len(sub)),
                         "median_mse": mse, "median_variance": variance,
                         "median_ratio_to_enum": sig(float(sub[ratio].median())),
                         "_key": mse if by_mse else (None if biased else variance),
                         "_o": order.get(var, len(order))})
        out += [{k: v for k, v in r.items() if k != "_key"} for r in _ranked(rows, "_key", ascending=True)]
    return pd.DataFrame(out, columns=cols)


def rank_time(res: Results) -> pd.DataFrame:
    """Seconds per epoch per variant (:func:`bench.report.common.epoch_seconds`: the ok cells' median, or the
    isolated timing probe's estimate where the cells trained on several machines), ranked fast first, with the
    ratio to enum + aux. The column keeps its name; ``time_source`` says which of the two it holds."""
    cols = ["labels", "chosen", "rank", "variant", "estimator", "aux", "n_ok", "median_seconds_per_epoch",
            "ratio_to_enum_aux", "time_source"]
    r = ok_runs(res).dropna(subset=["seconds_per_epoch"])
    out = []
    for labels, chosen in rank_label_counts(r["labels"]):
        ref, _ = epoch_seconds(res, "enum", True, labels)
        rows = []
        for i, (est, aux) in enumerate(variants(res)):
            sec, n = epoch_seconds(res, est, aux, labels)
            if not n or sec is None:
                continue
            rows.append({"labels": labels, "chosen": chosen, "variant": variant_label(est, aux), "estimator": est,
                         "aux": aux, "n_ok": n, "median_seconds_per_epoch": rnd(sec),
                         "ratio_to_enum_aux": rnd(sec / ref, 4) if ref else None,
                         "time_source": epoch_time_source(res), "_o": i})
        out += _ranked(rows, "median_seconds_per_epoch", ascending=True)
    return pd.DataFrame(out, columns=cols)


def rank_display(df: pd.DataFrame, labels: int, kind: str) -> pd.DataFrame:
    d = df[df.labels == labels]
    rank = lambda r: "–" if r is None or pd.isna(r) else str(int(r))
    if kind == "accuracy":
        return pd.DataFrame([{"rank": rank(r.rank), "variant": r.variant,
                              "test accuracy": ("–" if pd.isna(r.mean_test_acc) else
                                                f"{r.mean_test_acc:.4f}" + ("" if pd.isna(r.ci95_halfwidth)
                                                                            else f" ± {r.ci95_halfwidth:.4f}")),
                              "n": str(r.n_ok),
                              "− enum + aux": "–" if pd.isna(r.diff_vs_enum_aux) else f"{r.diff_vs_enum_aux:+.4f}"}
                             for r in d.itertuples()])
    if kind == "variance":
        mse = d.ranked_by.eq("mse").any()
        return pd.DataFrame([{"rank": rank(r.rank), "estimator": r.variant + (" (biased)" if r.biased else ""),
                              **({"encoder_y MSE": fmt_sig(r.median_mse)} if mse else {}),
                              "encoder_y variance": fmt_sig(r.median_variance),
                              ("MSE × enum" if mse else "× enum"): fmt_sig(r.median_ratio_to_enum),
                              "checkpoints": str(r.n_checkpoints)}
                             for r in d.itertuples()])
    return pd.DataFrame([{"rank": rank(r.rank), "variant": r.variant,
                          "s / epoch": fmt_sig(r.median_seconds_per_epoch),
                          "× enum + aux": "–" if pd.isna(r.ratio_to_enum_aux) else f"{r.ratio_to_enum_aux:.2f}×",
                          "n": str(r.n_ok)} for r in d.itertuples()])



def build(ctx: Context) -> Section:
    res = ctx.res
    t1 = ctx.frame(table1)
    per, _ = ctx.frame(grad_variance)
    idle = not_learning(ctx)
    acc, var, tm = rank_accuracy(res, t1, idle), rank_grad_variance(res, per), rank_time(res)
    ctx.write_table(acc, "rank_accuracy", "Variants ranked by mean test accuracy at best validation epoch")
    by_mse = var.ranked_by.eq("mse").any() if len(var) else False
    ctx.write_table(var, "rank_grad_variance",
                    f"Estimators ranked by encoder_y gradient {'MSE against the exact gradient' if by_mse else 'variance'}"
                    f" at the common checkpoints (median){'' if by_mse else '; biased estimators unranked'}")
    ctx.write_table(tm, "rank_time", f"Variants ranked by seconds per epoch: {epoch_time_words(res)}")
    sec = Section("rankings", "Estimators ranked", side_by_side=True)
    sec.text.append(
        "Three rankings of the variants (`+ aux`: with the auxiliary loss): by mean test accuracy at the best "
        "validation epoch; by the gradient error of q(y|x)'s parameters (encoder_y) on the unlabeled step at the "
        "common checkpoints (every estimator at the same parameters, the ELBO gradient alone; median over "
        "checkpoints after the first, ratio to enum's median per checkpoint); by the seconds per training epoch "
        f"({epoch_time_words(res)}), with the ratio to enum + aux at the same label count. Ties keep the report's "
        "order; variants with no number are listed last, unranked.")
    error = ("The gradient error is the mean squared error against the exact gradient (variance plus squared bias)."
             if by_mse else
             "This folder's grad_variance.csv has no error against the exact gradient (written before the probe "
             "measured it), so the gradient ranking is by variance, and the biased estimators (relaxations, marked "
             "biased) are listed unranked: a biased estimator's variance alone says nothing of its error.")
    if len(var):  # no gradient rows at all (no probe has run yet): the "No data to rank" line below says so
        sec.text.append(error)
    for df, kind, what, name in ((acc, "accuracy", "test accuracy", "rank_accuracy"),
                                 (var, "variance", f"encoder_y gradient {'MSE' if by_mse else 'variance'} "
                                                   f"(unlabeled step)", "rank_grad_variance"),
                                 (tm, "time", "seconds per epoch", "rank_time")):
        if not len(df):
            sec.text.append(f"No data to rank by {what}.")
            continue
        for labels, chosen in dict.fromkeys(zip(df["labels"], df["chosen"])):
            why = (f" — not learning ({ENUM_REF} does not beat the supervised-only baseline): unranked, no evidence "
                   f"for an estimator" if kind == "accuracy" and labels in idle else "")
            sec.tables.append(Table(f"By {what}: {chosen}{why}", rank_display(df, labels, kind), f"{name}-{labels}",
                                    [f"{name}.csv"]))
    return sec
