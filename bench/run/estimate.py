"""How long a grid takes on this machine: each task priced at the measured wall time of finished tasks,
then the executor's schedule played out.

Pricing. A task's work is split into parts (``bench.run.tasks.cost_parts``: training, evaluation, gradient
probe, in units of the cost rule of ``bench.run.cost``). Every finished record under ``results/`` (the
committed references included) and in the run's own folder gives, for its kind and each part, measured
seconds over units; :func:`calibrate` sums them into a rate per (kind, part). A timing probe is its own
kind, priced at what timing probes took. A (kind, part) with too little finished work takes the part's
rate over all kinds, then the overall rate.

Which records. Those of this machine's CPU (the record's ``device_name``; a GPU's name for a GPU grid)
when there are enough, else every CPU's, and the estimate says so: a rate measured on another machine is
a guess. :attr:`Calibration.sources` names the folders and how many records each gave.

Contention, as the records measure it. Each record has ``other_cpu_load``, the cores other processes kept
busy while it ran (its sibling workers among them). A record's seconds are divided by its contention
factor ``max(1, (threads + other_cpu_load) / usable_cpus)`` before they enter a rate, and a plan is priced
at the factor of its own workers and threads: two one-thread workers on two cores are factor 1, a third
process busy beside them makes 1.5.

Schedule. The executor runs exclusive tasks (the timing probes) alone and the rest ``workers`` at a
time in queue order, each next task on the first free worker; :func:`makespan` plays that out, so a grid
that ends on one long cell is not priced as if the other worker helped.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from .cost import PART_STEPS, config_epochs, trajectory_cost
from ..core.provenance import REPO, usable_cpus
from ..core.schema import Folder
from ..core.store import read_result
from ..core.tables import span
from .tasks import KINDS, PARTS, cost_parts, measured_parts

#: finished work (units of a part) below which a (kind, part) is not priced on its own
CALIBRATE_MIN = 200
#: finished records of this machine's CPU below which every CPU's records are used
MIN_RECORDS = 5


def contention(record: dict, cpus: Optional[int] = None) -> float:
    """The record's contention factor: ``max(1, (threads + other_cpu_load) / usable_cpus)``."""
    load = record.get("other_cpu_load")
    threads = record.get("threads") or 1
    load = float(load) if isinstance(load, (int, float)) and math.isfinite(load) else 0.0
    return max(1.0, (float(threads) + max(load, 0.0)) / (cpus or usable_cpus()))


def plan_contention(workers: int, threads: int = 1, cpus: Optional[int] = None) -> float:
    """The contention factor of ``workers`` tasks of ``threads`` each side by side on this machine."""
    return max(1.0, workers * threads / (cpus or usable_cpus()))


def finished_records(roots: Iterable[Path]) -> Iterable[Tuple[Path, dict]]:
    """(folder, record) of every readable finished task record under ``roots`` (``runs/`` and
    ``probes/`` of any result folder, at any depth), each run once: a record copied into another folder
    (``results/pending/`` beside the reference it becomes) is the same run, known by its id, host and start."""
    seen, runs = set(), set()
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for path in sorted([*root.rglob(f"{Folder.RUNS}/*.json"), *root.rglob(f"{Folder.PROBES}/*.json")]):
            key = path.resolve()
            if key in seen or Folder.CACHE in path.parts:
                continue
            seen.add(key)
            record, _ = read_result(path)
            spec = (record or {}).get("spec")
            if (record and record.get("status") == "ok" and span(record) and isinstance(spec, dict)
                    and spec.get("kind") in KINDS):
                run = (record.get("id"), record.get("host"), record.get("started"))
                if run not in runs:
                    runs.add(run)
                    yield path.parent.parent, record


@dataclass
class Calibration:
    """Seconds per unit of each (kind, part) at contention factor 1, and where they came from."""

    rates: Dict[Tuple[str, str], float]
    part_rates: Dict[str, float]
    overall: float
    #: folder (relative to the repository where it lies inside) -> records used
    sources: Dict[str, int] = field(default_factory=dict)
    #: the device name the records were selected by, or None when every machine's records were used
    machine: Optional[str] = None

    def rate(self, kind: str, part: str) -> float:
        return self.rates.get((kind, part), self.part_rates.get(part, self.overall * PART_STEPS[part]))

    def parts(self, spec: dict, factor: float = 1.0, trains: bool = False) -> Dict[str, float]:
        """Estimated seconds of one task, per part, at contention ``factor`` (``trains``: a common probe
        that trains its trajectory rather than reading it from the cache)."""
        kind = price_kind(spec["kind"], trains)
        return {part: units * self.rate(kind, part) * factor for part, units in task_units(spec, trains).items()}

    def seconds(self, spec: dict, factor: float = 1.0, trains: bool = False) -> float:
        return sum(self.parts(spec, factor, trains).values())

    def describe(self) -> str:
        n = sum(self.sources.values())
        where = ", ".join(f"{k} ({v})" for k, v in sorted(self.sources.items(), key=lambda kv: -kv[1])[:4])
        more = f" and {len(self.sources) - 4} more folders" if len(self.sources) > 4 else ""
        who = (f"of this machine's CPU ({self.machine})" if self.machine else
               "of OTHER machines (none of this machine's CPU yet): a guess until a run here finishes tasks")
        return f"priced on {n} finished tasks {who}: {where}{more}"


