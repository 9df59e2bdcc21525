"""Executors: where the tasks of a grid run (the protocol, the local executor, ``EXECUTORS``; the dask executor
is :mod:`bench.run.dask_executor`, a module of its own as a new executor would be).

Every executor runs ``bench.run.tasks.run_task`` for each spec in a fresh process (``bench.run.launch`` starts the
worker and records one that wrote nothing); the worker writes its own result file, so the driver only
collects and a driver crash loses nothing that finished.

* ``local`` -- one subprocess per task, ``workers`` at a time, each with ``threads`` torch
  threads. Workers die with the driver (``PR_SET_PDEATHSIG``). A worker that dies without
  writing its result (killed, out of memory) is re-queued once, then recorded as failed.
  Tasks marked ``exclusive`` (the timing probe) run alone. With ``gpus`` (CUDA device ids),
  each running task sees one GPU through ``CUDA_VISIBLE_DEVICES``; GPU ``g`` runs up to ``slots[g]``
  cells side by side (default one; ``bench.run.gpu_plan.plan_gpus`` sizes them), and a new cell goes to the GPU
  with the fewest running cells.
  A task that runs longer than ``task_timeout`` seconds, or reports no progress for ``stall_timeout``
  seconds, is killed and recorded ``failed`` with an error starting ``timeout:``; the grid goes on.

An executor is a class with the members of :class:`Executor` (in a module of its own), registered in
``EXECUTORS``; it adds and parses
its own command-line options (``add_arguments``, ``options``: :func:`executor_options`); it tells
the driver how things move through ``on_update(running, record)``: ``running`` maps each task it is
running to a :class:`TaskState` (its spec and the worker's last progress line), ``record`` is a
finished task's record or None. The driver reads nothing else of it.

Both executors give each attempt a fresh token that the worker writes into its record: a record
without this attempt's token is an older one and is never taken for the new result. Every record goes
through :func:`bench.core.store.write_record`, so a ``failed`` record is never written over a finished (ok or
diverged) one, and a worker given the run's id (``run_id``, which ``OUT/.lock`` names while the run holds
it) writes nothing once the run has stopped. ``shutdown`` stops what the executor started: the local
workers are terminated, then killed; the dask futures are cancelled. A worker that cannot write its result
(full disk, read-only folder) stops the grid with :class:`bench.core.errors.StorageError`.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Protocol, runtime_checkable

from ..core.errors import EXIT_STORAGE, ConfigError, StorageError
from .dask_executor import DaskExecutor, SchedulerLost  # noqa: F401 (registered below; tests reach it here)
from .launch import (OnUpdate, TaskState, _last_line, default_threads, die_with_parent, new_token,
                     task_threads, worker_command, write_failed)
from ..core.schema import Folder
from ..core.store import open_log, read_result, result_path


@runtime_checkable
class Executor(Protocol):
    """Where the tasks of a grid run. Constructed as ``cls(workers=, threads=, data_dir=, run_id=, **options)``
    (``run_id``: the id ``OUT/.lock`` names while the run holds it; each worker gets it)."""

    name: str
    workers: int
    threads: int
    #: the ``args`` attributes of its command-line options (another executor's given: refused in one line)
    FLAGS: tuple
    #: whether it takes the harness's GPU plan (``gpus=``, ``slots=``)
    PINS_GPUS: bool

    @staticmethod
    def add_arguments(parser) -> None:
        """Add its command-line options to ``bench run``'s parser."""

    @staticmethod
    def options(args) -> dict:
        """Its ``**options`` from the parsed command line (one-line ConfigError on a bad value)."""

    def connect(self) -> None:
        """Reach what the executor needs; raise ConfigError when it does not answer (nothing is written yet)."""

    def run(self, specs: List[dict], out_dir, on_update: OnUpdate) -> None:
        """Run every spec (each worker writes its own result file); call ``on_update`` as things move."""

    def shutdown(self) -> None:
        """Stop what is still running; safe to call twice."""


def trajectory_key(spec: dict) -> Optional[str]:
    """The shared trajectory a common probe measures on (its config: labels, seed, the trajectory's
    estimator and settings), None for any other task."""
    return json.dumps(spec.get("config"), sort_keys=True) if spec.get("kind") == "common" else None



