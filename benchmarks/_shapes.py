"""Synthetic inputs shared by the benchmark suites.

``blocky_regions`` draws superpixel-like region maps: a jittered grid of compact cells (like
SEEDS/SLIC output at ~``num_regions`` cells per image) with shuffled ids, optionally with
whole cells set to -1 (void / padding), so scatters see the locality of real superpixels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def blocky_regions(batch: int, height: int, width: int, num_regions: int, seed: int = 0,
                   void_fraction: float = 0.0) -> torch.Tensor:
    """``(batch, height, width)`` int64 ids in ``[0, num_regions)``; about ``void_fraction`` of
    the cells are -1. Cells are ~``height*width/num_regions`` pixels with wavy borders."""
    if num_regions < 1:
        raise ValueError(f"blocky_regions: `num_regions` must be >= 1, got {num_regions}")
    g = torch.Generator().manual_seed(seed)
    rows = max(1, min(height, round(math.sqrt(num_regions * height / width))))
    cols = max(1, min(width, num_regions // rows))
    cell_h, cell_w = height / rows, width / cols
    ys = torch.arange(height, dtype=torch.float32).view(1, height, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, width)
    maps = []
    for _ in range(batch):
        # Low-frequency displacement field (a few cells per wave) makes the borders irregular.
        noise = torch.rand(1, 2, rows + 1, cols + 1, generator=g) - 0.5
        noise = F.interpolate(noise, size=(height, width), mode="bicubic", align_corners=True)[0]
        y = (ys + noise[0:1] * cell_h * 0.8).div(cell_h).floor().clamp(0, rows - 1)
        x = (xs + noise[1:2] * cell_w * 0.8).div(cell_w).floor().clamp(0, cols - 1)
        cell = (y * cols + x).long()[0]
        ids = torch.randperm(num_regions, generator=g)[: rows * cols]
        if void_fraction > 0:
            void = torch.rand(rows * cols, generator=g) < void_fraction
            ids = ids.masked_fill(void, -1)
        maps.append(ids[cell])
    return torch.stack(maps)
