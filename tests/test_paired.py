"""Paired statistics, verdicts, summary and plots (bench.analysis.paired, bench.analysis.paired_verdicts) on
constructed tables."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.analysis import paired, paired_verdicts
from ssvae.train import epoch_schedule

SEEDS = [0, 1, 2, 3, 4]
ENUM = {100: [0.60, 0.62, 0.58, 0.65, 0.61], 3000: [0.890, 0.895, 0.885, 0.900, 0.892]}
#: per-seed differences to enum + aux, by (estimator, aux, labels)
DIFFS = {
    ("rb-topk", True, 3000): [0.001, -0.002, 0.0015, 0.0, -0.001],   # as good: [-0.2, +0.2] points, and cheap
    ("trace-k10", True, 3000): [0.002, -0.001, 0.0, 0.001, -0.002],  # as good, though slower than enum + aux
    ("gumbel", True, 3000): [-0.03, -0.02, -0.04, -0.03, -0.025],   # worse
    ("gumbel-st", True, 3000): [0.0084, 0.012, 0.0096, 0.0109, 0.0085],  # better by more than the margin (issue 25)
    ("trace-avg", True, 3000): [-0.003, -0.004, -0.0035, -0.0045, -0.003],  # worse, by less than the margin
    ("trace-bx", True, 3000): [0.0, -0.03, 0.02, -0.01, 0.015],     # inconclusive: [-2.6, +2.4] points
    ("rb-topk", True, 100): [0.0, -0.03, 0.02, -0.01, 0.015],       # at 100 labels: not learning, no verdict
    ("enum", False, 3000): [-0.20, -0.25, -0.22, -0.18, -0.21],
    ("baseline", False, 3000): [-0.03, -0.032, -0.028, -0.031, -0.035],  # enum + aux learns at 3000 labels
    ("baseline", False, 100): [0.12, 0.15, 0.11, 0.13, 0.14],            # ... and not at 100
}
EPOCHS = 5


def _runs():
    rows = []
    for labels, accs in ENUM.items():
        for s, a in zip(SEEDS, accs):
            rows.append(dict(cell=f"enum+aux_L{labels}_s{s}", estimator="enum", aux=True, labels=labels, seed=s,
                             status="ok", test_acc_at_best_valid=a, epochs=EPOCHS, best_epoch=3))
    for (est, aux, labels), diffs in DIFFS.items():
        for s, d in zip(SEEDS, diffs):
            rows.append(dict(cell=f"{est}{'+aux' if aux else ''}_L{labels}_s{s}", estimator=est, aux=aux,
                             labels=labels, seed=s, status="ok", test_acc_at_best_valid=ENUM[labels][s] + d,
                             epochs=EPOCHS, best_epoch=EPOCHS if est == "gumbel" else 2))
    # trace at 100 labels: one finished seed, one diverged, the rest missing; nvil + aux at 3000: one seed
    rows.append(dict(cell="trace_L100_s0", estimator="trace", aux=False, labels=100, seed=0, status="ok",
                     test_acc_at_best_valid=0.11, epochs=EPOCHS, best_epoch=1))
    rows.append(dict(cell="trace_L100_s1", estimator="trace", aux=False, labels=100, seed=1, status="diverged",
                     test_acc_at_best_valid=None, epochs=EPOCHS, best_epoch=None))
    rows.append(dict(cell="nvil+aux_L3000_s0", estimator="nvil", aux=True, labels=3000, seed=0, status="ok",
                     test_acc_at_best_valid=0.95, epochs=EPOCHS, best_epoch=2))
    return pd.DataFrame(rows)


def _timing():
    ms = {"enum": (20.0, 70.0), "rb-topk": (20.0, 30.0), "gumbel": (18.0, 23.0), "trace-k10": (21.0, 80.0),
          "trace": (13.0, 17.0), "gumbel-st": (18.0, 23.0), "trace-avg": (14.0, 18.0), "trace-bx": (14.0, 18.0),
          "nvil": (14.0, 19.0)}
    rows = []
    for est, (sup, unsup) in ms.items():
        for aux in (False, True):
            for kind, m in [("sup", sup), ("unsup", unsup)] + ([("aux", 2.0)] if aux else []):
                rows.append(dict(estimator=est, aux=aux, device="cpu", step_kind=kind, batch_size=200, median_ms=m))
    return pd.DataFrame(rows)


def _verdict(v, variant, labels, ref="enum + aux"):
    return v[(v["variant"] == variant) & (v["labels"] == labels) & (v["reference"] == ref)].iloc[0]


def test_paired_interval_is_scipys_t_interval_on_known_numbers():
    a = np.array([0.90, 0.88, 0.91, 0.87])
    b = np.array([0.89, 0.85, 0.92, 0.85])
    mean, low, high, note = paired.paired_interval(a - b)
    # by hand: mean 0.0125, sd 0.0170783, t(0.975, 3) = 3.1824463
    half = 3.182446305284263 * 0.017078251276599 / 2
    assert (mean, low, high) == pytest.approx((0.0125, 0.0125 - half, 0.0125 + half), abs=1e-9)
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert (low, high) == pytest.approx((ci.low, ci.high), abs=1e-12)
    one = paired.paired_interval([0.02])
    assert one[0] == 0.02 and math.isnan(one[1]) and math.isnan(one[2]) and one[3] == "n = 1: no interval"
    assert paired.paired_interval([0.01, 0.01, 0.01])[1:3] == (0.01, 0.01)
    assert paired.paired_interval([])[3] == "no paired seeds"


def test_paired_table_pairs_by_seed_and_keeps_per_seed_values():
    t = paired.paired_table(_runs(), paired.ENUM_AUX)
    row = t[(t["variant"] == "gumbel + aux") & (t["labels"] == 3000)].iloc[0]
    assert row["n"] == 5 and row["seeds"] == "0,1,2,3,4" and row["epochs"] == "5"
    assert row["diffs"] == pytest.approx(DIFFS[("gumbel", True, 3000)])
    assert row["mean_diff"] == pytest.approx(np.mean(DIFFS[("gumbel", True, 3000)]))
    assert row["best_at_last_epoch"] == 5  # gumbel's five cells peaked at their last epoch; enum's did not
    # shuffling the rows changes nothing: pairing is by seed, not by position
    shuffled = paired.paired_table(_runs().sample(frac=1, random_state=3), paired.ENUM_AUX)
    pd.testing.assert_frame_equal(t.drop(columns="diffs"), shuffled.drop(columns="diffs"))
    # unpaired differences would give another interval: the pairing matters here
    trace = t[(t["variant"] == "trace") & (t["labels"] == 100)].iloc[0]
    assert trace["n"] == 1 and trace["note"] == "n = 1: no interval" and trace["unpaired"] == "1,2,3,4"
    assert not ((t["estimator"] == "enum") & t["aux"]).any()  # the reference is not compared with itself
    base = paired.paired_table(_runs(), paired.BASELINE)
    enum_vs_base = base[(base["variant"] == "enum + aux") & (base["labels"] == 100)].iloc[0]
    assert enum_vs_base["mean_diff"] == pytest.approx(-np.mean(DIFFS[("baseline", False, 100)]))
    assert set(base["reference"]) == {"baseline"}


def test_isolated_epoch_time_sums_the_probes_median_steps_over_the_schedule():
    kinds = epoch_schedule(3000, 47000, 200, 50000)
    s, u = kinds.count("sup"), kinds.count("unsup")
    ms = paired.isolated_epoch_ms(_timing(), 3000, True)
    assert ms["enum"] == pytest.approx(s * (20 + 2) + u * 70)
    frac = paired.time_fraction(_timing(), "rb-topk", True, paired.ENUM_AUX, 3000)
    assert frac == pytest.approx((s * 22 + u * 30) / (s * 22 + u * 70))
    assert math.isnan(paired.time_fraction(_timing(), "baseline", False, paired.ENUM_AUX, 3000))


def test_better_where_the_interval_excludes_zero_above_even_beyond_the_margin():
    """Issue 25: gumbel-st + aux at +1.0 points [+0.8, +1.2] was "not equivalent" for being better by more than
    the margin; the verdict is "better", whatever the time."""
    v = paired_verdicts.verdicts(paired.paired_tables(_runs()), _timing())
    r = _verdict(v, "gumbel-st + aux", 3000)
    assert r["ci_low"] > 0.007 and r["ci_high"] > 0.01  # better by more than the margin
    assert r["accuracy"] == "better" and r["verdict"] == "better (n = 5, 5 epochs)"
    assert r["time_fraction"] == pytest.approx(paired.time_fraction(_timing(), "gumbel-st", True, paired.ENUM_AUX,
                                                                    3000))
    assert list(v[paired_verdicts.can_switch(v) & (v["accuracy"] == "better")]["variant"]) == ["gumbel-st + aux"]


def test_worse_where_the_interval_excludes_zero_below_even_within_the_margin():
    v = paired_verdicts.verdicts(paired.paired_tables(_runs()), _timing())
    for variant in ("gumbel + aux", "trace-avg + aux"):  # -3.0 points; -0.4 points [-0.5, -0.3]
        assert _verdict(v, variant, 3000)["accuracy"] == "worse", variant
    assert _verdict(v, "trace-avg + aux", 3000)["ci_low"] > -0.01
    assert "5 of 10 cells best at their last epoch" in _verdict(v, "gumbel + aux", 3000)["notes"]


def test_non_inferior_where_the_lower_end_is_above_minus_the_margin_whatever_the_time():
    v = paired_verdicts.verdicts(paired.paired_tables(_runs()), _timing())
    for variant in ("rb-topk + aux", "trace-k10 + aux"):
        r = _verdict(v, variant, 3000)
        assert r["accuracy"] == "non-inferior" and r["verdict"].startswith("as good (at most 1 point worse) (n = 5")
    k10 = _verdict(v, "trace-k10 + aux", 3000)
    assert k10["time_fraction"] > 1 and "time" not in k10["notes"]  # slower: said beside, not in the verdict
    assert paired_verdicts.word("non-inferior", 0.02) == "as good (at most 2 points worse)"


def test_inconclusive_otherwise_and_with_fewer_than_two_seeds():
    p = paired.paired_tables(_runs())
    v = paired_verdicts.verdicts(p, _timing())
    wide = _verdict(v, "trace-bx + aux", 3000)
    assert wide["accuracy"] == "inconclusive" and wide["ci_low"] < -0.01 < 0 < wide["ci_high"]
    one = _verdict(v, "nvil + aux", 3000)
    assert one["accuracy"] == "inconclusive" and one["n"] == 1 and "n = 1: no interval" in one["notes"]
    # the margin is an option: at 3 points the wide interval is as good
    assert _verdict(paired_verdicts.verdicts(p, _timing(), margin=0.03), "trace-bx + aux", 3000)["accuracy"] == "non-inferior"


def test_the_level_is_an_option():
    """gumbel-st + aux is better at 95 %; at 99.99 % its interval reaches below 0 (as good, not better)."""
    p = paired.paired_tables(_runs(), confidence=0.9999)
    v = paired_verdicts.verdicts(p, _timing(), confidence=0.9999)
    r = _verdict(v, "gumbel-st + aux", 3000)
    assert r["ci_low"] < 0 and r["accuracy"] == "non-inferior" and r["level"] == 0.9999
    _, v, text = paired_verdicts.conclusions(_runs(), _timing(), confidence=0.9999)
    assert _verdict(v, "gumbel-st + aux", 3000)["accuracy"] == "non-inferior" and "99.99 % CI" in text


def test_no_verdict_where_enum_aux_does_not_beat_the_baseline():
    """Issue 24: at 100 labels enum + aux is 13 points below the supervised-only baseline: not learning."""
    p = paired.paired_tables(_runs())
    learn = paired_verdicts.learning(p).set_index("labels")
    assert learn.loc[100, "learning"] == False and learn.loc[3000, "learning"] == True  # noqa: E712
    assert learn.loc[100, "mean_diff"] == pytest.approx(-np.mean(DIFFS[("baseline", False, 100)]))
    v = paired_verdicts.verdicts(p, _timing())
    at100 = v[(v["reference"] == "enum + aux") & (v["labels"] == 100)]
    assert set(at100["accuracy"]) == {"not learning"} and not paired_verdicts.can_switch(at100).any()
    assert _verdict(v, "rb-topk + aux", 100)["verdict"].startswith("no verdict: enum + aux is not learning here")
    text = paired_verdicts.summary_text(p, v, protocol="bench")
    assert ("At 100 labels: not learning: enum + aux is -13.0 points (95 % CI -15.0 to -11.0, n = 5) from the "
            "supervised-only baseline; no estimator verdict is drawn here.") in text
    assert "At 100 labels with" not in text and "rb-topk + aux -0.1" not in text  # no closest, no ranking
    # without baseline cells learning is not checked: verdicts are drawn, and the sentence says so
    no_base = paired.paired_tables(_runs()[lambda r: r["estimator"] != "baseline"])
    v2 = paired_verdicts.verdicts(no_base, _timing())
    assert _verdict(v2, "rb-topk + aux", 100)["accuracy"] == "inconclusive"
    assert "no supervised-only baseline to check that it learns" in paired_verdicts.summary_text(no_base, v2)


def test_summary_text_groups_each_setting_by_verdict_with_the_time_beside():
    p = paired.paired_tables(_runs())
    v = paired_verdicts.verdicts(p, _timing())
    text = paired_verdicts.summary_text(p, v, protocol="bench")
    assert text.endswith("\n") and "\n" not in text[:-1]
    assert "n = 1 and 5 seeds per comparison, 5 epochs, bench protocol" in text
    assert ("At 3000 labels with the auxiliary loss, against enum + aux: gumbel-st + aux is better; trace-k10 + aux and "
            "rb-topk + aux are as good (at most 1 point worse); nvil + aux and trace-bx + aux are inconclusive; "
            "trace-avg + aux and gumbel + aux are worse: gumbel-st + aux +1.0 points (95 % CI +0.8 to +1.2, n = 5), "
            "isolated time per epoch 0.34× enum + aux's; trace-k10 + aux") in text
    assert "nvil + aux +6.0 points (n = 1, no interval), isolated time per epoch 0.28× enum + aux's" in text
    assert "At 3000 labels without the auxiliary loss, against enum + aux: enum is worse" in text
    assert "At 3000 labels enum + aux minus the supervised-only baseline is +3.1 points" in text
    assert "equivalent" not in text and "qualif" not in text and "closest" not in text
    assert "Caveats:" in text and "still improving" in text and "failed, diverged or missing" in text
    assert paired_verdicts.summary_text(p.iloc[:0], v.iloc[:0]).startswith("No paired comparison")


def test_a_verdict_whose_cells_early_stopping_ended_says_at_most_the_cap():
    runs = _runs()
    assert "epochs_run" not in runs  # older folders: no field, every cell ran its epochs
    p = paired.paired_tables(runs)
    v = paired_verdicts.verdicts(p, _timing())
    assert (p["ended_early"] == 0).all() and (v["ended_early"] == 0).all()
    assert "at most 5" not in paired_verdicts.summary_text(p, v) and "ended early" not in " ".join(v["verdict"])
    # patience ended two of gumbel + aux's cells at 3000 labels after 3 of their 5 epochs, one of enum + aux's
    runs["epochs_run"] = EPOCHS
    stopped = (runs["cell"].isin(["gumbel+aux_L3000_s0", "gumbel+aux_L3000_s1", "enum+aux_L3000_s4"]))
    runs.loc[stopped, "epochs_run"] = 3
    p = paired.paired_tables(runs)
    v = paired_verdicts.verdicts(p, _timing())
    assert _verdict(v, "gumbel + aux", 3000)["ended_early"] == 3  # its own two and the enum + aux cell beside them
    assert _verdict(v, "gumbel + aux", 3000)["verdict"] == "worse (n = 5, at most 5 epochs, 3 of 10 cells ended early)"
    assert _verdict(v, "rb-topk + aux", 3000)["verdict"] == ("as good (at most 1 point worse) (n = 5, at most 5 epochs, "
                                                             "1 of 10 cells ended early)")
    assert _verdict(v, "rb-topk + aux", 100)["ended_early"] == 0  # 100 labels: nothing ended early
    text = paired_verdicts.summary_text(p, v, protocol="bench")
    assert "n = 1 and 5 seeds per comparison, at most 5 epochs, bench protocol" in text
    assert "(at most 5 epochs)" in text and "At 3000 labels without the auxiliary loss" in text
    assert paired_verdicts.epochs_text(["5", "20", "5", ""]) == "5 and 20 epochs"
    assert paired_verdicts.epochs_text(["1"], ended=2) == "at most 1 epoch"
    # no enum + aux cell at 3000 labels yet (a run in progress): no pair, no cap to state
    assert paired_verdicts.epochs_text([""]) == ""
    v = paired_verdicts.verdicts(paired.paired_tables(runs[~runs["cell"].str.startswith("enum+aux_L3000")]), _timing())
    assert _verdict(v, "gumbel + aux", 3000)["verdict"] == "inconclusive (n = 0)"
    notes = _verdict(v, "gumbel + aux", 3000)["notes"]
    assert "no enum + aux cell paired with a supervised-only baseline at 3000 labels" in notes


def test_ran_beside_counts_overlapping_tasks_on_the_same_host():
    from bench.core.tables import ran_beside

    r = ran_beside([dict(id="a", host="h1", started=0.0, finished=10.0),
                    dict(id="b", host="h1", started=5.0, finished=15.0),
                    dict(id="c", host="h1", started=15.0, finished=20.0),
                    dict(id="d", host="h2", started=0.0, finished=30.0),
                    dict(id="e", host="h1")])
    assert r["a"] == ["b"] and r["b"] == ["a"] and r["c"] == [] and r["d"] == []
    assert "e" not in r  # no times: unknown, not alone


def test_plots_are_written(tmp_path):
    p = paired.paired_tables(_runs())
    assert paired.plot_paired(p, tmp_path / "paired.png").stat().st_size > 1000
    assert paired.plot_accuracy_points(_runs(), tmp_path / "acc.png").stat().st_size > 1000


def test_a_contended_timing_probe_feeds_no_verdict():
    t = _timing().assign(other_cpu_load=0.0)
    assert math.isfinite(paired.time_fraction(t, "rb-topk", True, ("enum", True), 100))
    t.loc[t.estimator == "rb-topk", "other_cpu_load"] = 1.0  # another process kept a core busy beside its probe
    assert math.isnan(paired.time_fraction(t, "rb-topk", True, ("enum", True), 100))
    assert math.isfinite(paired.time_fraction(t, "gumbel", True, ("enum", True), 100))
    older = _timing()  # a folder written before the measurement: the probe ran alone by design, kept
    assert math.isfinite(paired.time_fraction(older, "rb-topk", True, ("enum", True), 100))


def test_runs_csv_counts_what_ran_beside_each_cell(tmp_path):
    from bench.core.store import atomic_write_json, result_path
    from bench.core.tables import write_tables

    specs, times = [], {"a": (0.0, 10.0, 0.0), "b": (5.0, 15.0, 1.0), "c": (20.0, 30.0, 0.1)}
    for name, (start, end, load) in times.items():
        spec = {"kind": "train", "id": f"enum_L100_s{len(specs)}",
                "config": {"estimator": "enum", "aux": False, "labels": 100, "seed": len(specs), "device": "cpu",
                           "epochs": 1}}
        specs.append(spec)
        atomic_write_json(result_path(tmp_path, spec), {"id": spec["id"], "kind": "train", "spec": spec,
                                                        "status": "ok", "metrics": {}, "curves": [], "host": "h",
                                                        "started": start, "finished": end, "other_cpu_load": load})
    missing = {**specs[0], "id": "enum_L100_s9", "config": {**specs[0]["config"], "seed": 9}}  # no record yet
    untimed = {**specs[0], "id": "enum_L100_s8", "config": {**specs[0]["config"], "seed": 8}}  # an older record
    atomic_write_json(result_path(tmp_path, untimed), {"id": untimed["id"], "kind": "train", "spec": untimed,
                                                       "status": "ok", "metrics": {}, "curves": []})
    tables = write_tables(tmp_path, specs + [missing, untimed])  # the writer checks every column is there
    rows = {r["cell"]: r for r in tables["runs"]}
    assert rows["enum_L100_s9"]["beside"] is None and rows["enum_L100_s8"]["beside"] is None
    assert [rows[s["id"]]["beside"] for s in specs] == [1, 1, 0]
    assert [rows[s["id"]]["other_cpu_load"] for s in specs] == [0.0, 1.0, 0.1]
