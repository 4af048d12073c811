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


class Compiled:
    """The ``compiled`` provider: ``torch.compile(fn)``, compiled once by the first call (made
    before the timing; for a loss that call includes the backward, which compiles then too).
    ``compile_s`` is the wall time of that first call, for ``extra_info``."""

    def __init__(self, fn):
        self.fn = torch.compile(fn)
        self.compile_s = None

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def first_call(self, run, *args):
        """Run ``run(*args)`` (which calls this object) once and record how long it took."""
        import time

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = run(*args)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.compile_s = round(time.perf_counter() - start, 2)
        return out
