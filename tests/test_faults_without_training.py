"""Faults of the harness that need no training: a hung task (stall watchdog), a full disk or read-only
folder, a file system without flock, a dask scheduler that goes away, old records, usable CPUs.

Workers are replaced by tiny stand-in commands where the point is the executor's reaction, so these
run in seconds; tests/test_faults.py runs the real workers on MNIST."""
import errno
import json
import sys

import pytest

from bench.run import dask_executor, executors, launch
from bench.core import provenance, store
from bench.core.errors import EXIT_STORAGE, StorageError
from bench.core.store import OutputLock, atomic_write_json, read_result, result_path
from bench.cli import main
from ssvae.errors import ConfigError

from .conftest import mnist_dir, needs_mnist

SPEC = {"kind": "train", "id": "enum_L100_s0", "config": {"estimator": "enum"}}


def _fake_worker(monkeypatch, code: str):
    for module in (executors, dask_executor):  # each executor starts its workers itself
        monkeypatch.setattr(module, "worker_command",
                            lambda out, threads, data_dir, token=None, run_id=None: [sys.executable, "-c", code])


def _run(ex, specs, out):
    seen = []
    ex.run(specs, out, lambda e, r: seen.append(r) if r is not None else None)
    return seen


def test_hung_task_is_recorded_failed_timeout_and_the_grid_goes_on(tmp_path, monkeypatch):
    _fake_worker(monkeypatch, "import time; time.sleep(600)")  # never reports progress, never ends
    ex = executors.LocalExecutor(workers=1, threads=1, stall_timeout=1.5)
    other = {**SPEC, "id": "trace_L100_s0"}
    seen = _run(ex, [SPEC, other], tmp_path)
    assert [r["id"] for r in seen] == ["enum_L100_s0", "trace_L100_s0"]  # the second ran after the first hung
    for r in seen:
        assert r["status"] == "failed" and r["error"].startswith("timeout: no progress for 1.5 s"), r
    assert read_result(result_path(tmp_path, SPEC))[0]["status"] == "failed"
    ex = executors.LocalExecutor(workers=1, threads=1, task_timeout=1.0, stall_timeout=None)
    assert _run(ex, [SPEC], tmp_path)[0]["error"].startswith("timeout: ran longer than the task timeout of 1 s")


def test_an_old_record_is_never_taken_for_a_new_result_nor_overwritten_with_failed(tmp_path, monkeypatch):
    old = {"id": SPEC["id"], "kind": "train", "spec": SPEC, "status": "ok", "token": "an-earlier-attempt"}
    atomic_write_json(result_path(tmp_path, SPEC), old)
    _fake_worker(monkeypatch, "import sys; sys.exit(1)")  # dies without writing anything
    seen = _run(executors.LocalExecutor(workers=1, threads=1, retries=0), [SPEC], tmp_path)
    assert seen[0]["status"] == "failed" and "exited with status 1" in seen[0]["error"]
    assert read_result(result_path(tmp_path, SPEC))[0] == old  # the finished record is kept as it was
    # dask's task function: the same rule (token), so dask retries instead of returning the old record
    with pytest.raises(RuntimeError, match="exited with status 1"):
        dask_executor._run_in_subprocess(SPEC, str(tmp_path), None, 1, "this-attempt")


def test_worker_that_cannot_write_stops_the_grid(tmp_path, monkeypatch):
    _fake_worker(monkeypatch, "import sys; print('bench.run.worker: cannot write runs/x.json (No space left on "
                              f"device)', file=sys.stderr); sys.exit({EXIT_STORAGE})")
    with pytest.raises(StorageError, match="No space left on device"):
        _run(executors.LocalExecutor(workers=1, threads=1), [SPEC, {**SPEC, "id": "trace_L100_s0"}], tmp_path)
    assert not list(tmp_path.glob("runs/*.json"))


def test_full_disk_leaves_no_temp_file_and_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "runs" / "a.json"
    atomic_write_json(path, {"status": "ok"})

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.os, "fsync", full)
    with pytest.raises(StorageError, match=r"cannot write .*a\.json \(No space left on device\)"):
        atomic_write_json(path, {"status": "failed"})
    assert json.loads(path.read_text()) == {"status": "ok"}
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_file_system_without_flock_is_one_line(tmp_path, monkeypatch):
    def no_flock(*a):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(store.fcntl, "flock", no_flock)
    with pytest.raises(ConfigError, match="file system without flock .*holds on local file systems"):
        OutputLock(tmp_path).acquire()


