"""What a running grid shows: tasks done / total, the running tasks with their epoch and step, and an ETA
(a live tqdm bar on a terminal, a heartbeat line in a log), fed by the executors' updates (``bench.run.executors``)
and priced by the plan (``bench.run.estimate``)."""
from __future__ import annotations

import sys
import time
from typing import Dict, List, Mapping, Optional

from tqdm import tqdm

from .launch import TaskState
from ..core.schema import CONTENDED_LOAD, cores
from .tasks import KINDS


class Progress:
    """Tasks done / total, the running tasks with their epoch and step, and an ETA: a live bar on a
    terminal, a heartbeat line every ``HEARTBEAT_S`` seconds in a log (CI, nohup, Slurm).

    The ETA starts from the plan (``wall``: ``bench.run.estimate``'s wall time of the tasks to run) and moves
    to the pace observed as work is done: remaining work x the plan's wall time per unit x (elapsed + K) /
    (the plan's time for the work done + K), with K a tenth of the plan, so that the first minute (a timing
    probe, a slow start) does not extrapolate to hours, and a run slower than planned says so as it goes."""

    HEARTBEAT_S = 60.0

    def __init__(self, tasks: List[dict], todo: List[dict], stream=None, seconds: Optional[Dict[str, float]] = None,
                 wall: Optional[float] = None):
        self.stream = stream or sys.stderr
        self.total = len(tasks)
        self.done = self.total - len(todo)
        # the work of a task: its estimated seconds (bench.run.estimate) where every task to run has one, else its cost
        priced = bool(seconds) and all(t["id"] in seconds for t in todo)
        self.units = {t["id"]: (seconds[t["id"]] if priced else task_cost(t)) for t in todo}
        self.todo_units = sum(self.units[t["id"]] for t in todo)
        self.wall = wall if priced and wall else None
        self.units_done = 0.0
        self.start = self.last_beat = time.time()
        self.tty = self.stream.isatty()
        self.counts = {}
        # the bar counts work (estimated seconds, else enum-step equivalents), so a long cell weighs more than a probe
        self.bar = tqdm(total=self.todo_units, file=self.stream, disable=not self.tty, leave=False,
                        bar_format="{l_bar}{bar}| {postfix}", dynamic_ncols=True)

    def eta(self, work: float, elapsed: float) -> Optional[float]:
        """Seconds left after ``work`` units in ``elapsed`` seconds (None: nothing to go on yet)."""
        left = max(self.todo_units - work, 0.0)
        if self.wall:
            per = self.wall / (self.todo_units or 1)  # the plan's wall seconds per unit of work
            k = 0.1 * self.wall
            return left * per * (elapsed + k) / (work * per + k)
        return left * elapsed / work if work > 0 else None

    def update(self, running: Mapping[str, TaskState], record: Optional[dict]) -> None:
        if record is not None:
            status = record.get("status")
            if status != "requeued":
                self.done += 1
                self.units_done += self.units.get(record["id"], 1)
                self.counts[status] = self.counts.get(status, 0) + 1
            line = f"[{self.done}/{self.total}] {record['id']}: {status}"
            load = record.get("other_cpu_load")
            if record.get("kind") == "timing" and isinstance(load, (int, float)) and load >= CONTENDED_LOAD:
                if (record.get("spec") or {}).get("exclusive") is False:  # the preset asked for it
                    line += " (beside other tasks, as the preset's timing_alone = false asks: no verdict uses it)"
                else:
                    line += (f" (contended: other processes kept {cores(load)} busy; the report labels these "
                             "times and no verdict uses them; `--retime` measures again on a quiet machine)")
            if record.get("error"):
                line += f" ({str(record['error'])[:160]})"
            self._print(line)
        partial, current = 0.0, []
        for tid, state in running.items():
            p, epochs = state.progress, task_epochs(state.spec)
            if p.get("steps"):
                frac = ((p.get("epoch", 1) - 1) * p["steps"] + p.get("step", 0)) / (p["steps"] * epochs)
                partial += min(frac, 1.0) * self.units.get(tid, 1)
                current.append(f"{tid} epoch {p.get('epoch', 1)}/{epochs} step {p.get('step', 0)}/{p['steps']}")
            elif p.get("checkpoints"):  # a common probe reading its trajectory from the cache: no steps
                partial += min(p.get("checkpoints_done", 0) / p["checkpoints"], 1.0) * self.units.get(tid, 1)
                current.append(f"{tid} checkpoint {p.get('checkpoints_done', 0)}/{p['checkpoints']}")
            else:
                current.append(f"{tid} starting")
        work = min(self.units_done + partial, self.todo_units)
        status = f"[{self.done}/{self.total}] {'; '.join(current) or 'waiting'}"
        if self.tty:
            self.bar.n = work
            self.bar.set_postfix_str(f"{self.meter(work)} {status}", refresh=True)
        elif record is None and time.time() - self.last_beat >= self.HEARTBEAT_S:
            self.last_beat = time.time()
            self._print(f"{status} | {self.meter(work)}")

    def meter(self, work: float) -> str:
        """Percentage of the work done, elapsed time and ETA."""
        elapsed = time.time() - self.start
        eta = self.eta(work, elapsed)
        fmt = tqdm.format_interval
        return (f"{100 * work / (self.todo_units or 1):3.0f}% of the work | {fmt(elapsed)} elapsed, "
                f"ETA {fmt(eta) if eta is not None else '?'}")

    def close(self) -> None:
        self.bar.close()

    def _print(self, line: str) -> None:
        if self.tty:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)


def task_cost(spec: dict) -> float:
    """A rough cost of a task in enum-step equivalents (its kind says), for the ETA and ``bench list``."""
    return KINDS[spec["kind"]].cost(spec)


def probe_cost(spec: dict) -> float:
    """The part of :func:`task_cost` spent in the gradient probe."""
    return KINDS[spec["kind"]].probe(spec)


def task_epochs(spec: dict) -> int:
    return KINDS[spec["kind"]].epochs(spec)
