"""Sweep statistics against numpy / scipy on fixed numbers."""
import math

import numpy as np
import pytest
from scipy import stats

from mulact.sweep.stats import paired_difference, summarize

VALUES = [50.2, 53.2, 49.4, 51.7, 52.9]


def test_summary_matches_scipy_t_interval():
    s = summarize(VALUES)
    x = np.array(VALUES)
    assert s.n == 5
    assert s.mean == pytest.approx(x.mean())
    assert s.std == pytest.approx(x.std(ddof=1))
    lo, hi = stats.t.interval(0.95, df=4, loc=x.mean(), scale=stats.sem(x))
    assert (s.low, s.high) == (pytest.approx(lo), pytest.approx(hi))
    # by hand: t(0.975, 4) = 2.776445...
    assert s.half_width == pytest.approx(2.7764451 * x.std(ddof=1) / math.sqrt(5), rel=1e-6)


def test_other_confidence_and_nan_dropped():
    s = summarize([1.0, 2.0, math.nan, 4.0], confidence=0.9)
    lo, hi = stats.t.interval(0.9, df=2, loc=7 / 3, scale=stats.sem([1.0, 2.0, 4.0]))
    assert s.n == 3 and (s.low, s.high) == (pytest.approx(lo), pytest.approx(hi))


def test_degenerate_sizes():
    one = summarize([3.0])
    assert one.n == 1 and one.mean == 3.0 and math.isnan(one.std) and math.isnan(one.low)
    assert summarize([]).n == 0 and math.isnan(summarize([]).mean)
    with pytest.raises(ValueError, match="confidence"):
        summarize([1.0, 2.0], confidence=1.5)


def test_paired_difference_matches_scipy_ttest_rel():
    a = {0: 55.1, 1: 54.0, 2: 56.3, 3: 52.8}
    b = {0: 53.0, 1: 53.5, 2: 54.1, 3: 52.9, 7: 99.0}  # seed 7 has no partner: ignored
    d = paired_difference(a, b)
    diffs = np.array([a[k] - b[k] for k in (0, 1, 2, 3)])
    assert d.n == 4
    assert d.mean == pytest.approx(diffs.mean())
    assert d.std == pytest.approx(diffs.std(ddof=1))
    lo, hi = stats.t.interval(0.95, df=3, loc=diffs.mean(), scale=stats.sem(diffs))
    assert (d.low, d.high) == (pytest.approx(lo), pytest.approx(hi))
    ref = stats.ttest_rel([a[k] for k in range(4)], [b[k] for k in range(4)])
    assert d.p_value == pytest.approx(ref.pvalue)


def test_paired_beats_unpaired_when_seeds_correlate():
    # A constant +1 shift on noisy seeds: the paired interval is tight, the unpaired one is not.
    base = {s: v for s, v in enumerate(VALUES)}
    shifted = {s: v + 1.0 + 0.01 * s for s, v in base.items()}
    d = paired_difference(shifted, base)
    assert d.low > 0.9 and d.high < 1.1
    assert summarize(list(shifted.values())).half_width > 1.0


def test_paired_zero_spread():
    d = paired_difference({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})
    assert d.mean == 0 and d.std == 0 and d.p_value == 1.0
    assert paired_difference({0: 1.0}, {1: 1.0}).n == 0
