"""Per-setting verdicts and the generated summary: pure functions of :mod:`bench.analysis.paired`'s paired tables.

**Verdict** ("can I switch from enum + aux?", per setting and variant; margin m, default 1 point):
*better* where the interval excludes 0 above, *worse* where it excludes 0 below, *non-inferior* ("as
good") where it is not better and its lower end is above -m, *inconclusive* otherwise (n < 2 included).
**Not learning**: at a label count where enum + aux minus the baseline has its lower end at or below 0,
no verdict against enum + aux is drawn (:func:`learning`). Time is a separate statement beside the
verdict: the time per epoch as a multiple of enum + aux's, from the isolated timing probe only
(:func:`bench.analysis.paired.isolated_epoch_ms`), never the cells' own wall times.

:func:`verdicts` draws them from :func:`bench.analysis.paired.paired_tables`; :func:`summary_text` and the sentence
helpers state them in plain words; :func:`conclusions` does it all at once for a results folder's tables.
"""
from __future__ import annotations

import math
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from .paired import (BASELINE, CONFIDENCE, DEFAULT_MARGIN, ENUM_AUX, REFERENCES, SUPERVISED, paired_tables,
                     reference_label, time_fraction)

#: the verdicts against enum + aux, in the order a sentence lists them; those that let a user switch
ORDER = ("better", "non-inferior", "inconclusive", "worse")
SWITCH = ("better", "non-inferior")
NOT_LEARNING = "not learning"
VERDICT_COLUMNS = ["reference", "labels", "aux", "variant", "n", "epochs", "ended_early", "mean_diff", "ci_low",
                   "ci_high", "level", "margin", "accuracy", "time_fraction", "verdict", "notes"]
LEARNING_COLUMNS = ["labels", "n", "mean_diff", "ci_low", "ci_high", "learning"]


# -- verdicts --------------------------------------------------------------------------------------
def accuracy_verdict(low: float, high: float, margin: float) -> str:
    """better | worse | non-inferior | inconclusive: where the paired interval lies against 0 and -margin.

    better: the interval excludes 0 above (low > 0); worse: it excludes 0 below (high < 0); non-inferior:
    not better, and the interval's lower end is above -margin; inconclusive otherwise, no interval included.
    """
    if not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive"
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    if low > -margin:
        return "non-inferior"
    return "inconclusive"


def _pts(x: float) -> str:
    return f"{round(x * 100, 1) + 0.0:+.1f}"


def _points(margin: float) -> str:
    return f"{margin * 100:g} point{'' if margin == 0.01 else 's'}"


def word(accuracy: str, margin: float = DEFAULT_MARGIN) -> str:
    """The verdict in the reader's words: 'non-inferior' is "as good (at most 1 point worse)"."""
    return f"as good (at most {_points(margin)} worse)" if accuracy == "non-inferior" else accuracy


def learning(paired: pd.DataFrame) -> pd.DataFrame:
    """One row per label count: enum + aux minus the supervised-only baseline, and whether it learns there.

    ``learning`` is False where the paired interval's lower end is not above 0 (no interval: False too),
    None where the folder has no baseline cells paired with enum + aux at that label count (not checked).
    """
    enum_ref, base_ref = reference_label(ENUM_AUX), reference_label(BASELINE)
    labels = sorted(set(paired.loc[paired["reference"] == enum_ref, "labels"]))
    b = paired[(paired["reference"] == base_ref) & (paired["variant"] == enum_ref) & (paired["n"] > 0)]
    rows = []
    for lab in labels:
        r = b[b["labels"] == lab]
        if r.empty:
            rows.append({"labels": lab, "n": 0, "mean_diff": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                         "learning": None})
            continue
        r = r.iloc[0]
        rows.append({"labels": lab, "n": int(r["n"]), "mean_diff": r["mean_diff"], "ci_low": r["ci_low"],
                     "ci_high": r["ci_high"], "learning": bool(np.isfinite(r["ci_low"]) and r["ci_low"] > 0)})
    return pd.DataFrame(rows, columns=LEARNING_COLUMNS)


