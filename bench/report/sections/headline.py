"""Headline: which estimators, with the auxiliary loss, match enum + aux's test accuracy within
VERDICT_ACC_TOLERANCE at no more than VERDICT_TIME_FRACTION of its time per epoch, at 3000 labels
(else the largest label count). Files: ``headline.csv`` (the verdict), ``headline_candidates.csv``.
"""
from __future__ import annotations

from typing import Tuple

import pandas as pd

from ..common import (fmt_sig, median_seconds_per_epoch, rank_label_counts, rnd, t1_mean, variant_label,
                      variants)
from ..context import Context, Section, Table
from ..data import Results
from ..frames import table1

#: the headline verdict: within this much test accuracy of enum + aux ...
VERDICT_ACC_TOLERANCE = 0.01
#: ... at no more than this fraction of its time per epoch
VERDICT_TIME_FRACTION = 0.60


def headline(res: Results, t1: pd.DataFrame) -> Tuple[pd.DataFrame, pd.DataFrame, str]:
    """The verdict: which estimators, with the auxiliary loss, match enum + aux's accuracy within
    VERDICT_ACC_TOLERANCE at no more than VERDICT_TIME_FRACTION of its time per epoch.

    Returns (one-row summary with the verdict text, one row per candidate, the text).
    """
    cand_cols = ["labels", "variant", "estimator", "n_ok", "mean_test_acc", "acc_diff_vs_enum_aux",
                 "median_seconds_per_epoch", "time_ratio_vs_enum_aux", "within_accuracy", "within_time",
                 "qualifies"]
    tol, frac = VERDICT_ACC_TOLERANCE, VERDICT_TIME_FRACTION
    choice = rank_label_counts(t1["labels"] if len(t1) else [])
    crit = (f"within {tol * 100:g} point{'s' if tol != 0.01 else ''} ({tol:g}) of enum + aux's mean test accuracy "
            f"at no more than {frac:.0%} of its time per epoch")
    summary = {"labels": None, "chosen": "", "reference": "enum + aux", "reference_test_acc": None,
               "reference_n_ok": 0, "reference_seconds_per_epoch": None, "acc_tolerance": tol,
               "time_fraction": frac, "winners": "", "verdict": ""}
    if not choice:
        text = f"No verdict: no finished cell with a test accuracy in this folder (criterion: {crit})."
        return pd.DataFrame([{**summary, "verdict": text}]), pd.DataFrame(columns=cand_cols), text
    labels, chosen = choice[0]
    ref_acc, ref_n, ref_half = t1_mean(t1, "enum", True, labels)
    ref_sec, _ = median_seconds_per_epoch(res, "enum", True, labels)
    summary.update(labels=labels, chosen=chosen, reference_test_acc=rnd(ref_acc), reference_n_ok=ref_n,
                   reference_seconds_per_epoch=rnd(ref_sec))
    where = f"at {chosen}, with the auxiliary loss"
    if ref_acc is None or ref_sec is None:
        text = (f"**Verdict ({where}):** none can be given: enum + aux has no finished cell with "
                f"{'a test accuracy' if ref_acc is None else 'a time per epoch'} here (criterion: {crit}).")
        return pd.DataFrame([{**summary, "verdict": text}]), pd.DataFrame(columns=cand_cols), text
    rows = []
    for est, aux in variants(res):
        if not aux or est == "enum":
            continue
        acc, n, _ = t1_mean(t1, est, True, labels)
        sec, _ = median_seconds_per_epoch(res, est, True, labels)
        if acc is None and sec is None:
            continue
        diff = None if acc is None else acc - ref_acc
        ratio = None if sec is None else sec / ref_sec
        ok_acc = diff is not None and diff >= -tol - 1e-12
        ok_time = ratio is not None and ratio <= frac + 1e-12
        rows.append({"labels": labels, "variant": variant_label(est, True), "estimator": est, "n_ok": n,
                     "mean_test_acc": rnd(acc), "acc_diff_vs_enum_aux": rnd(diff),
                     "median_seconds_per_epoch": rnd(sec), "time_ratio_vs_enum_aux": rnd(ratio, 4),
                     "within_accuracy": ok_acc, "within_time": ok_time, "qualifies": ok_acc and ok_time})
    cands = pd.DataFrame(rows, columns=cand_cols)

    def describe(r) -> str:
        acc = "no test accuracy" if pd.isna(r.mean_test_acc) else \
            f"{r.mean_test_acc:.4f} ({r.acc_diff_vs_enum_aux:+.4f})"
        tm = "no time per epoch" if pd.isna(r.median_seconds_per_epoch) else \
            f"{r.time_ratio_vs_enum_aux:.0%} of the time, {r.median_seconds_per_epoch:.3g} s/epoch"
        return f"{r.variant}: {acc}, {tm}"

    ref_txt = (f"enum + aux: {ref_acc:.4f}" + (f" ± {ref_half:.4f}" if ref_half else "")
               + f" test accuracy (n={ref_n}), {ref_sec:.3g} s/epoch")
    win = cands[cands.qualifies].sort_values(["time_ratio_vs_enum_aux", "acc_diff_vs_enum_aux", "variant"],
                                             ascending=[True, False, True], kind="stable")
    if len(win):
        summary["winners"] = ";".join(win.estimator)
        text = (f"**Verdict ({where}):** {len(win)} estimator{'s' if len(win) > 1 else ''} "
                f"{'reach' if len(win) > 1 else 'reaches'} {crit}: **"
                + "; ".join(describe(r) for r in win.itertuples()) + f"** (reference {ref_txt}).")
    else:
        close = []
        fast = cands[cands.within_time & cands.mean_test_acc.notna()].sort_values(
            ["acc_diff_vs_enum_aux", "variant"], ascending=[False, True], kind="stable")
        if len(fast):
            close.append("the most accurate within the time: " + describe(fast.iloc[0]))
        good = cands[cands.within_accuracy & cands.median_seconds_per_epoch.notna()].sort_values(
            ["time_ratio_vs_enum_aux", "variant"], kind="stable")
        if len(good):
            close.append("the fastest within the accuracy: " + describe(good.iloc[0]))
        if not close and len(cands):
            best = cands.dropna(subset=["mean_test_acc"]).sort_values(["acc_diff_vs_enum_aux", "variant"],
                                                                       ascending=[False, True], kind="stable")
            if len(best):
                close.append("the most accurate: " + describe(best.iloc[0]))
        text = (f"**Verdict ({where}):** No estimator reaches {crit} (reference {ref_txt})."
                + (" Closest: " + "; ".join(close) + "." if close else " No other estimator with aux finished here."))
    return pd.DataFrame([{**summary, "verdict": text}]), cands, text



