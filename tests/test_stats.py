"""bench.core.stats: the one home of the intervals, variant labels and CSV booleans every table uses."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from bench.core import stats


def test_mean_interval_is_scipys_t_interval():
    xs = [0.81, 0.78, 0.85, 0.80, 0.79]
    mean, half = stats.mean_interval(xs)
    lo, hi = sps.t.interval(0.95, len(xs) - 1, loc=np.mean(xs), scale=sps.sem(xs))
    assert mean == pytest.approx(np.mean(xs)) and half == pytest.approx((hi - lo) / 2, rel=1e-12)
    assert stats.mean_interval([0.5]) == (0.5, None) and stats.mean_interval([]) is None
    assert stats.mean_interval(xs, 0.9)[1] < half  # the level is an option
    assert stats.t_quantile(4) == pytest.approx(2.7764451, rel=1e-7)


def test_median_ratio_interval_brackets_a_known_slowdown():
    rng = np.random.default_rng(3)
    a = 100 * np.exp(rng.normal(0, 0.02, 20))
    ratio, lo, hi = stats.median_ratio_interval(a, a * 1.3)
    assert ratio == pytest.approx(1.3) and lo == pytest.approx(1.3) and hi == pytest.approx(1.3)
    ratio, lo, hi = stats.median_ratio_interval(a, 130 * np.exp(rng.normal(0, 0.02, 20)))
    assert lo < ratio < hi and 1.2 < lo and hi < 1.4
    assert all(math.isnan(v) for v in stats.median_ratio_interval([1, 2], [1, 2])[1:])


@pytest.mark.parametrize("value, expected", [("True", True), ("true", True), ("1", True), ("False", False),
                                             ("", False), (None, False), (float("nan"), False), (np.bool_(True), True),
                                             (0, False), (1, True)])
def test_csv_booleans(value, expected):
    assert stats.as_bool(value) is expected


def test_variant_labels():
    assert stats.variant_label("enum", True) == "enum + aux"
    assert stats.variant_label("enum", "False") == "enum"
    assert stats.variant_label("trace", np.bool_(False)) == "trace"
