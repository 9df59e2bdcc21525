"""``python -m bench compare OLD NEW`` on fabricated results folders (no training, no MNIST)."""
import csv
import json
import shutil

import pandas as pd
import pytest

from bench.report import compare
from bench.cli import main
from tests.report_fixtures import MISSING_CELL, fabricate_results


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("old")
    fabricate_results(root)
    return root


@pytest.fixture
def pair(reference, tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(reference, old)
    shutil.copytree(reference, new)
    return old, new


def run(capsys, *args):
    rc = main(["compare", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def set_accuracy(folder, cell, value):
    """Change a cell's accuracy in both places the loader reads (runs/<cell>.json wins over runs.csv)."""
    path = folder / "runs" / f"{cell}.json"
    record = json.loads(path.read_text())
    record["metrics"]["test_acc_at_best_valid"] = value
    path.write_text(json.dumps(record))
    runs = pd.read_csv(folder / "runs.csv")
    runs.loc[runs.cell == cell, "test_acc_at_best_valid"] = value
    runs.to_csv(folder / "runs.csv", index=False)


def flagged_lines(out):
    return [line for line in out.splitlines() if line.startswith("!!")]


def test_identical_folders(pair, capsys):
    rc, out, err = run(capsys, *pair)
    assert rc == 0, out + err
    assert flagged_lines(out) == []
    last = out.strip().splitlines()[-1]
    assert last.startswith("compare: ") and " cells in both, 0 flagged" in last
    assert "only in old:" not in out and "only in new:" not in out
    cmp = compare.compare(*pair)
    assert cmp.identical == cmp.ok_both > 0 and not cmp.flagged()


def test_accuracy_drop_over_two_seeds_is_flagged(pair, capsys):
    old, new = pair
    for folder, level in ((old, 0.94), (new, 0.89)):  # a drop of 5 points, seeds 0.4 points apart
        set_accuracy(folder, "enum+aux_L3000_s0", level)
        set_accuracy(folder, "enum+aux_L3000_s1", level + 0.004)
    rc, out, _ = run(capsys, old, new)
    assert rc == 1
    lines = flagged_lines(out)
    assert len(lines) == 1 and "3000" in lines[0] and "enum + aux" in lines[0] and "-0.0500" in lines[0]
    assert "welch" in lines[0] and "2/2" in lines[0]
    assert "accuracy 1" in out.strip().splitlines()[-1]


def test_accuracy_rule():
    # Welch: equal spreads, 2 seeds a side -> df 2, t = 4.3027
    diff, thr, rule, df = compare.accuracy_test([0.90, 0.92], [0.80, 0.82], tol=0.01)
    assert diff == pytest.approx(-0.10) and rule == "welch" and df == pytest.approx(2.0)
    assert thr == pytest.approx(4.3027 * (2 * 0.0002 / 2) ** 0.5, rel=1e-4)
    # a difference within the seed noise is not flagged
    diff, thr, _, _ = compare.accuracy_test([0.90, 0.95], [0.88, 0.93], tol=0.01)
    assert abs(diff) < thr
    # one seed a side: the stated tolerance alone
    assert compare.accuracy_test([0.5], [0.489], tol=0.01)[1:3] == (0.01, "acc_tol (1 seed a side)")
    assert compare.accuracy_test([0.5], [0.495], tol=0.01)[1] == 0.01


def test_single_seed_uses_acc_tol(tmp_path, capsys):
    old, new = tmp_path / "old", tmp_path / "new"
    fabricate_results(old, seeds=(0,))
    shutil.copytree(old, new)
    set_accuracy(new, "trace_L100_s0", 0.5)
    rc, out, _ = run(capsys, old, new, "--acc-tol", "0.02")
    assert rc == 1 and "acc_tol 0.02" in out
    assert any("trace " in line and "acc_tol (1 seed a side)" in line for line in flagged_lines(out))


def _scale_timing(folder, factor, estimator=None, aux=None, kind=None):
    t = pd.read_csv(folder / "timing.csv")
    sel = pd.Series(True, index=t.index)
    if estimator is not None:
        sel &= (t.estimator == estimator) & (t.aux == aux) & (t.step_kind == kind)
    for col in ("median_ms", "q1_ms", "q3_ms"):
        t.loc[sel, col] = t.loc[sel, col] * factor
    t.to_csv(folder / "timing.csv", index=False)


def test_timing_slowdown_is_flagged(pair, capsys, tmp_path):
    old, new = pair
    _scale_timing(new, 2.0, "enum", False, "unsup")
    rc, out, _ = run(capsys, old, new, "--csv", tmp_path / "cmp.csv")
    assert rc == 1
    lines = flagged_lines(out)
    assert len(lines) == 1
    assert lines[0].split()[2:4] == ["enum", "unsup"] and "2.00" in lines[0]
    rows = list(csv.DictReader(open(tmp_path / "cmp.csv")))
    hit = [r for r in rows if r["flagged"] == "True"]
    assert [(r["measure"], r["estimator"], r["aux"], r["step_kind"]) for r in hit] == \
        [("time", "enum", "False", "unsup")]
    assert float(hit[0]["ratio"]) == pytest.approx(2.0)
    assert {r["measure"] for r in rows} >= {"cell", "accuracy", "time", "variance"}


def test_small_slowdown_and_speedup_not_flagged(pair, capsys):
    old, new = pair
    _scale_timing(new, 1.2, "enum", False, "unsup")   # within the 25 % tolerance
    _scale_timing(new, 0.5, "trace", False, "sup")    # faster: shown, never flagged
    rc, out, _ = run(capsys, old, new)
    assert rc == 0 and flagged_lines(out) == [] and "faster" in out


def test_other_machine_compares_ratios_to_trace(pair, capsys):
    old, new = pair
    env = json.loads((new / "env.json").read_text())
    env["device_name"] = env["cpu_name"] = "AMD EPYC (other)"
    (new / "env.json").write_text(json.dumps(env))
    _scale_timing(new, 1.6)  # a slower machine: everything 1.6x, ratios to trace unchanged
    rc, out, _ = run(capsys, old, new)
    assert rc == 0 and "warning: timings come from different machines" in out and "not comparable" in out
    rc, out, _ = run(capsys, old, new, "--strict-time")
    assert rc == 1 and flagged_lines(out)
    _scale_timing(new, 2.0, "enum", False, "unsup")  # enum now 2x slower relative to trace
    rc, out, _ = run(capsys, old, new)
    lines = flagged_lines(out)
    assert rc == 1 and len(lines) == 1 and lines[0].split()[2:4] == ["enum", "unsup"]


def test_probes_timed_on_another_machine_within_a_folder_are_not_compared_as_absolute_times(pair, capsys,
                                                                                               tmp_path):
    """Both env.json files name one machine, but the new folder's enum probe ran on another (a grid extended in a
    later session elsewhere, as the table1 reference was): its 2x is the machine, not a slowdown, and its ratio to
    trace would divide one machine's time by another's; the other rows compare as usual."""
    old, new = pair
    t = pd.read_csv(new / "timing.csv")
    enum = t.estimator == "enum"
    t.loc[enum, ["median_ms", "q1_ms", "q3_ms"]] *= 2.0
    t.loc[enum, "device_name"] = "AMD EPYC (other)"
    t.to_csv(new / "timing.csv", index=False)
    rc, out, _ = run(capsys, old, new, "--csv", tmp_path / "cmp.csv")
    assert rc == 0 and flagged_lines(out) == [] and "machine of some probes" in out
    rows = [r for r in csv.DictReader(open(tmp_path / "cmp.csv")) if r["measure"] == "time"]
    assert all("not compared" in r["note"] for r in rows if r["estimator"] == "enum")
    assert not any("not compared" in r["note"] for r in rows if r["estimator"] != "enum")
    _scale_timing(new, 2.0, "trace", False, "unsup")  # a real slowdown on the machine both folders share
    rc, out, _ = run(capsys, old, new)
    assert rc == 1 and [l.split()[2:4] for l in flagged_lines(out)] == [["trace", "unsup"]]


def test_probes_timed_with_another_thread_count_are_not_compared_as_absolute_times(pair, capsys, tmp_path):
    """One machine, both env.json files alike, but the new folder's enum probe ran on 1 thread where the old ran
    on 2: its slower time is the thread count, not a slowdown (compared only relative to trace timed alike)."""
    old, new = pair
    for folder in pair:  # every probe row names its threads, as the harness's timing.csv does
        t = pd.read_csv(folder / "timing.csv").assign(threads=2)
        t.to_csv(folder / "timing.csv", index=False)
    enum = t.estimator == "enum"
    t.loc[enum, ["median_ms", "q1_ms", "q3_ms"]] *= 1.8
    t.loc[enum, "threads"] = 1
    t.to_csv(new / "timing.csv", index=False)
    rc, out, _ = run(capsys, old, new, "--csv", tmp_path / "cmp.csv")
    assert rc == 0 and flagged_lines(out) == [] and "machine of some probes" in out
    rows = [r for r in csv.DictReader(open(tmp_path / "cmp.csv")) if r["measure"] == "time"]
    assert all("not compared" in r["note"] for r in rows if r["estimator"] == "enum")


def test_variance_tenfold_is_flagged(pair, capsys):
    old, new = pair
    g = pd.read_csv(new / "grad_variance.csv")
    sel = ((g.estimator == "enum") & (g.trajectory == "common") & (g.step == 50) & (g.labels == 100)
           & (g.seed == 0) & (g.param_group == "encoder_y") & (g.step_kind == "unsup"))
    assert sel.sum() == 1
    g.loc[sel, "variance"] *= 10
    own = (g.trajectory == "own") & (g.estimator == "trace")
    g.loc[own, "variance"] *= 10  # own-trajectory rows are not compared
    g.to_csv(new / "grad_variance.csv", index=False)
    rc, out, _ = run(capsys, old, new)
    assert rc == 1
    assert "variance 1" in out.strip().splitlines()[-1]
    assert any("enum L100 s0 step 50 unsup encoder_y" in line for line in flagged_lines(out))
    # the rule: k = 3 combined standard errors of the log variance, n = 32 draws a side
    se = (2 / 31 + 2 / 31) ** 0.5
    row = compare.compare(old, new).flagged("variance")[0]
    assert row["ratio"] == pytest.approx(10) and row["threshold"] == pytest.approx(2.718281828 ** (3 * se))


def test_missing_cell_listed_not_flagged(pair, capsys):
    old, new = pair
    cell = "enum_L100_s1"
    (new / "runs" / f"{cell}.json").unlink()
    runs = pd.read_csv(new / "runs.csv")
    runs[runs.cell != cell].to_csv(new / "runs.csv", index=False)
    rc, out, _ = run(capsys, old, new)
    assert rc == 0, out
    assert f"only in old: {cell}" in out
    assert "1 only in old" in out.strip().splitlines()[-1]
    assert MISSING_CELL not in out.split("Status changes")[0]  # missing on both sides: not listed


def test_status_change_is_flagged(pair, capsys):
    old, new = pair
    path = new / "runs" / "trace_L100_s0.json"
    record = json.loads(path.read_text())
    record.update(status="diverged", error="DivergedError: loss is nan at step 12")
    path.write_text(json.dumps(record))
    rc, out, _ = run(capsys, old, new)
    assert rc == 1
    lines = flagged_lines(out)
    assert any("trace_L100_s0" in line and "ok" in line and "diverged" in line for line in lines)
    assert "status 1" in out.strip().splitlines()[-1]


@pytest.mark.parametrize("damage", ["missing", "no_runs_csv", "file"])
def test_bad_input_exit_2(pair, capsys, damage):
    old, new = pair
    if damage == "missing":
        args, word = (old, new.parent / "nope"), "does not exist"
    elif damage == "no_runs_csv":
        (new / "runs.csv").unlink()
        args, word = (old, new), "no runs.csv"
    else:
        args, word = (old / "runs.csv", new), "not a folder"
    rc, out, err = run(capsys, *args)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and word in err and err.startswith("bench: error:")


def test_bad_options_exit_2(pair, capsys):
    rc, _, err = run(capsys, *pair, "--acc-tol", "-1")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    rc, _, err = run(capsys, *pair, "--csv", pair[0] / "no" / "such" / "out.csv")
    assert rc == 2 and "does not exist" in err
