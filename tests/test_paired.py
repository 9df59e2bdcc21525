"""Paired statistics, verdicts, summary and plots (bench.paired, bench.elbo_plots) on constructed tables."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench import elbo_plots, paired
from ssvae.train import epoch_schedule

SEEDS = [0, 1, 2, 3, 4]
ENUM = {100: [0.60, 0.62, 0.58, 0.65, 0.61], 3000: [0.890, 0.895, 0.885, 0.900, 0.892]}
#: per-seed differences to enum + aux, by (estimator, aux, labels)
DIFFS = {
    ("rb-topk", True, 3000): [0.001, -0.002, 0.0015, 0.0, -0.001],   # equivalent, and cheap
    ("trace-k10", True, 3000): [0.002, -0.001, 0.0, 0.001, -0.002],  # equivalent, not cheap
    ("gumbel", True, 3000): [-0.03, -0.02, -0.04, -0.03, -0.025],   # worse
    ("rb-topk", True, 100): [0.0, -0.03, 0.02, -0.01, 0.015],       # inconclusive
    ("enum", False, 3000): [-0.20, -0.25, -0.22, -0.18, -0.21],
    ("baseline", False, 3000): [0.01, 0.012, 0.008, 0.011, 0.015],
    ("baseline", False, 100): [0.12, 0.15, 0.11, 0.13, 0.14],
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
    # trace at 100 labels: one finished seed, one diverged, the rest missing
    rows.append(dict(cell="trace_L100_s0", estimator="trace", aux=False, labels=100, seed=0, status="ok",
                     test_acc_at_best_valid=0.11, epochs=EPOCHS, best_epoch=1))
    rows.append(dict(cell="trace_L100_s1", estimator="trace", aux=False, labels=100, seed=1, status="diverged",
                     test_acc_at_best_valid=None, epochs=EPOCHS, best_epoch=None))
    return pd.DataFrame(rows)


def _timing():
    ms = {"enum": (20.0, 70.0), "rb-topk": (20.0, 30.0), "gumbel": (18.0, 23.0), "trace-k10": (21.0, 80.0),
          "trace": (13.0, 17.0)}
    rows = []
    for est, (sup, unsup) in ms.items():
        for aux in (False, True):
            for kind, m in [("sup", sup), ("unsup", unsup)] + ([("aux", 2.0)] if aux else []):
                rows.append(dict(estimator=est, aux=aux, device="cpu", step_kind=kind, batch_size=200, median_ms=m))
    return pd.DataFrame(rows)


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


def test_verdicts_need_the_whole_interval_inside_the_margin_and_the_time_fraction():
    p = paired.paired_tables(_runs())
    v = paired.verdicts(p, _timing())
    get = lambda variant, labels, ref="enum + aux": v[(v["variant"] == variant) & (v["labels"] == labels)
                                                      & (v["reference"] == ref)].iloc[0]
    rb = get("rb-topk + aux", 3000)
    assert rb["accuracy"] == "equivalent" and rb["time_ok"] is True
    assert rb["verdict"].startswith("equivalent within 1 point at 44% <= 60% of the time (n = 5, 5 epochs)")
    k10 = get("trace-k10 + aux", 3000)
    assert k10["accuracy"] == "equivalent" and k10["time_ok"] is False and "> 60%" in k10["fails"]
    assert get("gumbel + aux", 3000)["accuracy"] == "worse"
    assert "5 of 10 cells best at their last epoch" in get("gumbel + aux", 3000)["fails"]
    inc = get("rb-topk + aux", 100)
    assert inc["accuracy"] == "inconclusive" and "[-2.6, +2.4] points reaches below -1.0 and above +1.0 points" in inc["fails"]
    assert get("trace", 100)["accuracy"] == "no interval" and "n = 1" in get("trace", 100)["fails"]
    assert list(v[paired.qualifies(v)]["variant"]) == ["rb-topk + aux"]
    # against the baseline there is no time condition
    assert get("enum + aux", 3000, "baseline")["time_ok"] is None
    # the options: a tighter margin or a smaller fraction, and rb-topk no longer qualifies
    assert not paired.qualifies(paired.verdicts(p, _timing(), margin=0.001)).any()
    tight = paired.verdicts(p, _timing(), fraction=0.40)
    assert not paired.qualifies(tight).any()
    assert "time 44% > 40%" in tight[(tight["variant"] == "rb-topk + aux") & (tight["labels"] == 3000)
                                     & (tight["reference"] == "enum + aux")].iloc[0]["fails"]
    # without a timing probe no variant qualifies, and the verdict says why
    untimed = paired.verdicts(p, None)
    assert not paired.qualifies(untimed).any()
    assert "no isolated timing" in untimed.iloc[0]["fails"]


def test_summary_text_is_generated_from_the_tables_with_caveats():
    p = paired.paired_tables(_runs())
    v = paired.verdicts(p, _timing())
    text = paired.summary_text(p, v, protocol="bench")
    assert text.endswith("\n") and "\n" not in text[:-1]
    assert "n = 1 and 5 seeds per comparison, 5 epochs, bench protocol" in text
    assert "At 3000 labels with the auxiliary loss, rb-topk + aux qualifies: rb-topk + aux" in text
    assert "At 100 labels with the auxiliary loss, no variant qualifies; the closest" in text
    assert "At 3000 labels without the auxiliary loss, no variant qualifies" in text
    assert "There enum + aux minus the supervised-only baseline is -1.1 points" in text
    assert "Caveats:" in text and "still improving" in text and "failed, diverged or missing" in text
    assert paired.summary_text(p.iloc[:0], v.iloc[:0]).startswith("No paired comparison")


def test_ran_beside_counts_overlapping_tasks_on_the_same_host():
    from bench.store import ran_beside

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
    curves = pd.DataFrame([dict(cell=f"{e}_s{s}", estimator=e, aux=True, labels=100, seed=s, epoch=ep,
                                global_step=ep * 250, elapsed_seconds=ep * 7.0,
                                test_elbo=None if e == "baseline" else -120.0 + ep)
                           for e in ("enum", "gumbel", "baseline") for s in (0, 1) for ep in (1, 2, 3)])
    for path in elbo_plots.plot_test_elbo_both(curves, tmp_path / "plots"):
        assert path.stat().st_size > 1000
    with pytest.raises(ValueError):
        elbo_plots.plot_test_elbo(curves, tmp_path / "x.png", x="epoch_ms")


def test_a_contended_timing_probe_feeds_no_verdict():
    t = _timing().assign(other_cpu_load=0.0)
    assert math.isfinite(paired.time_fraction(t, "rb-topk", True, ("enum", True), 100))
    t.loc[t.estimator == "rb-topk", "other_cpu_load"] = 1.0  # another process kept a core busy beside its probe
    assert math.isnan(paired.time_fraction(t, "rb-topk", True, ("enum", True), 100))
    assert math.isfinite(paired.time_fraction(t, "gumbel", True, ("enum", True), 100))
    older = _timing()  # a folder written before the measurement: the probe ran alone by design, kept
    assert math.isfinite(paired.time_fraction(older, "rb-topk", True, ("enum", True), 100))


def test_runs_csv_counts_what_ran_beside_each_cell(tmp_path):
    from bench.store import atomic_write_json, result_path, write_tables

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
