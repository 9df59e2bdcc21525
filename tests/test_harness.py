"""The harness: presets, grid expansion, bad input, and end-to-end runs on MNIST.

The smoke preset runs once per session (module fixture) and several tests read its output:
the same files CI and users get from `make bench PRESET=smoke`.
"""
import csv
import json

import pytest

from bench.run import grid as gridmod
from bench.core.store import OutputLock, atomic_write_json, is_done, read_result
from ssvae.errors import ConfigError
from ssvae.estimators import names

from .conftest import bench, needs_mnist


# -- presets and grids (no MNIST needed) -------------------------------------------------------
def test_presets_load_and_expand():
    for name in ("smoke", "quick", "paper"):
        grid = gridmod.make_grid(gridmod.load_preset(name))
        tasks = gridmod.expand(grid)
        cells = [t for t in tasks if t["kind"] == "train"]
        n_variants = len(grid.estimators) * len(grid.aux) + grid.baseline
        assert len(cells) == n_variants * len(grid.labels) * len(grid.seeds)
        assert len({t["id"] for t in tasks}) == len(tasks)
    smoke = gridmod.make_grid(gridmod.load_preset("smoke"))
    assert set(smoke.estimators) == set(names("ssvae")) and smoke.baseline and smoke.aux == [False, True]
    paper = gridmod.make_grid(gridmod.load_preset("paper"))
    assert paper.labels == [100, 600, 1000, 3000] and len(paper.seeds) == 5 and paper.epochs == 50


def test_overrides_and_label_fractions():
    grid = gridmod.make_grid(gridmod.load_preset("quick"), {"labels": [600], "seeds": 3, "epochs": 2})
    assert grid.labels == [600] and grid.seeds == [0, 1, 2] and grid.epochs == 2
    grid = gridmod.make_grid(gridmod.load_preset("quick"), {"label_fractions": [0.02]})
    assert grid.labels == [1000]


def test_lock_refuses_a_second_holder(tmp_path):
    with OutputLock(tmp_path):
        with pytest.raises(ConfigError, match="in use by another"):
            OutputLock(tmp_path).acquire()
    OutputLock(tmp_path).acquire()  # released: free again


def test_corrupt_result_is_not_done(tmp_path):
    spec = {"kind": "train", "id": "x_L100_s0", "config": {"a": 1}}
    atomic_write_json(tmp_path / "runs" / "x_L100_s0.json", {"spec": spec, "status": "ok"})
    assert is_done(tmp_path, spec)
    (tmp_path / "runs" / "x_L100_s0.json").write_text('{"spec": {"kind": "tra')
    assert not is_done(tmp_path, spec)
    assert read_result(tmp_path / "runs" / "x_L100_s0.json")[1].startswith("corrupt")


# -- end to end on MNIST -------------------------------------------------------------------------
def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@needs_mnist
def test_smoke_writes_every_file_with_its_columns(smoke_run):
    out, seconds, _ = smoke_run
    print(f"smoke preset: {seconds:.0f} s")
    env = json.loads((out / "env.json").read_text())
    for key in ("python", "torch", "pyro", "device", "cpu_name", "threads", "git_commit", "data_sha256",
                "preset", "command", "expected_cells"):
        assert key in env
    runs = _rows(out / "runs.csv")
    assert {r["cell"] for r in runs} == set(env["expected_cells"])
    assert all(r["status"] == "ok" for r in runs), [(r["cell"], r["error"]) for r in runs if r["status"] != "ok"]
    for col in ("estimator", "aux", "labels", "seed", "device", "status", "test_acc_at_best_valid",
                "best_valid_acc", "final_test_acc", "epochs", "train_seconds"):
        assert col in runs[0]
    for cell in env["expected_cells"]:
        record = json.loads((out / "runs" / f"{cell}.json").read_text())
        assert record["status"] == "ok" and record["config"]["labels"] in (100, 3000)
    curves = _rows(out / "curves.csv")
    assert {"valid_acc", "test_acc", "loss_sup", "loss_unsup", "elapsed_seconds"} <= set(curves[0])
    assert len(curves) == 2 * len(runs)


