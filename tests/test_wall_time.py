"""Accuracy per second (bench.analysis.wall_time): equal time, a fixed budget, time to a validation target."""
import math

import pandas as pd
import pytest

from bench.analysis import wall_time


def _timing(ms):
    """The probe's median step times: {estimator: (sup, unsup)} in ms, aux steps free."""
    return pd.DataFrame([dict(estimator=est, aux=True, device="cpu", step_kind=kind, batch_size=100, median_ms=m)
                         for est, (sup, unsup) in ms.items() for kind, m in (("sup", sup), ("unsup", unsup), ("aux", 0.0))])


def _cells(curve, bump=0.0):
    """runs and curves of two seeds per variant from {(estimator, aux): [(valid, test) per epoch]}."""
    runs, curves = [], []
    for (est, aux), points in curve.items():
        for seed in (0, 1):
            cell = f"{est}{'+aux' if aux else ''}_L100_s{seed}"
            b = bump * seed
            best = max(range(len(points)), key=lambda i: (points[i][0], -i))
            runs.append(dict(cell=cell, estimator=est, aux=aux, labels=100, seed=seed, status="ok",
                             test_acc_at_best_valid=points[best][1] + b, epochs=len(points), best_epoch=best + 1))
            curves += [dict(cell=cell, epoch=i + 1, valid_acc=v + b, test_acc=t + b) for i, (v, t) in enumerate(points)]
    return pd.DataFrame(runs), pd.DataFrame(curves)


def test_accuracy_at_equal_wall_time_picks_by_validation_within_enum_aux_time():
    """enum + aux runs 4 epochs; gumbel + aux takes a third of its time per epoch, so 12 epochs fit: its best
    validation epoch among them picks its test accuracy; enum-seq + aux, twice as slow, gets 2 epochs."""
    runs, curves = [], []
    curve = {  # per epoch (valid, test)
        ("enum", True): [(0.50, 0.50), (0.70, 0.69), (0.80, 0.79), (0.85, 0.84)],
        ("gumbel", True): [(0.4 + 0.04 * e, 0.39 + 0.04 * e) for e in range(1, 15)],  # 14 epochs run
        ("enum-seq", True): [(0.60, 0.61), (0.75, 0.74), (0.90, 0.90), (0.91, 0.91)],
        ("trace", True): [(0.30, 0.30), (0.35, 0.36)],                                  # ran 2 of the 12 that fit
        ("baseline", False): [(0.8, 0.8)] * 4}
    for (est, aux), points in curve.items():
        for seed in (0, 1):
            cell = f"{est}{'+aux' if aux else ''}_L100_s{seed}"
            bump = 0.01 * seed
            best = max(range(len(points)), key=lambda i: (points[i][0], -i))
            runs.append(dict(cell=cell, estimator=est, aux=aux, labels=100, seed=seed, status="ok",
                             test_acc_at_best_valid=points[best][1] + bump, epochs=len(points), best_epoch=best + 1))
            curves += [dict(cell=cell, epoch=i + 1, valid_acc=v + bump, test_acc=t + bump)
                       for i, (v, t) in enumerate(points)]
    timing = []
    for est, (sup, unsup) in {"enum": (30.0, 90.0), "gumbel": (10.0, 30.0), "enum-seq": (60.0, 180.0),
                              "trace": (10.0, 30.0)}.items():
        for kind, m in (("sup", sup), ("unsup", unsup), ("aux", 0.0)):
            timing.append(dict(estimator=est, aux=True, device="cpu", step_kind=kind, batch_size=100, median_ms=m))
    et = wall_time.equal_time(pd.DataFrame(runs), pd.DataFrame(curves), pd.DataFrame(timing)).set_index("variant")
    assert set(et.index) == {"enum + aux", "gumbel + aux", "enum-seq + aux", "trace + aux"}  # no baseline
    assert et.loc["enum + aux", "mean_diff"] == 0 and et.loc["enum + aux", "budget_epochs"] == 4
    g = et.loc["gumbel + aux"]
    assert g["time_fraction"] == pytest.approx(1 / 3) and g["budget_epochs"] == pytest.approx(12)
    assert g["mean_acc"] == pytest.approx(0.39 + 0.04 * 12 + 0.005)  # epoch 12, not its last (14)
    assert g["mean_diff"] == pytest.approx(0.39 + 0.48 - 0.84) and g["n"] == 2 and g["note"] == ""
    s = et.loc["enum-seq + aux"]
    assert s["budget_epochs"] == pytest.approx(2) and s["mean_acc"] == pytest.approx(0.745)  # epoch 2's test
    assert et.loc["trace + aux", "note"] == "its run ended at epoch 2 of the 12 that fit: a lower bound"
    none = wall_time.equal_time(pd.DataFrame(runs), pd.DataFrame(curves), None).set_index("variant")
    assert none.loc["gumbel + aux", "note"] == "no isolated timing" and math.isnan(none.loc["gumbel + aux", "mean_acc"])



