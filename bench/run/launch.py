"""Starting a task's worker process and judging what it left: what every executor shares.

An executor runs ``python -m bench.run.worker`` (:func:`worker_command`) for each spec, with a fresh token per
attempt (:func:`new_token`) and ``threads`` torch threads (:func:`default_threads`, :func:`task_threads`);
the child dies with its parent (:func:`die_with_parent`). A worker that wrote no result is recorded
failed (:func:`write_failed`, through ``bench.core.store.write_record``), with the last line of its log
(:func:`_last_line`) where that says why. :class:`TaskState` is how an executor tells the driver what runs.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Mapping, Optional

from ..core.provenance import usable_cpus
from ..core.store import write_record

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class TaskState:
    """A running task as the driver sees it: its spec and the worker's last progress line
    (``{"epoch": e, "step": s, "steps": n}``; empty before the first)."""
    spec: dict
    progress: Mapping = field(default_factory=dict)


#: on_update(running task id -> TaskState, the record of a task that just finished or None)
OnUpdate = Callable[[Mapping[str, TaskState], Optional[dict]], None]


def die_with_parent(parent: Optional[int] = None) -> None:
    """Have the kernel kill this process when its parent dies (Linux; elsewhere nothing): a worker's
    ``preexec_fn`` (before exec) or a process pool's ``initializer``. ``parent``: the pid the caller expects as
    its parent; a child whose parent died before it got here exits at once."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass
    if parent is not None and os.getppid() != parent:
        os._exit(1)



def worker_command(out_dir, threads: int, data_dir: Optional[str], token: Optional[str] = None,
                   run_id: Optional[str] = None) -> List[str]:
    """``python -m bench.run.worker`` for one task (its spec goes to stdin)."""
    cmd = [sys.executable, "-m", "bench.run.worker", "--out", str(out_dir), "--threads", str(threads)]
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


def failed_record(spec: dict, error: str) -> dict:
    """The result file of a task whose worker never wrote one."""
    return {"id": spec["id"], "kind": spec["kind"], "spec": spec, "config": spec.get("config"),
            "status": "failed", "error": error}


def write_failed(out_dir, spec: dict, error: str) -> dict:
    """Record ``spec`` as failed, unless its file already holds a finished record (kept as it is)."""
    record = failed_record(spec, error)
    write_record(out_dir, spec, record)
    return record


def _last_line(path: Path) -> str:
    try:
        lines = [l for l in path.read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        return ""
    return lines[-1].replace("bench.run.worker: ", "") if lines else ""
