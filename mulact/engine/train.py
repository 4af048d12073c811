"""Resumable training loop shared by stage 1 and stage 2.

Determinism and resume: the batch of iteration ``k`` — which images, and the seed of each
image's augmentation — is a pure function of ``(seed, k)`` (:class:`ResumableBatchSampler`),
and torch's global RNG (dropout) is re-seeded from ``(seed, k)`` before every step. A run
killed at any point and restarted from its last checkpoint (model, optimizer, scheduler,
RNG states, iteration) therefore replays exactly the same updates as an uninterrupted run
on the same device (bit-exact on CPU; on CUDA up to the non-determinism of cuDNN/atomics).

Multi-process runs (``torchrun``, :mod:`mulact.distributed`): the batch size is the *global*
batch. Every rank computes the same global batch of iteration ``k`` and takes its own
contiguous slice (rank ``r`` of ``N`` gets items ``r*B/N .. (r+1)*B/N - 1``), so the data, the
augmentations and the optimiser steps do not depend on ``N``; the model is wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel` (gradients averaged over ranks, i.e. the
gradient of the mean of the per-rank losses) and BatchNorm computed over the global batch:
:class:`~torch.nn.SyncBatchNorm` on CUDA, :class:`mulact.engine.sync_batchnorm.CPUSyncBatchNorm`
on CPU (torch's has no CPU kernel).
Only rank 0 writes checkpoints; the others wait at a barrier and every rank resumes from the
same file, so a run may be resumed with another number of ranks.

Optimisation (paper §4.1, Appendix B): AdamW, weight decay 1e-5, the decoder + classifier at
``lr`` and the encoder at ``lr * encoder_lr_mult`` (0.1: "backbone ten times lower"), poly
schedule ``(1 - k / iterations) ** power``, bfloat16 autocast of the encoder and decoder on
CUDA and on CPUs with native bfloat16 (:mod:`mulact.engine.precision`; the cosine head runs in
float32, see :mod:`mulact.model`).
"""
from __future__ import annotations

import logging
import math
import os
import random
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from mulact import distributed as dist
from mulact.data import IGNORE_INDEX
from mulact.engine.precision import autocast
from mulact.ops import check_status
from mulact.runstore import atomic_torch_save

log = logging.getLogger(__name__)

__all__ = ["ResumableBatchSampler", "TrainSettings", "collate_pad", "make_optimizer", "train_model", "derive_seed"]


def derive_seed(*keys: int) -> int:
    """A 63-bit seed mixed from integer keys (stable across processes and platforms)."""
    state = np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class ResumableBatchSampler(torch.utils.data.Sampler):
    """Yields, for iterations ``start .. iterations-1``, lists of ``(image index, aug seed)``.

    Images are drawn epoch by epoch without replacement from ``indices`` (a fresh seeded
    permutation per epoch); the stream continues across epochs, so every batch is full even
    when fewer images than ``batch_size`` hold labels.

    ``batch_size`` is the global batch. With ``world_size`` ranks (default: the current
    process group) rank ``rank`` yields only its contiguous slice of ``batch_size /
    world_size`` items of each global batch; the global batch itself does not depend on the
    number of ranks.
    """

    def __init__(self, indices, batch_size: int, iterations: int, seed: int, start: int = 0,
                 rank: int | None = None, world_size: int | None = None):
        self.indices = np.asarray(indices, dtype=np.int64)
        if len(self.indices) == 0:
            raise ValueError("indices: no training images")
        self.batch_size = int(batch_size)
        self.iterations = int(iterations)
        self.seed = int(seed)
        self.start = int(start)
        self.world_size = dist.world_size() if world_size is None else int(world_size)
        self.rank = dist.rank() if rank is None else int(rank)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank: expected 0 <= rank < world_size={self.world_size}, got {self.rank}")
        self.per_rank = dist.local_batch_size(self.batch_size, self.world_size)

    def __len__(self) -> int:
        return max(self.iterations - self.start, 0)

    def _perm(self, epoch: int) -> np.ndarray:
        if getattr(self, "_cached", (None,))[0] != epoch:
            self._cached = (epoch, np.random.default_rng(derive_seed(self.seed, epoch)).permutation(self.indices))
        return self._cached[1]

    def batch(self, k: int) -> list[tuple[int, int]]:
        n = len(self.indices)
        out = []
        for j in range(k * self.batch_size, (k + 1) * self.batch_size):
            epoch, pos = divmod(j, n)
            out.append((int(self._perm(epoch)[pos]), derive_seed(self.seed, 1_000_003, j)))
        return out

    def local_batch(self, k: int) -> list[tuple[int, int]]:
        """This rank's slice of :meth:`batch` ``(k)``."""
        lo = self.rank * self.per_rank
        return self.batch(k)[lo:lo + self.per_rank]

    def __iter__(self):
        for k in range(self.start, self.iterations):
            yield self.local_batch(k)


