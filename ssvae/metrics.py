"""Gradient-estimator statistics: variance and signal-to-noise per parameter group.

For a fixed batch and fixed parameters, draw ``n`` independent gradient estimates
g_1..g_n of the negative ELBO. For each parameter group (``encoder_y``, ``encoder_z``,
``decoder``) flattened to P coordinates:

* ``variance``: mean over coordinates of the unbiased per-coordinate sample variance;
* ``mean_sq``: mean over coordinates of the squared coordinate of the mean gradient;
* ``snr``: ``mean_sq / variance`` (per-coordinate signal power over noise power, averaged
  separately; inf when the variance is zero).
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterable, List, Optional

import pyro
import torch

from .estimators import Objective


def _zero_grads(params: Iterable[torch.Tensor]) -> None:
    for p in params:
        p.grad = None


@contextlib.contextmanager
def preserved_param_store():
    """Undo what gradient draws leave in Pyro's param store: state an estimator updates as it
    runs (the decaying-average baseline of ``trace-avg``), parameters it creates, and the
    ``.grad`` of parameters outside the measured groups (the neural baseline of ``trace-nvil``),
    which the next SVI step would otherwise apply."""
    store = pyro.get_param_store()
    state = store.get_state()
    try:
        yield
    finally:
        for name in [n for n in store.keys() if n not in state["params"]]:
            del store[name]
        store.set_state(state)
        _zero_grads(p for _, p in store.named_parameters())


def gradient_samples(objective: Objective, groups: Dict[str, List[torch.Tensor]], args: tuple,
                     n: int) -> Dict[str, torch.Tensor]:
    """``n`` gradient estimates at the current parameters: group -> (n, P) tensor (CPU, float64).

    Groups that receive no gradient from this objective are left out. Parameter ``.grad``
    fields are cleared before and after, and the param store is restored (see
    :func:`preserved_param_store`), so training is not disturbed.
    """
    all_params = [p for ps in groups.values() for p in ps]
    draws: Dict[str, List[torch.Tensor]] = {g: [] for g in groups}
    _zero_grads(all_params)
    with preserved_param_store():
        for _ in range(n):
            objective.loss_and_grads(*args)
            for g, ps in groups.items():
                grads = [p.grad for p in ps]
                if all(gr is None for gr in grads):
                    continue
                flat = torch.cat([(gr if gr is not None else torch.zeros_like(p)).reshape(-1)
                                  for gr, p in zip(grads, ps)])
                draws[g].append(flat.detach().to("cpu", torch.float64))
            _zero_grads(all_params)
    return {g: torch.stack(v) for g, v in draws.items() if v}


def gradient_stats(samples: torch.Tensor) -> Dict[str, float]:
    """Variance, mean square and SNR of (n, P) gradient samples (see module docstring)."""
    n = samples.shape[0]
    mean = samples.mean(0)
    variance = samples.var(0, unbiased=True).mean().item() if n > 1 else float("nan")
    mean_sq = mean.pow(2).mean().item()
    snr = mean_sq / variance if variance > 0 else float("inf")
    return {"n_samples": n, "variance": variance, "mean_sq": mean_sq, "snr": snr}


def gradient_report(objective: Objective, groups: Dict[str, List[torch.Tensor]], args: tuple,
                    n: int) -> Dict[str, Dict[str, float]]:
    """group -> {n_samples, variance, mean_sq, snr} for ``n`` draws at the current parameters."""
    return {g: gradient_stats(s) for g, s in gradient_samples(objective, groups, args, n).items()}


def mean_and_stderr(samples: torch.Tensor):
    """Per-coordinate mean and standard error of (n, P) samples."""
    n = samples.shape[0]
    return samples.mean(0), samples.std(0, unbiased=True) / (n ** 0.5)


def accuracy_interval(values: List[float], confidence: float = 0.95) -> Optional[tuple]:
    """(mean, half-width) of a t-interval over seeds; half-width is None for one value."""
    import math
    n = len(values)
    if n == 0:
        return None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    if confidence != 0.95:
        raise ValueError("only 95% intervals are tabulated")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_quantile_975(n - 1) * sd / math.sqrt(n)


# Student-t 0.975 quantiles for 1..30 degrees of freedom (two-sided 95 %).
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (normal beyond 30)."""
    if df < 1:
        raise ValueError("df must be at least 1")
    return _T975[df - 1] if df <= len(_T975) else 1.959964 + 2.37 / df
