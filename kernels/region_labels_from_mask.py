"""Triton kernels of ``region_labels_from_mask`` (the oracle, docs/design.md §2.7).

Two launches over pixel blocks of each image (grid ``(cdiv(H*W, BLOCK), B)``):

1. ``_boundary_kernel``: thick boundary flag of every pixel (a 4-neighbour has another id;
   the image border is not a boundary), stored as uint8.
2. ``_band_count_kernel``: the trim band (any boundary pixel in the ``TRIM x TRIM`` window,
   offsets ``-(TRIM-1)//2 .. TRIM//2`` — the even-size centring of scipy/skimage), then
   int32 atomic increments of the per-region class histograms over the whole region and
   over the pixels outside the band. Integer atomics are order independent, so the counts are
   deterministic. Region ids ``>= R`` go to ``status[1]`` (atomic max) and foreign gt values
   set ``bad_gt[0]``; the launcher raises afterwards.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._blocks import pixel_block, report_bad_ids

_BLOCK = 256


@triton.jit
def _boundary_kernel(reg_ptr, bnd_ptr, H, W, BLOCK: tl.constexpr):
    N = H * W
    b, offs, pm = pixel_block(N, BLOCK)
    y = offs // W
    x = offs % W
    base = reg_ptr + b * N
    v = tl.load(base + offs, mask=pm, other=0)
    ml = pm & (x > 0)
    mr = pm & (x + 1 < W)
    mu = pm & (y > 0)
    md = pm & (y + 1 < H)
    d = ml & (tl.load(base + offs - 1, mask=ml, other=0) != v)
    d = d | (mr & (tl.load(base + offs + 1, mask=mr, other=0) != v))
    d = d | (mu & (tl.load(base + offs - W, mask=mu, other=0) != v))
    d = d | (md & (tl.load(base + offs + W, mask=md, other=0) != v))
    tl.store(bnd_ptr + b * N + offs, d.to(tl.uint8), mask=pm)


@triton.jit
def _band_count_kernel(reg_ptr, gt_ptr, bnd_ptr, whole_ptr, trim_ptr, status_ptr, badgt_ptr, H, W, R, C, IGNORE,
                       TRIM: tl.constexpr, LO: tl.constexpr, BLOCK: tl.constexpr):
    N = H * W
    b, offs, pm = pixel_block(N, BLOCK)
    y = offs // W
    x = offs % W
    band = tl.zeros([BLOCK], dtype=tl.int1)
    if TRIM > 0:
        for i in tl.static_range(TRIM):
            yy = y + (i - LO)
            my = pm & (yy >= 0) & (yy < H)
            for j in tl.static_range(TRIM):
                xx = x + (j - LO)
                m = my & (xx >= 0) & (xx < W)
                band = band | (tl.load(bnd_ptr + b * N + yy * W + xx, mask=m, other=0) != 0)
    ids = tl.load(reg_ptr + b * N + offs, mask=pm, other=-1).to(tl.int64)
    g = tl.load(gt_ptr + b * N + offs, mask=pm, other=0).to(tl.int64)
    report_bad_ids(ids, pm, R, status_ptr)
    is_ign = g == IGNORE
    ok_cls = (g >= 0) & (g < C)
    bad = pm & ~is_ign & ~ok_cls
    nbad = tl.sum(bad.to(tl.int32), axis=0)
    if nbad > 0:
        tl.atomic_max(badgt_ptr, 1)
    cls = tl.where(is_ign, C, g)
    valid = pm & (ids >= 0) & (ids < R) & (is_ign | ok_cls)
    slot = (b * R + ids) * (C + 1) + cls
    ones = tl.full([BLOCK], 1, tl.int32)
    tl.atomic_add(whole_ptr + slot, ones, mask=valid)
    tl.atomic_add(trim_ptr + slot, ones, mask=valid & ~band)


def region_class_counts(regions: torch.Tensor, gt: torch.Tensor, num_regions: int, num_classes: int,
                        ignore_index: int, trim: int, status: torch.Tensor, bad_gt: torch.Tensor):
    """int64 ``(B, R, C+1)`` class histograms of the whole and the trimmed regions."""
    b, h, w = regions.shape
    reg = regions if regions.dtype in (torch.int32, torch.int64) else regions.to(torch.int32)
    reg = reg.contiguous()
    g = gt.contiguous()
    c1 = num_classes + 1
    whole = torch.zeros(b, num_regions, c1, dtype=torch.int32, device=regions.device)
    trimmed = torch.zeros_like(whole)
    n = h * w
    if b == 0 or n == 0:
        return whole.long(), trimmed.long()
    bnd = torch.empty(b, h, w, dtype=torch.uint8, device=regions.device)
    grid = (triton.cdiv(n, _BLOCK), b)
    _boundary_kernel[grid](reg, bnd, h, w, BLOCK=_BLOCK)
    _band_count_kernel[grid](reg, g, bnd, whole, trimmed, status, bad_gt, h, w, num_regions, num_classes,
                             ignore_index, TRIM=trim, LO=(trim - 1) // 2 if trim > 0 else 0,
                             BLOCK=_BLOCK)
    return whole.long(), trimmed.long()
