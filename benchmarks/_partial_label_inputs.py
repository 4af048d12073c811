"""Synthetic stage-1 inputs for the loss benchmarks.

``blocky_regions`` has the signature of the shared ``benchmarks/_shapes.py::blocky_regions``
(written on a sibling branch); this private copy keeps these suites self-contained until the
branches meet. It draws a grid of compact cells with jittered borders and shuffled ids, so
region reductions see superpixel-like locality.
"""
from __future__ import annotations

import math

import torch


def blocky_regions(batch: int, height: int, width: int, num_regions: int, seed: int = 0,
                   void_fraction: float = 0.0) -> torch.Tensor:
    """``(batch, height, width)`` int64 ids in ``[0, num_regions)``; about ``void_fraction`` of
    the cells are -1."""
    g = torch.Generator().manual_seed(seed)
    rows = max(1, min(height, round(math.sqrt(num_regions * height / width))))
    cols = max(1, min(width, num_regions // rows))
    cell_h, cell_w = height / rows, width / cols
    maps = []
    for _ in range(batch):
        # Each row/column boundary wobbles by up to a third of a cell, per line of pixels.
        y = torch.arange(height).view(-1, 1) + (torch.rand(1, width, generator=g) - 0.5) * cell_h * 0.6
        x = torch.arange(width).view(1, -1) + (torch.rand(height, 1, generator=g) - 0.5) * cell_w * 0.6
        cell = (y / cell_h).floor().clamp(0, rows - 1).long() * cols + (x / cell_w).floor().clamp(0, cols - 1).long()
        ids = torch.randperm(num_regions, generator=g)[: rows * cols]
        if void_fraction > 0:
            ids = ids.masked_fill(torch.rand(rows * cols, generator=g) < void_fraction, -1)
        maps.append(ids[cell])
    return torch.stack(maps)


def partial_labels(batch: int, num_regions: int, num_classes: int, labeled: float = 0.2,
                   mix=(0.5, 0.35, 0.15), seed: int = 0) -> torch.Tensor:
    """``(batch, R, C)`` bool multi-hot labels: a ``labeled`` fraction of the regions gets 1, 2
    or 3 classes with probabilities ``mix``."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(batch, num_regions, num_classes, dtype=torch.bool)
    chosen = torch.rand(batch, num_regions, generator=g) < labeled
    sizes = torch.multinomial(torch.tensor(mix), batch * num_regions, replacement=True, generator=g) + 1
    for b, r in chosen.nonzero().tolist():
        k = int(sizes[b * num_regions + r])
        labels[b, r, torch.randperm(num_classes, generator=g)[:k]] = True
    return labels


def stage1_inputs(device, batch, classes, height, width, num_regions, seed=0):
    """Logits (requires grad), region map with 2% void cells, and partial labels."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, classes, height, width, generator=g) * 0.5).to(device).requires_grad_(True)
    regions = blocky_regions(batch, height, width, num_regions, seed=seed, void_fraction=0.02).to(device)
    labels = partial_labels(batch, num_regions, classes, seed=seed).to(device)
    return logits, regions, labels
