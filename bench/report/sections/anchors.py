"""Published anchors: ``bench/published_anchors.csv`` (Liu et al. 2019, Jang et al. 2017) beside our
closest numbers (same estimator, closest label count, with aux where we ran it). File:
``published_anchors.csv``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import pandas as pd

from ..common import (PUBLISHED_ANCHORS, epoch_seconds, epoch_time_source, num, ok_runs, rnd, t1_mean, variant_label)
from ..context import Context, Section, Table
from ..data import Results
from ..frames import table1


def load_anchors() -> pd.DataFrame:
    a = pd.read_csv(PUBLISHED_ANCHORS, comment="#")
    a["value"] = pd.to_numeric(a["value"], errors="coerce")
    a["labels"] = pd.to_numeric(a["labels"], errors="coerce")
    return a


def _closest_labels(have: Sequence[int], target) -> Optional[int]:
    have = sorted({int(l) for l in have if int(l) > 0})
    if not have:
        return None
    if target is None or pd.isna(target) or target <= 0:
        return have[-1]
    return min(have, key=lambda l: (abs(math.log(l / float(target))), -l))


def _unsup_ms(res: Results, estimator: str) -> Optional[float]:
    """This folder's unlabeled-step median ms of ``estimator`` (the run without aux where there is one)."""
    t = res.timing
    if not len(t):
        return None
    t = t[(t.estimator == estimator) & (t.step_kind == "unsup")]
    if "source" in t:
        t = t[t.source == "this run"]
    if not len(t):
        return None
    return num(t.sort_values("aux", kind="stable").iloc[0], "median_ms")


def table_anchors(res: Results, t1: pd.DataFrame) -> pd.DataFrame:
    """The published anchors, each beside our closest number (same estimator, closest label count)."""
    cols = ["source", "setting", "labels", "epochs", "estimator", "unit", "value", "published", "vs_marginalisation",
            "our_estimator", "our_variant", "our_labels", "our_value", "our_vs_enum", "our_setting"]
    a = load_anchors()
    epochs = (res.env.get("grid") or {}).get("epochs", "?")
    t1_labels = t1["labels"].tolist() if len(t1) else []
    run_labels = ok_runs(res).dropna(subset=["seconds_per_epoch"])["labels"].tolist()
    rows = []
    for r in a.itertuples():
        theirs_enum = a[(a.source == r.source) & (a.unit == r.unit) & (a.our_estimator == "enum")]
        base = float(theirs_enum.value.iloc[0]) if len(theirs_enum) else None
        row = {"source": r.source, "setting": r.setting, "labels": r.labels, "epochs": r.epochs,
               "estimator": r.estimator, "unit": r.unit,
               "value": r.value, "published": r.published, "vs_marginalisation": None,
               "our_estimator": r.our_estimator, "our_variant": None, "our_labels": None, "our_value": None,
               "our_vs_enum": None, "our_setting": ""}
        if r.unit in ("test_acc", "seconds_per_epoch"):
            if base is not None:
                row["vs_marginalisation"] = rnd(r.value - base if r.unit == "test_acc" else r.value / base, 4)
            labels = _closest_labels(t1_labels if r.unit == "test_acc" else run_labels, r.labels)
            if labels is not None:
                # the auxiliary loss is part of the published M2 models (Kingma et al.'s alpha term)
                for aux in (True, False):
                    if r.unit == "test_acc":
                        ours, n, _ = t1_mean(t1, r.our_estimator, aux, labels)
                        ref, _, _ = t1_mean(t1, "enum", aux, labels)
                    else:
                        ours, n = epoch_seconds(res, r.our_estimator, aux, labels)
                        ref, _ = epoch_seconds(res, "enum", aux, labels)
                    if ours is not None:
                        row.update(our_variant=variant_label(r.our_estimator, aux), our_labels=labels,
                                   our_value=rnd(ours))
                        if ref is not None:
                            row["our_vs_enum"] = rnd(ours - ref if r.unit == "test_acc" else ours / ref, 4)
                        per_epoch = (", median s/epoch" if epoch_time_source(res) == "cells" else
                                     ", isolated probe's s/epoch")
                        row["our_setting"] = (f"{labels} labels, {epochs} epochs, {n} seed(s)"
                                              + (per_epoch if r.unit == "seconds_per_epoch" else ""))
                        break
        elif r.unit == "speedup_vs_marginalisation":
            row["vs_marginalisation"] = rnd(r.value, 4)
            e_ms, o_ms = _unsup_ms(res, "enum"), _unsup_ms(res, r.our_estimator)
            if e_ms and o_ms:
                row.update(our_variant=r.our_estimator, our_value=rnd(e_ms / o_ms, 4),
                           our_vs_enum=rnd(e_ms / o_ms, 4),
                           our_setting=(f"unlabeled step, {r.our_estimator}/enum time per step "
                                        f"{o_ms / e_ms:.2f} ({res.env.get('device', '?')}, timing.csv)"))
        rows.append(row)
    out = pd.DataFrame(rows, columns=cols)
    for key in ("labels", "epochs", "our_labels"):
        out[key] = pd.to_numeric(out[key], errors="coerce").round().astype("Int64")
    return out