def learns(learn: pd.DataFrame, labels: int) -> Optional[bool]:
    """True, False or None (not checked) at ``labels``, from :func:`learning`'s table."""
    row = learn[learn["labels"] == labels]
    if row.empty or pd.isna(row.iloc[0]["learning"]):
        return None
    return bool(row.iloc[0]["learning"])


def verdicts(paired: pd.DataFrame, timing: Optional[pd.DataFrame] = None, margin: float = DEFAULT_MARGIN,
             device: str = "cpu", confidence: float = CONFIDENCE) -> pd.DataFrame:
    """One verdict per row of ``paired`` (setting x variant x reference), with n, epochs and notes.

    Against enum + aux, a label count where enum + aux does not beat the baseline (:func:`learning`)
    gets no verdict ("not learning"); ``time_fraction`` (isolated time per epoch over enum + aux's, NaN
    where the timing probe has no rows for one side) stands beside the verdict, never in it.
    """
    enum_ref = reference_label(ENUM_AUX)
    learn = learning(paired)
    rows = []
    for r in paired.itertuples(index=False):
        timed = r.reference == enum_ref
        acc = accuracy_verdict(r.ci_low, r.ci_high, margin)
        notes = []
        if not np.isfinite(r.ci_low):
            notes.append(f"n = {r.n}: no interval" if r.n == 1 else "no paired seeds" if r.n == 0 else "no interval")
        if timed and learns(learn, r.labels) is False:
            acc = NOT_LEARNING
            notes.insert(0, f"{enum_ref} does not beat the supervised-only baseline at {r.labels} labels")
        elif timed and learns(learn, r.labels) is None:
            notes.append(f"no {enum_ref} cell paired with a supervised-only baseline at {r.labels} labels: learning "
                         "not checked")
        frac = time_fraction(timing, r.estimator, r.aux, ENUM_AUX, r.labels, device) if timed else math.nan
        if timed and not np.isfinite(frac) and r.estimator not in SUPERVISED:
            notes.append("no isolated timing")
        if r.best_at_last_epoch:
            notes.append(f"{r.best_at_last_epoch} of {r.cells} cells best at their last epoch (still rising)")
        ended = int(getattr(r, "ended_early", 0) or 0)
        ep = epochs_text(str(r.epochs).split(","), ended)
        ep = (f", {ep}" if ep else "") + (f", {ended} of {r.cells} cells ended early" if ended else "")
        what = f"no verdict: {enum_ref} is not learning here" if acc == NOT_LEARNING else word(acc, margin)
        rows.append({"reference": r.reference, "labels": r.labels, "aux": r.aux, "variant": r.variant, "n": r.n,
                     "epochs": r.epochs, "ended_early": ended, "mean_diff": r.mean_diff, "ci_low": r.ci_low,
                     "ci_high": r.ci_high, "level": confidence, "margin": margin, "accuracy": acc,
                     "time_fraction": frac, "verdict": f"{what} (n = {r.n}{ep})", "notes": "; ".join(notes)})
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


def can_switch(v: pd.DataFrame) -> pd.Series:
    """Rows (against enum + aux) whose verdict lets a user switch from enum + aux: better or non-inferior."""
    return (v["reference"] == reference_label(ENUM_AUX)) & v["accuracy"].isin(SWITCH)


# -- sentences -------------------------------------------------------------------------------------
def ci_text(r, confidence: float = CONFIDENCE) -> str:
    """'+0.8 points (95 % CI +0.6 to +0.9, n = 5)' of a row with mean_diff, ci_low, ci_high and n."""
    if np.isfinite(r.ci_low):
        return (f"{_pts(r.mean_diff)} points ({confidence * 100:g} % CI {_pts(r.ci_low)} to {_pts(r.ci_high)}, "
                f"n = {r.n})")
    return f"{_pts(r.mean_diff)} points (n = {r.n}, no interval)"


def where_text(labels: int, aux: bool, chosen: Optional[str] = None) -> str:
    return f"At {chosen or f'{labels} labels'} {'with' if aux else 'without'} the auxiliary loss"


