"""The rules of docs/faults.md, each at the one place that enforces it (issue 29), in seconds, no training:

* a finished record is never replaced by an unfinished one (the worker's path and the executor's);
* a worker writes only while ``OUT/.lock`` names its run; shutdown cancels what the executor started;
* a record is read through one typed reader: malformed shapes are ``corrupt: reason`` and rerun;
* a report (and compare) never draws a table from records it cannot tie to one grid;
* cached artefacts carry a checksum and are rebuilt when it fails;
* a folder that takes no new file stops the grid (exit 3), a report into one fails in one line.
"""
import csv
import errno
import json
import re
import sys

import pytest
import torch

from bench.run import executors, gradient_probe, tasks
from bench.core import store, tables
from bench.run import grid as gridmod
from bench.cli import main
from bench.core.errors import EXIT_STORAGE, StorageError
from bench.core.store import OutputLock, atomic_write_json, is_done, owns, read_result, result_path, write_record

from .report_fixtures import fabricate_results
from .test_identity import IDENT, _env, _finish, _grid, _record

SPEC = {"kind": "train", "id": "enum_L100_s0", "config": {"estimator": "enum"}}
OK = {"id": SPEC["id"], "kind": "train", "spec": SPEC, "status": "ok", "token": "earlier"}


def _failing_kind(monkeypatch):
    def run(spec, data_dir, progress=None, cache_dir=None):
        raise FileNotFoundError("MNIST not found in /gone")  # the data folder vanished after the start

    monkeypatch.setitem(tasks.KINDS, "train", tasks.TaskKind(run, lambda spec: 1.0))


def test_a_failed_attempt_never_replaces_a_finished_record(tmp_path, monkeypatch):
    atomic_write_json(result_path(tmp_path, SPEC), OK)
    _failing_kind(monkeypatch)
    record = tasks.run_task(dict(SPEC), tmp_path, data_dir=tmp_path / "gone", token="this-attempt")
    assert record["status"] == "failed" and record["not_written"] == "ok record kept"
    assert read_result(result_path(tmp_path, SPEC))[0] == OK
    # a finished record replaces a finished one (a --force rerun of the same id); nothing replaces it with failed
    assert write_record(tmp_path, SPEC, {**OK, "status": "diverged"}) is None
    assert write_record(tmp_path, SPEC, {**OK, "status": "failed"}) == "diverged record kept"


def test_a_worker_that_ran_to_its_end_without_writing_is_not_retried(tmp_path, monkeypatch):
    atomic_write_json(result_path(tmp_path, SPEC), OK)
    calls = tmp_path / "calls"
    code = (f"import sys; open({str(calls)!r}, 'a').write('x'); "
            "print('bench.run.worker: failed (FileNotFoundError: gone), not written: ok record kept', file=sys.stderr)")
    monkeypatch.setattr(executors, "worker_command", lambda *a, **k: [sys.executable, "-c", code])
    seen = []
    executors.LocalExecutor(workers=1, threads=1, retries=1).run([SPEC], tmp_path, lambda r, rec: seen.append(rec))
    done = [r for r in seen if r]
    assert [r["status"] for r in done] == ["failed"] and "ok record kept" in done[0]["error"]
    assert calls.read_text() == "x"  # one attempt: a rerun would end the same way
    assert read_result(result_path(tmp_path, SPEC))[0] == OK


def test_a_real_worker_whose_data_went_away_keeps_the_finished_record(tmp_path, monkeypatch):
    """The two tests above end to end, no training: the real worker process (python -m bench.run.worker), run by the
    local executor, fails at once (its data folder is gone); the finished file stays byte for byte."""
    monkeypatch.setenv("SSVAE_NO_DOWNLOAD", "1")
    spec = next(t for t in gridmod.expand(_grid()) if t["kind"] == "train")
    atomic_write_json(result_path(tmp_path, spec), _record(spec))
    before = result_path(tmp_path, spec).read_bytes()
    seen = []
    ex = executors.LocalExecutor(workers=1, threads=1, data_dir=str(tmp_path / "gone"), retries=1)
    ex.run([spec], tmp_path, lambda r, rec: seen.append(rec))
    done = [r for r in seen if r]
    assert [r["status"] for r in done] == ["failed"] and "not written: ok record kept" in done[0]["error"], done
    assert "MNIST not found" in done[0]["error"]
    assert result_path(tmp_path, spec).read_bytes() == before


