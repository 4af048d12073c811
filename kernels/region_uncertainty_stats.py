"""Triton kernel of ``region_uncertainty_stats``: one pass over the logits.

One program owns ``BLOCK`` pixels of one image and all ``C`` classes. Loads run along pixels
(the contiguous axis of ``(B, C, H, W)``), so each class row is a coalesced read; the softmax,
top-1/top-2 and the pixel uncertainty stay in registers.

The class rows are held as two tiles (design ``split``, ``kernels/_tuning.py::DESIGNS``): a
power-of-two block of ``C_HEAD`` rows and the remainder padded to ``C_TAIL`` rows, so C = 20
occupies 16 + 4 lanes per pixel instead of 32 (37 % of the lanes were padding) and the same
register budget holds twice the pixels per program (``split_wide``). The ``padded`` design is
the single tile of ``next_pow2(C)`` rows (``C_TAIL = 1``, fully masked).

Pre-aggregation inside the block: the tile's softmax sum is reduced in registers and stored as
one ``(C,)`` row per program (rows summed afterwards, so ``prob_sum`` is deterministic); ``u``
and the count are summed over runs of consecutive pixels sharing (region, top-1 class) with a
segmented scan (``_segments.py``), and only each run's last pixel issues the two atomics into
``(B, R, C)``. Region ids ``>= R`` and non-finite logits are reported through the shared status
buffer (``_blocks.py``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._blocks import pixel_block, report_bad_ids, report_nonfinite
from ._segments import log2, run_layout, run_sum
from ._tuning import WARPS, design, pixels_per_program

MEASURE_CODES = {"bvsb": 0, "margin": 1, "entropy": 2, "least_confidence": 3}


@triton.jit
def _load_rows(x_ptr, b, C, N, offs, pmask, inv_t, status_ptr, C0: tl.constexpr, ROWS: tl.constexpr,
               ACC_FP64: tl.constexpr):
    """Rows ``C0 .. C0 + ROWS`` (those below C) of the block, scaled by 1/τ, checked for NaN/Inf."""
    cls = C0 + tl.arange(0, ROWS)
    cmask = cls < C
    tile_mask = cmask[:, None] & pmask[None, :]
    x = tl.load(x_ptr + b * C * N + cls[:, None].to(tl.int64) * N + offs[None, :], mask=tile_mask, other=0.0)
    # Checked on the loaded x (docs/design.md §4: never an identity on the scaled z).
    report_nonfinite(x, tile_mask, status_ptr)
    if ACC_FP64:
        z = x.to(tl.float64) * inv_t
    else:
        z = x.to(tl.float32) * inv_t
    return tl.where(cmask[:, None], z, float("-inf")), cls, cmask


@triton.jit
def _region_uncertainty_stats_kernel(
    x_ptr, reg_ptr, u_ptr, n_ptr, prob_ptr, status_ptr,
    C, N, R, inv_t,
    MEASURE: tl.constexpr, C_HEAD: tl.constexpr, C_TAIL: tl.constexpr, BLOCK: tl.constexpr,
    LOG2_BLOCK: tl.constexpr, ACC_FP64: tl.constexpr,
):
    pid = tl.program_id(0)
    b, offs, pmask = pixel_block(N, BLOCK)
    zh, ch, mh = _load_rows(x_ptr, b, C, N, offs, pmask, inv_t, status_ptr, 0, C_HEAD, ACC_FP64)
    zt, ct, mt = _load_rows(x_ptr, b, C, N, offs, pmask, inv_t, status_ptr, C_HEAD, C_TAIL, ACC_FP64)

    m1 = tl.maximum(tl.max(zh, axis=0), tl.max(zt, axis=0))
    # Smallest maximal class, spelled out rather than relying on tl.argmax's tie rule.
    top = tl.minimum(tl.min(tl.where(zh == m1[None, :], ch[:, None], C), axis=0),
                     tl.min(tl.where(zt == m1[None, :], ct[:, None], C), axis=0))
    is_top_h = ch[:, None] == top[None, :]
    is_top_t = ct[:, None] == top[None, :]
    m2 = tl.maximum(tl.max(tl.where(is_top_h, float("-inf"), zh), axis=0),
                    tl.max(tl.where(is_top_t, float("-inf"), zt), axis=0))
    # padded classes: d = 0, not -inf, so e * d stays finite; e = 0 there
    dh = tl.where(mh[:, None], zh - m1[None, :], 0.0)
    dt = tl.where(mt[:, None], zt - m1[None, :], 0.0)
    eh = tl.where(mh[:, None], tl.exp(dh), 0.0)
    et = tl.where(mt[:, None], tl.exp(dt), 0.0)
    s = tl.sum(eh, axis=0) + tl.sum(et, axis=0)
    inv_s = 1.0 / s
    # s = 1 + rest, where rest sums the classes other than the top one: margin and least
    # confidence are written with rest so that they never subtract two numbers close to 1 (the
    # GPU's approximate division makes 1 - 1/s nonzero for s = 1, e.g. for a single class).
    if MEASURE == 0:  # bvsb: p_sb / p_b; 0 for C == 1 (m2 = -inf)
        u = tl.exp(m2 - m1)
    elif MEASURE == 2:  # entropy: log s - sum_c e_c d_c / s
        u = tl.log(s) - (tl.sum(eh * dh, axis=0) + tl.sum(et * dt, axis=0)) * inv_s
    else:  # rest only where it is used
        rest = tl.sum(tl.where(is_top_h, 0.0, eh), axis=0) + tl.sum(tl.where(is_top_t, 0.0, et), axis=0)
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
    row = (b * tl.num_programs(0) + pid) * C
    tl.store(prob_ptr + row + ch, tl.sum(eh * w[None, :], axis=1), mask=mh)
    tl.store(prob_ptr + row + ct, tl.sum(et * w[None, :], axis=1), mask=mt)

    # Pre-aggregate runs of equal (region, top-1 class) along the pixel axis (superpixels are
    # spatially coherent) with a segmented scan; only the last pixel of each run issues the
    # atomics, which removes most same-address atomic traffic.
    slot = tl.where(valid, (b * R + ids.to(tl.int64)) * C + top, -1)
    head, tail = run_layout(slot, BLOCK, LOG2_BLOCK)
    u_run = run_sum(tl.where(valid, u, 0.0), head, BLOCK, LOG2_BLOCK)
    n_run = run_sum(valid.to(tl.int32), head, BLOCK, LOG2_BLOCK)
    tl.atomic_add(u_ptr + slot, u_run, mask=valid & tail)
    tl.atomic_add(n_ptr + slot, n_run, mask=valid & tail)


def class_rows(num_classes: int, split: bool) -> tuple[int, int]:
    """``(C_HEAD, C_TAIL)``: the rows of the two class tiles (both powers of two)."""
    full = triton.next_power_of_2(num_classes)
    if not split or full == num_classes:
        return full, 1  # one tile; the one-row tail is fully masked
    head = full // 2
    return head, triton.next_power_of_2(num_classes - head)


def launch_blocks(num_classes: int) -> tuple[int, int, int]:
    """``(C_HEAD, C_TAIL, BLOCK)`` of the active design: the pixel block is what
    ``_tuning.TILE`` elements give at the lanes loaded, times the design's ``pixel_scale`` (which
    scales the warps too, so the registers per thread stay put)."""
    knobs = design("region_uncertainty_stats")
    head, tail = class_rows(num_classes, knobs["split_classes"])
    lanes = head if tail == 1 else triton.next_power_of_2(head + tail)  # the padded design's block at scale 1
    block = pixels_per_program(lanes, 16, 256) * knobs["pixel_scale"]
    return head, tail, block


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
        c_head, c_tail, block = launch_blocks(C)
        grid = (triton.cdiv(N, block), B)
        prob_rows = torch.empty(B * grid[0], C, dtype=acc, device=logits.device)
        _region_uncertainty_stats_kernel[grid](
            logits, regions, u, n, prob_rows, status, C, N, R, inv_t,
            MEASURE=MEASURE_CODES[measure], C_HEAD=c_head, C_TAIL=c_tail, BLOCK=block, LOG2_BLOCK=log2(block),
            ACC_FP64=acc == torch.float64,
            num_warps=min(16, WARPS * design("region_uncertainty_stats")["pixel_scale"]),
        )
        prob = prob_rows.sum(dim=0)
    return u.to(torch.float32), n, prob.to(torch.float32)