def test_enum_aux_ended_early_sets_the_budget_by_the_epochs_it_ran():
    """Early stopping ended enum + aux after 2 of its 4 epochs: the budget is those 2 epochs' time (6 of gumbel +
    aux's epochs at a third of the time each), not the 4 it was allowed; a cell without ``epochs_run`` ran them all."""
    runs, curves = _cells({("enum", True): [(0.5, 0.5), (0.7, 0.7)],
                           ("gumbel", True): [(0.1 * e, 0.1 * e) for e in range(1, 10)]})
    runs["epochs"] = 4
    runs["epochs_run"] = [2, 2, math.nan, math.nan]
    timing = _timing({"enum": (30.0, 90.0), "gumbel": (10.0, 30.0)})
    g = wall_time.equal_time(runs, curves, timing).set_index("variant").loc["gumbel + aux"]
    assert g["budget_epochs"] == pytest.approx(6) and g["mean_acc"] == pytest.approx(0.6)  # epoch 6 of 9
    assert g["note"] == ""


def test_time_to_target_is_the_first_epoch_within_the_margin_of_enum_aux_best_validation():
    """Per seed the target is enum + aux's best validation accuracy minus the margin; a variant's time is the end
    of its first epoch at or above it, at its isolated time per epoch, beside enum + aux's own time."""
    curve = {  # validation accuracy per epoch (the test column is never read)
        ("enum", True): [0.50, 0.70, 0.80, 0.85, 0.84],       # best 0.85: target 0.84, first reached at epoch 4
        ("gumbel", True): [0.60, 0.80, 0.845, 0.86],          # reaches 0.84 at epoch 3
        ("trace", True): [0.20, 0.30, 0.35],                  # never
        ("baseline", False): [0.8, 0.8]}
    runs, curves = [], []
    for (est, aux), points in curve.items():
        for seed in (0, 1):
            cell = f"{est}{'+aux' if aux else ''}_L100_s{seed}"
            runs.append(dict(cell=cell, estimator=est, aux=aux, labels=100, seed=seed, status="ok",
                             test_acc_at_best_valid=0.5, epochs=len(points), best_epoch=1))
            curves += [dict(cell=cell, epoch=i + 1, valid_acc=v, test_acc=0.0) for i, v in enumerate(points)]
    timing = []
    for est, (sup, unsup) in {"enum": (30.0, 90.0), "gumbel": (10.0, 30.0), "trace": (10.0, 30.0)}.items():
        for kind, m in (("sup", sup), ("unsup", unsup), ("aux", 0.0)):
            timing.append(dict(estimator=est, aux=True, device="cpu", step_kind=kind, batch_size=100, median_ms=m))
    tt = wall_time.time_to_target(pd.DataFrame(runs), pd.DataFrame(curves), pd.DataFrame(timing), margin=0.01)
    tt = tt.set_index("variant")
    assert set(tt.index) == {"enum + aux", "gumbel + aux", "trace + aux"}  # no baseline
    e, g, t = tt.loc["enum + aux"], tt.loc["gumbel + aux"], tt.loc["trace + aux"]
    assert e["target_mean"] == pytest.approx(0.84) and e["epochs_median"] == 4 and e["time_ratio_median"] == 1
    assert g["epochs_median"] == 3 and g["reached"] == 2 and g["note"] == ""
    assert g["time_ratio_median"] == pytest.approx(3 / 4 / 3)  # 3 epochs at a third of enum's time, over 4 epochs
    assert g["seconds_median"] == pytest.approx(e["seconds_median"] * 3 / 4 / 3)
    assert t["reached"] == 0 and math.isnan(t["seconds_median"]) and t["note"] == "2 of 2 seeds never got there in their run"
    wide = wall_time.time_to_target(pd.DataFrame(runs), pd.DataFrame(curves), pd.DataFrame(timing), margin=0.06)
    assert wide.set_index("variant").loc["gumbel + aux", "epochs_median"] == 2  # 0.80 >= 0.85 - 0.06
    none = wall_time.time_to_target(pd.DataFrame(runs), pd.DataFrame(curves), None).set_index("variant")
    assert none.loc["gumbel + aux", "note"] == "no isolated timing" and none.loc["gumbel + aux", "epochs_median"] == 3