def verdict(ctx: Context) -> Tuple[pd.DataFrame, pd.DataFrame, str]:
    """(summary row, candidates, text), computed once per report."""
    return ctx.frame(_verdict)


def _verdict(res: Results):
    return headline(res, table1(res))


def build(ctx: Context) -> Section:
    summary, cands, text = verdict(ctx)
    ctx.write_table(summary, "headline", text)
    ctx.write_table(cands, "headline_candidates",
                    "Headline verdict: every candidate (with aux, other than enum) against enum + aux")
    sec = Section("headline", "Headline", text=[text])
    sec.text.append(
        f"Computed from this folder: mean test accuracy at the best validation epoch (Table 1) and the median "
        f"seconds per epoch of the ok cells (runs.csv), each candidate against enum + aux at the same label count; "
        f"a candidate qualifies within {VERDICT_ACC_TOLERANCE:g} of its accuracy at no more than "
        f"{VERDICT_TIME_FRACTION:.0%} of its time. These are unpaired means over few seeds: read the intervals "
        f"in Table 1 before the verdict.")
    if len(cands):
        show = pd.DataFrame([{
            "variant": r.variant, "n": str(r.n_ok),
            "test accuracy": "–" if pd.isna(r.mean_test_acc) else f"{r.mean_test_acc:.4f}",
            "− enum + aux": "–" if pd.isna(r.acc_diff_vs_enum_aux) else f"{r.acc_diff_vs_enum_aux:+.4f}",
            "s / epoch": fmt_sig(r.median_seconds_per_epoch),
            "× enum + aux time": "–" if pd.isna(r.time_ratio_vs_enum_aux) else f"{r.time_ratio_vs_enum_aux:.2f}×",
            "qualifies": "yes" if r.qualifies else "no"} for r in cands.itertuples()])
        sec.tables.append(Table(f"Candidates at {int(cands.labels.iloc[0])} labels", show, "headline",
                                ["headline.csv", "headline_candidates.csv"]))
    return sec