def test_dask_scheduler_gone_stops_the_grid_and_keeps_finished_records(tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    from distributed.comm.core import CommClosedError

    done = {"id": SPEC["id"], "kind": "train", "spec": SPEC, "status": "ok", "token": "earlier"}
    atomic_write_json(result_path(tmp_path, SPEC), done)

    class Future:
        def result(self):
            raise CommClosedError("scheduler went away")

    class Client:
        status = "closed"

        def submit(self, *a, **k):
            return Future()

        def close(self):
            pass

    monkeypatch.setattr(distributed, "as_completed", lambda futures: iter(futures))
    ex = executors.DaskExecutor(workers=1, threads=1)
    ex.client = Client()
    with pytest.raises(executors.SchedulerLost, match="scheduler went away"):
        _run(ex, [SPEC], tmp_path)
    assert read_result(result_path(tmp_path, SPEC))[0] == done


def test_dask_connect_silences_the_reconnect_messages_of_a_lost_scheduler(monkeypatch, caplog):
    """The test above sets the client itself; here connect() runs (with a stand-in client), and what dask logs
    when its scheduler goes away (the client's reconnect error, the event loop's callback traceback) is dropped
    by its loggers, so SchedulerLost's line is the only one on stderr. dask gives some of them their own level
    (distributed.client, tornado.application), so silencing only their parents is not enough."""
    import logging

    distributed = pytest.importorskip("distributed")
    names = ["distributed.client", "distributed.core", "distributed.comm.tcp", "tornado.application"]
    loggers = [logging.getLogger(n) for n in [*names, *dask_executor.QUIET_LOGGERS]]
    levels = [lg.level for lg in loggers]
    monkeypatch.setattr(distributed, "Client", lambda *a, **k: object())  # reached without a scheduler
    try:
        executors.DaskExecutor(workers=1, threads=1, scheduler="tcp://127.0.0.1:1").connect()
        caplog.clear()
        for name in names:
            logging.getLogger(name).error("Failed to reconnect to scheduler after 30.00 seconds, closing client")
            try:
                raise OSError("Stream is closed")
            except OSError:
                logging.getLogger(name).exception("Exception in callback")
        assert [r.name for r in caplog.records] == []
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def test_thread_counts_come_from_usable_cpus(monkeypatch):
    monkeypatch.setattr(provenance.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(provenance, "_cgroup_quota", lambda: 3.0)  # a cgroup quota of 3 CPUs
    assert provenance.usable_cpus() == 3
    assert executors.LocalExecutor(workers=2).threads == 1
    assert launch.task_threads({"exclusive": True}, 1) == 3
    monkeypatch.setattr(provenance, "_cgroup_quota", lambda: None)
    assert executors.DaskExecutor(workers=2).threads == 4


@needs_mnist
def test_driver_stops_in_one_line_when_the_folder_takes_no_write(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SSVAE_DATA_DIR", str(mnist_dir()))
    out = tmp_path / "out"
    atomic_write_json(out / "runs" / "earlier_L100_s0.json", {"status": "ok"})

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.os, "fsync", full)
    monkeypatch.setattr(executors.LocalExecutor, "run",
                        lambda *a: pytest.fail("the grid started although env.json could not be written"))
    capsys.readouterr()
    code = main(["run", "--estimators", "enum", "--labels", "100", "--no-baseline", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_STORAGE and len(err) == 1 and "No space left on device" in err[0], err
    assert json.loads((out / "runs" / "earlier_L100_s0.json").read_text()) == {"status": "ok"}
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_executors_follow_the_protocol_and_report_progress_as_task_states(tmp_path, monkeypatch):
    """The driver reads an executor only through on_update(running, record): running maps a task id to
    its TaskState, with the worker's last progress line."""
    assert isinstance(executors.LocalExecutor(workers=1, threads=1), executors.Executor)
    assert isinstance(executors.DaskExecutor(workers=1, threads=1), executors.Executor)
    _fake_worker(monkeypatch, "import json, time; print(json.dumps({'epoch': 1, 'step': 3, 'steps': 10}), "
                              "flush=True); time.sleep(1.0); print(json.dumps({'event': 'epoch', 'epoch': 1, "
                              "'valid_acc': 0.5}), flush=True); time.sleep(1.0)")
    states = []
    ex = executors.LocalExecutor(workers=1, threads=1)
    ex.run([SPEC], tmp_path, lambda running, r: states.append(dict(running)))
    seen = [s[SPEC["id"]] for s in states if SPEC["id"] in s]
    assert seen and all(isinstance(s, executors.TaskState) and s.spec["id"] == SPEC["id"] for s in seen)
    assert {"epoch": 1, "step": 3, "steps": 10} in [dict(s.progress) for s in seen]
    # an epoch's summary line has no step count: the lines are merged, so the task does not fall back to "starting"
    assert {"epoch": 1, "step": 3, "steps": 10, "event": "epoch", "valid_acc": 0.5} == dict(seen[-1].progress)
    assert states[-1] == {}  # nothing runs once the worker is gone


def test_progress_heartbeat_in_a_log_names_the_running_task_and_an_eta(monkeypatch):
    import io

    from bench.run.executors import TaskState
    from bench.run.progress import Progress

    tasks = [{**SPEC, "config": {"estimator": "enum", "epochs": 2, "labels": 100}},
             {**SPEC, "id": "trace_L100_s0", "config": {"estimator": "trace", "epochs": 2, "labels": 100}}]
    log = io.StringIO()  # not a terminal: heartbeat lines, no bar
    p = Progress(tasks, tasks, stream=log)
    p.HEARTBEAT_S = 0.0
    p.start -= 30  # thirty seconds in
    p.update({SPEC["id"]: TaskState(tasks[0], {"epoch": 2, "step": 5, "steps": 10})}, None)
    p.update({}, {"id": SPEC["id"], "status": "ok"})
    p.close()
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("[0/2] enum_L100_s0 epoch 2/2 step 5/10 |")
    share = 0.75 * p.units[SPEC["id"]] / p.todo_units  # three quarters of the first task's work
    assert f"{round(100 * share):3d}% of the work" in lines[0] and "ETA 00:" in lines[0]
    assert lines[1] == "[1/2] enum_L100_s0: ok"
    p.update({}, {"id": "timing_cpu_enum", "kind": "timing", "status": "ok", "other_cpu_load": 1.0})
    assert "timing_cpu_enum: ok (contended: other processes kept 1 core busy" in log.getvalue()
    p.update({}, {"id": "timing_cpu_trace", "kind": "timing", "status": "ok", "other_cpu_load": 1.0,
                  "spec": {"exclusive": False}})  # a preset that times beside other tasks (smoke) asked for it
    assert "timing_cpu_trace: ok (beside other tasks, as the preset's timing_alone = false asks" in log.getvalue()
    assert "\r" not in log.getvalue()
    # a common probe that reads its trajectory from the cache reports checkpoints, not steps
    common = {**SPEC, "id": "common_L100_s0_trace", "kind": "common", "estimators": ["trace"], "n_samples": 10,
              "checkpoints": [0, 10], "config": {"estimator": "enum", "aux": True, "epochs": 1, "labels": 100}}
    q = Progress([common], [common], stream=log)
    q.HEARTBEAT_S = 0.0
    q.update({common["id"]: TaskState(common, {"event": "checkpoint", "checkpoints_done": 1, "checkpoints": 2})}, None)
    q.close()
    assert log.getvalue().splitlines()[-1].startswith("[0/1] common_L100_s0_trace checkpoint 1/2 |  50% of the work")


def test_other_cpu_load_sees_a_busy_process_beside_the_task():
    """The worker's record says how many cores something else kept busy while it ran."""
    import subprocess
    import time

    assert provenance.other_cpu_load((10.0, 1.0), (14.0, 3.0), 2.0) == 1.0  # 4 s busy, 2 of them its own
    assert provenance.other_cpu_load(None, (1.0, 1.0), 1.0) is None
    if provenance.cpu_times() is None:
        pytest.skip("no /proc/stat on this platform")

    def window(seconds=1.2):
        a = provenance.cpu_times()
        time.sleep(seconds)
        return provenance.other_cpu_load(a, provenance.cpu_times(), seconds)

    quiet = window()
    if quiet > provenance.usable_cpus() - 1:
        pytest.skip(f"the machine is saturated ({quiet} cores busy already): one more process cannot show")
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 2.5: pass"])
    try:
        time.sleep(0.3)  # past its start-up
        loaded = window()
    finally:
        busy.wait()
    assert loaded - quiet > 0.6, (quiet, loaded)


def test_retime_runs_the_timing_probes_again_and_only_them(tmp_path, monkeypatch):
    from bench.run import harness

    seen = {}

    def fake_run(args, grid, out, tasks, todo, *rest, **kw):
        seen["todo"] = [t["id"] for t in todo]
        return 0

    monkeypatch.setattr(harness, "_run_locked", fake_run)
    monkeypatch.setattr(harness, "is_done", lambda out, t, ident: True)  # everything finished
    args = ["run", "--preset", "smoke", "--estimators", "trace,enum", "--labels", "100", "--out", str(tmp_path / "o")]
    assert main(args) == 0 and seen["todo"] == []
    assert main([*args, "--retime"]) == 0
    assert seen["todo"] == ["timing_cpu_trace", "timing_cpu_enum"]


def test_each_executor_parses_its_own_options_and_refuses_anothers():
    """`bench run`'s executor flags are the executors' own (``FLAGS``, ``add_arguments``, ``options``): the
    chosen one turns them into its keyword arguments; a flag of another executor is one clear line."""
    from bench.cli import build_parser
    from ssvae.errors import ConfigError

    parse = build_parser(load=["run"]).parse_args
    local = executors.executor_options(parse(["run", "--task-timeout", "60"]))
    assert local == {"task_timeout": 60.0, "stall_timeout": executors.STALL_TIMEOUT_S}
    assert executors.executor_options(parse(["run", "--executor", "dask", "--scheduler", "tcp://h:1"])) == {
        "scheduler": "tcp://h:1"}
    for argv, message in ((["run", "--executor", "dask", "--stall-timeout", "5"], "--stall-timeout needs --executor local"),
                          (["run", "--scheduler", "tcp://h:1"], "--scheduler needs --executor dask"),
                          (["run", "--executor", "ray"], "unknown executor 'ray': choose from local, dask")):
        with pytest.raises(ConfigError, match=message):
            executors.executor_options(parse(argv))
    for cls in executors.EXECUTORS.values():  # every flag an executor declares is one it adds
        assert all(hasattr(parse(["run"]), f) for f in cls.FLAGS)
