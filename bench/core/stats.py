"""The numbers every table shares, in one place: Student-t intervals (scipy underneath), variant labels
("enum + aux") and the booleans read back from CSV files.

:func:`mean_interval` is the Student-t interval over seeds (of one variant: Table 1, the tuning study),
:func:`paired_interval` the same interval of paired differences as bounds (every verdict), :func:`t_quantile`
its quantile (also ``compare``'s Welch test); :data:`CONFIDENCE` is the default level.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import stats

#: the default confidence level of every interval (the report's ``--level`` overrides it for verdicts)
CONFIDENCE = 0.95


def t_quantile(df: float, confidence: float = CONFIDENCE) -> float:
    """The two-sided ``confidence`` quantile of Student's t with ``df`` degrees of freedom."""
    return float(stats.t.ppf((1 + confidence) / 2, df))


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Optional[Tuple[float, Optional[float]]]:
    """(mean, half-width) of the Student-t interval over ``values`` (seeds); the half-width is None for one
    value, and there is no interval (None) for none."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return None
    mean = sum(xs) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return mean, t_quantile(n - 1, confidence) * sd / math.sqrt(n)


def paired_interval(diffs: Sequence[float], confidence: float = CONFIDENCE) -> Tuple[float, float, float, str]:
    """(mean, low, high, note) of paired differences: :func:`mean_interval`'s interval as its bounds.

    n = 1 gives no interval (low = high = NaN, and the note says so); n = 0 gives NaN throughout.
    Identical differences give the degenerate interval [d, d].
    """
    got = mean_interval(diffs, confidence)
    if got is None:
        return math.nan, math.nan, math.nan, "no paired seeds"
    mean, half = got
    if half is None:
        return mean, math.nan, math.nan, "n = 1: no interval"
    return mean, mean - half, mean + half, ""


def median_ratio_interval(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE
                          ) -> Tuple[float, float, float]:
    """(ratio, low, high) of b over a from paired rounds: the median of log(b/a), exponentiated, with a
    percentile bootstrap interval (4000 resamples, a fixed generator); fewer than 3 rounds give no interval
    (NaN), identical log-ratios the degenerate one."""
    n = min(len(a), len(b))
    d = np.log(np.asarray(b[:n], dtype=float)) - np.log(np.asarray(a[:n], dtype=float))
    ratio = float(np.exp(np.median(d)))
    if n >= 3 and np.ptp(d) > 0:
        ci = stats.bootstrap((d,), np.median, confidence_level=confidence, n_resamples=4000,
                             method="percentile", random_state=np.random.default_rng(0)).confidence_interval
        return ratio, float(np.exp(ci.low)), float(np.exp(ci.high))
    return (ratio, ratio, ratio) if n >= 3 else (ratio, math.nan, math.nan)


def variant_label(estimator: str, aux) -> str:
    """How a variant is named on every page and in every table: ``enum`` or ``enum + aux``."""
    return f"{estimator} + aux" if as_bool(aux) else estimator


def as_bool(v) -> bool:
    """A boolean as a CSV file gives it back ("True", "true", "1", "yes"); a missing value is False."""
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return False
    return bool(v)
