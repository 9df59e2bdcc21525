"""The gradient statistics, one record each: what :func:`ssvae.metrics.gradient_stats` computes, the
columns of ``grad_variance.csv`` (``bench.schema``), the numbers the report reads (``bench.report.data``)
and the statistics its gradient tables show (``bench.diagnostics``) all come from :data:`STATISTICS`.

Adding a statistic is one :class:`Statistic` here (its name, its formula in the :class:`Moments` of the
draws, whether it has a bootstrap interval, whether it needs the exact gradient, which direction is
better, whether and where the report's tables show it) and its test. Definitions are in
:mod:`ssvae.metrics`' docstring. This module needs numpy only (no torch): the schema reads it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np


@dataclass(frozen=True)
class Moments:
    """What every statistic is a function of, for a batch of ``B`` resamples of ``n`` draws of ``p``
    coordinates (arrays of shape (B,)); the reference's terms are None without one."""
    n: int
    p: int
    variance: np.ndarray       #: the per-coordinate sample variance, averaged over coordinates
    m2: np.ndarray             #: ||m||^2, the squared norm of the sample mean
    diff2: Optional[np.ndarray] = None   #: ||m - r||^2 against the reference r
    dot: Optional[np.ndarray] = None     #: m . r
    r2: Optional[float] = None           #: ||r||^2
    ref_err: Optional[float] = None      #: the reference's own error per coordinate


@dataclass(frozen=True)
class Statistic:
    name: str
    compute: Callable[[Moments], np.ndarray]
    #: a percentile-bootstrap interval, columns ``<name>_lo`` and ``<name>_hi``
    interval: bool = True
    #: needs the exact gradient (NaN, interval included, without one)
    reference: bool = False
    #: which way is better: "lower", "higher" or None (no direction: a description of the draws)
    better: Optional[str] = None
    #: position among the statistics the report's gradient tables show, mean over seeds with the bounds'
    #: means (``bench.diagnostics.mse_table``); None: in grad_variance.csv only
    table: Optional[int] = None


def _signal(m: Moments) -> np.ndarray:
    return m.m2 / m.p - m.variance / m.n


def _snr(m: Moments) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(m.variance > 0, _signal(m) / m.variance, np.inf)


def _bias_sq(m: Moments) -> np.ndarray:
    return m.diff2 / m.p - m.variance / m.n - m.ref_err


def _cosine(m: Moments) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return m.dot / np.sqrt(np.maximum(m.m2, 0.0) * m.r2)


#: in the order of grad_variance.csv's columns
STATISTICS: Tuple[Statistic, ...] = (
    Statistic("variance", lambda m: m.variance, better="lower", table=2),
    Statistic("mean_sq", lambda m: m.m2 / m.p, interval=False),
    Statistic("snr", _snr, better="higher", table=4),
    Statistic("signal", _signal, interval=False),
    Statistic("bias_sq", _bias_sq, reference=True, better="lower", table=1),
    Statistic("mse", lambda m: _bias_sq(m) + m.variance, reference=True, better="lower", table=0),
    Statistic("cosine", _cosine, reference=True, better="higher", table=3),
)
BY_NAME = {s.name: s for s in STATISTICS}
#: the statistics with a bootstrap interval
INTERVAL_STATS = tuple(s.name for s in STATISTICS if s.interval)
#: the statistics the report's gradient tables show, in their order
TABLE_STATS = tuple(s.name for s in sorted((s for s in STATISTICS if s.table is not None), key=lambda s: s.table))
#: the statistics that need the exact gradient: the tabulated ones in their order, then the rest
ERROR_STATS = tuple(s.name for s in sorted((s for s in STATISTICS if s.reference),
                                           key=lambda s: (s.table is None, s.table or 0)))
#: the reference's own columns beside the statistics
REFERENCE_COLUMNS = ("ref_sq", "ref_err", "ref_draws")
#: one grad_variance.csv row's numbers, in column order: draws, statistics, intervals, reference
COLUMNS = ("n_samples", *(s.name for s in STATISTICS),
           *(f"{name}_{end}" for name in INTERVAL_STATS for end in ("lo", "hi")), *REFERENCE_COLUMNS)


def compute(m: Moments) -> dict:
    """name -> array for every statistic ``m`` can give (those needing a reference only with one)."""
    return {s.name: s.compute(m) for s in STATISTICS if not s.reference or m.diff2 is not None}