@needs_mnist
def test_smoke_variance_trace_vs_enum_at_common_checkpoints(smoke_run):
    out = smoke_run[0]
    rows = [r for r in _rows(out / "grad_variance.csv") if r["trajectory"] == "common" and r["step_kind"] == "unsup"]
    assert {r["trajectory"] for r in _rows(out / "grad_variance.csv")} == {"own", "common"}
    assert rows
    for labels in {r["labels"] for r in rows}:
        for step in {r["step"] for r in rows}:
            var = {(r["estimator"], r["param_group"]): float(r["variance"]) for r in rows
                   if r["labels"] == labels and r["step"] == step}
            assert var[("trace", "encoder_y")] >= 100 * var[("enum", "encoder_y")], (labels, step, var)
            assert var[("trace", "decoder")] > var[("enum", "decoder")]


@needs_mnist
def test_smoke_timing_medians(smoke_run):
    rows = _rows(smoke_run[0] / "timing.csv")
    steps = gridmod.make_grid(gridmod.load_preset("smoke")).probe["timing_steps"]
    assert rows and all(int(r["n_steps"]) == steps for r in rows)  # each median is over the preset's steps
    med = {(r["estimator"], r["aux"], r["step_kind"]): float(r["median_ms"]) for r in rows}
    assert {("trace", "True", "aux"), ("enum", "False", "sup"), ("enum", "False", "unsup")} <= set(med)
    assert all(v > 0 for v in med.values())
    # how much enum's step costs against trace's is a speed figure: the benchmark suite checks it
    # (`make regress`, ratio enum/trace:unsup), not this test


@needs_mnist
def test_smoke_rerun_skips_everything(smoke_run):
    out = smoke_run[0]
    before = {p: p.read_bytes() for p in (out / "runs").glob("*.json")}
    r = bench("run", "--preset", "smoke", "--out", str(out), timeout=300)
    assert r.returncode == 0 and "0 to run" in r.stderr, r.stderr
    assert {p: p.read_bytes() for p in (out / "runs").glob("*.json")} == before


@needs_mnist
def test_only_runs_the_kinds_asked_and_leaves_the_rest_for_a_later_run(tmp_path):
    """`--only timing`: the timing probe runs, the cells and common probes stay to run (listed as left, never
    as done), and a rerun without --only would run exactly those."""
    out = tmp_path / "out"
    args = ("run", "--preset", "smoke", "--estimators", "trace", "--labels", "100", "--seeds", "1", "--no-baseline",
            "--out", str(out))
    dry = bench(*args, "--only", "timing", "--dry-run", timeout=300)
    assert dry.returncode == 0 and "0 done, 1 to run on" in dry.stdout and "left for later (--only)" in dry.stdout
    states = {line.split()[-1]: line.split()[0] for line in dry.stdout.splitlines()[1:] if line.strip()}
    assert states["timing_cpu_trace"] == "todo" and states["trace_L100_s0"] == "left"
    assert states["common_L100_s0_trace"] == "left"
    r = bench(*args, "--only", "timing", timeout=600)
    assert r.returncode == 0, r.stderr
    assert "the timing tasks done" in r.stderr and "other task(s) left for later (rerun without --only)" in r.stderr
    assert sorted(p.name for p in (out / "probes").glob("*.json")) == ["timing_cpu_trace.json"]
    assert not list((out / "runs").glob("*.json"))
    again = bench(*args, "--dry-run", timeout=300)
    states = {line.split()[-1]: line.split()[0] for line in again.stdout.splitlines()[1:] if line.strip()}
    assert states == {"timing_cpu_trace": "done", "common_L100_s0_trace": "todo", "trace_L100_s0": "todo",
                      "trace+aux_L100_s0": "todo"}


