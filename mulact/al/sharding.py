"""The AL loop's per-image passes sharded over the ranks of a ``torchrun`` job.

Each function here is the multi-process counterpart of a one-process step and returns, on
every rank, exactly what the one-process step returns (bitwise):

- :func:`build_oracle_sharded` — superpixels + oracle answers, images dealt round-robin, the
  per-image rows gathered and reassembled in image order;
- :func:`scan_pool_sharded` — the acquisition scan (:func:`mulact.al.acquisition.scan_pool`):
  whole batches dealt to the ranks (:func:`mulact.distributed.shard_batches`, so each image is
  forwarded in the same batch as in one process and exactly once over the job), the
  zero-filled ``(N, K)`` tables summed over ranks (each row has a single non-zero
  contributor, so the sum is exact) and the per-batch class mass summed in batch order, as
  one process does.

With one process they call the one-process functions directly.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from mulact import distributed as dist
from mulact.engine.precision import autocast

from .acquisition import PoolStats, scan_pool
from .data import build_oracle
from .oracle_table import OracleTable
from .pool import RegionPool

__all__ = ["build_oracle_sharded", "scan_pool_sharded"]


def build_oracle_sharded(dataset, indices, trim: int = 5) -> OracleTable:
    """:func:`mulact.al.data.build_oracle` with the images (SEEDS + oracle) spread over ranks."""
    indices = [int(i) for i in indices]
    if dist.world_size() == 1:
        return build_oracle(dataset, indices, trim=trim)
    mine = indices[dist.rank()::dist.world_size()]
    if mine:
        part = build_oracle(dataset, mine, trim=trim)
        rows = {i: (part.bits[lo:hi], part.dominant[lo:hi], part.pixels[lo:hi])
                for i, lo, hi in zip(mine, part.offsets[:-1], part.offsets[1:])}
    else:
        rows = {}
    merged = {}
    for chunk in dist.all_gather_objects(rows, what="oracle rows"):
        merged.update(chunk)
    counts = [len(merged[i][0]) for i in indices]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    cat = [np.concatenate([merged[i][k] for i in indices]) if indices else np.zeros(0) for k in range(3)]
    return OracleTable(offsets, cat[0], cat[1], cat[2], dataset.num_classes)


@torch.no_grad()
def scan_pool_sharded(model, dataset, pool: RegionPool, images, *, measure: str, temperature: float,
                      device, batch_size: int = 4, amp: bool = False, num_workers: int = 0) -> PoolStats:
    """:func:`mulact.al.acquisition.scan_pool` with the pool's images sharded over ranks."""
    if dist.world_size() == 1:
        return scan_pool(model, dataset, pool, images, measure=measure, temperature=temperature, device=device,
                         batch_size=batch_size, amp=amp, num_workers=num_workers)
    from mulact.engine.train import collate_pad
    from mulact.ops import region_uncertainty_stats

    device = torch.device(device)
    K = pool.num_classes + 1
    N = int(pool.offsets[-1])
    images = [int(i) for i in images]
    n_batches = -(-len(images) // batch_size)
    mine = dist.shard_batches(images, batch_size)
    batch_ids = range(dist.rank(), n_batches, dist.world_size())
    u_sum = torch.zeros(N, K, dtype=torch.float32)
    count = torch.zeros(N, K, dtype=torch.int32)
    mass = torch.zeros(n_batches, K, dtype=torch.float64)
    totals = torch.zeros(2, dtype=torch.int64)  # pixels, forwards
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=mine, num_workers=num_workers,
                                         collate_fn=collate_pad)
    was_training = model.training
    model.eval()
    for j, batch in zip(batch_ids, tqdm(loader, desc="acquisition", leave=False, dynamic_ncols=True,
                                        disable=not dist.is_main())):
        idx = batch["index"].numpy()
        R = int(max(pool.offsets[i + 1] - pool.offsets[i] for i in idx))
        with autocast(amp, device):
            logits = model(batch["image"].to(device, non_blocking=True))
        if logits.shape[1] != K:
            raise ValueError(f"model: expected {K} output channels (C + undefined), got {logits.shape[1]}")
        stats = region_uncertainty_stats(logits, batch["regions"].to(device), R,
                                         temperature=temperature, measure=measure)
        us, cs = stats.u_sum.cpu(), stats.count.cpu()
        for b, i in enumerate(idx):
            lo, hi = int(pool.offsets[i]), int(pool.offsets[i + 1])
            u_sum[lo:hi] = us[b, : hi - lo]
            count[lo:hi] = cs[b, : hi - lo]
        mass[j] = stats.prob_sum.double().cpu()
        totals += torch.tensor([int(stats.num_pixels), logits.shape[0]])
    model.train(was_training)
    for t, name in ((u_sum, "uncertainty sums"), (count, "pixel counts"), (mass, "class mass"), (totals, "totals")):
        dist.all_reduce_sum(t, what=f"acquisition: {name}")
    prob_sum = torch.zeros(K, dtype=torch.float64)
    for j in range(n_batches):  # the order of one process
        prob_sum += mass[j]
    return PoolStats(u_sum, count, prob_sum.float(), int(totals[0]), int(totals[1]))
