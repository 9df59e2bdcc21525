"""Fault injection: the harness survives killed workers, a killed driver, NaN losses, truncated
result files and concurrent runs. After each fault a rerun completes the grid, every cell that had
finished keeps its file byte for byte, and the report counts the cells correctly.

One tiny grid (trace and enum, with and without aux, and the baseline at 100 labels; a 64-unit
net, 6 steps) runs once per module; each test works on a copy of it. Faults come from outside
(signals) or through ``SSVAE_BENCH_FAULT`` (``bench.run.faults.FAULT_ENV``), a test-only hook that makes
a given cell's worker produce a NaN or SIGKILL itself at a given step.
"""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.run.faults import FAULT_ENV
from bench.run.worker import HANG_ENV

from .conftest import REPO, mnist_dir, needs_mnist

pytestmark = needs_mnist

GRID = ["--preset", "smoke", "--labels", "100", "--estimators", "trace,enum", "--epochs", "1",
        "--steps-per-epoch", "6", "--set", "probe.checkpoints=[0]", "--set", "hidden=[64]", "--set", "z_dim=8",
        "--workers", "2"]
CELLS = ["trace_L100_s0", "trace+aux_L100_s0", "enum_L100_s0", "enum+aux_L100_s0", "baseline_L100_s0"]


def _env(**extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop(FAULT_ENV, None)
    if mnist_dir():
        env["SSVAE_DATA_DIR"] = str(mnist_dir())
    return {**env, **extra}


def run(out: Path, *extra, fault: str = None, timeout=600, env_extra=None):
    env = _env(**({FAULT_ENV: fault} if fault else {}), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "bench", "run", "--out", str(out), *GRID, *extra], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=env)