def test_a_worker_writes_only_while_the_lock_names_its_run(tmp_path, monkeypatch):
    lock = OutputLock(tmp_path, "run-a")
    lock.acquire()
    try:
        assert (tmp_path / ".lock").read_text().endswith("run run-a")
        assert owns(tmp_path, "run-a") and not owns(tmp_path, "run-b")
        assert write_record(tmp_path, SPEC, OK, "run-a") is None
    finally:
        lock.release()
    assert not owns(tmp_path, "run-a")  # released (Ctrl-C, the end): its workers still running write nothing
    late = {**OK, "token": "late"}
    assert "no longer names run run-a" in write_record(tmp_path, SPEC, late, "run-a")
    _failing_kind(monkeypatch)
    record = tasks.run_task(dict(SPEC), tmp_path, token="late", run_id="run-a")
    assert "no longer names run run-a" in record["not_written"]
    assert read_result(result_path(tmp_path, SPEC))[0] == OK


def test_dask_shutdown_cancels_its_futures(tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    cancelled = []

    class Client:
        status = "running"

        def submit(self, *a, **k):
            return object()

        def cancel(self, futures, force=False):
            cancelled.extend(futures)

        def close(self):
            pass

    def interrupted(futures):
        raise KeyboardInterrupt

    monkeypatch.setattr(distributed, "as_completed", interrupted)
    ex = executors.DaskExecutor(workers=1, threads=1, run_id="run-a")
    ex.client = Client()
    with pytest.raises(KeyboardInterrupt):
        ex.run([SPEC, {**SPEC, "id": "trace_L100_s0"}], tmp_path, lambda r, rec: None)
    assert len(cancelled) == 2 and ex.client is None


@pytest.mark.parametrize("field, value, reason", [
    ("metrics", "oops", "metrics is a str"), ("curves", "oops", "curves is a str"),
    ("curves", [1, 2], "curves holds a row that is not a table"), ("status", 3, "status 3"),
    ("started", "yesterday", "started is a str"), ("spec", [], "spec is a list")])
def test_a_record_of_the_wrong_shape_is_corrupt_and_rerun(tmp_path, field, value, reason):
    grid = _grid()
    specs = gridmod.expand(grid)
    _finish(tmp_path, specs)
    _env(tmp_path, grid, specs)
    cell = next(t for t in specs if t["kind"] == "train")
    atomic_write_json(result_path(tmp_path, cell), {**_record(cell), field: value})
    assert read_result(result_path(tmp_path, cell)) == (None, f"corrupt: {reason}")
    assert not is_done(tmp_path, cell, IDENT)  # the next run reruns it
    rows = {r["cell"]: r for r in tables.write_tables(tmp_path, specs, IDENT)["runs"]}
    assert rows[cell["id"]]["status"] == f"corrupt: {reason}"
    assert cell["id"] not in tables.load_grid(tmp_path).records


def test_report_and_compare_of_a_record_of_the_wrong_shape_count_it_corrupt(tmp_path, capsys):
    """The commands on such a folder: the report draws its tables with the cell counted corrupt (exit 0); compare
    flags ok -> corrupt (exit 1, as for any flag) and says corrupt -> ok without a flag (exit 0); no traceback."""
    fabricate_results(tmp_path / "ok")
    fabricate_results(tmp_path / "bad")
    path = tmp_path / "bad" / "runs" / "enum_L100_s0.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "metrics": "oops", "curves": "oops"}))
    capsys.readouterr()
    assert main(["report", str(tmp_path / "bad"), "--no-plots"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    cells = (tmp_path / "bad" / "tables" / "status_cells.csv").read_text()
    assert "enum_L100_s0,enum,False,100,0,corrupt,corrupt: metrics is a str" in cells, cells
    with open(tmp_path / "bad" / "tables" / "status_summary.csv") as f:
        assert [(r["ok"], r["failed"], r["corrupt"]) for r in csv.DictReader(f)] == [("25", "1", "1")]
    assert main(["compare", str(tmp_path / "ok"), str(tmp_path / "bad")]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "note: new folder: enum_L100_s0.json: corrupt: metrics is a str" in out
    assert re.search(r"^!!\s+enum_L100_s0\s+ok\s+corrupt\s+corrupt: metrics is a str$", out, re.M), out
    assert "1 flagged (status 1, accuracy 0, time 0, variance 0)" in out
    assert main(["compare", str(tmp_path / "bad"), str(tmp_path / "ok")]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and re.search(r"^\s+enum_L100_s0\s+corrupt\s+ok$", out, re.M), out


def test_report_and_compare_refuse_records_they_cannot_tie_to_one_grid(tmp_path, capsys):
    fabricate_results(tmp_path / "a")
    for env in ("{not json", None):
        if env is None:
            (tmp_path / "a" / "env.json").unlink()
        else:
            (tmp_path / "a" / "env.json").write_text(env)
        before = sorted(p.name for p in (tmp_path / "a").iterdir())
        capsys.readouterr()
        assert main(["report", str(tmp_path / "a"), "--no-plots"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cannot be tied to one grid" in err[0], err
        assert sorted(p.name for p in (tmp_path / "a").iterdir()) == before  # no table drawn
        fabricate_results(tmp_path / "b")
        assert main(["compare", str(tmp_path / "b"), str(tmp_path / "a")]) == 2
        assert "cannot be tied to one grid" in capsys.readouterr().err


def test_compare_of_two_grids_is_refused(tmp_path, capsys):
    fabricate_results(tmp_path / "old")
    fabricate_results(tmp_path / "new")
    env = json.loads((tmp_path / "new" / "env.json").read_text())
    env["grid"]["lr"], old = 0.001, json.loads((tmp_path / "old" / "env.json").read_text())
    old["grid"]["lr"] = 0.00042
    (tmp_path / "new" / "env.json").write_text(json.dumps(env))
    (tmp_path / "old" / "env.json").write_text(json.dumps(old))
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "old"), str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ran different grids (lr 0.00042, not 0.001)" in err[0], err


def test_a_corrupt_trajectory_checkpoint_is_rebuilt(tmp_path):
    from ssvae.metrics import Reference

    spec = {"config": {"estimator": "enum", "labels": 100}, "reference_draws": 4}
    cache = gradient_probe._TrajectoryCache(tmp_path, spec, "d" * 64)
    refs = {"unsup": Reference(mean={"g": torch.ones(2)}, err={"g": 0.1}, draws=4)}
    cache.save(0, {"w": torch.zeros(3)}, refs)
    assert cache.has([0]) and torch.equal(cache.load(0)[0]["w"], torch.zeros(3))
    path = cache._path(0)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte in the tensor data
    path.write_bytes(bytes(data))
    assert not cache.has([0]) and not path.exists()  # deleted: the probe trains the trajectory again
    cache.save(0, {"w": torch.zeros(3)}, refs)
    assert cache.has([0])


def test_a_folder_without_inodes_stops_the_grid_in_one_line(tmp_path, monkeypatch):
    real_open = open

    def no_inodes(path, *a, **k):
        if str(path).endswith(".log"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, *a, **k)

    monkeypatch.setattr(store, "open", no_inodes, raising=False)
    monkeypatch.setattr(executors, "worker_command", lambda *a, **k: [sys.executable, "-c", "pass"])
    with pytest.raises(StorageError, match=r"cannot write .*enum_L100_s0\.log \(No space left on device\)"):
        executors.LocalExecutor(workers=1, threads=1).run([SPEC], tmp_path, lambda r, rec: None)


def test_a_report_into_a_folder_that_takes_no_write_is_one_line(tmp_path, monkeypatch, capsys):
    from bench.report import cli as report_cli
    from bench.core import errors

    fabricate_results(tmp_path)

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(errors.tempfile, "TemporaryFile", read_only)
    capsys.readouterr()
    assert main(["report", str(tmp_path), "--no-plots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not writable" in err[0], err
    monkeypatch.undo()
    monkeypatch.setattr(report_cli, "build_report", read_only)  # the disk fills up midway
    assert main(["report", str(tmp_path), "--no-plots"]) == EXIT_STORAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write the report" in err[0] and "Read-only file system" in err[0], err


def test_a_task_runs_with_subnormal_floats_flushed_and_records_it(tmp_path, monkeypatch):
    """bench.core.numerics: a subnormal product inside a task is zero (an enum + aux cell at a high learning rate
    slowed 4x on subnormals), and the record says the task ran so."""
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormal floats")
    seen = {}

    def run(spec, data_dir, progress=None, cache_dir=None):
        seen["product"] = (torch.tensor([1e-39]) * 1.0).item()
        return {"status": "ok"}

    monkeypatch.setitem(tasks.KINDS, "train", tasks.TaskKind(run, lambda spec: 1.0))
    assert (torch.tensor([1e-39]) * 1.0).item() > 0  # not flushed before the task
    try:
        record = tasks.run_task(dict(SPEC), tmp_path, data_dir=tmp_path / "gone")
    finally:
        torch.set_flush_denormal(False)
    assert seen["product"] == 0.0 and record["flush_denormal"] is True
    assert read_result(result_path(tmp_path, SPEC))[0]["flush_denormal"] is True
