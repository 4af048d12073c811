"""Acquisition statistics: fused one-pass op vs what a user would write today.

Providers, side by side per shape:
* ``mulact``    — :func:`mulact.ops.region_uncertainty_stats`, automatic backend (C++ on CPU,
  Triton on CUDA);
* ``reference`` — the library's pure-torch oracle;
* ``composite`` — softmax → topk → ratio → ``scatter_reduce`` region mean, plus the split by
  top-1 class with ``scatter_add`` and the softmax sum (every intermediate materialised);
* ``torch_scatter`` — the same composite with torch_scatter, when it is installed.

Run: ``python -m pytest benchmarks/bench_region_uncertainty_stats.py --benchmark-only``.
"""
from __future__ import annotations

import pytest
import torch
from _measure import Compiled, gb_per_s, synced
from _shapes import blocky_regions

from mulact.ops import region_uncertainty_stats, region_uncertainty_stats_reference

try:
    import torch_scatter
except ImportError:
    torch_scatter = None

PROVIDERS = ["mulact", "reference", "composite", "compiled"] + (["torch_scatter"] if torch_scatter is not None else [])

# (device, B, C, H, W, R): CPU scaled to a small machine; CUDA at Cityscapes training crops and
# a full-resolution pool image.
SHAPES = [("cpu", 2, 20, 256, 512, 512)]
if torch.cuda.is_available():
    SHAPES += [("cuda", 4, 20, 769, 769, 2048), ("cuda", 1, 20, 1024, 2048, 2048)]


def composite(logits, regions, num_regions, temperature=1.0, scatter="torch"):
    B, C, H, W = logits.shape
    p = torch.softmax(logits.float() / temperature, dim=1)
    top = p.topk(2, dim=1)
    u = (top.values[:, 1] / top.values[:, 0]).reshape(-1)
    top1 = top.indices[:, 0].reshape(-1)
    ids = regions.reshape(B, -1).long()
    valid = (ids >= 0).reshape(-1)
    dump = B * num_regions  # one extra slot collects the pixels without a region
    flat = torch.where(ids >= 0, torch.arange(B, device=ids.device).unsqueeze(1) * num_regions + ids, dump).reshape(-1)
    slot = flat * C + top1
    if scatter == "torch":
        region_mean = torch.zeros(dump + 1, device=u.device).scatter_reduce(0, flat, u, "mean", include_self=False)
        u_sum = torch.zeros((dump + 1) * C, device=u.device).scatter_add_(0, slot, u)
        count = torch.zeros((dump + 1) * C, dtype=torch.int32, device=u.device).scatter_add_(
            0, slot, torch.ones_like(slot, dtype=torch.int32))
    else:
        region_mean = torch_scatter.scatter(u, flat, dim=0, dim_size=dump + 1, reduce="mean")
        u_sum = torch_scatter.scatter(u, slot, dim=0, dim_size=(dump + 1) * C, reduce="sum")
        count = torch_scatter.scatter(torch.ones_like(u, dtype=torch.int32), slot, dim=0, dim_size=(dump + 1) * C,
                                      reduce="sum")
    prob_sum = (p * valid.view(B, 1, H, W)).sum(dim=(0, 2, 3))
    return (u_sum[: dump * C].view(B, num_regions, C), count[: dump * C].view(B, num_regions, C), prob_sum,
            region_mean[:dump].view(B, num_regions))


def _runner(provider, logits, regions, R, compiled):
    if provider == "compiled":
        return lambda: compiled(logits, regions, R)
    if provider == "mulact":
        return lambda: region_uncertainty_stats(logits, regions, R, temperature=1.0)
    if provider == "reference":
        return lambda: region_uncertainty_stats_reference(logits, regions, R, temperature=1.0)
    if provider == "composite":
        return lambda: composite(logits, regions, R)
    return lambda: composite(logits, regions, R, scatter="torch_scatter")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "{}-{}x{}x{}x{}-R{}".format(*s))
def test_region_uncertainty_stats(benchmark, provider, shape):
    device, B, C, H, W, R = shape
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(B, C, H, W, generator=g) * 3).to(device)
    regions = blocky_regions(B, H, W, R, seed=1, void_fraction=0.05).to(device=device, dtype=torch.int32)
    compiled = Compiled(composite)
    fn = _runner(provider, logits, regions, R, compiled)

    want = region_uncertainty_stats_reference(logits, regions, R, temperature=1.0)
    got = compiled.first_call(fn)
    torch.testing.assert_close(got[0].float(), want.u_sum, rtol=1e-4, atol=1e-3)
    assert torch.equal(got[1].int(), want.count)
    torch.testing.assert_close(got[2].float(), want.prob_sum, rtol=1e-4, atol=1.0)

    run = synced(fn, device)
    benchmark.group = f"region_uncertainty_stats {device} {B}x{C}x{H}x{W} R={R}"
    benchmark.pedantic(run, rounds=5 if device == "cpu" else 20, iterations=1, warmup_rounds=1)
    moved = logits.numel() * logits.element_size() + regions.numel() * regions.element_size() + B * R * C * 8 + C * 4
    benchmark.extra_info.update(bytes_moved=moved, gb_per_s=gb_per_s(benchmark, moved), device=device,
                                threads=torch.get_num_threads(), compile_s=compiled.compile_s if provider == "compiled" else None)
