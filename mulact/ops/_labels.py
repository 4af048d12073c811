"""Small helpers shared by the ops that take multi-hot region labels (losses, argmax)."""
from __future__ import annotations

import contextlib

import torch


def labels_u8(region_labels: torch.Tensor) -> torch.Tensor:
    """Contiguous 0/1 uint8 multi-hot labels (bool is reinterpreted, not copied).

    A uint8 label is read as a boolean: any nonzero value (1, 2, 255 of a mask image...) means
    the class is set, in every op and backend, as ``tensor.bool()`` and numpy's ``astype(bool)``
    read it; the kernels only ever see 0/1.
    """
    region_labels = region_labels.contiguous()
    if region_labels.dtype == torch.bool:
        return region_labels.view(torch.uint8)
    return (region_labels != 0).view(torch.uint8)


def num_labels(region_labels: torch.Tensor) -> torch.Tensor:
    """(B, R) int32 number of classes set per region (nonzero uint8 counts as set)."""
    if region_labels.dtype != torch.bool:
        region_labels = region_labels != 0
    return region_labels.sum(-1, dtype=torch.int32)


def region_pixel_counts(regions: torch.Tensor, num_regions: int) -> torch.Tensor:
    """(B, R) int64 pixel count per region; negative ids and ids >= R are not counted (the fused
    kernels report ids >= R through their status buffer)."""
    batch = regions.shape[0]
    flat = regions.reshape(batch, -1).long()
    valid = (flat >= 0) & (flat < num_regions)
    offset = torch.arange(batch, device=regions.device).unsqueeze(1) * num_regions
    slot = torch.where(valid, flat + offset, batch * num_regions)
    # scatter_add, not bincount: bincount sizes its output from the data (a host sync on CUDA)
    counts = torch.zeros(batch * num_regions + 1, dtype=torch.int64, device=regions.device)
    counts.scatter_add_(0, slot.reshape(-1), torch.ones_like(slot.reshape(-1)))
    return counts[: batch * num_regions].view(batch, num_regions)


def device_guard(t: torch.Tensor):
    """Make ``t``'s CUDA device current while Triton launches (it launches on the current one)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
