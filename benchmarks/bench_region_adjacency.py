"""Region adjacency: C++/Triton kernels vs the vectorised torch reference and a numpy composite.

Same map as ``bench_region_labels_from_mask.py`` (1024x2048 SEEDS, ~2048 regions, int64).
``numpy`` is what a user would write: four shifted comparisons, ``np.unique`` of the pair keys.

Run: ``python -m pytest benchmarks/bench_region_adjacency.py --benchmark-only``.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from mulact.data.demo import render_scene
from mulact.data.superpixels import compute_superpixels
from mulact.ops import region_adjacency, region_adjacency_reference

H, W = 1024, 2048
PROVIDERS = ["mulact", "reference", "numpy"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@functools.lru_cache(maxsize=None)
def regions_map():
    image, _ = render_scene(np.random.default_rng(0), H, W)
    return torch.from_numpy(compute_superpixels(image, "seeds", 32).astype(np.int64))[None]


def numpy_adjacency(regions: np.ndarray, R: int) -> np.ndarray:
    keys = []
    for a, b in ((regions[:, :-1], regions[:, 1:]), (regions[:-1], regions[1:]),
                 (regions[:-1, :-1], regions[1:, 1:]), (regions[:-1, 1:], regions[1:, :-1])):
        m = (a != b) & (a >= 0) & (b >= 0)
        keys.append(np.minimum(a[m], b[m]) * R + np.maximum(a[m], b[m]))
    k = np.unique(np.concatenate(keys))
    return np.stack([k // R, k % R], 1)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("device", DEVICES)
def test_region_adjacency(benchmark, provider, device):
    if provider == "numpy" and device != "cpu":
        pytest.skip("numpy runs on the CPU only")
    regions = regions_map()
    R = int(regions.max()) + 1
    want = region_adjacency_reference(regions, R)[0]
    dev_regions = regions.to(device)
    fn = {
        "mulact": lambda: region_adjacency(dev_regions, R),
        "reference": lambda: region_adjacency_reference(dev_regions, R),
        "numpy": lambda: numpy_adjacency(regions[0].numpy(), R),
    }[provider]
    got = fn()
    got = torch.as_tensor(got if provider == "numpy" else got[0]).cpu()
    assert torch.equal(got, want)

    def run():
        fn()
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"region_adjacency {device} 1x{H}x{W} R={R} E={want.shape[0]}"
    benchmark.pedantic(run, rounds=20 if provider == "mulact" else 3, iterations=1, warmup_rounds=1)
    moved = regions.numel() * regions.element_size() + want.numel() * 8
    benchmark.extra_info.update(bytes_moved=moved, gb_per_s=round(moved / benchmark.stats.stats.mean / 1e9, 3),
                                device=device, threads=torch.get_num_threads())