def anchors_display(an: pd.DataFrame) -> pd.DataFrame:
    def theirs(r):
        if r.unit == "test_acc":
            return f"{r.value:.3f}" + ("" if pd.isna(r.vs_marginalisation) or r.vs_marginalisation == 0 else
                                       f" ({r.vs_marginalisation:+.3f} vs marg.)")
        if r.unit == "seconds_per_epoch":
            return f"{r.value:g} s/epoch" + ("" if pd.isna(r.vs_marginalisation) or r.our_estimator == "enum" else
                                             f" ({r.vs_marginalisation:.2f}× marg.)")
        if r.unit == "speedup_vs_marginalisation":
            return f"{r.value:g}× the steps/s of marg."
        return str(r.published)

    def ours(r):
        if r.our_value is None or pd.isna(r.our_value):
            return "–"
        enum = variant_label("enum", str(r.our_variant).endswith(" + aux"))
        if pd.isna(r.our_vs_enum) or r.our_estimator == "enum":
            rel = ""
        elif r.unit == "test_acc":
            rel = f" ({r.our_vs_enum:+.4f} vs {enum})"
        else:
            rel = f" ({r.our_vs_enum:.2f}× {enum})"
        if r.unit == "test_acc":
            return f"{r.our_value:.4f}{rel}"
        if r.unit == "seconds_per_epoch":
            return f"{r.our_value:.3g} s/epoch{rel}"
        return f"{r.our_value:.2f}× the steps/s of enum"

    return pd.DataFrame([{"source": r.source, "setting": r.setting, "their estimator": r.estimator,
                          "theirs": theirs(r), "ours": "–" if r.our_variant is None or pd.isna(r.our_variant)
                          else r.our_variant, "our number": ours(r), "our setting": r.our_setting or "–"}
                         for r in an.itertuples()])



def build(ctx: Context) -> Section:
    res, grid = ctx.res, ctx.grid
    an = table_anchors(res, ctx.frame(table1))
    ctx.write_table(an, "published_anchors", "Published anchors (bench/published_anchors.csv) beside our closest numbers")
    sec = Section("anchors", "Published anchors", text=[
        "Numbers from the literature (`bench/published_anchors.csv`) beside our closest number: the same estimator, "
        "at our label count nearest theirs, with the auxiliary loss where we ran it (the published M2 models train "
        "the classifier on the labels too). The settings differ: Liu et al. 2019 used 5,000 labels and 100 epochs, "
        f"Jang et al. 2017 100 labels; this run has {', '.join(map(str, grid.get('labels', []))) or '?'} labels, "
        f"{grid.get('epochs', '?')} epochs, {len(grid.get('seeds', [])) or '?'} seed(s). Seconds per epoch depend "
        "on the machine: compare the ratios to marginalisation (enum), not the seconds."])
    sp = an[an.unit == "speedup_vs_marginalisation"] if len(an) else an
    if len(sp):
        r = sp.iloc[0]
        if r.our_value is not None and not pd.isna(r.our_value):
            sec.text.append(f"**Gumbel-softmax against marginalisation, per step:** Jang et al. report about "
                            f"{r.value:g}× the steps per second at 10 classes; our unlabeled gumbel step takes "
                            f"{1 / r.our_value:.2f}× enum's time, {r.our_value:.2f}× the steps per second.")
        else:
            sec.text.append("Gumbel-softmax against marginalisation, per step: no gumbel or enum unlabeled-step "
                            "timing in this folder.")
    if len(an):
        sec.tables.append(Table("Published numbers and ours", anchors_display(an), "published_anchors"))
    return sec
