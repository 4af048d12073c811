"""Triton kernel of ``region_class_argmax``: per (image, region, labeled class) the pixel that
maximises ``log_softmax(z)_c``.

Determinism without a second pass: every candidate (pixel, class) becomes one int64 key

    key = (ordered(v) << 32) | (2**31 - 1 - flat_index)

where ``v`` is the float32 log-probability and ``ordered`` maps float bits to an int32 with
the same order (negative floats get their magnitude bits flipped). ``atomic_max`` over keys
then picks the largest value and, among exact ties, the smallest flat index, whatever order
the atomics land in (flat indices must stay below 2**31). ``-0.0`` is canonicalised to ``+0.0`` so that the two compare equal.

float64 logits (gradcheck, tests) do not fit in 32 key bits; they run the same kernel twice:
``PASS == 1`` takes ``atomic_max`` over the order-preserving int64 image of the value,
``PASS == 2`` takes ``atomic_min`` of the index over the pixels that reach that maximum.
"""
from __future__ import annotations

import triton
import triton.language as tl


from ._blocks import block_sizes, load_labeled_tile, log1p_accurate, report_tile_status  # noqa: F401  (launchers read kern.block_sizes)
from ._segments import run_layout, run_max_rows

MAX_INDEX = 2**31 - 1


@triton.jit
def region_class_argmax_kernel(
    logits_ptr, regions_ptr, labels_ptr, active_ptr, keys_ptr, index_ptr, status_ptr,
    C, HW, R, inv_t,
    PASS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, LOG2_BLOCK_P: tl.constexpr,
    ACC: tl.constexpr, RUNS: tl.constexpr,
):
    pid_p = tl.program_id(0)
    b = tl.program_id(1)
    offs_p, offs_c, pmask, cmask, b64, rid, valid, bad, ridc = load_labeled_tile(
        logits_ptr, regions_ptr, labels_ptr, b, pid_p, C, HW, R, inv_t, BLOCK_C, BLOCK_P, ACC)
    act = tl.load(active_ptr + b64 * R + ridc, mask=valid, other=0) != 0
    active = valid & act
    m2 = cmask[:, None] & active[None, :]
    x = tl.load(logits_ptr + (b64 * C + offs_c[:, None]) * HW + offs_p[None, :], mask=m2, other=0.0)
    x = x.to(ACC) * inv_t
    y = tl.load(labels_ptr + (b64 * R + ridc[None, :]) * C + offs_c[:, None], mask=m2, other=0) != 0
    if PASS != 2:
        report_tile_status(status_ptr, bad, rid, m2, x)
    # log_softmax_c = (z_c - max) - log1p(sum over the other classes of exp(z - max)); log1p
    # keeps confident pixels apart where log(1 + tiny) would round every one of them to 0.
    xm = tl.where(m2, x, float("-inf"))
    mx = tl.max(xm, 0)
    mx = tl.where(active, mx, 0.0)
    first = tl.min(tl.where(xm == mx[None, :], offs_c[:, None], BLOCK_C), 0)
    others = m2 & (offs_c[:, None] != first[None, :])
    rest = tl.sum(tl.where(others, tl.exp(xm - mx[None, :]), 0.0), 0)
    v = ((x - mx[None, :]) - log1p_accurate(rest)[None, :]) + 0.0  # + 0.0 turns -0.0 into +0.0
    cand = m2 & y
    slot = (b64 * R + ridc[None, :]) * C + offs_c[:, None]
    idx = offs_p[None, :].to(tl.int64) + tl.zeros([BLOCK_C, BLOCK_P], tl.int64)
    if PASS == 0:
        bits = v.to(tl.float32).to(tl.int32, bitcast=True)
        ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
        key = (ordered.to(tl.int64) << 32) | (2147483647 - idx)
        if RUNS:
            # Pixels of one region come in runs along the row: reduce each run in registers and
            # let only its last pixel issue the atomic (Y(r) and `active` are the same along a run).
            key = tl.where(cand, key, -9223372036854775807 - 1)
            head, tail = run_layout(tl.where(active, rid, -1), BLOCK_P, LOG2_BLOCK_P)
            key = run_max_rows(key, head, BLOCK_P, LOG2_BLOCK_P)
            tl.atomic_max(keys_ptr + slot, key, mask=cand & tail[None, :])
        else:
            tl.atomic_max(keys_ptr + slot, key, mask=cand)
    else:
        bits = v.to(tl.float64).to(tl.int64, bitcast=True)
        ordered = bits ^ ((bits >> 63) & 0x7FFFFFFFFFFFFFFF)
        if PASS == 1:
            tl.atomic_max(keys_ptr + slot, ordered, mask=cand)
        else:
            best = tl.load(keys_ptr + slot, mask=cand, other=0)
            tl.atomic_min(index_ptr + slot, idx, mask=cand & (ordered == best))


