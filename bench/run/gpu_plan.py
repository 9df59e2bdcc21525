"""GPU slot planning: how many cells each CUDA GPU runs side by side (``run --workers N --device cuda``).

:func:`plan_gpus` sizes a cell from the most GPU memory its folder's timing probe held during a step
(:func:`cuda_peak_mb`; before there is one, :data:`DEFAULT_CELL_MB`) and gives each GPU the cells that fit
in :data:`GPU_MEMORY_SHARE` of its memory; ``bench.run.executors.LocalExecutor`` fills the slots.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from ..core.store import read_result


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
    ``cuda_peak_mb`` of its CUDA rows: ``bench.run.timing_probe.run_timing``); None where no finished record has one."""
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