def test_a_fixed_budget_holds_every_variant_and_enum_aux_to_the_same_seconds():
    """enum + aux's epoch takes E seconds, gumbel + aux's E/3: within 2.5 E enum + aux has 2 epochs and gumbel + aux
    7; each one's best validation epoch among those picks its test accuracy, paired by seed."""
    runs, curves = _cells({
        ("enum", True): [(0.50, 0.50), (0.70, 0.69), (0.80, 0.79), (0.85, 0.84)],
        ("gumbel", True): [(0.4 + 0.04 * e, 0.39 + 0.04 * e) for e in range(1, 15)],
        ("trace", True): [(0.30, 0.30), (0.35, 0.36)],                      # ended after 2 of the 7 that fit
        ("baseline", False): [(0.8, 0.8)] * 4}, bump=0.01)
    timing = _timing({"enum": (30.0, 90.0), "gumbel": (10.0, 30.0), "trace": (10.0, 30.0)})
    e = wall_time.isolated_epoch_seconds(timing, 100, True, "enum", "cpu")
    fb = wall_time.fixed_budget(runs, curves, timing, 2.5 * e).set_index("variant")
    assert set(fb.index) == {"enum + aux", "gumbel + aux", "trace + aux"}  # no baseline
    g, en, t = fb.loc["gumbel + aux"], fb.loc["enum + aux"], fb.loc["trace + aux"]
    assert g["budget_epochs"] == pytest.approx(7.5) and g["reference_budget_epochs"] == pytest.approx(2.5)
    assert g["mean_acc"] == pytest.approx(0.39 + 0.04 * 7 + 0.005)        # its epoch 7, not its last (14)
    assert g["reference_mean"] == pytest.approx(0.69 + 0.005)             # enum + aux's epoch 2, not its best (4)
    assert g["mean_diff"] == pytest.approx(0.67 - 0.69) and g["n"] == 2 and g["note"] == ""
    assert en["mean_diff"] == 0 and en["mean_acc"] == pytest.approx(0.695)
    assert t["note"] == "its run ended before the budget: a lower bound"
    late = wall_time.fixed_budget(runs, curves, timing, 10 * e).set_index("variant").loc["gumbel + aux"]
    assert late["reference_mean"] == pytest.approx(0.845) and late["mean_acc"] == pytest.approx(0.39 + 0.56 + 0.005)
    assert late["note"] == "its and enum + aux's run ended before the budget: a lower bound"
    early = wall_time.fixed_budget(runs, curves, timing, 0.5 * e).set_index("variant").loc["gumbel + aux"]
    assert early["n"] == 0 and math.isnan(early["mean_diff"])
    assert early["note"].startswith("no epoch within ") and "for enum + aux (" in early["note"]
    none = wall_time.fixed_budget(runs, curves, None, 60).set_index("variant").loc["gumbel + aux"]
    assert none["note"] == "no isolated timing" and none["n"] == 0
    with pytest.raises(ValueError):
        wall_time.fixed_budget(runs, curves, timing, 0)


def test_accuracy_by_budget_runs_from_the_shortest_epoch_to_the_longest_run():
    runs, curves = _cells({
        ("enum", True): [(0.50, 0.50), (0.70, 0.69), (0.80, 0.79), (0.85, 0.84)],
        ("gumbel", True): [(0.4 + 0.04 * e, 0.39 + 0.04 * e) for e in range(1, 15)],
        ("trace", True): [(0.30, 0.30), (0.35, 0.36)]})
    timing = _timing({"enum": (30.0, 90.0), "gumbel": (10.0, 30.0), "trace": (10.0, 30.0)})
    e = wall_time.isolated_epoch_seconds(timing, 100, True, "enum", "cpu")
    bb = wall_time.accuracy_by_budget(runs, curves, timing, points=8)
    assert bb["budget_seconds"].min() == pytest.approx(e / 3) and bb["budget_seconds"].max() == pytest.approx(14 * e / 3)
    g = bb[bb.variant == "gumbel + aux"].sort_values("budget_seconds")
    assert len(g) == 8 and g["mean_acc"].iloc[0] == pytest.approx(0.43) and g["mean_acc"].iloc[-1] == pytest.approx(0.95)
    assert (g["runs_ended"] == 0).all()
    en = bb[bb.variant == "enum + aux"]
    assert en["budget_seconds"].min() >= e  # no point before its first epoch ends
    assert bb[bb.variant == "trace + aux"]["runs_ended"].iloc[-1] == 2
    assert wall_time.accuracy_by_budget(runs, curves, None).empty