def report_status(out: Path) -> dict:
    r = subprocess.run([sys.executable, "-m", "bench", "report", str(out), "--no-plots"], cwd=REPO,
                       capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stderr
    with open(out / "tables" / "status_summary.csv") as fh:
        return {k: int(v) for k, v in next(csv.DictReader(fh)).items()}


def files(out: Path) -> dict:
    return {p.relative_to(out): p.read_bytes() for p in [*out.glob("runs/*.json"), *out.glob("probes/*.json")]}


def statuses(out: Path) -> dict:
    with open(out / "runs.csv") as fh:
        return {r["cell"]: r["status"] for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def finished_grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "grid"
    r = run(out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert statuses(out) == {c: "ok" for c in CELLS}
    return out


@pytest.fixture
def grid(finished_grid, tmp_path):
    out = tmp_path / "grid"
    shutil.copytree(finished_grid, out)
    return out


def _assert_intact(out: Path, before: dict, changed=()):
    after = files(out)
    for rel, data in before.items():
        if rel.stem not in changed:
            assert after[rel] == data, f"{rel} was recomputed or changed"


def test_cell_that_diverges_is_recorded_and_the_grid_goes_on(grid):
    (grid / "runs" / "trace_L100_s0.json").unlink()
    before = files(grid)
    r = run(grid, fault="nan:trace_L100_s0@3")
    assert r.returncode == 0, r.stderr  # a diverged cell is a result, not a harness failure
    record = json.loads((grid / "runs" / "trace_L100_s0.json").read_text())
    assert record["status"] == "diverged" and record["diverged_step"] == 3, record.get("error")
    assert "nan" in record["error"].lower()
    assert statuses(grid) == {**{c: "ok" for c in CELLS}, "trace_L100_s0": "diverged"}
    _assert_intact(grid, before)
    s = report_status(grid)
    assert (s["expected"], s["ok"], s["diverged"], s["missing"]) == (5, 4, 1, 0)
    r = run(grid)  # diverged is final: a rerun does not repeat it
    assert r.returncode == 0 and "0 to run" in r.stderr, r.stderr


def test_worker_killed_every_attempt_is_failed_with_the_reason_then_rerun(grid):
    (grid / "runs" / "enum_L100_s0.json").unlink()
    before = files(grid)
    r = run(grid, fault="kill:enum_L100_s0@2")
    assert r.returncode == 1 and "1 task(s) failed: enum_L100_s0" in r.stderr, r.stderr
    assert "requeued" in r.stderr
    record = json.loads((grid / "runs" / "enum_L100_s0.json").read_text())
    assert record["status"] == "failed"
    assert record["error"].startswith("worker killed by signal 9 (after 2 attempts"), record["error"]
    _assert_intact(grid, before)
    s = report_status(grid)
    assert (s["ok"], s["failed"], s["missing"]) == (4, 1, 0)
    r = run(grid)  # failed cells are retried by a rerun; the rest are kept
    assert r.returncode == 0 and "1 to run" in r.stderr, r.stderr
    _assert_intact(grid, before)
    assert statuses(grid) == {c: "ok" for c in CELLS}
    assert report_status(grid)["ok"] == 5


def _worker_pids(driver_pid: int):
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == driver_pid and b"bench.run.worker" in cmd:
            pids.append(int(proc.name))
    return pids


def test_worker_sigkilled_from_outside_mid_cell_is_requeued_once(grid):
    for cell in CELLS:
        (grid / "runs" / f"{cell}.json").unlink()
    before = files(grid)  # the probes
    driver = subprocess.Popen([sys.executable, "-m", "bench", "run", "--out", str(grid), *GRID], cwd=REPO,
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim, end = None, time.time() + 120
    while victim is None and time.time() < end and driver.poll() is None:
        pids = _worker_pids(driver.pid)
        if pids:
            time.sleep(0.5)  # mid-cell: started, importing or training
            victim = pids[0]
            os.kill(victim, signal.SIGKILL)
        time.sleep(0.05)
    _, err = driver.communicate(timeout=600)
    assert victim is not None, "no worker seen"
    assert driver.returncode == 0 and "requeued" in err, err
    assert statuses(grid) == {c: "ok" for c in CELLS}
    _assert_intact(grid, before)
    assert report_status(grid)["ok"] == 5


def test_hung_cell_is_recorded_failed_timeout_and_the_grid_goes_on(grid):
    for cell in ("enum_L100_s0", "trace_L100_s0"):
        (grid / "runs" / f"{cell}.json").unlink()
    before = files(grid)
    r = run(grid, "--stall-timeout", "30", env_extra={HANG_ENV: "enum_L100_s0"})
    assert r.returncode == 1 and "1 task(s) failed: enum_L100_s0" in r.stderr, r.stderr
    record = json.loads((grid / "runs" / "enum_L100_s0.json").read_text())
    assert record["status"] == "failed" and record["error"].startswith("timeout: no progress for 30 s"), record
    assert statuses(grid) == {**{c: "ok" for c in CELLS}, "enum_L100_s0": "failed"}  # the grid went on
    _assert_intact(grid, before)
    r = run(grid)  # not hung this time: the rerun finishes it
    assert r.returncode == 0 and "1 to run" in r.stderr, r.stderr
    assert statuses(grid) == {c: "ok" for c in CELLS}


def test_another_grid_in_the_folder_is_refused_in_one_line(grid):
    before = {p: p.read_bytes() for p in grid.rglob("*") if p.is_file()}
    r = run(grid, "--set", "lr=0.001", timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "holds another grid (lr 0.00042, not 0.001)" in lines[0] and "--force" in lines[0] and "--out" in lines[0]
    assert {p: p.read_bytes() for p in grid.rglob("*") if p.is_file()} == before
    r = run(grid, "--estimators", "enum", timeout=300)  # a part of the same grid: reused, nothing to run
    assert r.returncode == 0 and "0 to run" in r.stderr, r.stderr


def test_truncated_result_file_is_reported_and_rerun(grid):
    path = grid / "runs" / "enum+aux_L100_s0.json"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    before = files(grid)
    s = report_status(grid)  # never crashes the report
    assert (s["ok"], s["corrupt"]) == (4, 1)
    r = run(grid)
    assert r.returncode == 0 and "1 to run" in r.stderr, r.stderr
    _assert_intact(grid, before, changed={"enum+aux_L100_s0"})
    json.loads(path.read_text())
    assert report_status(grid)["ok"] == 5


def test_lock_of_a_dead_holder_does_not_stick(grid):
    holder = subprocess.run(
        [sys.executable, "-c", "import os, signal, sys; from bench.core.store import OutputLock; "
         f"OutputLock({str(grid)!r}).acquire(); os.kill(os.getpid(), signal.SIGKILL)"],
        cwd=REPO, env=_env(), timeout=60)
    assert holder.returncode == -signal.SIGKILL
    before = files(grid)
    r = run(grid)
    assert r.returncode == 0 and "0 to run" in r.stderr, r.stderr
    _assert_intact(grid, before)


def _wait_for(predicate, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_driver_interrupted_and_killed_then_resumed(tmp_path):
    """SIGINT, then SIGKILL, of `python -m bench run` mid-grid (a second run on the folder is refused
    meanwhile); reruns finish it, keeping finished cells byte for byte, none partial."""
    out = tmp_path / "out"
    args = ["--workers", "1", "--epochs", "3", "--steps-per-epoch", "20"]  # slow enough to interrupt
    done = lambda: len(list(out.glob("probes/*.json")) + list(out.glob("runs/*.json")))
    n_tasks = 2 + 2 + len(CELLS)  # timing and common probes of trace and enum, and the cells
    finished = {}
    for sig, after in ((signal.SIGINT, 1), (signal.SIGKILL, 3)):
        # a shell that starts pytest in the background leaves SIGINT ignored, and Python then installs
        # no KeyboardInterrupt handler: give the driver the default disposition, as a terminal would
        proc = subprocess.Popen([sys.executable, "-m", "bench", "run", "--out", str(out), *GRID, *args], cwd=REPO,
                                env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        assert _wait_for(lambda: done() >= after, 240), "no task finished"
        if sig == signal.SIGINT:  # a second run on the same folder is refused while the first holds it
            second = run(out, *args, timeout=120)
            assert second.returncode == 2 and "in use by another" in second.stderr, second.stderr
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode != 0, (sig, err[-2000:])
        if sig == signal.SIGINT:
            assert "Rerun the same command to resume" in err, err
        assert done() < n_tasks, "grid finished before the signal: test proves nothing"
        for p in out.glob("*/*.json"):  # nothing partial, nothing finished recomputed
            json.loads(p.read_text())
            if p in finished:
                assert finished[p] == (p.read_bytes(), p.stat().st_mtime_ns), f"{p.name} recomputed"
            finished[p] = (p.read_bytes(), p.stat().st_mtime_ns)
        assert not list(out.glob("**/*.tmp"))
    s = report_status(out)  # a partial folder reports its absent cells
    assert s["expected"] == 5 and s["missing"] == 5 - s["present"] > 0
    r = run(out, *args)
    assert r.returncode == 0, r.stderr
    for p, (data, mtime) in finished.items():
        assert p.read_bytes() == data and p.stat().st_mtime_ns == mtime, f"{p.name} recomputed"
    assert statuses(out) == {c: "ok" for c in CELLS}
    assert report_status(out)["ok"] == 5


def test_same_cell_twice_gives_identical_metrics(finished_grid, tmp_path):
    """Determinism on CPU: a cell rerun from scratch (--force, another folder) gives the same metrics."""
    out = tmp_path / "again"
    r = run(out, "--estimators", "enum", "--no-baseline", "--set", "aux=[true]")
    assert r.returncode == 0, r.stderr
    a = json.loads((finished_grid / "runs" / "enum+aux_L100_s0.json").read_text())
    b = json.loads((out / "runs" / "enum+aux_L100_s0.json").read_text())
    timing = {"train_seconds", "eval_seconds", "seconds_per_epoch"}
    assert {k: v for k, v in a["metrics"].items() if k not in timing} == \
           {k: v for k, v in b["metrics"].items() if k not in timing}
    strip = lambda rows: [{k: v for k, v in r.items() if k != "elapsed_seconds"} for r in rows]
    assert strip(a["curves"]) == strip(b["curves"])
    assert a["grad_variance"] == b["grad_variance"]