def test_one_cell_per_gpu_pinned_with_cuda_visible_devices(tmp_path, monkeypatch):
    """With GPUs, the local executor runs one cell per GPU, each seeing only its own."""
    import io

    from bench.run import executors

    seen = []

    class FakeProc:
        def __init__(self, cmd, env, **kw):
            seen.append(env.get("CUDA_VISIBLE_DEVICES"))
            self.stdin, self.stdout, self.pid = io.StringIO(), io.StringIO(), 1

    monkeypatch.setattr(executors.subprocess, "Popen", FakeProc)
    ex = executors.LocalExecutor(workers=8, gpus=[0, 1])
    assert ex.workers == 2
    for i in range(2):
        spec = {"id": f"c{i}", "kind": "train"}
        ex.running[spec["id"]] = ex._start(spec, tmp_path, tmp_path)
    assert seen == ["0", "1"] and ex._free_gpu() is None
    del ex.running["c0"]
    assert ex._free_gpu() == 0
    ex.running.clear()


def test_estimator_options_reach_cells_and_probes():
    from bench.run.harness import grid_from_args
    from bench.cli import build_parser

    args = build_parser().parse_args(["run", "--preset", "smoke", "--set", "options.rb-topk.k=3",
                                      "--set", "options.gumbel.tau_min=0.3"])
    grid = grid_from_args(args)
    preset = gridmod.load_preset("smoke").get("options", {})  # the preset's own options stay beside --set's
    assert grid.options == {**preset, "gumbel": {"tau_min": 0.3}, "rb-topk": {"k": 3}}
    tasks = gridmod.expand(grid)
    cells = {t["id"]: t for t in tasks if t["kind"] == "train"}
    assert cells["rb-topk+aux_L100_s0"]["config"]["options"] == {"k": 3}
    assert cells["enum_L100_s0"]["config"]["options"] == {}
    # a probe task belongs to one estimator and carries that estimator's options only
    probes = [t for t in tasks if t["kind"] in ("timing", "common")]
    assert all(t.get("options", {}) == ({t["estimators"][0]: grid.options[t["estimators"][0]]}
                                        if t["estimators"][0] in grid.options else {}) for t in probes)
    assert {t["id"] for t in probes if "options" in t} >= {"timing_cpu_rb-topk", "common_L100_s0_rb-topk"}
    # no options: probe specs unchanged (finished folders stay done)
    plain = {**gridmod.load_preset("smoke"), "options": {}}
    assert all("options" not in t for t in gridmod.expand(gridmod.make_grid(plain)))
    with pytest.raises(ConfigError, match="has no option"):
        gridmod.make_grid(gridmod.load_preset("smoke"), {"options": {"rb-topk": {"nope": 1}}})


def test_list_names_every_estimator_with_its_cost_relative_to_trace(tmp_path, capsys):
    from bench.cli import main
    from ssvae.estimators import REGISTRY

    timing = tmp_path / "timing.csv"
    timing.write_text("estimator,aux,step_kind,median_ms\ntrace,False,unsup,10\nenum,False,unsup,52\n"
                      "enum,True,aux,3\n")
    assert main(["list", "--timing", str(timing)]) == 0
    out = capsys.readouterr().out
    for name, est in REGISTRY.items():
        assert any(line.startswith(name + " ") and est.description in line for line in out.splitlines()), name
    assert re_line(out, "enum") == "5.2x" and re_line(out, "trace") == "1.0x" and re_line(out, "gumbel") == "-"
    # each preset with the gradient probe's share of its work (quick: the common checkpoints and own runs)
    quick = next(line for line in out.splitlines() if line.startswith("quick "))
    assert 30 < int(quick.split("%")[0].split()[-1]) < 100
    # a grid with the auxiliary loss only (the long preset) times the same unlabeled step on its aux rows
    timing.write_text("estimator,aux,step_kind,median_ms\ntrace,True,unsup,10\nenum,True,unsup,34\n")
    assert main(["list", "--timing", str(timing)]) == 0
    assert re_line(capsys.readouterr().out, "enum") == "3.4x"


