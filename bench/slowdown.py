"""An injected slowdown, to show that the regression check catches one. Benchmarks only.

``SSVAE_INJECT_SLOWDOWN=enum:0.3`` (or ``enum/unsup:0.3``; several comma-separated) makes
the benchmark of that estimator's Pyro step of that kind (``unsup`` by default) do about
30% more work: after each step, a busy float32 matmul loop whose length is calibrated, at
the start of the benchmark, to 0.3 x the time of the plain step (fastest of 5).

Nothing outside ``tests/benchmarks`` reads this: training (``ssvae``), ``bench run`` and
``bench train`` never import this module, and ``python -m bench.regress`` passes the variable
to its pytest run only when asked with ``--inject-slowdown`` (it removes it otherwise, and
refuses to save a baseline with it).
"""
from __future__ import annotations

import os
import time
from typing import Callable, Dict, Tuple

import torch

ENV = "SSVAE_INJECT_SLOWDOWN"


def parse(spec: str) -> Dict[Tuple[str, str], float]:
    """``"enum:0.3,trace/sup:0.5"`` -> ``{("enum", "unsup"): 0.3, ("trace", "sup"): 0.5}``."""
    out = {}
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):
        target, sep, frac = part.rpartition(":")
        if not sep or not target:
            raise ValueError(f"bad slowdown {part!r}: use ESTIMATOR[/KIND]:FRACTION, e.g. enum:0.3")
        est, _, kind = target.partition("/")
        out[(est, kind or "unsup")] = float(frac)
    return out


def requested(estimator: str, step_kind: str) -> float:
    """The fraction of extra work asked for this benchmark (0.0: none)."""
    return parse(os.environ.get(ENV, "")).get((estimator, step_kind), 0.0)


def _fastest_seconds(fn: Callable[[], object], n: int) -> float:
    """The fastest of ``n`` runs: on a shared machine the least disturbed one."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def slowed(step: Callable[[], object], fraction: float, calibration_runs: int = 5) -> Callable[[], object]:
    """``step`` followed by busy matmuls taking ~``fraction`` of its time.

    The step and the block of matmuls are each timed by their fastest run (interference only
    adds time, so the fastest runs are the comparable ones). The block is timed whole, as it
    will run: on a loaded machine the fastest of many 0.2 ms matmuls is far more optimistic
    than the fastest of a few 100 ms steps (measured: the loop then took 2-4x its estimate),
    so a first count from one matmul is rescaled by the timed block, twice.
    """
    if fraction <= 0:
        return step
    base = _fastest_seconds(step, calibration_runs)
    a = torch.randn(256, 256)
    out = torch.empty(256, 256)
    per_mm = _fastest_seconds(lambda: torch.mm(a, a, out=out), 20)
    n = max(1, round(fraction * base / per_mm))

    def block():
        for _ in range(n):
            torch.mm(a, a, out=out)

    for _ in range(2):
        per_mm = _fastest_seconds(block, calibration_runs) / n
        n = max(1, round(fraction * base / per_mm))

    def slow_step():
        result = step()
        for _ in range(n):
            torch.mm(a, a, out=out)
        return result

    slow_step.injected = {"fraction": fraction, "matmuls": n, "calibrated_step_s": base, "matmul_s": per_mm}
    return slow_step