@triton.jit
def keys_to_index_kernel(keys_ptr, N, BLOCK: tl.constexpr):
    """Decode the packed keys into flat pixel indices in place (-1 where no key was written):
    one read and one write of the (B, R, C) table instead of a chain of torch ops."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    key = tl.load(keys_ptr + offs, mask=mask, other=0)
    index = tl.where(key != -9223372036854775807 - 1, 2147483647 - (key & 0xFFFFFFFF), -1)
    tl.store(keys_ptr + offs, index, mask=mask)


@triton.jit
def prototype_ce_kernel(
    logits_ptr, index_ptr, weight_ptr, out_ptr, grad_ptr, gout_ptr,
    C, HW, R, inv_t,
    BACKWARD: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr,
):
    """The prototypical pixel loss after the argmax (docs/design.md §2.5), one program per
    (region, image). Slot ``i`` of the region is class ``i``; its pixel ``index[b, r, i]`` (-1:
    no pair) is loaded as a row of C logits, so the tile is (slots x classes).

    Forward: ``out[b, r, i] = w_i * (logsumexp(z(x_i)) - z_i(x_i))``, summed by torch.
    Backward: ``d/d logits[b, c, x] = g / tau * sum over slots j with x_j = x of w_j *
    (softmax(z(x))_c - [c == j])``. Slots that chose the same pixel are merged in registers and
    only the first of them stores the row, so the kernel needs no atomics and is deterministic.
    """
    r = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    offs = tl.arange(0, BLOCK_C)
    cmask = offs < C
    slot0 = (b * R + r) * C
    pix = tl.load(index_ptr + slot0 + offs, mask=cmask, other=-1)
    valid = pix >= 0
    pixc = tl.where(valid, pix, 0)
    m2 = valid[:, None] & cmask[None, :]
    x = tl.load(logits_ptr + (b * C + offs[None, :]) * HW + pixc[:, None], mask=m2, other=0.0)
    x = x.to(ACC) * inv_t
    xm = tl.where(m2, x, float("-inf"))
    mx = tl.where(valid, tl.max(xm, 1), 0.0)
    e = tl.where(m2, tl.exp(xm - mx[:, None]), 0.0)
    s = tl.where(valid, tl.sum(e, 1), 1.0)
    w = tl.load(weight_ptr + slot0 + offs, mask=valid, other=0.0)
    if BACKWARD:
        g = tl.load(gout_ptr).to(ACC) * inv_t
        # same[i, j]: slots i and j chose the same pixel; column j is also class j
        same = (pix[:, None] == pix[None, :]) & valid[:, None] & valid[None, :]
        wj = tl.where(same, w[None, :], 0.0)
        total = tl.sum(wj, 1)
        row = (e / s[:, None] * total[:, None] - wj) * g
        first = tl.min(tl.where(same, offs[None, :], BLOCK_C), 1)
        lead = valid & (first == offs)
        tl.store(grad_ptr + (b * C + offs[None, :]) * HW + pixc[:, None], row.to(grad_ptr.dtype.element_ty),
                 mask=lead[:, None] & cmask[None, :])
    else:
        z_own = tl.sum(tl.where(offs[:, None] == offs[None, :], x, 0.0), 1)
        # log(s) - (z_own - max), as torch's log_softmax: (mx + log s) - z_own would round a
        # confident pixel's tiny loss to the ulp of the logits
        nll = tl.log(s) - (z_own - mx)
        tl.store(out_ptr + slot0 + offs, tl.where(valid, nll * w, 0.0), mask=cmask)
