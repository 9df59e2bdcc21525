"""The harness: presets, grid expansion, bad input, and end-to-end runs on MNIST.

The smoke preset runs once per session (module fixture) and several tests read its output:
the same files CI and users get from `make bench PRESET=smoke`.
"""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import grid as gridmod
from bench.store import OutputLock, atomic_write_json, is_done, read_result
from ssvae.errors import ConfigError
from ssvae.estimators import names

from .conftest import REPO, mnist_dir, needs_mnist


def bench(*args, timeout=900, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if mnist_dir():
        env["SSVAE_DATA_DIR"] = str(mnist_dir())
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**env, **kw.pop("env", {})}, **kw)


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


@pytest.mark.parametrize("args,message", [
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--estimators", "nope"], "unknown estimator 'nope'"),
    (["--labels", "105"], "not a multiple of 10"),
    (["--labels", "0"], "must be positive"),
    (["--labels", "60000"], "above the 50000"),
    (["--label-fraction", "1.5"], r"outside \(0, 1\]"),
    (["--epochs", "0"], "epochs must be at least 1"),
    (["--device", "cuda"], "no CUDA GPU"),
    (["--set", "nope=1"], "unknown field 'nope'"),
    (["--executor", "nope"], "unknown executor 'nope'"),
])
def test_bad_run_input_is_one_line_exit_2(tmp_path, args, message):
    if "cuda" in args:
        pytest.importorskip("torch")
        import torch
        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    out = tmp_path / "out"
    r = bench("run", "--out", str(out), *args, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench: error:"), r.stderr
    import re
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists()  # nothing written


@pytest.mark.parametrize("args,message", [
    (["--labels", "105"], "not a multiple of 10"), (["--labels", "60000"], "above the 50000"),
    (["--estimator", "nope"], "unknown estimator 'nope'"), (["--device", "cuda"], "no CUDA GPU"),
])
def test_bad_train_input_is_one_line_exit_2(args, message):
    import torch
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    r = bench("train", "--epochs", "1", *args, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr


def test_missing_data_no_network_is_one_line_exit_2(tmp_path):
    r = bench("train", "--epochs", "1", "--data-dir", str(tmp_path / "empty"), "--no-download", timeout=120)
    assert r.returncode == 2 and "MNIST not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_output_folder_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("keep me")
    r = bench("run", "--preset", "smoke", "--out", str(f), timeout=120)
    assert r.returncode == 2 and "is a file" in r.stderr and f.read_text() == "keep me"


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


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    if mnist_dir() is None:
        pytest.skip("MNIST not found (set SSVAE_DATA_DIR)")
    out = tmp_path_factory.mktemp("smoke") / "out"
    t0 = time.time()
    r = bench("run", "--preset", "smoke", "--out", str(out), timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, time.time() - t0, r


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
    for labels in ("100", "3000"):
        for step in {r["step"] for r in rows}:
            var = {(r["estimator"], r["param_group"]): float(r["variance"]) for r in rows
                   if r["labels"] == labels and r["step"] == step}
            assert var[("trace", "encoder_y")] >= 100 * var[("enum", "encoder_y")], (labels, step, var)
            assert var[("trace", "decoder")] > var[("enum", "decoder")]


@needs_mnist
def test_smoke_timing_medians(smoke_run):
    rows = _rows(smoke_run[0] / "timing.csv")
    assert all(int(r["n_steps"]) >= 20 for r in rows)
    med = {(r["estimator"], r["aux"], r["step_kind"]): float(r["median_ms"]) for r in rows}
    assert {("trace", "True", "aux"), ("enum", "False", "sup")} <= set(med)
    # enumeration sums over 10 labels: its unsupervised step costs several sampled ones
    assert med[("enum", "False", "unsup")] > 2 * med[("trace", "False", "unsup")]


@needs_mnist
def test_smoke_rerun_skips_everything(smoke_run):
    out = smoke_run[0]
    before = {p: p.read_bytes() for p in (out / "runs").glob("*.json")}
    r = bench("run", "--preset", "smoke", "--out", str(out), timeout=300)
    assert r.returncode == 0 and "0 to run" in r.stderr, r.stderr
    assert {p: p.read_bytes() for p in (out / "runs").glob("*.json")} == before


def _wait_for(predicate, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@needs_mnist
def test_interrupted_grid_resumes_without_recomputing(tmp_path):
    """SIGINT, then SIGKILL, of `python -m bench run` mid-grid; reruns finish it, keeping finished cells."""
    out = tmp_path / "out"
    args = ["run", "--preset", "smoke", "--out", str(out), "--labels", "100", "--estimators", "trace",
            "--epochs", "1", "--steps-per-epoch", "5", "--set", "probe.checkpoints=[0]",
            "--set", "hidden=[64]", "--set", "z_dim=8", "--workers", "1"]
    env = dict(os.environ, SSVAE_DATA_DIR=str(mnist_dir()), PYTHONUNBUFFERED="1")
    n_tasks = 5  # timing, common, trace, trace+aux, baseline
    done = lambda: len(list(out.glob("probes/*.json")) + list(out.glob("runs/*.json")))
    finished = {}
    for sig, after in ((signal.SIGINT, 1), (signal.SIGKILL, 3)):
        proc = subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert _wait_for(lambda: done() >= after, 240), "no task finished"
        if sig == signal.SIGINT:  # a second run on the same folder is refused while the first holds it
            second = bench(*args, timeout=120)
            assert second.returncode == 2 and "in use by another" in second.stderr, second.stderr
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode != 0
        if sig == signal.SIGINT:
            assert "Rerun the same command to resume" in err, err
        assert done() < n_tasks, "grid finished before the signal: test proves nothing"
        for p in out.glob("*/*.json"):  # nothing partial, nothing finished recomputed
            json.loads(p.read_text())
            if p in finished:
                assert finished[p] == (p.read_bytes(), p.stat().st_mtime_ns), f"{p.name} recomputed"
            finished[p] = (p.read_bytes(), p.stat().st_mtime_ns)
        assert not list(out.glob("**/*.tmp"))
    r = bench(*args, timeout=600)
    assert r.returncode == 0, r.stderr
    for p, (data, mtime) in finished.items():
        assert p.read_bytes() == data and p.stat().st_mtime_ns == mtime, f"{p.name} recomputed"
    runs = _rows(out / "runs.csv")
    assert len(runs) == 3 and all(r["status"] == "ok" for r in runs)