def not_learning_text(learn_row, confidence: float = CONFIDENCE) -> str:
    """'not learning: enum + aux is -12.8 points (...) from the supervised-only baseline; no estimator ...'."""
    return (f"not learning: {reference_label(ENUM_AUX)} is {ci_text(learn_row, confidence)} from the "
            f"supervised-only baseline; no estimator verdict is drawn here")


def setting_sentence(g: pd.DataFrame, learn: pd.DataFrame, labels: int, aux: bool, margin: float = DEFAULT_MARGIN,
                     confidence: float = CONFIDENCE, chosen: Optional[str] = None,
                     bold: bool = False) -> Optional[str]:
    """One setting's verdicts against enum + aux in a sentence: the variants grouped by verdict (better, as
    good, inconclusive, worse), then each one's difference with its time per epoch beside it; "not
    learning" where enum + aux does not beat the baseline. ``g``: the setting's verdict rows against enum +
    aux; ``learn``: :func:`learning`. None where no SS-VAE variant has paired seeds there."""
    enum_ref, where = reference_label(ENUM_AUX), where_text(labels, aux, chosen)
    mark = "**" if bold else ""
    lr, ok = learn[learn["labels"] == labels], learns(learn, labels)
    if ok is False:
        return f"{mark}{where}: {not_learning_text(next(lr.itertuples()), confidence)}{mark}."
    g = g[~g["variant"].isin(SUPERVISED) & (g["n"] > 0)]
    if g.empty:
        return None
    rank = {a: i for i, a in enumerate(ORDER)}
    g = g.assign(_o=g["accuracy"].map(rank)).sort_values(["_o", "mean_diff"], ascending=[True, False],
                                                          kind="stable")
    groups = [f"{and_list(list(sub['variant']))} {'is' if len(sub) == 1 else 'are'} {word(ORDER[o], margin)}"
              for o, sub in g.groupby("_o", sort=True)]
    details = [f"{r.variant} {ci_text(r, confidence)}, "
               + (f"isolated time per epoch {r.time_fraction:.2f}× {enum_ref}'s" if np.isfinite(r.time_fraction)
                  else "no isolated timing")
               for r in g.itertuples()]
    epochs = [e for es in g["epochs"] for e in str(es).split(",")]
    unchecked = "" if ok else "; no supervised-only baseline to check that it learns"
    return (f"{mark}{where}, against {enum_ref}: {'; '.join(groups)}{mark}: {'; '.join(details)} "
            f"({epochs_text(epochs, _ended(g))}{unchecked}).")


def settings_sentences(v: pd.DataFrame, learn: pd.DataFrame, margin: float = DEFAULT_MARGIN,
                       confidence: float = CONFIDENCE, skip: Sequence = ()) -> List[str]:
    """:func:`setting_sentence` for every setting against enum + aux but those in ``skip`` ((labels, aux)),
    larger label counts first, with the auxiliary loss first; a label count where enum + aux is not learning
    gets one sentence ("At 100 labels: not learning: ..."), unless all its settings are skipped."""
    mine = v[v["reference"] == reference_label(ENUM_AUX)]
    out = []
    for labels in sorted(set(mine["labels"]), reverse=True):
        lr = learn[learn["labels"] == labels]
        if learns(learn, labels) is False:
            if not all((labels, a) in skip for a in set(mine.loc[mine["labels"] == labels, "aux"])):
                out.append(f"At {labels} labels: {not_learning_text(next(lr.itertuples()), confidence)}.")
            continue
        for aux in (True, False):
            g = mine[(mine["labels"] == labels) & (mine["aux"] == aux)]
            text = setting_sentence(g, learn, labels, aux, margin, confidence) if (labels, aux) not in skip else None
            if len(g) and text:
                out.append(text)
    return out


