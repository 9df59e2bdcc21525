"""The timing probe: each estimator's Pyro step beside its hand-written twin (``ssvae.reference``).

:func:`run_timing` is the ``timing`` task (``bench.run.tasks.KINDS``): median times per step kind, Pyro's
overhead over the reference step, the step's FLOPs against the measured matmul rate and its peak memory.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ssvae import RunConfig
from ssvae import reference
from ssvae.flops import Sizes, matmul_rate, step_flops
from ssvae.train import Trainer, synchronize

from ..core.peakmem import peak_step_memory
from ..core.taskdata import Progress, _load_data


def time_steps(step: Callable[[], object], warmup: int, n: int, device) -> np.ndarray:
    """Milliseconds of ``n`` calls of ``step`` after ``warmup`` untimed ones (device-synchronised)."""
    for _ in range(warmup):
        step()
    synchronize(device)
    times = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        step()
        synchronize(device)
        times[i] = (time.perf_counter() - t0) * 1e3
    return times


def _summary(ms: np.ndarray, prefix: str = "") -> dict:
    q1, med, q3 = np.percentile(ms, [25, 50, 75])
    return {f"{prefix}median_ms": float(med), f"{prefix}q1_ms": float(q1), f"{prefix}q3_ms": float(q3)}


def _reference_columns(cfg: RunConfig, estimator: str, step_kind: str, xs, ys, spec: dict, sizes,
                       pyro_median_ms: float, matmul_gflops: Optional[float], cache: dict) -> dict:
    """Time the hand-written twin of one Pyro step (``ssvae.reference.pairing``): Pyro's overhead.

    Each reference step kind is timed once per task (``cache``), the first time a Pyro step needs it.

    Empty (None) columns where the step has no exact counterpart: a yardstick is not an overhead.
    """
    ref_kind, exact = reference.pairing(estimator, step_kind)
    out = {"ref_step": None, "ref_median_ms": None, "ref_q1_ms": None, "ref_q3_ms": None,
           "pyro_overhead": None, "gflop": None, "pct_of_matmul_peak": None}
    if not exact:
        return out
    key = (ref_kind, xs.data_ptr())
    if key not in cache:  # the same reference step for every estimator: timed once per task
        cache[key] = time_steps(reference.reference_step(cfg, ref_kind, xs, ys), spec["warmup"], spec["steps"],
                                cfg.device)
    ms = cache[key]
    out.update(ref_step=ref_kind, **_summary(ms, "ref_"))
    gflop = step_flops(ref_kind, xs.shape[0], sizes)["total"] / 1e9
    out.update(gflop=gflop, pyro_overhead=pyro_median_ms / out["ref_median_ms"])
    if matmul_gflops:
        out["pct_of_matmul_peak"] = 100.0 * gflop / (out["ref_median_ms"] / 1e3) / matmul_gflops
    return out


def run_timing(spec: dict, data_dir, progress: Progress = None, cache_dir: Optional[Path] = None) -> dict:
    """Median time of each estimator's Pyro step of each kind, beside its hand-written twin.

    Per row: Pyro's times, the reference step's (same batch, warm-up and step count, timed
    right after Pyro's), their ratio (``pyro_overhead``), the step's dense-layer FLOPs
    (``gflop``, ``ssvae.flops``) and the reference step's achieved rate as a percentage of
    the matmul rate measured at the start of this task (``matmul_gflops``), and the peak
    memory of one more step of Pyro's (``peak_mb``: resident-set growth on CPU, sampled after
    ``malloc_trim``; ``max_memory_allocated`` growth on CUDA; ``bench.core.peakmem``). On CUDA a
    row also keeps what the process held on the GPU at that step's peak (``cuda_peak_mb``: allocated,
    ``cuda_reserved_mb``: with the allocator's cache), in the record only: how many cells share a GPU
    is planned from it (``bench.run.gpu_plan.plan_gpus``).
    """
    base = RunConfig.from_dict(spec["config"])
    data = _load_data(base, data_dir)
    bs = base.batch_size
    xs_u = data.unsup.x[:bs]
    xs_s, ys_s = data.sup.x[:bs], data.sup.y[:bs]
    matmul = matmul_rate(device=base.device)
    matmul_gflops = float(matmul["gflops_median"])
    rows, ref_cache = [], {}
    for i, est in enumerate(spec["estimators"]):
        # The auxiliary loss is a step of its own: the sup and unsup steps are the same code with or
        # without it, so they are timed once per estimator and reported on the rows of both flags.
        with_aux = True in spec["aux"]
        cfg = RunConfig.from_dict({**base.to_dict(), "estimator": est, "aux": with_aux,
                                   "options": spec.get("options", {}).get(est, {})})
        trainer = Trainer(cfg, data)  # clears the param store: one model at a time
        sizes = Sizes.of(trainer.ss)
        kinds = {"sup": (lambda: trainer.svi.step(xs_s, ys_s), xs_s, ys_s),
                 "unsup": (lambda: trainer.svi.step(xs_u), xs_u, None)}
        if with_aux:
            kinds["aux"] = (lambda: trainer.svi_aux.step(xs_s, ys_s), xs_s, ys_s)
        timed = {}
        for kind, (fn, xs, ys) in kinds.items():
            ms = time_steps(fn, spec["warmup"], spec["steps"], cfg.device)
            mem = peak_step_memory(fn, cfg.device)  # one more step, untimed
            row = {"estimator": est, "device": cfg.device, "step_kind": kind, "batch_size": bs,
                   "n_steps": len(ms), **_summary(ms), "min_ms": float(ms.min()), "mean_ms": float(ms.mean()),
                   "threads": torch.get_num_threads(), "matmul_gflops": matmul_gflops,
                   "peak_mb": mem["peak_mb"], "peak_mb_method": mem["method"]}
            if str(cfg.device).startswith("cuda"):  # since peak_step_memory's reset: that one step's peak
                row["cuda_peak_mb"] = torch.cuda.max_memory_allocated(cfg.device) / 2 ** 20
                row["cuda_reserved_mb"] = torch.cuda.max_memory_reserved(cfg.device) / 2 ** 20
            row.update(_reference_columns(cfg, est, kind, xs, ys, spec, sizes, row["median_ms"], matmul_gflops,
                                          ref_cache))
            timed[kind] = row
        for aux in spec["aux"]:
            for kind in ("sup", "unsup", "aux") if aux else ("sup", "unsup"):
                rows.append({"estimator": est, "aux": aux, **timed[kind]})
        if progress:
            progress({"event": "step", "epoch": 1, "step": i + 1, "steps": len(spec["estimators"]),
                      "global_step": i + 1})
    return {"status": "ok", "error": None, "timing": rows, "matmul": matmul, "data_sha256": data.sha256}
