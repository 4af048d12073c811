"""Triton kernel of ``region_adjacency`` (docs/design.md §2.7).

Grid ``(cdiv(H*W, BLOCK), B)``: every pixel compares its id with the right, lower,
lower-right and lower-left neighbours and writes one key ``min * R + max`` per direction
(``-1`` when the ids are equal, negative or out of the image) into a ``(B, 4, H*W)`` buffer;
``torch.unique`` on the device then yields the sorted edge list. Ids ``>= R`` are reported
through ``status[1]``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._blocks import pixel_block, report_bad_ids

_BLOCK = 256


@triton.jit
def _pair_key(a, base, offs, m, R):
    nb = tl.load(base + offs, mask=m, other=-1).to(tl.int64)
    ok = m & (nb >= 0) & (nb < R) & (nb != a)
    return tl.where(ok, tl.minimum(a, nb) * R + tl.maximum(a, nb), -1)


@triton.jit
def _adjacency_kernel(reg_ptr, key_ptr, status_ptr, H, W, R, BLOCK: tl.constexpr):
    N = H * W
    b, offs, pm = pixel_block(N, BLOCK)
    y = offs // W
    x = offs % W
    base = reg_ptr + b * N
    a = tl.load(base + offs, mask=pm, other=-1).to(tl.int64)
    report_bad_ids(a, pm, R, status_ptr)
    va = pm & (a >= 0) & (a < R)
    down = y + 1 < H
    out = key_ptr + b * 4 * N
    tl.store(out + offs, _pair_key(a, base, offs + 1, va & (x + 1 < W), R), mask=pm)
    tl.store(out + N + offs, _pair_key(a, base, offs + W, va & down, R), mask=pm)
    tl.store(out + 2 * N + offs, _pair_key(a, base, offs + W + 1, va & down & (x + 1 < W), R), mask=pm)
    tl.store(out + 3 * N + offs, _pair_key(a, base, offs + W - 1, va & down & (x > 0), R), mask=pm)


def adjacency_keys(regions: torch.Tensor, num_regions: int, status: torch.Tensor) -> torch.Tensor:
    """``(B, 4*H*W)`` int64 pair keys ``u * R + v`` (u < v), ``-1`` where there is no pair."""
    b, h, w = regions.shape
    reg = regions if regions.dtype in (torch.int32, torch.int64) else regions.to(torch.int32)
    reg = reg.contiguous()
    n = h * w
    keys = torch.empty(b, 4 * n, dtype=torch.int64, device=regions.device)
    if b == 0 or n == 0:
        return keys
    _adjacency_kernel[(triton.cdiv(n, _BLOCK), b)](reg, keys, status, h, w, num_regions, BLOCK=_BLOCK)
    return keys
