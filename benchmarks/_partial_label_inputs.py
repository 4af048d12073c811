"""Synthetic stage-1 inputs for the loss benchmarks: logits, superpixel-like region maps
(``_shapes.blocky_regions``) and multi-hot partial labels."""
from __future__ import annotations

import torch
from _shapes import blocky_regions


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
