"""Executors: where the tasks of a grid run.

Every executor runs ``bench.tasks.run_task`` for each spec in a fresh process; the worker
writes its own result file, so the driver only collects and a driver crash loses nothing
that finished.

* ``local`` -- one subprocess per task, ``workers`` at a time, each with ``threads`` torch
  threads. Workers die with the driver (``PR_SET_PDEATHSIG``). A worker that dies without
  writing its result (killed, out of memory) is re-queued once, then recorded as failed.
  Tasks marked ``exclusive`` (the timing probe) run alone. With ``gpus`` (CUDA device ids),
  each running task sees one GPU through ``CUDA_VISIBLE_DEVICES``; GPU ``g`` runs up to ``slots[g]``
  cells side by side (default one; :func:`plan_gpus` sizes them), and a new cell goes to the GPU with the
  fewest running cells.
  A task that runs longer than ``task_timeout`` seconds, or reports no progress for ``stall_timeout``
  seconds, is killed and recorded ``failed`` with an error starting ``timeout:``; the grid goes on.

An executor is a class with the members of :class:`Executor`, registered in ``EXECUTORS``; it tells
the driver how things move through ``on_update(running, record)``: ``running`` maps each task it is
running to a :class:`TaskState` (its spec and the worker's last progress line), ``record`` is a
finished task's record or None. The driver reads nothing else of it.

Both executors give each attempt a fresh token that the worker writes into its record: a record
without this attempt's token is an older one and is never taken for the new result. Every record goes
through :func:`bench.store.write_record`, so a ``failed`` record is never written over a finished (ok or
diverged) one, and a worker given the run's id (``run_id``, which ``OUT/.lock`` names while the run holds
it) writes nothing once the run has stopped. ``shutdown`` stops what the executor started: the local
workers are terminated, then killed; the dask futures are cancelled. A worker that cannot write its result
(full disk, read-only folder) stops the grid with :class:`bench.errors.StorageError`.
"""
from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Protocol, runtime_checkable

import uuid

from .errors import EXIT_STORAGE, StorageError
from .provenance import usable_cpus
from .store import open_log, read_result, result_path, write_record

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class TaskState:
    """A running task as the driver sees it: its spec and the worker's last progress line
    (``{"epoch": e, "step": s, "steps": n}``; empty before the first)."""
    spec: dict
    progress: Mapping = field(default_factory=dict)


#: on_update(running task id -> TaskState, the record of a task that just finished or None)
OnUpdate = Callable[[Mapping[str, TaskState], Optional[dict]], None]


@runtime_checkable
class Executor(Protocol):
    """Where the tasks of a grid run. Constructed as ``cls(workers=, threads=, data_dir=, run_id=, **options)``
    (``run_id``: the id ``OUT/.lock`` names while the run holds it; each worker gets it)."""

    name: str
    workers: int
    threads: int

    def connect(self) -> None:
        """Reach what the executor needs; raise ConfigError when it does not answer (nothing is written yet)."""

    def run(self, specs: List[dict], out_dir, on_update: OnUpdate) -> None:
        """Run every spec (each worker writes its own result file); call ``on_update`` as things move."""

    def shutdown(self) -> None:
        """Stop what is still running; safe to call twice."""


def _die_with_parent() -> None:  # runs in the child before exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass



def worker_command(out_dir, threads: int, data_dir: Optional[str], token: Optional[str] = None,
                   run_id: Optional[str] = None) -> List[str]:
    """``python -m bench.worker`` for one task (its spec goes to stdin)."""
    cmd = [sys.executable, "-m", "bench.worker", "--out", str(out_dir), "--threads", str(threads)]
    cmd += ["--token", token] if token else []
    cmd += ["--run", run_id] if run_id else []
    return cmd + (["--data-dir", str(data_dir)] if data_dir else [])


def new_token() -> str:
    return uuid.uuid4().hex


