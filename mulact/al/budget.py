"""The budget cut of a round: regions by descending score until the click budget is spent."""
from __future__ import annotations

import numpy as np

__all__ = ["select_by_budget"]


def select_by_budget(scores, candidates, costs, budget: int) -> np.ndarray:
    """Flat indices chosen by descending ``scores`` among ``candidates`` until ``budget``
    clicks are spent.

    Ties are broken by the smaller flat index. The region whose cost crosses the budget is
    still taken, so the overshoot is less than that one region's cost; when the candidates run
    out first, all of them are returned (the caller reports the pool as exhausted).
    """
    scores = np.asarray(scores, dtype=np.float64)
    cand = np.flatnonzero(np.asarray(candidates, dtype=bool))
    if budget <= 0 or len(cand) == 0:
        return np.zeros(0, dtype=np.int64)
    s = scores[cand]
    if np.isnan(s).any():
        raise ValueError("scores: NaN among candidate scores")
    order = cand[np.lexsort((cand, -s))]
    # float: a human oracle plans with expected (fractional) costs; exact for integer costs
    spent = np.cumsum(np.asarray(costs, dtype=np.float64)[order])
    k = int(np.searchsorted(spent, budget, side="left"))
    return order[: k + 1].astype(np.int64)
