"""Executors: where the tasks of a grid run.

Every executor runs ``bench.tasks.run_task`` for each spec in a fresh process; the worker
writes its own result file, so the driver only collects and a driver crash loses nothing
that finished.

* ``local`` -- one subprocess per task, ``workers`` at a time, each with ``threads`` torch
  threads. Workers die with the driver (``PR_SET_PDEATHSIG``). A worker that dies without
  writing its result (killed, out of memory) is re-queued once, then recorded as failed.
  Tasks marked ``exclusive`` (the timing probe) run alone.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from .store import atomic_write_json, read_result, result_path

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child before exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


@dataclass
class _Running:
    spec: dict
    proc: subprocess.Popen
    started: float
    progress: dict = field(default_factory=dict)
    reader: Optional[threading.Thread] = None


class LocalExecutor:
    name = "local"

    def __init__(self, workers: int = 1, threads: Optional[int] = None, data_dir: Optional[str] = None,
                 retries: int = 1):
        self.workers = max(1, workers)
        self.threads = threads or max(1, (os.cpu_count() or 1) // self.workers)
        self.data_dir = data_dir
        self.retries = retries
        self.running: Dict[str, _Running] = {}

    def _start(self, spec: dict, out_dir: Path, log_dir: Path) -> _Running:
        threads = max(self.threads, os.cpu_count() or 1) if spec.get("exclusive") else self.threads
        cmd = [sys.executable, "-m", "bench.worker", "--out", str(out_dir), "--threads", str(threads)]
        if self.data_dir:
            cmd += ["--data-dir", str(self.data_dir)]
        log = open(log_dir / f"{spec['id']}.log", "w")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                preexec_fn=_die_with_parent, env=env)
        proc.stdin.write(json.dumps(spec))
        proc.stdin.close()
        run = _Running(spec, proc, time.time())

        def read():
            for line in proc.stdout:
                try:
                    run.progress = json.loads(line)
                except json.JSONDecodeError:
                    pass

        run.reader = threading.Thread(target=read, daemon=True)
        run.reader.start()
        log.close()
        return run

    def run(self, specs: List[dict], out_dir, on_update: Callable[["LocalExecutor", Optional[dict]], None]) -> None:
        """Run ``specs``; ``on_update(executor, finished_record_or_None)`` is called as things move."""
        out_dir = Path(out_dir)
        log_dir = out_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        queue = list(specs)
        attempts: Dict[str, int] = {}
        try:
            while queue or self.running:
                while queue and len(self.running) < self.workers:
                    # an exclusive task (the timing probe) runs alone, so its timings are not shared
                    if any(r.spec.get("exclusive") for r in self.running.values()):
                        break
                    if queue[0].get("exclusive") and self.running:
                        break
                    spec = queue.pop(0)
                    attempts[spec["id"]] = attempts.get(spec["id"], 0) + 1
                    self.running[spec["id"]] = self._start(spec, out_dir, log_dir)
                time.sleep(0.2)
                for tid, run in list(self.running.items()):
                    code = run.proc.poll()
                    if code is None:
                        continue
                    run.reader.join(timeout=5)
                    del self.running[tid]
                    record, problem = read_result(result_path(out_dir, run.spec))
                    fresh = record is not None and record.get("pid") == run.proc.pid
                    if not fresh:  # the worker died without writing its result
                        reason = (f"worker killed by signal {-code}" if code < 0 else f"worker exited with status {code}")
                        if attempts[tid] <= self.retries:
                            queue.insert(0, run.spec)
                            on_update(self, {"id": tid, "status": "requeued", "error": reason})
                            continue
                        record = {"id": tid, "kind": run.spec["kind"], "spec": run.spec,
                                  "config": run.spec.get("config"), "status": "failed",
                                  "error": f"{reason} (after {attempts[tid]} attempts; see logs/{tid}.log)"}
                        atomic_write_json(result_path(out_dir, run.spec), record)
                    on_update(self, record)
                on_update(self, None)
        finally:
            self.shutdown()

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


EXECUTORS = {"local": LocalExecutor}