def default_threads(workers: int) -> int:
    """Torch threads per task: the CPUs this process may use (affinity, cgroup quota) over the workers."""
    return max(1, usable_cpus() // max(1, workers))


def task_threads(spec: dict, threads: int) -> int:
    """Torch threads for a task: an exclusive one (the timing probe) runs alone and takes every usable CPU."""
    return max(threads, usable_cpus()) if spec.get("exclusive") else threads


def trajectory_key(spec: dict) -> Optional[str]:
    """The shared trajectory a common probe measures on (its config: labels, seed, the trajectory's
    estimator and settings), None for any other task."""
    return json.dumps(spec.get("config"), sort_keys=True) if spec.get("kind") == "common" else None


def failed_record(spec: dict, error: str) -> dict:
    """The result file of a task whose worker never wrote one."""
    return {"id": spec["id"], "kind": spec["kind"], "spec": spec, "config": spec.get("config"),
            "status": "failed", "error": error}


def write_failed(out_dir, spec: dict, error: str) -> dict:
    """Record ``spec`` as failed, unless its file already holds a finished record (kept as it is)."""
    record = failed_record(spec, error)
    write_record(out_dir, spec, record)
    return record

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


class LocalExecutor:
    name = "local"

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
                                preexec_fn=_die_with_parent, env=env)
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
        log_dir = out_dir / "logs"
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


#: GPU memory a cell is planned to take (MiB) where the folder holds no CUDA timing record with its peak:
#: MNIST on the device (about 220 MB), the networks with Adam's state, a batch's activations and the CUDA
#: context, rounded up generously (a measured cell of the default networks takes well under this)
DEFAULT_CELL_MB = 2048.0
#: per process, the CUDA context and kernels: outside torch's allocator, so not in the probe's peak
CUDA_CONTEXT_MB = 512.0
#: the timing probe's peak times this: a cell also evaluates and probes gradients, and its allocator fragments
CELL_MEMORY_FACTOR = 1.5
#: the share of each GPU's total memory the plan fills (the rest: other processes, fragmentation)
GPU_MEMORY_SHARE = 0.9
MIB = 1024 * 1024


def cuda_peak_mb(out_dir) -> Optional[float]:
    """The most GPU memory a timing probe of the folder held during a step (MiB; ``cuda_reserved_mb``, else
    ``cuda_peak_mb`` of its CUDA rows: ``bench.tasks.run_timing``); None where no finished record has one."""
    peaks = []
    for path in sorted(Path(out_dir).glob("probes/timing_*.json")):
        record, _ = read_result(path)
        rows = record.get("timing") if record and record.get("status") == "ok" else None
        for row in rows if isinstance(rows, list) else []:
            peak = (row.get("cuda_reserved_mb") or row.get("cuda_peak_mb")) if isinstance(row, dict) else None
            if isinstance(peak, (int, float)) and peak > 0:
                peaks.append(float(peak))
    return max(peaks) if peaks else None


@dataclass(frozen=True)
class GpuPlan:
    """Cells at a time per GPU (``slots``: CUDA id -> count) for ``asked`` workers: each GPU takes
    ``ceil(asked / GPUs)`` at most, and no more than fit in :data:`GPU_MEMORY_SHARE` of its memory
    (``fit``) at ``cell_mb`` each (from ``source``)."""
    slots: Dict[int, int]
    fit: Dict[int, int]
    total_mb: Dict[int, float]
    cell_mb: float
    source: str
    asked: int

    @property
    def gpus(self) -> List[int]:
        return list(self.slots)

    @property
    def workers(self) -> int:
        return max(1, min(self.asked, sum(self.slots.values())))

    def line(self) -> str:
        """The plan in one line, for ``run --dry-run`` and the start of a run."""
        n, w = len(self.slots), self.workers
        per = ", ".join(f"cuda:{g}: {k} slot{'s' * (k != 1)}" for g, k in self.slots.items())
        fits = ", ".join(f"{self.fit[g]} fit in {GPU_MEMORY_SHARE:.0%} of cuda:{g}'s {self.total_mb[g]:.0f} MB"
                         for g in self.slots)
        short = f"; --workers {self.asked} asked, memory allows {w}" if self.asked > w else ""
        return (f"{w} cell{'s' * (w != 1)} at a time on {n} GPU{'s' * (n != 1)} ({per}, {self.cell_mb:.0f} MB "
                f"per cell from {self.source}; {fits}{short})")


