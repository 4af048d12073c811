"""Statistics over seeds: mean, sample standard deviation, Student-t confidence intervals,
and paired differences (same seed) against a baseline.

With n seeds the interval is ``mean ± t(1 - α/2, n - 1) · s / √n`` (``s``: sample standard
deviation, ddof = 1); for a paired difference the same interval is taken over the per-seed
differences, and the two-sided p-value is that of the paired t-test. One value gives no
spread: std, interval and p-value are NaN then. NaN inputs (a round a run did not reach) are
dropped before anything is computed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

__all__ = ["Summary", "summarize", "paired_difference"]


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float
    low: float
    high: float
    p_value: float = math.nan  # paired differences only: H0 mean difference = 0

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def summarize(values, confidence: float = 0.95) -> Summary:
    """Mean, sample std and ``confidence`` t-interval of ``values`` (NaNs dropped)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: expected in (0, 1), got {confidence}")
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n == 1:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(_st.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def paired_difference(values: dict, baseline: dict, confidence: float = 0.95) -> Summary:
    """``values - baseline`` over the keys (seeds) both hold a number for, with its interval
    and the paired t-test's two-sided p-value."""
    keys = sorted(k for k in values if k in baseline
                  and not math.isnan(float(values[k])) and not math.isnan(float(baseline[k])))
    d = np.array([float(values[k]) - float(baseline[k]) for k in keys], dtype=np.float64)
    s = summarize(d, confidence)
    if s.n < 2:
        return s
    if s.std == 0:
        p = 1.0 if s.mean == 0 else 0.0
    else:
        t = s.mean / (s.std / math.sqrt(s.n))
        p = float(2 * _st.t.sf(abs(t), s.n - 1))
    return Summary(s.n, s.mean, s.std, s.low, s.high, p)
