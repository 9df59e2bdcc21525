"""Gradient-estimator diagnostics: error against an exact reference, variance, SNR, intervals.

At fixed parameters and a fixed batch, draw ``n`` independent gradient estimates g_1..g_n of
the negative ELBO. Per parameter group (``encoder_y``, ``encoder_z``, ``decoder``), flattened
to P coordinates, with m the sample mean of the draws and r the reference gradient:

* ``variance`` = (1/P) sum_c s_c^2, the unbiased per-coordinate sample variance averaged over
  coordinates (the trace of the covariance over P);
* ``mean_sq`` = (1/P) ||m||^2, the squared *sample* mean. Its expectation is
  ||E g||^2/P + variance/n, so on its own it has a floor of variance/n;
* ``signal`` = mean_sq - variance/n, the debiased estimate of ||E g||^2/P;
* ``snr`` = signal / variance: the debiased signal-to-noise ratio (can be slightly negative
  when the mean is below the noise of its estimate);
* ``bias_sq`` = (1/P) ||m - r||^2 - variance/n - ref_err: the debiased squared bias per
  coordinate, E||m - r||^2/P = bias^2 + variance/n + ref_err for an independent reference;
* ``mse`` = bias_sq + variance: the mean squared error of ONE draw against the exact gradient,
  per coordinate (the quantity that ranks estimators, ``bench.diagnostics``);
* ``cosine`` = m.r / (|m| |r|): the direction of the mean gradient against the reference.

The draws are ``loss_and_grads`` calls, one each (the loop, the default), or with ``batched=True``
vectorised particles of the same loss, one forward and one backward per chunk (:mod:`ssvae.particles`,
for the objectives ``particles.supports``): the same distribution, other numbers.

The reference (:func:`reference_gradient`) is the enumerated ELBO's gradient (y summed out
exactly, ``TraceEnum_ELBO``) averaged over many reparameterised z draws, batched as vectorised
particles; ``ref_err`` is its own error, (1/P) E||r - grad ELBO||^2, estimated from the spread
of its batched calls, and ``ref_draws`` the number of z draws it averages.

Each statistic is one record of :mod:`ssvae.statistics` (its formula, interval, direction, where the
report shows it); the CSV columns and the report's tables follow from those records.

Intervals: a percentile bootstrap over the n draws (``B`` resamples, 95 %), vectorised through
the n x n Gram matrix of the centred draws: every statistic above is a function of that matrix
and of the draws' inner products with the centre and the reference, so a resample costs
O(n^2) and the (n, P) draws are read once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate

from . import particles as _batched
from . import statistics
from .estimators import Objective
from .paramstore import preserved_param_store, zero_grads as _zero_grads



def _flat_grad(ps: List[torch.Tensor]) -> Optional[torch.Tensor]:
    grads = [p.grad for p in ps]
    if all(gr is None for gr in grads):
        return None
    return torch.cat([(gr if gr is not None else torch.zeros_like(p)).reshape(-1) for gr, p in zip(grads, ps)])


def _draws(objective: Objective, groups: Dict[str, List[torch.Tensor]], args: tuple, n: int):
    """Yield ``n`` gradient estimates, each ``{group: flat gradient (detached)}``, every one from the
    state the probe began with (:func:`preserved_param_store`); groups with no gradient are left out."""
    all_params = [p for ps in groups.values() for p in ps]
    _zero_grads(all_params)
    for _ in range(n):
        with preserved_param_store():
            objective.loss_and_grads(*args)
            draw = {g: flat.detach() for g, flat in ((g, _flat_grad(ps)) for g, ps in groups.items())
                    if flat is not None}
            _zero_grads(all_params)
        yield draw


def _chunks(objective: Objective, groups: Dict[str, List[torch.Tensor]], args: tuple, n: int, batched: bool):
    """Yield ``(index of its first draw, {group: (draws, P)})``: with ``batched``, chunks of
    :mod:`ssvae.particles` where it supports ``objective``; else the loop, one draw at a time."""
    if batched and _batched.supports(objective):
        i = 0
        for size, chunk in _batched.draw_chunks(objective, groups, args, n):
            yield i, chunk
            i += size
    else:
        for i, draw in enumerate(_draws(objective, groups, args, n)):
            yield i, {g: flat[None] for g, flat in draw.items()}


def draw_gradients(objective: Objective, groups: Dict[str, List[torch.Tensor]], args: tuple, n: int,
                   dtype: torch.dtype = torch.float32, device=None, batched: bool = False) -> Dict[str, torch.Tensor]:
    """``n`` independent gradient estimates at the current parameters: group -> (n, P) tensor.

    Every draw starts from the same state: the param store (a decaying average, a neural
    baseline's registration) is restored after each one, so the draws are i.i.d. given the
    state the estimator had when the probe began, and training is not disturbed. Groups that
    receive no gradient are left out. The draws are kept in ``dtype`` (float32 by default:
    the statistics are accumulated in float64, see :func:`gradient_stats`).

    ``batched``: take the draws as vectorised particles, one forward and one backward per chunk
    (:mod:`ssvae.particles`: the same distribution, other numbers), where ``particles.supports``
    the objective; the loop of ``loss_and_grads`` calls otherwise, and by default.
    """
    out: Dict[str, torch.Tensor] = {}
    for i, chunk in _chunks(objective, groups, args, n, batched):
        for g, flats in chunk.items():
            if g not in out:
                out[g] = torch.empty((n, flats.shape[1]), dtype=dtype, device=device or flats.device)
            out[g][i:i + flats.shape[0]] = flats
    return out


def gradient_samples(objective: Objective, groups: Dict[str, List[torch.Tensor]], args: tuple,
                     n: int) -> Dict[str, torch.Tensor]:
    """``n`` gradient estimates: group -> (n, P) tensor (CPU, float64); see :func:`draw_gradients`."""
    return draw_gradients(objective, groups, args, n, dtype=torch.float64, device="cpu")


@dataclass
class Reference:
    """The reference gradient of each group (float64), its error and its number of z draws."""

    mean: Dict[str, torch.Tensor] = field(default_factory=dict)
    err: Dict[str, float] = field(default_factory=dict)
    draws: int = 0


def reference_gradient(objective: Objective, groups: Dict[str, List[torch.Tensor]], args: tuple, calls: int,
                       particles: int = 1) -> Reference:
    """Average ``calls`` gradients of ``objective`` (each itself a mean over ``particles`` z draws).

    ``err[group]`` = (1/P) E||mean - true||^2, estimated as the per-coordinate variance of one call
    over ``calls``. Streaming in float64: memory O(P), whatever ``calls``.
    """
    if calls < 2:
        raise ValueError("a reference needs at least 2 calls to estimate its own error")
    first, total, sq = {}, {}, {}
    for draw in _draws(objective, groups, args, calls):
        for g, flat in draw.items():
            flat = flat.double()
            if g not in first:  # shift by the first call: no cancellation in the sum of squares
                first[g], total[g], sq[g] = flat.clone(), torch.zeros_like(flat), 0.0
            d = flat - first[g]
            total[g] += d
            sq[g] += float(d.pow(2).sum())
    ref = Reference(draws=calls * particles)
    for g, d_sum in total.items():
        p = d_sum.numel()
        d_mean = d_sum / calls
        var_call = (sq[g] - calls * float(d_mean.pow(2).sum())) / (calls - 1) / p
        ref.mean[g] = first[g] + d_mean
        ref.err[g] = max(var_call, 0.0) / calls
    return ref


def _gram(samples: torch.Tensor, vectors: List[torch.Tensor]):
    """Centre, Gram matrix of the centred draws and their inner products with the centre and ``vectors``.

    Returns (centre (P,), G (n, n), Y centre (n,), [Y v for v in vectors]) with Y = samples - centre,
    all in float64, reading ``samples`` in column chunks of about 128 MB. (The rows of Y sum to
    zero, but a resample's rows do not: Y centre is needed.)
    """
    n, p = samples.shape
    chunk = max(1, (1 << 24) // max(n, 1))
    centre = torch.empty(p, dtype=torch.float64, device=samples.device)
    for s in range(0, p, chunk):
        centre[s:s + chunk] = samples[:, s:s + chunk].double().mean(0)
    gram = torch.zeros((n, n), dtype=torch.float64, device=samples.device)
    yc = torch.zeros(n, dtype=torch.float64, device=samples.device)
    prods = [torch.zeros(n, dtype=torch.float64, device=samples.device) for _ in vectors]
    for s in range(0, p, chunk):
        y = samples[:, s:s + chunk].double() - centre[s:s + chunk]
        gram += y @ y.T
        yc += y @ centre[s:s + chunk]
        for out, v in zip(prods, vectors):
            out += y @ v[s:s + chunk].to(y)
    return centre, gram.cpu().numpy(), yc.cpu().numpy(), [t.cpu().numpy() for t in prods]


def _stats_from_weights(w: np.ndarray, gram: np.ndarray, u: np.ndarray, c2: float, p: int, n: int,
                        ref: Optional[dict]) -> Dict[str, np.ndarray]:
    """The statistics (:data:`ssvae.statistics.STATISTICS`) of resamples with draw counts ``w`` (B, n)
    (each row sums to n)."""
    dm2 = np.einsum("bi,ij,bj->b", w, gram, w) / n ** 2  # ||m_w - centre||^2
    variance = (w @ np.diag(gram) - n * dm2) / ((n - 1) * p)
    m2 = c2 + 2 * (w @ u) / n + dm2  # ||m_w||^2
    terms = {}
    if ref is not None:
        v = u - ref["yr"]  # Y (centre - r)
        terms = {"diff2": ref["cr2"] + 2 * (w @ v) / n + dm2,  # ||m_w - r||^2
                 "dot": ref["c_dot_r"] + (w @ ref["yr"]) / n, "r2": ref["r2"], "ref_err": ref["err"]}
    return statistics.compute(statistics.Moments(n=n, p=p, variance=variance, m2=m2, **terms))


def gradient_stats(samples: torch.Tensor, reference: Optional[torch.Tensor] = None, ref_err: float = 0.0,
                   ref_draws: int = 0, n_boot: int = 1000, confidence: float = 0.95,
                   seed: int = 0) -> Dict[str, float]:
    """The statistics of the module docstring for (n, P) draws, with bootstrap intervals.

    Without a reference, ``bias_sq``, ``mse`` and ``cosine`` (and their intervals) are NaN.
    """
    n, p = samples.shape
    nan = float("nan")
    if n < 2:
        raise ValueError("gradient statistics need at least 2 draws")
    vectors = []
    r = None
    if reference is not None:
        r = reference.to(samples.device, torch.float64).reshape(-1)
        if r.numel() != p:
            raise ValueError(f"reference has {r.numel()} coordinates, the draws {p}")
        vectors.append(r)
    centre, gram, u, prods = _gram(samples, vectors)
    c2 = float(centre.pow(2).sum())
    ref = None
    if r is not None:
        ref = {"yr": prods[0], "cr2": float((centre - r).pow(2).sum()), "c_dot_r": float(centre @ r),
               "r2": float(r.pow(2).sum()), "err": float(ref_err)}
    point = {k: float(v[0]) for k, v in _stats_from_weights(np.ones((1, n)), gram, u, c2, p, n, ref).items()}
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
    boot = _stats_from_weights(w, gram, u, c2, p, n, ref)
    alpha = (1 - confidence) / 2
    out = {"n_samples": n, **point, "ref_sq": nan, "ref_err": nan, "ref_draws": ref_draws or None}
    for stat in statistics.STATISTICS:
        if stat.name not in point:
            out[stat.name] = nan
        if stat.interval:
            lo, hi = np.quantile(boot[stat.name], [alpha, 1 - alpha]) if stat.name in boot else (nan, nan)
            out[f"{stat.name}_lo"], out[f"{stat.name}_hi"] = float(lo), float(hi)
    if ref is not None:
        out["ref_sq"], out["ref_err"] = ref["r2"] / p, float(ref_err)
    return out


def gradient_report(objective: Objective, groups: Dict[str, List[torch.Tensor]], args: tuple, n: int,
                    reference: Optional[Reference] = None, n_boot: int = 1000,
                    batched: bool = False) -> Dict[str, Dict[str, float]]:
    """group -> statistics of ``n`` draws at the current parameters, against ``reference`` if given
    (``batched``: see :func:`draw_gradients`)."""
    out = {}
    for g, s in draw_gradients(objective, groups, args, n, batched=batched).items():
        if reference is not None and g in reference.mean:
            out[g] = gradient_stats(s, reference.mean[g], reference.err[g], reference.draws, n_boot=n_boot)
        else:
            out[g] = gradient_stats(s, n_boot=n_boot)
        del s
    return out


def reference_objective(ss, particles: int = 20) -> Objective:
    """The enumerated ELBO (y summed out exactly) averaged over ``particles`` vectorised z draws."""
    return Objective(ss.model, config_enumerate(ss.guide, "parallel"),
                     TraceEnum_ELBO(num_particles=int(particles), vectorize_particles=True, max_plate_nesting=1))


def mean_and_stderr(samples: torch.Tensor):
    """Per-coordinate mean and standard error of (n, P) samples."""
    n = samples.shape[0]
    return samples.mean(0), samples.std(0, unbiased=True) / (n ** 0.5)