def test_list_takes_its_costs_from_the_newest_table_that_times_trace(tmp_path, monkeypatch):
    import json
    import os

    from bench.core.provenance import cpu_name
    from bench.run import listing

    for i, (name, rows) in enumerate((("old", "trace,True,unsup,10\nenum,True,unsup,50\n"),
                                      ("new", "enum,True,unsup,50\nbaseline,False,sup,1\n"))):  # new: no trace
        folder = tmp_path / "results" / name
        folder.mkdir(parents=True)
        (folder / "env.json").write_text(json.dumps({"device": "cpu", "cpu_name": cpu_name(), "preset": name}))
        (folder / "timing.csv").write_text("estimator,aux,step_kind,median_ms\n" + rows)
        os.utime(folder / "timing.csv", (1e9 + i, 1e9 + i))
    monkeypatch.setattr(listing, "REPO", tmp_path)
    assert listing._local_timing() == str(tmp_path / "results" / "old" / "timing.csv")


def re_line(out, name):
    return next(line.split()[1] for line in out.splitlines() if line.startswith(name + " "))


def test_timing_probes_run_alone_unless_the_preset_says_otherwise():
    def timing(preset, **probe):
        spec = gridmod.load_preset(preset)
        grid = gridmod.make_grid({**spec, "probe": {**spec.get("probe", {}), **probe}})
        return [t for t in gridmod.expand(grid) if t["kind"] == "timing"]
    assert all(t["exclusive"] for t in timing("default")) and all(t["exclusive"] for t in timing("long"))
    smoke = timing("smoke")  # a pipeline check: its timing probes share the CPU with other tasks
    assert smoke and not any(t["exclusive"] for t in smoke)
    alone = timing("smoke", timing_alone=True)
    assert all(t["exclusive"] for t in alone) and {t["id"] for t in alone} == {t["id"] for t in smoke}


def test_a_probed_only_estimator_gets_probes_and_no_cells():
    quick = gridmod.load_preset("quick")
    narrow = {"estimators": ["trace"], "labels": [100], "seeds": 1}
    tasks = gridmod.expand(gridmod.make_grid(quick, narrow))
    ids = {t["id"] for t in tasks}
    assert {"timing_cpu_enum-k10", "common_L100_s0_enum-k10", "common_L100_s0_trace"} <= ids
    assert not [t for t in tasks if t["kind"] == "train" and t["config"]["estimator"] == "enum-k10"]
    probe = next(t for t in tasks if t["id"] == "common_L100_s0_enum-k10")
    assert probe["config"] == next(t for t in tasks if t["id"] == "common_L100_s0_trace")["config"]  # one trajectory
    without = {**quick, "probe": {k: v for k, v in quick["probe"].items() if k != "probed_only"}}
    plain = gridmod.expand(gridmod.make_grid(without, narrow))
    assert "common_L100_s0_enum-k10" not in {t["id"] for t in plain}
    assert [t for t in tasks if t["kind"] == "train"] == [t for t in plain if t["kind"] == "train"]  # cells unmoved
    with pytest.raises(ConfigError, match="unknown estimator 'nope'"):
        gridmod.make_grid({**quick, "probe": {"probed_only": ["nope"]}})
    with pytest.raises(ConfigError, match="'baseline' is not a semi-supervised estimator"):
        gridmod.make_grid({**quick, "probe": {"probed_only": ["baseline"]}})


def test_the_long_reference_trains_on_seeds_the_search_and_the_quick_reference_did_not():
    """Issue 25: the long reference is evidence on its own: no cell shares a seed (and so its data split and
    initialisation) with the search that chose its settings or with the quick reference quoted beside it."""
    seeds = {name: set(gridmod.make_grid(gridmod.load_preset(name)).seeds) for name in ("long", "quick", "search")}
    assert len(seeds["long"]) >= 5
    assert not seeds["long"] & seeds["quick"] and not seeds["long"] & seeds["search"], seeds
