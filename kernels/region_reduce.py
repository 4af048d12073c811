"""Triton kernels of ``region_reduce``.

A program owns ``BLOCK`` pixels of one image: it loads their region ids once and loops over
the K value planes (each load a coalesced run along pixels), accumulating into the
region-major ``(B, R, K)`` buffers with atomics. Runs of consecutive pixels with the same id
are pre-reduced in registers with a segmented scan (``_segments.py``), so only a run's last
pixel issues an atomic (superpixels are spatially coherent: this removes most same-address
contention).

Max/min/argmax are deterministic (the smallest flat index wins ties) in one pass over the
values (design ``packed_key``, ``kernels/_tuning.py::DESIGNS``): every pixel's candidate is
one int64 key ``(ordered(v) << 32) | (2**31 - 1 - index)`` (min is the max of −v, exact;
``ordered`` maps float32 bits to an int32 of the same order, −0.0 canonicalised to +0.0), so
``atomic_max`` keeps the largest value and, among equal values, the smallest index, in any
order. float64 values (and the ``two_pass`` design) take two passes: ``atomic_max`` of the
value, then ``atomic_min`` of the index among the pixels equal to it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._blocks import pixel_block, report_bad_ids, to_acc
from ._segments import log2, run_layout, run_max, run_min, run_sum
from ._tuning import design

_BLOCK = 256  # the gather (backward) kernel's pixels per program
MAX_INDEX = 2**31 - 1  # flat pixel indices a packed key holds
INT64_MIN = -(2**63)


def _block() -> int:
    return design("region_reduce")["block"]


@triton.jit
def _region_runs(reg_ptr, b, offs, pmask, N, R, BLOCK: tl.constexpr, LOG2_BLOCK: tl.constexpr):
    """Region ids of the block, which lanes hold a valid id, and the run layout of the valid
    ids (a run's tail lane is the one that issues its atomic)."""
    ids = tl.load(reg_ptr + b * N + offs, mask=pmask, other=-1).to(tl.int64)
    valid = pmask & (ids >= 0) & (ids < R)
    head, tail = run_layout(tl.where(valid, ids, -1), BLOCK, LOG2_BLOCK)
    return ids, valid, head, tail & valid


@triton.jit
def _region_sum_kernel(x_ptr, reg_ptr, out_ptr, cnt_ptr, status_ptr, K, N, R,
                       WITH_VALUES: tl.constexpr, ACC_FP64: tl.constexpr, BLOCK: tl.constexpr,
                       LOG2_BLOCK: tl.constexpr):
    b, offs, pmask = pixel_block(N, BLOCK)
    ids, valid, head, tail = _region_runs(reg_ptr, b, offs, pmask, N, R, BLOCK, LOG2_BLOCK)
    report_bad_ids(ids, pmask, R, status_ptr)
    n_run = run_sum(valid.to(tl.int32), head, BLOCK, LOG2_BLOCK)
    tl.atomic_add(cnt_ptr + b * R + ids, n_run, mask=tail)
    if WITH_VALUES:
        slot = (b * R + ids) * K
        for k in range(K):
            v = tl.load(x_ptr + (b * K + k) * N + offs, mask=valid, other=0.0)
            v = to_acc(v, ACC_FP64)
            v_run = run_sum(v, head, BLOCK, LOG2_BLOCK)
            tl.atomic_add(out_ptr + slot + k, v_run, mask=tail)


@triton.jit
def _region_max_kernel(x_ptr, reg_ptr, best_ptr, status_ptr, K, N, R, sign,
                       ACC_FP64: tl.constexpr, BLOCK: tl.constexpr, LOG2_BLOCK: tl.constexpr):
    b, offs, pmask = pixel_block(N, BLOCK)
    ids, valid, head, tail = _region_runs(reg_ptr, b, offs, pmask, N, R, BLOCK, LOG2_BLOCK)
    report_bad_ids(ids, pmask, R, status_ptr)
    slot = (b * R + ids) * K
    for k in range(K):
        v = tl.load(x_ptr + (b * K + k) * N + offs, mask=valid, other=0.0)
        v = to_acc(v, ACC_FP64) * sign
        v_run = run_max(v, head, BLOCK, LOG2_BLOCK)
        tl.atomic_max(best_ptr + slot + k, v_run, mask=tail)


@triton.jit
def _region_extremum_key_kernel(x_ptr, reg_ptr, key_ptr, status_ptr, K, N, R, sign,
                                BLOCK: tl.constexpr, LOG2_BLOCK: tl.constexpr):
    b, offs, pmask = pixel_block(N, BLOCK)
    ids, valid, head, tail = _region_runs(reg_ptr, b, offs, pmask, N, R, BLOCK, LOG2_BLOCK)
    report_bad_ids(ids, pmask, R, status_ptr)
    slot = (b * R + ids) * K
    low = 2147483647 - offs
    for k in range(K):
        v = tl.load(x_ptr + (b * K + k) * N + offs, mask=valid, other=0.0)
        v = v.to(tl.float32) * sign + 0.0  # + 0.0 turns -0.0 into +0.0: equal values, equal keys
        bits = v.to(tl.int32, bitcast=True)
        ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
        key = tl.where(valid, (ordered.to(tl.int64) << 32) | low, -9223372036854775807 - 1)
        key = run_max(key, head, BLOCK, LOG2_BLOCK)
        tl.atomic_max(key_ptr + slot + k, key, mask=tail)


@triton.jit
def _region_argbest_kernel(x_ptr, reg_ptr, best_ptr, arg_ptr, K, N, R, sign,
                           ACC_FP64: tl.constexpr, BLOCK: tl.constexpr, LOG2_BLOCK: tl.constexpr):
    b, offs, pmask = pixel_block(N, BLOCK)
    ids, valid, head, tail = _region_runs(reg_ptr, b, offs, pmask, N, R, BLOCK, LOG2_BLOCK)
    slot = (b * R + ids) * K
    for k in range(K):
        v = tl.load(x_ptr + (b * K + k) * N + offs, mask=valid, other=0.0)
        v = to_acc(v, ACC_FP64) * sign
        best = tl.load(best_ptr + slot + k, mask=valid, other=0.0)
        cand = tl.where(valid & (v == best), offs, N)
        c_run = run_min(cand, head, BLOCK, LOG2_BLOCK)
        tl.atomic_min(arg_ptr + slot + k, c_run, mask=tail & (c_run < N))


@triton.jit
def _region_gather_kernel(g_ptr, reg_ptr, out_ptr, K, N, R, BLOCK: tl.constexpr):
    b, offs, pmask = pixel_block(N, BLOCK)
    ids = tl.load(reg_ptr + b * N + offs, mask=pmask, other=-1).to(tl.int64)
    valid = pmask & (ids >= 0) & (ids < R)
    slot = (b * R + ids) * K
    for k in range(K):
        g = tl.load(g_ptr + slot + k, mask=valid, other=0.0)
        tl.store(out_ptr + (b * K + k) * N + offs, g.to(out_ptr.dtype.element_ty), mask=pmask)


def region_sum_triton(values: torch.Tensor | None, regions: torch.Tensor, batch: int, K: int, N: int,
                      num_regions: int, status: torch.Tensor, acc_dtype: torch.dtype):
    """Sum ``(B, K, N)`` values per region (region-major ``(B, R, K)`` in ``acc_dtype``) and
    count pixels ``(B, R)`` int32; ``values=None`` counts only."""
    dev = regions.device
    out = torch.zeros(batch, num_regions, K, dtype=acc_dtype, device=dev)
    cnt = torch.zeros(batch, num_regions, dtype=torch.int32, device=dev)
    if batch * N > 0:
        block = _block()
        grid = (triton.cdiv(N, block), batch)
        _region_sum_kernel[grid](values if values is not None else out, regions, out, cnt, status, K, N, num_regions,
                                 WITH_VALUES=values is not None, ACC_FP64=acc_dtype == torch.float64, BLOCK=block,
                                 LOG2_BLOCK=log2(block))
    return out, cnt


def region_extremum_triton(values: torch.Tensor, regions: torch.Tensor, num_regions: int, largest: bool,
                           status: torch.Tensor, acc: torch.dtype):
    """Max (``largest``) or min of ``(B, K, N)`` values per region and the smallest flat index
    attaining it: ``(best (B, R, K) in ``acc``, 0 where empty; arg (B, R, K) int64, -1 where empty)``."""
    B, K, N = values.shape
    shape = (B, num_regions, K)
    sign = 1.0 if largest else -1.0
    fp64 = acc == torch.float64
    block = _block()
    grid = (triton.cdiv(N, block), B)
    if not fp64 and design("region_reduce")["extremum_passes"] == 1:
        if N > MAX_INDEX + 1:
            raise ValueError(f"region_reduce: images of {N} pixels exceed the {MAX_INDEX + 1} flat indices a packed "
                             "key holds")
        keys = torch.full(shape, INT64_MIN, dtype=torch.int64, device=values.device)
        if B * N > 0 and K > 0:
            _region_extremum_key_kernel[grid](values, regions, keys, status, K, N, num_regions, sign, BLOCK=block,
                                              LOG2_BLOCK=log2(block))
        empty = keys == INT64_MIN
        arg = torch.where(empty, -1, MAX_INDEX - (keys & 0xFFFFFFFF))
    else:
        best = torch.full(shape, float("-inf"), dtype=acc, device=values.device)
        arg = torch.full(shape, N, dtype=torch.int64, device=values.device)
        if B * N > 0 and K > 0:
            _region_max_kernel[grid](values, regions, best, status, K, N, num_regions, sign, ACC_FP64=fp64,
                                     BLOCK=block, LOG2_BLOCK=log2(block))
            _region_argbest_kernel[grid](values, regions, best, arg, K, N, num_regions, sign, ACC_FP64=fp64,
                                         BLOCK=block, LOG2_BLOCK=log2(block))
        empty = arg == N
        arg = arg.masked_fill(empty, -1)
    if N == 0:
        return torch.zeros(shape, dtype=acc, device=values.device), arg
    # The value at the chosen pixel (not ±best) so that a signed zero comes back as stored.
    best = values.gather(2, arg.clamp(min=0).transpose(1, 2)).transpose(1, 2).to(acc).masked_fill(empty, 0.0)
    return best, arg


def region_gather_triton(grad: torch.Tensor, regions: torch.Tensor, K: int, N: int, out_dtype: torch.dtype):
    """``out[b, k, p] = grad[b, id(p), k]`` (0 where id < 0) as ``(B, K, N)`` of ``out_dtype``."""
    B, R, _ = grad.shape
    out = torch.empty(B, K, N, dtype=out_dtype, device=grad.device)
    if B * N > 0 and K > 0:
        grid = (triton.cdiv(N, _BLOCK), B)
        _region_gather_kernel[grid](grad, regions, out, K, N, R, BLOCK=_BLOCK)
    return out