def collate_pad(items: list[dict], extra_keys=()) -> dict:
    """Stack items, padding to the largest size (image 0, label ``IGNORE_INDEX``, regions -1)."""
    H = max(it["image"].shape[-2] for it in items)
    W = max(it["image"].shape[-1] for it in items)
    B = len(items)
    image = items[0]["image"].new_zeros(B, 3, H, W)
    label = torch.full((B, H, W), IGNORE_INDEX, dtype=torch.int64)
    regions = torch.full((B, H, W), -1, dtype=torch.int64)
    for b, it in enumerate(items):
        h, w = it["image"].shape[-2:]
        image[b, :, :h, :w] = it["image"]
        label[b, :h, :w] = it["label"]
        regions[b, :h, :w] = it["regions"]
    out = {"image": image, "label": label, "regions": regions,
           "index": torch.tensor([int(it["index"]) for it in items]),
           "sizes": torch.tensor([list(it["image"].shape[-2:]) for it in items]),
           "name": [it.get("name", "") for it in items]}
    for key in extra_keys:
        out[key] = torch.stack([it[key] for it in items])
    return out


def make_optimizer(model, lr: float, encoder_lr_mult: float, weight_decay: float):
    return torch.optim.AdamW(
        [
            {"params": list(model.encoder_parameters()), "lr": lr * encoder_lr_mult},
            {"params": list(model.head_parameters()), "lr": lr},
        ],
        lr=lr,
        weight_decay=weight_decay,
    )


@dataclass
class TrainSettings:
    iterations: int
    lr: float
    encoder_lr_mult: float = 0.1
    weight_decay: float = 1e-5
    poly_power: float = 0.9
    seed: int = 0
    device: str = "cpu"
    amp: bool = True
    checkpoint_interval: int = 1000
    eval_interval: int = 0
    desc: str = "train"
    compile: bool = False  # torch.compile the forward/backward of the training step


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        # A run resumed on a machine with fewer GPUs (another torchrun size) restores what it can;
        # every step re-seeds torch's generators from (seed, iteration) anyway.
        for i, st in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(st, i)


