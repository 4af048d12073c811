"""Oracle region labels: C++/Triton kernels vs the formulations a user would write.

Providers, side by side on one Cityscapes-sized map (1024x2048, SEEDS with ~2048 regions
computed on a rendered demo scene, int64 ids and labels as the datasets return them):

* ``mulact``    — :func:`mulact.ops.region_labels_from_mask`, automatic backend (C++ on CPU,
  Triton on CUDA);
* ``reference`` — the library's vectorised pure-torch oracle;
* ``skimage``   — :func:`region_labels_from_mask_naive`: ``find_boundaries(mode="thick")`` +
  square dilation + a per-region loop (``find_objects`` crops), the usual research code.

Two ground truths: the rendered scene's labels (``scene``) and uniformly random classes with
10% void (``random``, every region holds every class). Correctness is asserted against the
reference before timing.

Run: ``python -m pytest benchmarks/bench_region_labels_from_mask.py --benchmark-only``.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from mulact.data.cityscapes import ID_TO_TRAIN_ID
from mulact.data.demo import render_scene
from mulact.data.superpixels import compute_superpixels
from mulact.ops import region_labels_from_mask, region_labels_from_mask_naive, region_labels_from_mask_reference

H, W, C = 1024, 2048, 19
PROVIDERS = ["mulact", "reference", "skimage"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@functools.lru_cache(maxsize=None)
def scene():
    image, label_ids = render_scene(np.random.default_rng(0), H, W)
    regions = torch.from_numpy(compute_superpixels(image, "seeds", 32).astype(np.int64))[None]
    return regions, torch.from_numpy(ID_TO_TRAIN_ID[label_ids])[None]


def inputs(kind):
    regions, gt = scene()
    if kind == "random":
        g = torch.Generator().manual_seed(0)
        gt = torch.randint(0, C, (1, H, W), generator=g)
        gt[torch.rand(1, H, W, generator=g) < 0.1] = 255
    return regions, gt, int(regions.max()) + 1


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gt_kind", ["scene", "random"])
def test_region_labels_from_mask(benchmark, provider, device, gt_kind):
    if provider == "skimage" and device != "cpu":
        pytest.skip("the scikit-image formulation runs on the CPU only")
    regions, gt, R = inputs(gt_kind)
    want = region_labels_from_mask_reference(gt, regions, R, C)
    regions, gt = regions.to(device), gt.to(device)
    fn = {
        "mulact": lambda: region_labels_from_mask(gt, regions, R, C),
        "reference": lambda: region_labels_from_mask_reference(gt, regions, R, C),
        "skimage": lambda: region_labels_from_mask_naive(gt, regions, R, C),
    }[provider]
    got = fn()
    for a, b in zip(got, want):
        assert torch.equal(a.cpu(), b)

    def run():
        fn()
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"region_labels_from_mask {device} {gt_kind} 1x{H}x{W} R={R}"
    rounds = {"mulact": 20, "reference": 3, "skimage": 3}[provider]
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    moved = regions.numel() * regions.element_size() + gt.numel() * gt.element_size() + R * (C + 1) * (8 + 1) + R * 16
    benchmark.extra_info.update(bytes_moved=moved, gb_per_s=round(moved / benchmark.stats.stats.mean / 1e9, 3),
                                device=device, threads=torch.get_num_threads())