@dataclass
class _Running:
    spec: dict
    proc: subprocess.Popen
    started: float
    gpu: Optional[int] = None
    progress: dict = field(default_factory=dict)
    reader: Optional[threading.Thread] = None
    token: str = ""
    last_progress: float = 0.0
    timed_out: Optional[str] = None


#: a task with no progress for this many seconds is killed (``--stall-timeout``'s default)
STALL_TIMEOUT_S = 1800


def _seconds(flag: str, value: Optional[float]) -> Optional[float]:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{flag} must be a positive number of seconds (got {value})")
    return value


class LocalExecutor:
    name = "local"
    #: its command-line options (``add_arguments``); ``bench run`` refuses them with another executor
    FLAGS = ("task_timeout", "stall_timeout")
    #: it pins cells to GPUs (``gpus``, ``slots``: the harness's GPU plan)
    PINS_GPUS = True

    @staticmethod
    def add_arguments(p) -> None:
        p.add_argument("--task-timeout", type=float, default=None, metavar="S",
                       help="local: kill and record as failed (timeout) a task running longer than S seconds "
                            "(default: none)")
        p.add_argument("--stall-timeout", type=float, default=None, metavar="S",
                       help=f"local: kill and record as failed (timeout) a task with no progress for S seconds "
                            f"(default: {STALL_TIMEOUT_S})")

    @staticmethod
    def options(args) -> dict:
        """Its keyword arguments from the command line's (one-line ConfigError on a bad value)."""
        stall = _seconds("--stall-timeout", args.stall_timeout)
        return {"task_timeout": _seconds("--task-timeout", args.task_timeout),
                "stall_timeout": STALL_TIMEOUT_S if stall is None else stall}

    def __init__(self, workers: int = 1, threads: Optional[int] = None, data_dir: Optional[str] = None,
                 retries: int = 1, gpus: Optional[List[int]] = None, task_timeout: Optional[float] = None,
                 stall_timeout: Optional[float] = None, run_id: Optional[str] = None,
                 slots: Optional[Mapping[int, int]] = None):
        self.run_id = run_id
        self.gpus = list(gpus or [])
        self.slots = {g: max(1, int((slots or {}).get(g, 1))) for g in self.gpus}  # cells at a time per GPU
        self.workers = max(1, min(workers, sum(self.slots.values())) if self.gpus else workers)
        self.threads = threads or default_threads(self.workers)
        self.data_dir = data_dir
        self.retries = retries
        self.task_timeout = task_timeout or None
        self.stall_timeout = stall_timeout or None
        self.running: Dict[str, _Running] = {}

    def connect(self) -> None:
        """Nothing to reach: tasks run in subprocesses of this one."""

    def states(self) -> Dict[str, TaskState]:
        return {tid: TaskState(r.spec, dict(r.progress)) for tid, r in self.running.items()}

    def _free_gpu(self) -> Optional[int]:
        """The GPU with the fewest running cells among those with a free slot (None: every slot is taken)."""
        count = {g: 0 for g in self.gpus}
        for r in self.running.values():
            if r.gpu in count:
                count[r.gpu] += 1
        free = [g for g in self.gpus if count[g] < self.slots[g]]
        return min(free, key=lambda g: count[g]) if free else None

    def _start(self, spec: dict, out_dir: Path, log_dir: Path) -> _Running:
        token = new_token()
        cmd = worker_command(out_dir, task_threads(spec, self.threads), self.data_dir, token, self.run_id)
        log = open_log(log_dir / f"{spec['id']}.log")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        gpu = self._free_gpu() if self.gpus else None
        if gpu is not None:  # the cell sees one GPU, as cuda:0
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                preexec_fn=die_with_parent, env=env)
        proc.stdin.write(json.dumps(spec))
        proc.stdin.close()
        run = _Running(spec, proc, time.time(), gpu=gpu, token=token, last_progress=time.time())

        def read():
            for line in proc.stdout:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(event, dict):  # merged: an epoch's summary keeps the step count of the lines before
                    run.progress = {**run.progress, **event}
                    run.last_progress = time.time()

        run.reader = threading.Thread(target=read, daemon=True)
        run.reader.start()
        log.close()
        return run

    def run(self, specs: List[dict], out_dir, on_update: OnUpdate) -> None:
        """Run ``specs``; ``on_update(running, finished_record_or_None)`` is called as things move."""
        out_dir = Path(out_dir)
        log_dir = Folder(out_dir).logs
        queue = list(specs)
        attempts: Dict[str, int] = {}
        trained: set = set()  # trajectories a finished common probe has written to the cache
        try:
            while queue or self.running:
                while queue and len(self.running) < self.workers:
                    # an exclusive task (the timing probe) runs alone, so its timings are not shared
                    if any(r.spec.get("exclusive") for r in self.running.values()):
                        break
                    if queue[0].get("exclusive") and self.running:
                        break
                    i = self._next(queue, trained)
                    if i is None:
                        break
                    spec = queue.pop(i)
                    attempts[spec["id"]] = attempts.get(spec["id"], 0) + 1
                    self.running[spec["id"]] = self._start(spec, out_dir, log_dir)
                time.sleep(0.2)
                for tid, run in list(self.running.items()):
                    code = run.proc.poll()
                    if code is None:
                        self._watch(run)
                        continue
                    run.reader.join(timeout=5)
                    del self.running[tid]
                    record, problem = read_result(result_path(out_dir, run.spec))
                    fresh = record is not None and record.get("token") == run.token
                    if code == EXIT_STORAGE and not fresh:
                        raise StorageError(_last_line(log_dir / f"{tid}.log") or
                                           f"{tid}: its result could not be written")
                    if not fresh and run.timed_out:  # a hung task would hang again: no retry
                        record = write_failed(out_dir, run.spec, f"timeout: {run.timed_out}; see logs/{tid}.log")
                    elif not fresh and code == 0:  # it ran to its end, and its record was not written by rule
                        record = write_failed(out_dir, run.spec, _last_line(log_dir / f"{tid}.log"))
                    elif not fresh:  # the worker died without writing its result
                        reason = (f"worker killed by signal {-code}" if code < 0 else f"worker exited with status {code}")
                        if attempts[tid] <= self.retries:
                            queue.insert(0, run.spec)
                            on_update(self.states(), {"id": tid, "status": "requeued", "error": reason})
                            continue
                        record = write_failed(out_dir, run.spec, f"{reason} (after {attempts[tid]} attempts; "
                                                                 f"see logs/{tid}.log)")
                    if record and record.get("status") == "ok" and trajectory_key(run.spec):
                        trained.add(trajectory_key(run.spec))
                    on_update(self.states(), record)
                on_update(self.states(), None)
        finally:
            self.shutdown()

    def _next(self, queue: List[dict], trained: set) -> Optional[int]:
        """The index of the next task to start: the first in queue order, except that a common probe waits
        while a sibling on the same trajectory is running and none has finished yet (the first one trains
        the trajectory and writes it to the cache; the others then read it instead of training it again)."""
        busy = {trajectory_key(r.spec) for r in self.running.values()} - {None}
        for i, spec in enumerate(queue):
            if spec.get("exclusive"):
                return None if self.running else i
            key = trajectory_key(spec)
            if key is None or key in trained or key not in busy:
                return i
        return None

    def _watch(self, run: _Running) -> None:
        """Kill a task past its time limit or without progress for too long (the watchdog)."""
        now = time.time()
        if run.timed_out:
            return
        if self.task_timeout and now - run.started > self.task_timeout:
            run.timed_out = f"ran longer than the task timeout of {self.task_timeout:g} s"
        elif self.stall_timeout and now - run.last_progress > self.stall_timeout:
            run.timed_out = f"no progress for {self.stall_timeout:g} s (stalled)"
        if run.timed_out:
            run.proc.kill()

    def shutdown(self) -> None:
        for run in self.running.values():
            if run.proc.poll() is None:
                run.proc.send_signal(signal.SIGTERM)
        deadline = time.time() + 10
        for run in self.running.values():
            try:
                run.proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                run.proc.kill()
        self.running.clear()


EXECUTORS: Dict[str, type] = {"local": LocalExecutor, "dask": DaskExecutor}  # each an Executor


def executor_options(args) -> dict:
    """The chosen executor's keyword arguments from the command line; another executor's flag given is refused
    in one line (``--scheduler needs --executor dask``)."""
    if args.executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {args.executor!r}: choose from {', '.join(EXECUTORS)}")
    for name, cls in EXECUTORS.items():
        given = [f for f in cls.FLAGS if name != args.executor and getattr(args, f, None) is not None]
        if given:
            raise ConfigError(f"--{given[0].replace('_', '-')} needs --executor {name}")
    return EXECUTORS[args.executor].options(args)