def train_model(
    model: torch.nn.Module,
    loader_fn: Callable[[int], torch.utils.data.DataLoader],
    step_loss: Callable[[torch.nn.Module, dict, float], tuple[torch.Tensor, dict]],
    settings: TrainSettings,
    ckpt_path: str,
    eval_fn: Callable[[torch.nn.Module], float] | None = None,
    best_path: str | None = None,
) -> dict:
    """Train ``model`` in place for ``settings.iterations`` steps, resuming from ``ckpt_path``.

    ``loader_fn(start)`` returns a loader yielding the batches of iterations ``start ..``;
    ``step_loss(model, batch, progress)`` returns ``(loss, parts)``. With ``eval_fn`` and
    ``eval_interval > 0`` the model is validated every ``eval_interval`` iterations and at the
    end; the best weights are kept in ``best_path`` and loaded into ``model`` at the end.
    Returns ``{"iterations", "best_score", "best_iteration", "last_loss"}``.
    """
    s = settings
    device = torch.device(s.device)
    model.to(device)
    world, rank = dist.world_size(), dist.rank()
    if world > 1:
        # Same Parameter objects, so the optimizer below and the caller's state_dict see them.
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            from .sync_batchnorm import convert_sync_batchnorm_cpu

            model = convert_sync_batchnorm_cpu(model)
    opt = make_optimizer(model, s.lr, s.encoder_lr_mult, s.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: max(1.0 - k / s.iterations, 0.0) ** s.poly_power)
    start, best, best_it, last_loss, last_val = 0, -math.inf, -1, math.nan, -1
    # Rank 0 decides, so all ranks resume from the same state even on a lagging shared filesystem.
    if dist.broadcast_object(os.path.isfile(ckpt_path), what=f"{s.desc}: checkpoint lookup"):
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        _set_rng_state(ck["rng"])
        start, best, best_it = ck["iteration"], ck["best_score"], ck["best_iteration"]
        last_loss, last_val = ck["last_loss"], ck["last_val"]
        log.info("%s: resumed from %s at iteration %d", s.desc, ckpt_path, start)
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        net = model
    if s.compile:
        # Only the training step: it is nearly all of a run's time and its shapes are fixed
        # (crop x crop), so one compilation serves every iteration. The weights, optimizer and
        # checkpoints stay those of `model` (no `_orig_mod.` prefixes in state dicts).
        net = torch.compile(net, dynamic=False)

    def save(k):
        if rank == 0:
            atomic_torch_save(ckpt_path, {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "rng": _rng_state(), "iteration": k, "best_score": best, "best_iteration": best_it,
                "last_loss": last_loss, "last_val": last_val,
            })
        dist.barrier(f"{s.desc}: checkpoint at iteration {k}")

    def validate(k):
        nonlocal best, best_it, last_val
        score = eval_fn(model)
        last_val = k
        model.train()
        if score > best or best_it < 0:
            best, best_it = score, k
            if best_path is not None:
                if rank == 0:
                    atomic_torch_save(best_path, {"model": model.state_dict(), "iteration": k, "score": score})
                dist.barrier(f"{s.desc}: best checkpoint at iteration {k}")
        return score

    model.train()
    bar = tqdm(total=s.iterations, initial=start, desc=s.desc, dynamic_ncols=True, leave=False, disable=rank != 0)
    if start < s.iterations:
        for k, batch in enumerate(loader_fn(start), start=start):
            # Dropout masks: a function of (seed, iteration[, rank]); one process keeps its old stream.
            torch.manual_seed(derive_seed(s.seed, 7, k) if world == 1 else derive_seed(s.seed, 7, k, rank))
            with autocast(s.amp, device):
                loss, parts = step_loss(net, batch, k / s.iterations)
            # The mean over ranks: every rank sees the same value, so a non-finite loss stops
            # all of them together instead of leaving the others waiting in the gradient sync.
            # The finiteness check below syncs anyway: first surface bad region ids / NaN logits
            # that the fused ops' CUDA kernels reported without syncing (docs/design.md).
            check_status()
            value = dist.all_reduce_sum(loss.detach().clone(), what=f"{s.desc}: loss") / world
            if not torch.isfinite(value):
                raise FloatingPointError(f"{s.desc}: non-finite loss {value.item()} at iteration {k}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            last_loss = float(value)
            bar.update(1)
            bar.set_postfix({"loss": f"{last_loss:.3f}", **{n: f"{float(v):.3f}" for n, v in parts.items()}})
            done = k + 1
            if eval_fn is not None and s.eval_interval > 0 and done % s.eval_interval == 0 and done < s.iterations:
                validate(done)
            if done % max(s.checkpoint_interval, 1) == 0 or done == s.iterations:
                save(done)
    bar.close()
    if eval_fn is not None and s.eval_interval > 0:
        if last_val != s.iterations:
            validate(s.iterations)
            save(s.iterations)
        if best_path is not None and best_it != s.iterations:
            model.load_state_dict(torch.load(best_path, map_location=device, weights_only=False)["model"])
    return {"iterations": s.iterations, "best_score": best, "best_iteration": best_it, "last_loss": last_loss,
            "compiled": bool(s.compile)}
