"""Timing and memory helpers shared by the benchmark suites."""
from __future__ import annotations

import torch


def synced(fn, device):
    """``fn`` as it should be timed: on CUDA it waits for its kernels, so the timer sees the
    work and not just the launches."""
    if device != "cuda":
        return fn

    def run(*args, **kwargs):
        out = fn(*args, **kwargs)
        torch.cuda.synchronize()
        return out

    return run


def cuda_peak_extra_bytes(fn, *args) -> int:
    """Peak CUDA memory that ``fn(*args)`` allocates beyond what is already allocated."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn(*args)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def gb_per_s(benchmark, moved: int, digits: int = 2) -> float | None:
    """Achieved bandwidth over ``moved`` bytes at the benchmark's mean time (None when timing is
    off, as under ``--benchmark-disable``)."""
    if benchmark.stats is None:
        return None
    return round(moved / benchmark.stats.stats.mean / 1e9, digits)


def loss_and_grad(loss, logits):
    """Detached ``loss`` and its gradient w.r.t. ``logits``; waits for CUDA so that a timed
    forward + backward includes the backward kernels."""
    (grad,) = torch.autograd.grad(loss, logits)
    if logits.is_cuda:
        torch.cuda.synchronize()
    return loss.detach(), grad
