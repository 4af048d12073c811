"""Triton kernels of the stage-1 partial-label losses (L_CE, L_MP).

Each program handles ``BLOCK_P`` consecutive pixels of one image and all ``C`` classes as a
``(BLOCK_C, BLOCK_P)`` tile: along the pixel axis the loads are contiguous (coalesced), along
the class axis they stride by ``H * W``. Pixels whose region is unlabeled (or whose term has a
zero upstream gradient, in the backward) are masked out of the logits load, so their bytes are
never fetched.

Forward: per program, the weighted sum of ``l(x) = lse_c z - lse_{c in Y} z`` and the pixel
count of each term go to a ``(B, programs, 2)`` partial buffer that torch reduces, so the
result is deterministic (no float atomics). Region ids ``>= R`` and non-finite logits are
reported through the shared ``status`` buffer.

Backward: one launch writes the full gradient ``scale(r) * (softmax(z) - q)``; ``scale``
already combines both terms' upstream gradients, normalisers and ``1 / tau``.

Gradient in the forward (the default design, ``_tuning.DESIGNS`` ``grad_in_forward``; docs/design.md,
"Byte model"): the gradient has a closed form, so the forward writes it while the logits are in
registers (``WRITE_GRAD``), scaled by the normalisers, counted beforehand from the region ids
alone (``region_count_kernel``), and by a guess of the upstream gradients (those of the previous
call). The backward rewrites only the pixels of a term whose upstream gradient differs from the
guess (``ONLY_CHANGED``), and each program returns after loading four scalars when none does: in
training, where the loss weights are constant, the backward moves no logits-sized bytes.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._blocks import block_sizes, load_labeled_tile, report_tile_status  # noqa: F401  (launchers read kern.block_sizes)
from ._segments import run_layout, run_sum

COUNT_BLOCK = 256  # pixels per program of region_count_kernel (its run scan is log2 of this deep)


def recompute_block_sizes(num_classes: int, hw: int) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_P) of the recompute backward (``ONLY_CHANGED=False``: the ``recompute``
    design, and the default design under torch.compile): half the pixels of ``block_sizes``.
    It holds the tile's logits, probabilities and gradient at once; at C = 19 the 128-pixel tile
    spilled on sm_90 (255 registers, 76 B), 64 pixels take 154 registers and do not spill
    (benchmarks/results/kernel_metadata_sm90.md)."""
    block_c, block_p = block_sizes(num_classes, hw)
    return block_c, max(min(block_p, 16), block_p // 2)  # tests' forced tiny blocks stay tiny


@triton.jit
def _softmax_stats(x, y, m2):
    """Row maxima over all classes and over Y, and the two exp-sums (masked lanes give 0)."""
    ninf = float("-inf")
    xm = tl.where(m2, x, ninf)
    xy = tl.where(m2 & y, x, ninf)
    mx = tl.max(xm, 0)
    my = tl.max(xy, 0)
    mx_s = tl.where(mx == ninf, 0.0, mx)
    my_s = tl.where(my == ninf, 0.0, my)
    e = tl.where(m2, tl.exp(xm - mx_s[None, :]), 0.0)
    ey = tl.where(m2 & y, tl.exp(xy - my_s[None, :]), 0.0)
    s = tl.sum(e, 0)
    sy = tl.sum(ey, 0)
    return mx_s, my_s, e, ey, s, sy


@triton.jit
def partial_label_loss_fwd_kernel(
    logits_ptr, regions_ptr, labels_ptr, kind_ptr, weight_ptr, sums_ptr, counts_ptr, status_ptr,
    scale_ptr, grad_ptr,
    C, HW, R, inv_t,
    HAS_WEIGHT: tl.constexpr, WRITE_GRAD: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
    ACC: tl.constexpr,
):
    pid_p = tl.program_id(0)
    b = tl.program_id(1)
    nprog = tl.num_programs(0)
    offs_p, offs_c, pmask, cmask, b64, rid, valid, bad, ridc = load_labeled_tile(
        logits_ptr, regions_ptr, labels_ptr, b, pid_p, C, HW, R, inv_t, BLOCK_C, BLOCK_P, ACC)
    kind = tl.load(kind_ptr + b64 * R + ridc, mask=valid, other=0).to(tl.int32)
    active = valid & (kind > 0)
    m2 = cmask[:, None] & active[None, :]
    tile = offs_c[:, None] * HW + offs_p[None, :]  # int32: a tile's offsets within its image
    x = tl.load(logits_ptr + b64 * C * HW + tile, mask=m2, other=0.0)
    x = x.to(ACC) * inv_t
    y = tl.load(labels_ptr + b64 * R * C + (ridc.to(tl.int32)[None, :] * C + offs_c[:, None]), mask=m2, other=0) != 0
    report_tile_status(status_ptr, bad, rid, m2, x)
    mx, my, e, ey, s, sy = _softmax_stats(x, y, m2)
    s_safe = tl.where(active, s, 1.0)
    sy_safe = tl.where(active, sy, 1.0)
    loss = tl.where(active, (mx + tl.log(s_safe)) - (my + tl.log(sy_safe)), 0.0)
    if HAS_WEIGHT:
        w = tl.load(weight_ptr + b64 * R + ridc, mask=active, other=0.0)
        loss = loss * w
    is_ce = active & (kind == 1)
    is_mp = active & (kind == 2)
    out = (b64 * nprog + pid_p) * 2
    tl.store(sums_ptr + out, tl.sum(tl.where(is_ce, loss, 0.0), 0))
    tl.store(sums_ptr + out + 1, tl.sum(tl.where(is_mp, loss, 0.0), 0))
    tl.store(counts_ptr + out, tl.sum(is_ce.to(tl.int32), 0))
    tl.store(counts_ptr + out + 1, tl.sum(is_mp.to(tl.int32), 0))
    if WRITE_GRAD:
        # scale(r) = guessed upstream gradient / normaliser / tau (x 1/pixels(r) for "region"):
        # the backward's closed form, written from the tile already in registers.
        scale = tl.load(scale_ptr + b64 * R + ridc, mask=active, other=0.0)
        rs = tl.where(active, scale / s_safe, 0.0)
        rsy = tl.where(active, scale / sy_safe, 0.0)
        g = e * rs[None, :] - ey * rsy[None, :]
        tl.store(grad_ptr + b64 * C * HW + tile, g.to(grad_ptr.dtype.element_ty), mask=cmask[:, None] & pmask[None, :])


@triton.jit
def region_count_kernel(regions_ptr, counts_ptr, HW, R, BLOCK: tl.constexpr, LOG2_BLOCK: tl.constexpr):
    """Pixels per (image, region) into int32 ``counts`` (B, R), one atomic per run of equal ids:
    the normalisers of the gradient-in-forward design, from the region ids alone."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    pmask = offs < HW
    ids = tl.load(regions_ptr + b * HW + offs, mask=pmask, other=-1).to(tl.int64)
    valid = pmask & (ids >= 0) & (ids < R)
    head, tail = run_layout(tl.where(valid, ids, -1), BLOCK, LOG2_BLOCK)
    n_run = run_sum(valid.to(tl.int32), head, BLOCK, LOG2_BLOCK)
    tl.atomic_add(counts_ptr + b * R + tl.where(valid, ids, 0), n_run, mask=tail & valid)


@triton.jit
def _write_grad(logits_ptr, regions_ptr, labels_ptr, scale_ptr, grad_ptr, kind_ptr, used_ptr, actual_ptr,
                b, pid_p, C, HW, R, inv_t,
                ONLY_CHANGED: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    offs_p, offs_c, pmask, cmask, b64, rid, valid, bad, ridc = load_labeled_tile(
        logits_ptr, regions_ptr, labels_ptr, b, pid_p, C, HW, R, inv_t, BLOCK_C, BLOCK_P, ACC)
    scale = tl.load(scale_ptr + b64 * R + ridc, mask=valid, other=0.0)
    active = valid & (scale != 0.0)
    out_mask = cmask[:, None] & pmask[None, :]
    if ONLY_CHANGED:
        # only the pixels of a term whose upstream gradient differs from the forward's guess
        kind = tl.load(kind_ptr + b64 * R + ridc, mask=valid, other=0).to(tl.int32)
        g_k = tl.where(kind == 1, tl.load(actual_ptr), tl.load(actual_ptr + 1))
        u_k = tl.where(kind == 1, tl.load(used_ptr), tl.load(used_ptr + 1))
        redo = valid & (kind > 0) & (g_k != u_k)
        active = active & redo
        out_mask = cmask[:, None] & redo[None, :]
    m2 = cmask[:, None] & active[None, :]
    tile = offs_c[:, None] * HW + offs_p[None, :]  # int32: a tile's offsets within its image
    x = tl.load(logits_ptr + b64 * C * HW + tile, mask=m2, other=0.0).to(ACC) * inv_t
    y = tl.load(labels_ptr + b64 * R * C + (ridc.to(tl.int32)[None, :] * C + offs_c[:, None]), mask=m2, other=0) != 0
    mx, my, e, ey, s, sy = _softmax_stats(x, y, m2)
    rs = tl.where(active, scale / tl.where(active, s, 1.0), 0.0)
    rsy = tl.where(active, scale / tl.where(active, sy, 1.0), 0.0)
    g = e * rs[None, :] - ey * rsy[None, :]
    tl.store(grad_ptr + b64 * C * HW + tile, g.to(grad_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def partial_label_loss_bwd_kernel(
    logits_ptr, regions_ptr, labels_ptr, scale_ptr, grad_ptr, kind_ptr, used_ptr, actual_ptr,
    C, HW, R, inv_t,
    ONLY_CHANGED: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr,
):
    """Writes ``scale(r) * (softmax(z) - q)`` for every pixel, or with ``ONLY_CHANGED`` rewrites,
    in the buffer the forward filled for the guessed upstream gradients ``used`` (2,), only the
    pixels of a term whose actual gradient ``actual`` (2,) differs; then a program whose terms
    both match returns after loading four scalars. Compared, never divided: the GPU's division
    is approximate, and a recomputed pixel equals what the forward would have written."""
    pid_p = tl.program_id(0)
    b = tl.program_id(1)
    if ONLY_CHANGED:
        same = (tl.load(actual_ptr) == tl.load(used_ptr)) & (tl.load(actual_ptr + 1) == tl.load(used_ptr + 1))
        if not same:
            _write_grad(logits_ptr, regions_ptr, labels_ptr, scale_ptr, grad_ptr, kind_ptr, used_ptr, actual_ptr,
                        b, pid_p, C, HW, R, inv_t, True, BLOCK_C, BLOCK_P, ACC)
    else:
        _write_grad(logits_ptr, regions_ptr, labels_ptr, scale_ptr, grad_ptr, kind_ptr, used_ptr, actual_ptr,
                    b, pid_p, C, HW, R, inv_t, False, BLOCK_C, BLOCK_P, ACC)
