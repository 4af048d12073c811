"""Generic region reductions: mulact vs the scatter composites users write today.

Providers per (shape, reduce): ``mulact`` (automatic backend), ``reference`` (the library's
pure-torch oracle), ``composite`` (``scatter_reduce`` over a ``(B, K, R + 1)`` buffer with a dump
slot for negative ids; argmax as amax followed by an amin over candidate indices) and
``torch_scatter`` when installed.

Run: ``python -m pytest benchmarks/bench_region_reduce.py --benchmark-only``.
"""
from __future__ import annotations

import pytest
import torch
from _measure import Compiled, gb_per_s, synced
from _shapes import blocky_regions

from mulact.ops import region_reduce, region_reduce_reference

try:
    import torch_scatter
except ImportError:
    torch_scatter = None

PROVIDERS = ["mulact", "reference", "composite", "compiled"] + (["torch_scatter"] if torch_scatter is not None else [])
REDUCES = ["mean", "max", "argmax"]

SHAPES = [("cpu", 2, 20, 256, 512, 512)]
if torch.cuda.is_available():
    SHAPES += [("cuda", 4, 20, 769, 769, 2048), ("cuda", 1, 20, 1024, 2048, 2048)]


def composite(values, regions, num_regions, reduce, scatter="torch"):
    B, K, H, W = values.shape
    N, R = H * W, num_regions
    v = values.reshape(B, K, N)
    idx = regions.reshape(B, 1, N).long()
    idx = torch.where(idx >= 0, idx, R).expand(B, K, N)
    op = {"mean": "mean", "max": "amax", "argmax": "amax"}[reduce]
    if scatter == "torch":
        out = torch.zeros(B, K, R + 1, dtype=values.dtype, device=values.device).scatter_reduce(
            2, idx, v, op, include_self=False)
    else:
        out = torch_scatter.scatter(v, idx, dim=2, dim_size=R + 1, reduce="mean" if op == "mean" else "max")
    if reduce != "argmax":
        return out[..., :R].transpose(1, 2)
    pix = torch.arange(N, device=values.device).expand(B, K, N)
    cand = torch.where(v == out.gather(2, idx), pix, N)
    arg = torch.full((B, K, R + 1), N, dtype=torch.int64, device=values.device).scatter_reduce(2, idx, cand, "amin")
    arg = arg[..., :R].transpose(1, 2)
    return arg.masked_fill(arg == N, -1)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("reduce", REDUCES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "{}-{}x{}x{}x{}-R{}".format(*s))
def test_region_reduce(benchmark, provider, reduce, shape):
    device, B, K, H, W, R = shape
    g = torch.Generator().manual_seed(0)
    values = torch.randn(B, K, H, W, generator=g).to(device)
    regions = blocky_regions(B, H, W, R, seed=1, void_fraction=0.05).to(device=device, dtype=torch.int32)
    compiled = Compiled(composite)
    fn = {
        "compiled": lambda: compiled(values, regions, R, reduce),
        "mulact": lambda: region_reduce(values, regions, R, reduce),
        "reference": lambda: region_reduce_reference(values, regions, R, reduce),
        "composite": lambda: composite(values, regions, R, reduce),
        "torch_scatter": lambda: composite(values, regions, R, reduce, scatter="torch_scatter"),
    }[provider]

    want = region_reduce_reference(values, regions, R, reduce)
    got = compiled.first_call(fn)
    if reduce == "argmax":
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)

    run = synced(fn, device)
    benchmark.group = f"region_reduce[{reduce}] {device} {B}x{K}x{H}x{W} R={R}"
    benchmark.pedantic(run, rounds=5 if device == "cpu" else 20, iterations=1, warmup_rounds=1)
    out_bytes = B * R * K * (8 if reduce == "argmax" else values.element_size())
    moved = values.numel() * values.element_size() + regions.numel() * regions.element_size() + out_bytes
    benchmark.extra_info.update(bytes_moved=moved, gb_per_s=gb_per_s(benchmark, moved),
                                device=device, threads=torch.get_num_threads(), compile_s=compiled.compile_s if provider == "compiled" else None)