def plan_gpus(workers: int, out_dir) -> GpuPlan:
    """Slots on this machine's CUDA GPUs for ``workers`` cells at a time (see :class:`GpuPlan`)."""
    import torch

    n = torch.cuda.device_count()
    peak = cuda_peak_mb(out_dir)
    if peak:
        cell_mb = peak * CELL_MEMORY_FACTOR + CUDA_CONTEXT_MB
        source = (f"the timing probe's peak of {peak:.0f} MB in {out_dir} (x {CELL_MEMORY_FACTOR:g}, "
                  f"+ {CUDA_CONTEXT_MB:.0f} MB CUDA context)")
    else:
        cell_mb, source = DEFAULT_CELL_MB, f"the default (no CUDA timing record in {out_dir} yet)"
    total = {g: torch.cuda.get_device_properties(g).total_memory / MIB for g in range(n)}
    fit = {g: int(total[g] * GPU_MEMORY_SHARE // cell_mb) for g in total}
    per_gpu = math.ceil(workers / max(1, n))
    slots = {g: max(1, min(per_gpu, fit[g])) for g in total}  # a GPU always takes one cell, as before
    return GpuPlan(slots, fit, total, cell_mb, source, workers)


def _last_line(path: Path) -> str:
    try:
        lines = [l for l in path.read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        return ""
    return lines[-1].replace("bench.worker: ", "") if lines else ""


def _run_in_subprocess(spec: dict, out_dir: str, data_dir: Optional[str], threads: int, token: str,
                       run_id: Optional[str] = None) -> dict:
    """A dask task: run the spec in a fresh process (Pyro's param store is global) and return its record.

    Raises if the process died without writing this attempt's record (its token), so that dask retries
    it; an older record of the same task is never taken for this one.
    """
    cmd = worker_command(out_dir, threads, data_dir, token, run_id)
    log_dir = Path(out_dir) / "logs"
    with open_log(log_dir / f"{spec['id']}.log") as log:
        proc = subprocess.run(cmd, input=json.dumps(spec), stdout=subprocess.DEVNULL, stderr=log, text=True,
                              preexec_fn=_die_with_parent)
    record, _ = read_result(result_path(out_dir, spec))
    if record is None or record.get("token") != token:
        code = proc.returncode
        if code == EXIT_STORAGE:
            raise StorageError(_last_line(log_dir / f"{spec['id']}.log"))
        if code == 0:  # it ran to its end, and its record was not written by rule (bench.store.write_record)
            return {**failed_record(spec, _last_line(log_dir / f"{spec['id']}.log")), "token": token}
        raise RuntimeError(f"worker killed by signal {-code}" if code < 0 else f"worker exited with status {code}")
    return {k: record.get(k) for k in ("id", "status", "error", "token")}


#: the driver's loggers of dask and its event loop: their reconnect tracebacks would bury the one line
QUIET_LOGGERS = ("distributed", "tornado")


class SchedulerLost(StorageError):
    """The dask scheduler went away mid-grid: the grid stops; finished records are kept."""


class DaskExecutor:
    """Tasks on a dask.distributed cluster: ``scheduler`` (tcp://host:port) or a LocalCluster.

    Each task runs ``python -m bench.worker`` in a fresh process on a dask worker and writes its
    own result file, so the output folder must be on a file system every worker sees. A task
    whose process dies is retried ``retries`` times by dask, then recorded as failed.
    """

    name = "dask"
    connect_timeout_s = 10

    def __init__(self, workers: int = 1, threads: Optional[int] = None, data_dir: Optional[str] = None,
                 retries: int = 1, scheduler: Optional[str] = None, run_id: Optional[str] = None):
        self.run_id = run_id
        self.futures: list = []
        self.workers = max(1, workers)
        self.threads = threads or default_threads(self.workers)
        self.data_dir = data_dir
        self.retries = retries
        self.scheduler = scheduler
        self.client = self.cluster = None

    def connect(self) -> None:
        """Start or reach the cluster; raises ConfigError if the scheduler does not answer."""
        from ssvae.errors import ConfigError
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise ConfigError("--executor dask needs the 'distributed' package: pip install -e '.[dask]'") from None
        for name in QUIET_LOGGERS:  # a lost scheduler is said in one line (SchedulerLost), not in tracebacks
            logging.getLogger(name).setLevel(logging.CRITICAL)
        if self.scheduler:
            try:
                self.client = Client(self.scheduler, timeout=f"{self.connect_timeout_s}s")
            except (OSError, TimeoutError) as exc:
                raise ConfigError(f"dask scheduler {self.scheduler} did not answer within {self.connect_timeout_s} s "
                                  f"({type(exc).__name__}): start it or check --scheduler") from None
        else:
            self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                        dashboard_address=None, silence_logs=40)
            self.client = Client(self.cluster)

    def run(self, specs: List[dict], out_dir, on_update: OnUpdate) -> None:
        from distributed import as_completed

        if self.client is None:
            self.connect()
        out_dir = str(Path(out_dir).resolve())
        try:
            exclusive = [s for s in specs if s.get("exclusive")]
            rest = [s for s in specs if not s.get("exclusive")]
            for batch in ([[s] for s in exclusive] + [rest]):
                if not batch:
                    continue
                futures, tokens = {}, {}
                for spec in batch:
                    token = new_token()  # one per submission; dask's retries share it, and each writes it
                    fut = self.client.submit(_run_in_subprocess, spec, out_dir, self.data_dir,
                                             task_threads(spec, self.threads), token, self.run_id,
                                             key=f"ssvae-{spec['id']}-{token}", retries=self.retries, pure=False)
                    futures[fut], tokens[spec["id"]] = spec, token
                self.futures = list(futures)
                pending = {spec["id"]: TaskState(spec) for spec in batch}  # submitted: no progress lines from dask
                for fut in as_completed(list(futures)):
                    spec = futures[fut]
                    pending.pop(spec["id"], None)
                    try:
                        record = fut.result()
                    except StorageError:
                        raise
                    except Exception as exc:
                        mine, _ = read_result(result_path(out_dir, spec))
                        if mine is not None and mine.get("token") == tokens[spec["id"]]:
                            record = mine  # it finished; only the answer was lost
                        elif self._scheduler_gone(exc):
                            raise SchedulerLost(f"the dask scheduler went away ({type(exc).__name__}): finished "
                                                f"records are kept; rerun the same command to resume") from None
                        else:  # retries exhausted
                            record = write_failed(out_dir, spec, f"{exc} (after {self.retries + 1} attempts; "
                                                                 f"see logs/{spec['id']}.log)")
                    on_update(pending, record)
        finally:
            self.shutdown()

    def _scheduler_gone(self, exc: Exception) -> bool:
        """True when the exception says the scheduler (not the task) failed."""
        import asyncio
        import concurrent.futures

        from distributed.comm.core import CommClosedError

        gone = (CommClosedError, OSError, asyncio.CancelledError, concurrent.futures.CancelledError)
        if isinstance(exc, gone) and not isinstance(exc, StorageError):
            return True
        try:
            return self.client is None or self.client.status not in ("running", "connecting", "newly-created")
        except Exception:
            return True

    def shutdown(self) -> None:
        """Cancel the futures still pending (their workers, once the lock no longer names this run, write
        nothing), then close the client and the cluster this executor started."""
        if self.client is not None:
            try:
                self.client.cancel(self.futures, force=True)
            except Exception:  # a scheduler that went away has nothing left to cancel
                pass
            self.futures = []
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.client = self.cluster = None


EXECUTORS: Dict[str, type] = {"local": LocalExecutor, "dask": DaskExecutor}  # each an Executor