def task_units(spec: dict, trains: bool = False) -> Dict[str, float]:
    """``bench.run.tasks.cost_parts`` of a task, with the trajectory and its references added to the probe part
    of a common probe that trains them (``bench.run.cost.trajectory_cost``)."""
    parts = cost_parts(spec)
    if trains:
        parts["probe"] += trajectory_cost(spec)
    return parts


def trained(record: dict) -> bool:
    """Whether a finished common probe trained its trajectory (``trajectory_cache``; a record from before
    that field trained it)."""
    return record.get("trajectory_cache", "trained") != "read"


def ran_share(record: dict) -> float:
    """The share of its ``epochs`` a finished cell trained: below 1 where early stopping (``patience``) ended it
    (its training and evaluation are counted for the epochs it ran, the final bound's small share scaled with them)."""
    epochs = config_epochs(record["spec"])
    return min(1.0, (record.get("metrics") or {}).get("epochs_run", epochs) / epochs)


def price_kind(kind: str, trains: bool) -> str:
    """The kind a task is priced as: a common probe that trains the shared trajectory (and computes its
    references) is priced apart from one that reads them from the cache (``bench.run.gradient_probe.run_common``)."""
    return ("common:trained" if trains else "common:read") if kind == "common" else kind


def trains_trajectory(todo: List[dict]) -> Dict[str, bool]:
    """Which common probes of ``todo`` train their trajectory: the first of each (labels, seed) in queue order."""
    seen, out = set(), {}
    for t in todo:
        if t["kind"] == "common":
            cfg = t.get("config") or {}
            key = (cfg.get("labels"), cfg.get("seed"))
            out[t["id"]] = key not in seen
            seen.add(key)
    return out


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def calibrate(roots: Optional[Iterable[Path]] = None, machine: Optional[str] = None,
              cpus: Optional[int] = None) -> Optional[Calibration]:
    """Rates from the finished records under ``roots`` (default ``REPO/results``), those whose
    ``device_name`` is ``machine`` when there are at least :data:`MIN_RECORDS` of them, else all; None
    when there are no finished records at all."""
    found = list(finished_records(roots if roots is not None else [REPO / "results"]))
    mine = [(f, r) for f, r in found if machine and r.get("device_name") == machine]
    use, who = (mine, machine) if len(mine) >= MIN_RECORDS else (found, None)
    if not use:
        return None
    seconds: Dict[Tuple[str, str], float] = {}
    units: Dict[Tuple[str, str], float] = {}
    sources: Dict[str, int] = {}
    for folder, record in use:
        spec = record["spec"]
        try:
            parts, took = task_units(spec, trained(record)), measured_parts(record)
            ran = ran_share(record)
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            continue
        parts = {part: units * (ran if part in ("train", "eval") else 1.0) for part, units in parts.items()}
        factor = contention(record, cpus)
        kind = price_kind(spec["kind"], trained(record))
        for part in PARTS:
            key = (kind, part)
            seconds[key] = seconds.get(key, 0.0) + took[part] / factor
            units[key] = units.get(key, 0.0) + parts[part]
        sources[_rel(folder)] = sources.get(_rel(folder), 0) + 1
    if not sources:
        return None
    total_s, total_u = sum(seconds.values()), sum(u * PART_STEPS[k[1]] for k, u in units.items())
    overall = total_s / total_u if total_u else 0.0
    part_rates = {}
    for part in PARTS:
        s = sum(v for k, v in seconds.items() if k[1] == part)
        u = sum(v for k, v in units.items() if k[1] == part)
        if u * PART_STEPS[part] >= CALIBRATE_MIN:
            part_rates[part] = s / u
    rates = {k: seconds[k] / u for k, u in units.items() if u * PART_STEPS[k[1]] >= CALIBRATE_MIN}
    return Calibration(rates, part_rates, overall, sources, who)


def makespan(todo: List[dict], workers: int, price: Callable[[dict], float]) -> float:
    """Wall seconds of ``todo`` as the executor runs it: exclusive tasks alone, the rest in queue order
    on ``workers`` workers, each next task on the first free one."""
    alone = sum(price(t) for t in todo if t.get("exclusive"))
    free = [0.0] * max(1, workers)
    for t in (t for t in todo if not t.get("exclusive")):
        heapq.heappush(free, heapq.heappop(free) + price(t))
    return alone + max(free)


@dataclass
class Plan:
    """The estimate of one run: its wall time, each task's seconds and the calibration behind them."""

    total: Optional[float]
    per_task: Dict[str, float]
    probe_share: Optional[float]
    calibration: Optional[Calibration]


def plan(todo: List[dict], workers: int, threads: int = 1, machine: Optional[str] = None,
         roots: Optional[Iterable[Path]] = None, cal: Optional[Calibration] = None) -> Plan:
    """The estimate of running ``todo`` on ``workers`` workers of ``threads`` threads here."""
    cal = cal or calibrate(roots, machine)
    if cal is None:
        return Plan(None, {}, None, None)
    factor = plan_contention(workers, threads)
    trains = trains_trajectory(todo)
    per = {t["id"]: cal.seconds(t, 1.0 if t.get("exclusive") else factor, trains.get(t["id"], False)) for t in todo}
    probe = sum(cal.parts(t, trains=trains.get(t["id"], False))["probe"] for t in todo)
    whole = sum(cal.seconds(t, trains=trains.get(t["id"], False)) for t in todo)
    return Plan(makespan(todo, workers, lambda t: per[t["id"]]), per, probe / whole if whole else None, cal)


def duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "unknown (no finished tasks to price it on)"
    return f"about {max(1, math.ceil(seconds / 60))} min" if seconds >= 60 else f"about {seconds:.0f} s"
