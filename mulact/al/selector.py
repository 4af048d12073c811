"""Which regions a round asks about: the acquisition step of the loop.

Round 1 has no model yet and selects at random (paper §4.1); later rounds score the pool with
the final model of the previous round (:func:`acquisition_for_round` is the one home of this
rule). Under ``torchrun`` the pool scan is sharded over the ranks and the selection is made
once, on rank 0, and broadcast.
"""
from __future__ import annotations

import math

import numpy as np

from mulact import distributed as dist
from mulact.config import TrainConfig

from .acquisition import acquire, score_pool
from .oracle import Oracle
from .pool import RegionPool

__all__ = ["Selector", "acquisition_for_round"]


def acquisition_for_round(t: int, acquisition: str) -> str:
    """The acquisition function of round ``t``: random in round 1 (there is no model to score
    with yet), ``acquisition`` afterwards."""
    return "random" if t == 1 else acquisition


class Selector:
    """Chooses the regions of a round on ``dataset`` (the pool's train split).

    ``model_of_round(t, pool)`` returns the final model of round ``t`` (trained first if needed);
    it is called only for model-based acquisition functions.
    """

    def __init__(self, cfg: TrainConfig, dataset, device, model_of_round):
        self.cfg = cfg
        self.dataset = dataset
        self.device = device
        self.model_of_round = model_of_round

    def choose(self, t: int, pool: RegionPool, oracle: Oracle):
        """``(flat regions, scores (N,))`` of round ``t``, or None when nothing is left to select.

        Regions already put to the oracle and waiting for answers are the round's regions;
        otherwise the pool is scored and cut at the budget. ``scores`` is None on the ranks
        other than 0 of a job."""
        pending = oracle.pending(t)
        if pending is not None:
            scores = np.full(int(pool.offsets[-1]), math.nan)
            scores[pending[0]] = pending[1]
            return pending[0], scores
        if not pool.unlabeled_mask().any():
            return None  # nothing to scan: every method stops here, before needing pool statistics
        chosen, scores = self._acquire(t, acquisition_for_round(t, self.cfg.acquisition), pool, oracle)
        return None if len(chosen) == 0 else (chosen, scores)

    def _acquire(self, t: int, method: str, pool: RegionPool, oracle: Oracle):
        from mulact.ops.acquisition import acquisition

        from .sharding import scan_pool_sharded

        c = self.cfg
        stats = None
        entry = acquisition(method)
        if entry.needs_model:
            model = self.model_of_round(t - 1, pool)
            stats = scan_pool_sharded(model, self.dataset, pool, pool.images_with_unlabeled(),
                                      measure=entry.measure, temperature=c.temperature, device=self.device,
                                      batch_size=c.acquisition_batch_size, amp=c.amp, num_workers=c.num_workers)
            del model
        chosen = scores = None
        if dist.is_main():  # the selection is made once; the other ranks receive it
            scores, banned = score_pool(method, pool, stats, nu=c.nu, seed=c.seed, round_index=t)
            costs = oracle.planned_costs(pool, c.labeling)
            chosen = acquire(pool, scores, banned, costs, c.budget)
        del stats
        return dist.broadcast_object(chosen, what=f"round {t}: selection"), scores
