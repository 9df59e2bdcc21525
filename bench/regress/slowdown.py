"""An injected slowdown, to show that the regression check catches one. Benchmarks only.

``SSVAE_INJECT_SLOWDOWN=enum:0.3`` (or ``enum/unsup:0.3``; several comma-separated) makes
the benchmark of that estimator's Pyro step of that kind (``unsup`` by default) do about
30% more work: after each step, busy float32 matmuls for 0.3 x the time that step took.

Nothing outside ``tests/benchmarks`` and the A/B runner (``bench/regress/runner.py``) reads
this: training (``ssvae``), ``bench run`` and ``bench train`` never import this module (nor the
``bench.regress`` package that does), and
``python -m bench regress`` passes the variable to its pytest run or to side B's runner only
when asked with ``--inject-slowdown`` (it removes it otherwise, and refuses to save a
baseline or write a history record with it).
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


def slowed(step: Callable[[], object], fraction: float) -> Callable[[], object]:
    """``step`` followed by busy float32 matmuls for ``fraction`` of the time the step just took.

    The extra work is timed against the step itself, each call, rather than counted from a
    calibration: on a loaded machine a calibration made at one moment (the fastest of a few
    0.2 ms matmuls, or of a few matmul blocks while another process sets up) was off by 2-4x
    when the loop ran (measured here: a "30 %" slowdown gave +120 % once and +1 % another
    time). Timed per call, the step takes (1 + fraction) x its own time, whatever the load.
    """
    if fraction <= 0:
        return step
    a = torch.randn(256, 256)
    out = torch.empty(256, 256)

    def slow_step():
        t0 = time.perf_counter()
        result = step()
        t1 = time.perf_counter()
        deadline = t1 + fraction * (t1 - t0)
        n = 0
        while time.perf_counter() < deadline:
            torch.mm(a, a, out=out)
            n += 1
        slow_step.last = {"step_s": t1 - t0, "extra_s": time.perf_counter() - t1, "matmuls": n}
        return result

    slow_step.injected = {"fraction": fraction, "mode": "busy matmuls for fraction x the step's own time"}
    slow_step.last = None
    return slow_step
