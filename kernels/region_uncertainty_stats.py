"""Triton kernel of ``region_uncertainty_stats``: one pass over the logits.

One program owns a tile of ``BLOCK`` pixels × ``C_PAD`` classes of one image. Loads run along
pixels (the contiguous axis of ``(B, C, H, W)``), so each class row is a coalesced read; the
softmax, top-1/top-2 and the pixel uncertainty stay in registers. Pre-aggregation inside the
block: the tile's softmax sum is reduced in registers and stored as one ``(C,)`` row per
program (rows summed afterwards, so ``prob_sum`` is deterministic); ``u`` and the count are
summed over runs of consecutive pixels sharing (region, top-1 class) with a segmented scan
(``_segments.py``), and only each run's last pixel issues the two atomics into ``(B, R, C)``.
Region ids ``>= R`` and non-finite logits are reported through the shared status buffer.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._blocks import pixel_block, report_bad_ids
from ._segments import log2, run_layout, run_sum
from ._tuning import WARPS, pixels_per_program

MEASURE_CODES = {"bvsb": 0, "margin": 1, "entropy": 2, "least_confidence": 3}


@triton.jit
def _region_uncertainty_stats_kernel(
    x_ptr, reg_ptr, u_ptr, n_ptr, prob_ptr, status_ptr,
    C, N, R, inv_t,
    MEASURE: tl.constexpr, C_PAD: tl.constexpr, BLOCK: tl.constexpr, LOG2_BLOCK: tl.constexpr,
    ACC_FP64: tl.constexpr,
):
    pid = tl.program_id(0)
    b, offs, pmask = pixel_block(N, BLOCK)
    cls = tl.arange(0, C_PAD)
    cmask = cls < C
    tile_mask = cmask[:, None] & pmask[None, :]
    x = tl.load(x_ptr + b * C * N + cls[:, None].to(tl.int64) * N + offs[None, :], mask=tile_mask, other=0.0)
    if ACC_FP64:
        z = x.to(tl.float64) * inv_t
    else:
        z = x.to(tl.float32) * inv_t

    # Tested on the loaded x, with comparisons only: an arithmetic test such as (z - z) != 0 on
    # z = x * inv_t is contracted by the GPU compiler into fma(x, inv_t, -z), whose result is the
    # product's rounding error, not 0 (seen on an H200: finite logits reported as NaN at tau = 0.1).
    bad = (x != x) | (tl.abs(x) == float("inf"))
    nonfinite = tl.sum(tl.sum((tile_mask & bad).to(tl.int32), axis=1), axis=0)
    if nonfinite > 0:
        tl.atomic_max(status_ptr, 1)

    zm = tl.where(cmask[:, None], z, float("-inf"))
    m1 = tl.max(zm, axis=0)
    # Smallest maximal class, spelled out rather than relying on tl.argmax's tie rule.
    top = tl.min(tl.where(zm == m1[None, :], cls[:, None], C_PAD), axis=0)
    m2 = tl.max(tl.where(cls[:, None] == top[None, :], float("-inf"), zm), axis=0)
    d = tl.where(cmask[:, None], zm - m1[None, :], 0.0)  # padded classes: 0, not -inf, so e * d stays finite
    e = tl.where(cmask[:, None], tl.exp(d), 0.0)
    s = tl.sum(e, axis=0)
    inv_s = 1.0 / s
    # s = 1 + rest, where rest sums the classes other than the top one: margin and least
    # confidence are written with rest so that they never subtract two numbers close to 1 (the
    # GPU's approximate division makes 1 - 1/s nonzero for s = 1, e.g. for a single class).
    if MEASURE == 0:  # bvsb: p_sb / p_b; 0 for C == 1 (m2 = -inf)
        u = tl.exp(m2 - m1)
    elif MEASURE == 2:  # entropy: log s - sum_c e_c d_c / s
        u = tl.log(s) - tl.sum(e * d, axis=0) * inv_s
    else:  # rest only where it is used
        rest = tl.sum(tl.where(cls[:, None] == top[None, :], 0.0, e), axis=0)
        if MEASURE == 1:  # margin: 1 - (p_b - p_sb) = (rest + e_sb) / s
            u = (rest + tl.exp(m2 - m1)) * inv_s
        else:  # least confidence: 1 - p_b = rest / s
            u = rest * inv_s

    ids = tl.load(reg_ptr + b * N + offs, mask=pmask, other=-1)
    report_bad_ids(ids, pmask, R, status_ptr)
    valid = pmask & (ids >= 0) & (ids < R)

    # Per-program softmax sums go to their own row (summed on the host side afterwards): no
    # same-address atomics from every program, and prob_sum is run-to-run deterministic.
    w = tl.where(valid, inv_s, 0.0)
    row = b * tl.num_programs(0) + pid
    tl.store(prob_ptr + row * C + cls, tl.sum(e * w[None, :], axis=1), mask=cmask)

    # Pre-aggregate runs of equal (region, top-1 class) along the pixel axis (superpixels are
    # spatially coherent) with a segmented scan; only the last pixel of each run issues the
    # atomics, which removes most same-address atomic traffic.
    slot = tl.where(valid, (b * R + ids.to(tl.int64)) * C + top, -1)
    head, tail = run_layout(slot, BLOCK, LOG2_BLOCK)
    u_run = run_sum(tl.where(valid, u, 0.0), head, BLOCK, LOG2_BLOCK)
    n_run = run_sum(valid.to(tl.int32), head, BLOCK, LOG2_BLOCK)
    tl.atomic_add(u_ptr + slot, u_run, mask=valid & tail)
    tl.atomic_add(n_ptr + slot, n_run, mask=valid & tail)


def region_uncertainty_stats_triton(logits: torch.Tensor, regions: torch.Tensor, num_regions: int, inv_t: float,
                                    measure: str, status: torch.Tensor, acc: torch.dtype):
    """Launch on contiguous ``logits (B, C, H, W)`` and ``regions (B, H, W)``; returns
    ``(u_sum float32 (B, R, C), count int32 (B, R, C), prob_sum float32 (C,))``; sums are
    accumulated in ``acc`` (float32, or float64 for float64 logits)."""
    B, C, H, W = logits.shape
    N = H * W
    R = num_regions
    u = torch.zeros(B, R, C, dtype=acc, device=logits.device)
    n = torch.zeros(B, R, C, dtype=torch.int32, device=logits.device)
    prob = torch.zeros(C, dtype=acc, device=logits.device)
    if B * N > 0 and C > 0:
        c_pad = triton.next_power_of_2(C)
        block = pixels_per_program(c_pad, 16, 256)
        grid = (triton.cdiv(N, block), B)
        prob_rows = torch.empty(B * grid[0], C, dtype=acc, device=logits.device)
        _region_uncertainty_stats_kernel[grid](
            logits, regions, u, n, prob_rows, status, C, N, R, inv_t,
            MEASURE=MEASURE_CODES[measure], C_PAD=c_pad, BLOCK=block, LOG2_BLOCK=log2(block),
            ACC_FP64=acc == torch.float64,
            num_warps=WARPS,
        )
        prob = prob_rows.sum(dim=0)
    return u.to(torch.float32), n, prob.to(torch.float32)
