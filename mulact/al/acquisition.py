"""Pool acquisition: score every unlabeled region with the current model and pick a batch.

:func:`scan_pool` makes **exactly one forward pass per pool image** (an image is in the pool
while it still has an unlabeled region). For each batch it calls the fused
:func:`mulact.ops.region_uncertainty_stats`, keeping per image the ``(R, C+1)`` sums of pixel
uncertainty and counts split by the pixel's top-1 class, and accumulating the soft class
prior of PixBal (Eq. 3) in the same pass. Scores are then a cheap function of those tables
(:func:`mulact.ops.region_scores`), so PixBal needs no second pass.

Methods: the registry :data:`mulact.ops.acquisition.ACQUISITIONS` (``random`` needs no model:
uniform scores from a generator seeded by ``(seed, round)``). Model-based methods ban regions whose dominant predicted class is the *undefined* class
(Appendix B): they are never selected. Labeled regions and region ids with no pixel are never
candidates. Selection then follows :func:`mulact.al.budget.select_by_budget`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from mulact.engine.precision import autocast

from .budget import select_by_budget
from .pool import RegionPool

log = logging.getLogger(__name__)

__all__ = ["PoolStats", "scan_pool", "score_pool", "acquire"]



@dataclass
class PoolStats:
    """Per-region statistics of one pool scan (flat region indices, see :class:`RegionPool`).

    ``u_sum``/``count``: ``(N, K)`` sums of pixel uncertainty / pixel counts by top-1 class
    (``K = C + 1`` model outputs); rows of images that were not scanned are zero.
    ``prob_sum``: ``(K,)`` soft class mass over all scanned pixels; ``num_pixels`` their count.
    ``forwards``: number of images passed through the model.
    """

    u_sum: torch.Tensor
    count: torch.Tensor
    prob_sum: torch.Tensor
    num_pixels: int
    forwards: int


@torch.no_grad()
def scan_pool(model, dataset, pool: RegionPool, images, *, measure: str, temperature: float,
              device, batch_size: int = 4, amp: bool = False, num_workers: int = 0,
              collate=None) -> PoolStats:
    """One forward pass per image of ``images`` over the *untransformed* ``dataset``."""
    from mulact.ops import PoolStatistics, region_uncertainty_stats

    from mulact.engine.train import collate_pad
    from mulact.runstore import worker_init_fn

    device = torch.device(device)
    K = pool.num_classes + 1
    N = int(pool.offsets[-1])
    u_sum = torch.zeros(N, K, dtype=torch.float32)
    count = torch.zeros(N, K, dtype=torch.int32)
    acc = PoolStatistics()  # the one accumulator of pool-wide statistics (mulact.ops)
    forwards = 0
    images = [int(i) for i in images]
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, images), batch_size=batch_size, shuffle=False,
        num_workers=num_workers, collate_fn=collate or collate_pad,
        worker_init_fn=worker_init_fn() if num_workers else None)
    was_training = model.training
    model.eval()
    for batch in tqdm(loader, desc="acquisition", leave=False, dynamic_ncols=True):
        idx = batch["index"].numpy()
        R = int(max(pool.offsets[i + 1] - pool.offsets[i] for i in idx))
        with autocast(amp, device):
            logits = model(batch["image"].to(device, non_blocking=True))
        forwards += logits.shape[0]
        if logits.shape[1] != K:
            raise ValueError(f"model: expected {K} output channels (C + undefined), got {logits.shape[1]}")
        stats = region_uncertainty_stats(logits, batch["regions"].to(device), R,
                                         temperature=temperature, measure=measure)
        us, cs = acc.update(stats, keep=False)
        for b, i in enumerate(idx):
            lo, hi = int(pool.offsets[i]), int(pool.offsets[i + 1])
            u_sum[lo:hi] = us[b, : hi - lo]
            count[lo:hi] = cs[b, : hi - lo]
    model.train(was_training)
    prob_sum = acc.prob_sum if acc.prob_sum is not None else torch.zeros(K, dtype=torch.float64)
    return PoolStats(u_sum, count, prob_sum.float(), acc.num_pixels, forwards)


def score_pool(method: str, pool: RegionPool, stats: PoolStats | None, *, nu: float,
               seed: int, round_index: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scores (N,) float64, banned (N,) bool)`` for every flat region of the pool."""
    from mulact.engine.train import derive_seed

    from mulact.ops.acquisition import (
        acquisition,
        class_prior,
        dominant_class,
        dominant_class_fraction,
        region_scores,
        selectable,
    )

    N = int(pool.offsets[-1])
    entry = acquisition(method)
    if not entry.needs_model:  # scored without statistics: every region one pixel, no uncertainty
        gen = torch.Generator().manual_seed(derive_seed(seed, round_index, 0xACE))
        scores = region_scores(method, torch.zeros(N, 1), torch.ones(N, 1, dtype=torch.int32), generator=gen)
        return scores.double().numpy(), np.zeros(N, bool)
    if stats is None:
        raise ValueError(f"stats: method {method!r} needs a pool scan")
    if stats.num_pixels == 0:  # nothing was scanned (an exhausted pool): nothing is selectable
        return np.zeros(N), np.ones(N, bool)
    undefined = pool.num_classes
    K = undefined + 1
    dom = dominant_class(stats.count)
    # ClassBal's class frequencies count the dominant predictions of the *pool* regions only.
    in_pool = torch.from_numpy(pool.unlabeled_mask()) & (dom >= 0)
    fraction = dominant_class_fraction(dom[in_pool], K)
    prior = class_prior(stats.prob_sum, stats.num_pixels) if entry.needs_prior else None
    scores = region_scores(method, stats.u_sum, stats.count, prior=prior, nu=nu,
                           dominant_fraction=fraction, undefined_class=undefined)
    banned = ~selectable(stats.count, undefined)
    return scores.double().numpy(), banned.numpy()


def acquire(pool: RegionPool, scores: np.ndarray, banned: np.ndarray, costs: np.ndarray,
            budget: int) -> np.ndarray:
    """Flat indices of the next batch: unlabeled, non-empty, not banned, by descending score."""
    candidates = pool.unlabeled_mask() & ~banned
    return select_by_budget(scores, candidates, costs, budget)