def summary_text(paired: pd.DataFrame, verdict_table: pd.DataFrame, margin: float = DEFAULT_MARGIN,
                 protocol: Optional[str] = None, confidence: float = CONFIDENCE) -> str:
    """A few plain sentences, generated from the paired table and the verdicts, caveats included."""
    if verdict_table.empty:
        return "No paired comparison can be made: no setting has finished cells of a variant and of enum + aux.\n"
    enum_ref = reference_label(ENUM_AUX)
    v = verdict_table
    learn = learning(paired)
    ns = sorted(set(int(n) for n in v["n"]))
    epochs = [e for es in v["epochs"] for e in str(es).split(",")]
    out = [f"Test accuracy at the best validation epoch, paired by seed (same labeled subset, initial weights and "
           f"batch order), {confidence * 100:g} % t-intervals on the per-seed differences; n = {and_list(ns)} seed"
           f"{'s' if ns != [1] else ''} per comparison, {epochs_text(epochs, _ended(v))}"
           + (f", {protocol} protocol" if protocol else "") + ". " + rule_text(margin)]
    out += settings_sentences(v, learn, margin, confidence)
    for r in learn.itertuples():
        if learns(learn, r.labels):
            out.append(f"At {r.labels} labels {enum_ref} minus the supervised-only baseline is {ci_text(r, confidence)}.")
    ids = lambda col: {c for x in paired[col] for c in str(x).split(";") if c}
    rising, cells = len(ids("rising_ids")), len(ids("cell_ids"))
    caveats = [f"n = {and_list(ns)} seeds"]
    if rising:
        caveats.append(f"{rising} of {cells} paired cells had their best validation epoch at their last one "
                       f"(still improving: longer runs may change the ordering)")
    unpaired = paired[paired["unpaired"] != ""]
    if len(unpaired):
        caveats.append(f"{len(unpaired)} comparison{'s' if len(unpaired) > 1 else ''} left out seeds with a failed, "
                       f"diverged or missing cell")
    out.append("Caveats: " + "; ".join(caveats) + ".")
    return " ".join(out) + "\n"


def rule_text(margin: float = DEFAULT_MARGIN) -> str:
    """The verdict rules in one sentence (the page and paired.md state them so)."""
    enum_ref = reference_label(ENUM_AUX)
    return (f"Against {enum_ref} a variant is better where the interval excludes 0 above, worse where it excludes "
            f"0 below, as good where its lower end is above -{_points(margin)} (non-inferior), and inconclusive "
            f"otherwise; no verdict is drawn at a label count where {enum_ref} does not beat the supervised-only "
            f"baseline (its interval's lower end at or below 0: not learning). Time per epoch, from the isolated "
            f"timing probe, is stated beside the verdict, never in it.")


def epochs_text(epochs: Sequence[str], ended: int = 0) -> str:
    """'100 epochs', '20 and 50 epochs', 'at most 100 epochs' where early stopping ended ``ended`` > 0 cells
    before their cap (``epochs``: the caps, as strings, repeats and blanks allowed); '' for no cap (no cell)."""
    caps = sorted({str(e) for e in epochs if str(e)}, key=int)
    if not caps:
        return ""
    return f"{'at most ' if ended else ''}{and_list(caps)} epoch{'s' if caps != ['1'] else ''}"


def _ended(rows: pd.DataFrame) -> int:
    """Cells of ``rows`` (verdict rows) that early stopping ended before their cap (0 where not recorded)."""
    return int(pd.to_numeric(rows.get("ended_early", pd.Series(dtype=float)), errors="coerce").fillna(0).sum())


def and_list(items: list) -> str:
    """'a', 'a and b', 'a, b and c'; 'none' for no item."""
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1] if items else "none"



# -- all at once -----------------------------------------------------------------------------------
def conclusions(runs: pd.DataFrame, timing: Optional[pd.DataFrame] = None, margin: float = DEFAULT_MARGIN,
                device: str = "cpu", references: Iterable = REFERENCES,
                confidence: float = CONFIDENCE) -> Tuple[pd.DataFrame, pd.DataFrame, str]:
    """(paired table, verdicts, summary text) of a results folder's runs and timing tables.

    The protocol named in the text is read from the runs' ``protocol`` column (absent: the default,
    ``bench``; several: all of them, comma-separated).
    """
    p = paired_tables(runs, references, confidence=confidence)
    v = verdicts(p, timing, margin, device, confidence)
    protocols = sorted(set(runs["protocol"].dropna().astype(str)) - {""}) if "protocol" in runs else []
    return p, v, summary_text(p, v, margin, ", ".join(protocols) or "bench", confidence)
