"""Triton kernels of ``prototype_pseudo_labels`` (semantics: ``mulact.ops.prototype_pseudo_labels``).

Pipeline (the torch steps between launches are index bookkeeping on small tensors):

1. ``_scan_kernel`` - one pass over the region map: region-id check, labeled/unlabeled
   adjacency (four forward 8-neighbour shifts, stored as a dense ``(B, R, L)`` byte matrix with
   ``L`` = most labeled regions in one image) and ``atomic_max`` of
   ``log_softmax(logits / tau)_c`` per (region, labeled class). Only the logits of pixels of
   labeled regions are loaded (and checked for NaN/Inf).
   The maximum is taken over packed int64 keys (the value's ordered bits, then the inverted
   flat index), so that one ``atomic_max`` also picks the smallest index among equal maxima.
2. Images above ``PACKED_MAX_PIXELS`` only: the scan takes float maxima and ``_argmin_kernel``
   recomputes the log-probabilities of the same pixels and ``atomic_min``-s the flat index of
   those equal to the maximum: ties -> smallest index. Both designs' atomics are order
   independent, so the prototype choice is deterministic.
3. ``_channels_last_kernel`` - the low-resolution features (any layout and float dtype) as a
   float32 channels-last copy, checked for NaN/Inf in the same read (``status[0] = 2``).
   ``_proto_kernel`` - the normalised upsampled feature at each prototypical pixel.
4. ``_select_kernel`` - one byte per pixel: localized (its region is labeled) or a candidate for
   expansion (its unlabeled region has a labeled neighbour); ``_tile_key_kernel`` - each listed
   pixel's tile key (image, region and, for the cell design, its cell: the first bilinear tap,
   by the same ``_source_index`` the assignment uses), sorted stably by torch.
   ``_assign_kernel`` - one program per tile of one region, against that region's prototype
   list: its own prototypes for localization (thresholds ``-inf``), the prototypes of all its
   labeled neighbours for expansion (thresholds ``alpha``). Features are interpolated on the
   fly from the channels-last copy; the ``(B, D, H, W)`` upsampled tensor is never built. Each
   pixel is written by exactly one program, so no atomics are needed and the result is
   deterministic. Divisions and square roots use the IEEE-rounded forms (``div_rn``,
   ``sqrt_rn``) so that e.g. ``u / |u|`` is exactly +-1 for D=1, as on the CPU backends.
   Designs (``kernels/_tuning.py`` DESIGNS, docs/design.md §6 "Byte model"): ``cell_tiles``
   (default, ``CELLS``) makes a tile of up to 4 sub-tiles of one region, each of up to
   ``CELL_BLOCK_P`` pixels of one bilinear *cell* - the pixels with the same first tap
   ``(h0, w0)``, hence the same four taps, about stride^2 of them - and loads each cell's four
   tap vectors once per sub-tile and the region's prototype rows once per tile;
   ``cell_tiles_1`` has one cell per tile (fewer registers, more prototype loads);
   ``pixel_tiles`` (``CELLS`` off) loads four taps of D channels per pixel, 64 pixels per tile.
   All form each pixel's feature with the same ``_combine`` and sum channels in the same
   blocks, so their similarities, labels and thresholds are bit-equal
   (tests/test_prototype_pseudo_labels.py). Features at (about) the full resolution (fewer than
   ``CELL_MIN_PIXELS`` pixels per cell) keep the pixel tiles under every design
   (:func:`cell_tiles`).
5. Lower medians: ``torch.sort`` of the localization similarities by value and then stably by
   prototype, one gather per prototype (documented torch step between launches).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._blocks import log1p_accurate, report_bad_ids, report_nonfinite_count
from ._tuning import design

OP = "prototype_pseudo_labels"
IGNORE_INDEX = 255
EPS = 1e-12
BLOCK_N = 256  # most pixels per program of the scan kernels
SCAN_ELEMS = 2048  # (pixels x classes) per scan program: 64 pixels at C = 20 (256 spilled on sm_90)
BLOCK_P = 64  # pixels per tile of the assignment kernel
CELL_BLOCK_P = 16  # pixels per sub-tile of the cell design: a cell holds about stride^2 pixels (16 at stride 4)
# Fewest pixels per cell (on average, H * W / (h * w)) for which the cell design runs: a tile
# loads 4 taps of D floats and its K prototypes of D floats for the cell's pixels, the pixel
# design 4 taps per pixel and K prototypes per 64 pixels; at K = 8 (an expanded pixel's
# neighbours) the cell tiles move fewer bytes from about 3 pixels per cell on (stride 2: 4).
CELL_MIN_PIXELS = 4
# warps of the cell design's programs: 4 at 4 cells per tile (64 pixels), 2 at 1 cell (16 pixels);
# sm_90 registers in benchmarks/results/kernel_metadata_sm90.md (no spills)
CELL_WARPS = {4: 4, 1: 2}
# Most pixels per image for the packed argmax keys (the inverted index takes the low 32 bits);
# larger images take the two-pass argmax (tests lower it to cover that path)
PACKED_MAX_PIXELS = 2147483647
TILE_ELEMS = 4096  # BLOCK_P * BLOCK_K * BLOCK_D budget of the (pixels, prototypes, channels) product
TAP_ELEMS = 512  # BLOCK_P * BLOCK_D budget of each of the four bilinear taps (more spilled on sm_90)


def scan_block(block_c: int) -> int:
    """Pixels per program of the scan and argmin kernels for a class tile of ``block_c`` rows
    (benchmarks/results/kernel_metadata_sm90.md: no spills)."""
    return max(16, min(BLOCK_N, SCAN_ELEMS // block_c))


def cell_tiles(hw: int, fh: int, fw: int) -> bool:
    """Whether the assignment runs on cell tiles: the ``cell_tiles`` design is active and the
    features are coarse enough (``CELL_MIN_PIXELS``); otherwise the pixel tiles."""
    return bool(design(OP)["cell_tiles"]) and hw >= CELL_MIN_PIXELS * fh * fw


def assign_block_d(d: int, block_k: int) -> int:
    return max(2, min(triton.next_power_of_2(d), TILE_ELEMS // (BLOCK_P * block_k), TAP_ELEMS // BLOCK_P))


@triton.jit
def _source_index(o, in_size, scale):
    # PyTorch's area_pixel_compute_source_index (align_corners=False) + guard_index_and_lambda.
    src = scale * (o.to(tl.float32) + 0.5) - 0.5
    src = tl.maximum(src, 0.0)
    i0 = tl.minimum(src.to(tl.int64), in_size - 1)  # src >= 0: truncation is floor
    l1 = tl.minimum(tl.maximum(src - i0.to(tl.float32), 0.0), 1.0)
    i1 = tl.where(i0 < in_size - 1, i0 + 1, i0)
    return i0, i1, 1.0 - l1, l1


@triton.jit
def _log_softmax_rows(logits_ptr, b, p, rows, HW, C, tau, BLOCK_C: tl.constexpr):
    # log_softmax over the classes of the pixels `rows`, evaluated like region_class_argmax:
    # (z_c - max) - log1p(sum of the other classes' exp(z - max))
    cc = tl.arange(0, BLOCK_C)
    m2 = rows[:, None] & (cc < C)[None, :]
    v = tl.load(logits_ptr + (b * C)[:, None] * HW + cc[None, :].to(tl.int64) * HW + p[:, None], mask=m2,
                other=0.0).to(tl.float32)
    finite = tl.sum(tl.where(m2 & ((v != v) | (tl.abs(v) == float("inf"))), 1, 0), 1) == 0
    z = tl.math.div_rn(v, tau)
    zm = tl.where(m2, z, float("-inf"))
    mx = tl.where(rows, tl.max(zm, 1), 0.0)
    first = tl.min(tl.where(zm == mx[:, None], cc[None, :], BLOCK_C), 1)
    others = m2 & (cc[None, :] != first[:, None])
    rest = tl.sum(tl.where(others, tl.exp(z - mx[:, None]), 0.0), 1)
    lsm = (z - mx[:, None]) - log1p_accurate(rest)[:, None]
    return lsm, m2, finite, cc


@triton.jit
def _adjacent(reg_ptr, labeled_ptr, lidx_ptr, adj_ptr, offs, b, y, x, r, ok, lab, H, W, R, L,
              DY: tl.constexpr, DX: tl.constexpr):
    inb = ok & (y + DY < H) & (x + DX >= 0) & (x + DX < W)
    q = tl.load(reg_ptr + offs + DY * W + DX, mask=inb, other=-1).to(tl.int64)
    okq = inb & (q >= 0) & (q < R) & (q != r)
    q = tl.where(okq, q, 0)
    labq = tl.load(labeled_ptr + b * R + q, mask=okq, other=0) != 0
    edge = okq & (labq != lab)
    unl = tl.where(lab, q, r)
    lreg = tl.where(lab, r, q)
    li = tl.load(lidx_ptr + b * R + lreg, mask=edge, other=0)
    tl.store(adj_ptr + (b * R + unl) * L + li, edge.to(tl.uint8), mask=edge)


@triton.jit
def _scan_kernel(reg_ptr, labeled_ptr, lidx_ptr, labels_ptr, logits_ptr, best_ptr, adj_ptr, status_ptr,
                 N, H, W, R, C, L, tau, DO_ADJ: tl.constexpr, PACKED: tl.constexpr, BLOCK: tl.constexpr,
                 BLOCK_C: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    HW = H * W
    b = offs // HW
    p = offs % HW
    y = p // W
    x = p % W
    r = tl.load(reg_ptr + offs, mask=m, other=-1).to(tl.int64)
    report_bad_ids(r, m, R, status_ptr)
    ok = m & (r >= 0) & (r < R)
    r = tl.where(ok, r, 0)
    lab = tl.load(labeled_ptr + b * R + r, mask=ok, other=0) != 0
    if DO_ADJ:
        _adjacent(reg_ptr, labeled_ptr, lidx_ptr, adj_ptr, offs, b, y, x, r, ok, lab, H, W, R, L, 0, 1)
        _adjacent(reg_ptr, labeled_ptr, lidx_ptr, adj_ptr, offs, b, y, x, r, ok, lab, H, W, R, L, 1, 0)
        _adjacent(reg_ptr, labeled_ptr, lidx_ptr, adj_ptr, offs, b, y, x, r, ok, lab, H, W, R, L, 1, 1)
        _adjacent(reg_ptr, labeled_ptr, lidx_ptr, adj_ptr, offs, b, y, x, r, ok, lab, H, W, R, L, 1, -1)
    rows = ok & lab
    lsm, m2, finite, cc = _log_softmax_rows(logits_ptr, b, p, rows, HW, C, tau, BLOCK_C)
    report_nonfinite_count(tl.sum(tl.where(rows & ~finite, 1, 0), 0), status_ptr)
    slot = (b * R + r)[:, None] * C + cc[None, :]
    bits = tl.load(labels_ptr + slot, mask=m2, other=0) != 0
    if PACKED:
        # value and inverted pixel index in one int64 (as region_class_argmax): one atomic_max
        # finds the maximum and, among equal maxima, the smallest index (+ 0.0: -0.0 == 0.0)
        vb = (lsm + 0.0).to(tl.int32, bitcast=True)
        ordered = vb ^ ((vb >> 31) & 0x7FFFFFFF)
        key = (ordered.to(tl.int64) << 32) | (2147483647 - p[:, None])
        tl.atomic_max(best_ptr + slot, key, mask=m2 & bits & finite[:, None])
    else:
        tl.atomic_max(best_ptr + slot, lsm, mask=m2 & bits & finite[:, None])


@triton.jit
def _argmin_kernel(reg_ptr, labeled_ptr, labels_ptr, logits_ptr, best_ptr, idx_ptr, N, H, W, R, C, tau,
                   BLOCK: tl.constexpr, BLOCK_C: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    HW = H * W
    b = offs // HW
    p = offs % HW
    r = tl.load(reg_ptr + offs, mask=m, other=-1).to(tl.int64)
    ok = m & (r >= 0) & (r < R)
    r = tl.where(ok, r, 0)
    rows = ok & (tl.load(labeled_ptr + b * R + r, mask=ok, other=0) != 0)
    lsm, m2, finite, cc = _log_softmax_rows(logits_ptr, b, p, rows, HW, C, tau, BLOCK_C)
    slot = (b * R + r)[:, None] * C + cc[None, :]
    bits = tl.load(labels_ptr + slot, mask=m2, other=0) != 0
    best = tl.load(best_ptr + slot, mask=m2 & bits, other=float("inf"))
    hit = m2 & bits & (lsm == best)
    tl.atomic_min(idx_ptr + slot, tl.broadcast_to(p[:, None], slot.shape), mask=hit)


@triton.jit
def _tap_rows(gp, HW, W, fh, fw, D, scale_h, scale_w):
    # channels-last row offsets and weights of the four bilinear taps of global pixels `gp`
    b = gp // HW
    p = gp % HW
    h0, h1, lh0, lh1 = _source_index(p // W, fh, scale_h)
    w0, w1, lw0, lw1 = _source_index(p % W, fw, scale_w)
    base = b * fh
    r00 = ((base + h0) * fw + w0) * D
    r01 = ((base + h0) * fw + w1) * D
    r10 = ((base + h1) * fw + w0) * D
    r11 = ((base + h1) * fw + w1) * D
    return r00, r01, r10, r11, lh0, lh1, lw0, lw1


@triton.jit
def _combine(f00, f01, f10, f11, lh0, lh1, lw0, lw1):
    # the one bilinear formula of both assignment designs: equal taps give bit-equal features
    return (f00 * lw0[:, None] + f01 * lw1[:, None]) * lh0[:, None] + (f10 * lw0[:, None] + f11 * lw1[:, None]) * lh1[:, None]


@triton.jit
def _upsampled(feat_ptr, r00, r01, r10, r11, lh0, lh1, lw0, lw1, dd, msk):
    f00 = tl.load(feat_ptr + r00[:, None] + dd[None, :], mask=msk, other=0.0)
    f01 = tl.load(feat_ptr + r01[:, None] + dd[None, :], mask=msk, other=0.0)
    f10 = tl.load(feat_ptr + r10[:, None] + dd[None, :], mask=msk, other=0.0)
    f11 = tl.load(feat_ptr + r11[:, None] + dd[None, :], mask=msk, other=0.0)
    return _combine(f00, f01, f10, f11, lh0, lh1, lw0, lw1)


@triton.jit
def _cell_tap(feat_ptr, rows, cm, dd, dm, NSUB: tl.constexpr, SUB: tl.constexpr, BLOCK_D: tl.constexpr):
    # one tap of each sub-tile's cell, loaded once and repeated for the sub-tile's SUB pixels
    f = tl.load(feat_ptr + rows[:, None] + dd[None, :], mask=cm[:, None] & dm[None, :], other=0.0)
    return tl.reshape(tl.broadcast_to(f[:, None, :], (NSUB, SUB, BLOCK_D)), (NSUB * SUB, BLOCK_D))


@triton.jit
def _cell_taps(feat_ptr, r00, r01, r10, r11, cm, lh0, lh1, lw0, lw1, dd, dm,
               NSUB: tl.constexpr, SUB: tl.constexpr, BLOCK_D: tl.constexpr):
    # the four taps of each sub-tile's cell, loaded once per sub-tile, combined per pixel
    return _combine(_cell_tap(feat_ptr, r00, cm, dd, dm, NSUB, SUB, BLOCK_D),
                    _cell_tap(feat_ptr, r01, cm, dd, dm, NSUB, SUB, BLOCK_D),
                    _cell_tap(feat_ptr, r10, cm, dd, dm, NSUB, SUB, BLOCK_D),
                    _cell_tap(feat_ptr, r11, cm, dd, dm, NSUB, SUB, BLOCK_D), lh0, lh1, lw0, lw1)


@triton.jit
def _channels_last_kernel(feat_ptr, out_ptr, status_ptr, D, fw, FHW, sb, sd, sy, sx,
                          BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    # the float32 channels-last copy the assignment reads, and the NaN/Inf check of the
    # features (status[0] = 2, as the C++ kernel), in one read of the features in any layout
    b = tl.program_id(1).to(tl.int64)
    pos = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = pos < FHW
    src = b * sb + (pos // fw) * sy + (pos % fw) * sx
    bad = 0
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        m2 = (dd < D)[:, None] & pm[None, :]
        x = tl.load(feat_ptr + src[None, :] + dd[:, None].to(tl.int64) * sd, mask=m2, other=0.0)
        bad += tl.sum(tl.sum(tl.where(m2 & ((x != x) | (tl.abs(x) == float("inf"))), 1, 0), 1), 0)
        tl.store(out_ptr + (b * FHW + pos)[None, :] * D + dd[:, None], x.to(tl.float32), mask=m2)
    if bad > 0:
        tl.atomic_max(status_ptr, 2)


@triton.jit
def _proto_kernel(feat_ptr, pix_ptr, out_ptr, K, HW, W, fh, fw, D, scale_h, scale_w, eps,
                  BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    kk = tl.program_id(0).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    km = kk < K
    gp = tl.load(pix_ptr + kk, mask=km, other=0)
    r00, r01, r10, r11, lh0, lh1, lw0, lw1 = _tap_rows(gp, HW, W, fh, fw, D, scale_h, scale_w)
    ss = tl.zeros((BLOCK_K,), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        msk = km[:, None] & (dd < D)[None, :]
        u = _upsampled(feat_ptr, r00, r01, r10, r11, lh0, lh1, lw0, lw1, dd, msk)
        ss += tl.sum(u * u, 1)
    nrm = tl.maximum(tl.sqrt_rn(ss), eps)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        msk = km[:, None] & (dd < D)[None, :]
        u = _upsampled(feat_ptr, r00, r01, r10, r11, lh0, lh1, lw0, lw1, dd, msk)
        tl.store(out_ptr + kk[:, None] * D + dd[None, :], tl.math.div_rn(u, tl.broadcast_to(nrm[:, None], u.shape)), mask=msk)


@triton.jit
def _decide(acc, ss, pm, km, kid, thr_ptr, kcls_ptr, C, eps, best_s, best_c, best_k):
    # cosine similarities of a (pixels, prototypes) block from its dot products and squared
    # norms, candidates above their thresholds, and the running best (ties -> smaller class)
    nrm = tl.maximum(tl.sqrt_rn(ss), eps)
    s = tl.minimum(tl.maximum(tl.math.div_rn(acc, tl.broadcast_to(nrm[:, None], acc.shape)), -1.0), 1.0)
    thr = tl.load(thr_ptr + kid, mask=km, other=float("inf"))
    cls = tl.load(kcls_ptr + kid, mask=km, other=C)
    cand = pm[:, None] & km[None, :] & (s > thr[None, :])
    sm = tl.where(cand, s, float("-inf"))
    cmax = tl.max(sm, 1)
    top = cand & (sm == cmax[:, None])
    cmin = tl.min(tl.where(top, cls[None, :], C), 1)
    kb = tl.min(tl.where(top & (cls[None, :] == cmin[:, None]), kid[None, :], 1 << 62), 1)
    better = (cmin < C) & ((cmax > best_s) | ((cmax == best_s) & (cmin < best_c)))
    return tl.where(better, cmax, best_s), tl.where(better, cmin, best_c), tl.where(better, kb, best_k)


@triton.jit
def _assign_kernel(feat_ptr, protos_ptr, thr_ptr, kcls_ptr, plist_ptr, pix_ptr,
                   sub_pix0_ptr, sub_npix_ptr, tile_sub0_ptr, tile_nsub_ptr, tile_pl0_ptr, tile_npl_ptr,
                   out_ptr, rec_k_ptr, rec_s_ptr,
                   HW, W, fh, fw, D, C, scale_h, scale_w, eps,
                   RECORD: tl.constexpr, CELLS: tl.constexpr, NSUB: tl.constexpr, SUB: tl.constexpr,
                   BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    # A tile is up to NSUB sub-tiles of up to SUB listed pixels each, all of one group (one
    # region's prototype list, loaded once per tile). CELLS: each sub-tile lies in one cell
    # (the same four taps), whose taps are loaded once per sub-tile instead of once per pixel;
    # each pixel's feature is formed by the same _combine either way, so similarities and
    # decisions are bit-equal between the designs.
    t = tl.program_id(0)
    s0 = tl.load(tile_sub0_ptr + t)
    nsub = tl.load(tile_nsub_ptr + t)
    pl0 = tl.load(tile_pl0_ptr + t)
    npl = tl.load(tile_npl_ptr + t)
    jj = tl.arange(0, NSUB)
    cm = jj < nsub
    first = tl.load(sub_pix0_ptr + s0 + jj, mask=cm, other=0)  # each sub-tile's start in the pixel list
    count = tl.load(sub_npix_ptr + s0 + jj, mask=cm, other=0)
    ii = tl.arange(0, SUB)
    slot = tl.reshape(first[:, None] + ii[None, :], (NSUB * SUB,))
    pm = tl.reshape(ii[None, :] < count[:, None], (NSUB * SUB,))
    gp = tl.load(pix_ptr + slot, mask=pm, other=0)
    r00, r01, r10, r11, lh0, lh1, lw0, lw1 = _tap_rows(gp, HW, W, fh, fw, D, scale_h, scale_w)
    if CELLS:
        cp = tl.load(pix_ptr + first, mask=cm, other=0)
        c00, c01, c10, c11, _lh0, _lh1, _lw0, _lw1 = _tap_rows(cp, HW, W, fh, fw, D, scale_h, scale_w)
    best_s = tl.full((NSUB * SUB,), float("-inf"), tl.float32)
    best_c = tl.full((NSUB * SUB,), C, tl.int64)
    best_k = tl.full((NSUB * SUB,), -1, tl.int64)
    for k0 in range(0, npl, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        km = kk < npl
        kid = tl.load(plist_ptr + pl0 + kk, mask=km, other=0)
        acc = tl.zeros((NSUB * SUB, BLOCK_K), tl.float32)
        ss = tl.zeros((NSUB * SUB,), tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)
            dm = dd < D
            if CELLS:
                u = _cell_taps(feat_ptr, c00, c01, c10, c11, cm, lh0, lh1, lw0, lw1, dd, dm, NSUB, SUB, BLOCK_D)
            else:
                u = _upsampled(feat_ptr, r00, r01, r10, r11, lh0, lh1, lw0, lw1, dd, pm[:, None] & dm[None, :])
            ss += tl.sum(u * u, 1)
            pn = tl.load(protos_ptr + kid[:, None] * D + dd[None, :], mask=km[:, None] & dm[None, :], other=0.0)
            acc += tl.sum(u[:, None, :] * pn[None, :, :], 2)
        best_s, best_c, best_k = _decide(acc, ss, pm, km, kid, thr_ptr, kcls_ptr, C, eps, best_s, best_c, best_k)
    tl.store(out_ptr + gp, best_c, mask=pm & (best_c < C))
    if RECORD:
        tl.store(rec_k_ptr + slot, best_k, mask=pm)
        tl.store(rec_s_ptr + slot, best_s, mask=pm)


@triton.jit
def _select_kernel(reg_ptr, labeled_ptr, expandable_ptr, flag_ptr, N, HW, R, BLOCK: tl.constexpr):
    # 1: the pixel's region is labeled (localization); 2: it is unlabeled with a labeled
    # neighbour (expansion); 0: neither, or no region
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = o < N
    r = tl.load(reg_ptr + o, mask=m, other=-1).to(tl.int64)
    ok = m & (r >= 0)
    g = (o // HW) * R + tl.where(ok, r, 0)
    lab = tl.load(labeled_ptr + g, mask=ok, other=0) != 0
    grow = tl.load(expandable_ptr + g, mask=ok & ~lab, other=0) != 0
    tl.store(flag_ptr + o, tl.where(lab, 1, tl.where(grow, 2, 0)).to(tl.uint8), mask=m)


@triton.jit
def _tile_key_kernel(pix_ptr, reg_ptr, key_ptr, n, HW, W, R, fh, fw, scale_h, scale_w,
                     CELLS: tl.constexpr, BLOCK: tl.constexpr):
    # the tile key of each listed pixel in one pass: its group (image, region) and, for the
    # cell design, its cell - the first tap by the kernels' own _source_index, so the cell
    # tiles group exactly the pixels whose four taps _assign_kernel loads once per tile
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    gp = tl.load(pix_ptr + o, mask=m, other=0)
    key = (gp // HW) * R + tl.load(reg_ptr + gp, mask=m, other=0).to(tl.int64)
    if CELLS:
        p = gp % HW
        h0, _h1, _a, _b = _source_index(p // W, fh, scale_h)
        w0, _w1, _c, _d = _source_index(p % W, fw, scale_w)
        key = key * (fh * fw) + h0 * fw + w0
    tl.store(key_ptr + o, key, mask=m)


def _tiles(keys: torch.Tensor, block: int):
    """Tiles of <= ``block`` consecutive entries of a sorted key vector.

    Returns (key of each tile, first entry of each tile, entries in each tile)."""
    ug, counts = torch.unique_consecutive(keys, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    nt = (counts + block - 1) // block
    tg = torch.repeat_interleave(torch.arange(ug.numel(), device=keys.device), nt)
    within = torch.arange(tg.numel(), device=keys.device) - torch.repeat_interleave(torch.cumsum(nt, 0) - nt, nt)
    pix0 = starts[tg] + within * block
    npix = torch.clamp(counts[tg] - within * block, max=block)
    return ug[tg], pix0.contiguous(), npix.contiguous()


def _order(pix: torch.Tensor, reg: torch.Tensor, geom, cells: bool):
    """``pix`` (global flat ids of pixels with a region id >= 0 in ``reg``) sorted by tile key,
    and the sorted keys: ``group = image * R + region``, times the cells per image plus the
    pixel's cell for the cell design (``cells``); flat order within a key (a stable sort)."""
    hw, w, fh, fw, _d, _c, sh, sw, r_count = geom
    key = torch.empty_like(pix)
    if pix.numel():
        _tile_key_kernel[(triton.cdiv(pix.numel(), 1024),)](pix, reg, key, pix.numel(), hw, w, r_count, fh, fw, sh, sw,
                                                              CELLS=cells, BLOCK=1024)
    key, order = torch.sort(key, stable=True)
    return pix[order], key


def _assign(feat_cl, protos, thr, kcls, plist, pix, keys, group_start, group_cnt, out, geom, record, cells):
    """Launch the assignment kernel over ``pix`` (global flat pixel ids) sorted by their tile
    ``keys`` (from :func:`_order`); ``cells`` selects the cell design: sub-tiles of up to
    ``CELL_BLOCK_P`` pixels of one cell, up to the design's ``cells_per_tile`` of them (of one
    region) per tile; the pixel design runs one sub-tile of up to ``BLOCK_P`` pixels per tile."""
    hw, w, fh, fw, d, c, sh, sw, _r = geom
    if not cells:
        tg, sub_pix0, sub_npix = _tiles(keys, BLOCK_P)
        tile_sub0 = torch.arange(tg.numel(), device=pix.device)
        tile_nsub = torch.ones_like(tile_sub0)
        nsub, sub, warps = 1, BLOCK_P, 4
    else:
        nsub = design(OP)["cells_per_tile"]
        sub_key, sub_pix0, sub_npix = _tiles(keys, CELL_BLOCK_P)
        tg, tile_sub0, tile_nsub = _tiles(torch.div(sub_key, fh * fw, rounding_mode="floor"), nsub)
        sub, warps = CELL_BLOCK_P, CELL_WARPS[nsub]
    if tg.numel() == 0:
        return None, None
    pl0 = group_start[tg].contiguous()
    npl = group_cnt[tg].contiguous()
    max_npl = int(npl.max())
    block_k = min(16, max(2, triton.next_power_of_2(max_npl)))
    # the same channel block in both designs (tiles of BLOCK_P pixels): the same summation
    # order, bit-equal sums
    block_d = assign_block_d(d, block_k)
    rec_k = torch.empty(pix.numel(), dtype=torch.int64, device=pix.device) if record else out
    rec_s = torch.empty(pix.numel(), dtype=torch.float32, device=pix.device) if record else thr
    _assign_kernel[(tg.numel(),)](
        feat_cl, protos, thr, kcls, plist, pix, sub_pix0, sub_npix, tile_sub0, tile_nsub, pl0, npl, out, rec_k, rec_s,
        hw, w, fh, fw, d, c, sh, sw, EPS,
        RECORD=record, CELLS=cells, NSUB=nsub, SUB=sub, BLOCK_K=block_k, BLOCK_D=block_d, num_warps=warps)
    return (rec_k, rec_s) if record else (None, None)


def _scale(in_size: int, out_size: int) -> float:
    # float32 in / out, as PyTorch's area_pixel_compute_scale computes it for float inputs
    return float(torch.tensor(in_size, dtype=torch.float32) / torch.tensor(out_size, dtype=torch.float32))


def prototype_pseudo_labels_triton(features, logits, regions, region_labels, expand, temperature, status,
                                   check_status):
    """Triton forward; arguments already validated. Returns ``(labels, thresholds,
    num_localized, num_expanded, prototype_index)``. ``status`` is the two-int status buffer;
    ``check_status(status)`` is called once the scan has filled it, before anything indexes
    with the region ids (the caller raises there on a bad id or a NaN in the logits), and again
    once the features are copied (``status[0] == 2``: NaN/Inf in the features)."""
    dev = logits.device
    bsz, c, h, w = logits.shape
    r_count = region_labels.shape[1]
    _, d, fh, fw = features.shape
    hw = h * w
    n = bsz * hw
    reg = regions.contiguous()
    if reg.dtype in (torch.int8, torch.uint8, torch.int16):
        reg = reg.to(torch.int32)
    labels_b = region_labels.bool()
    labels_u8 = labels_b.contiguous().view(torch.uint8)
    labeled = labels_b.any(-1)
    labeled_u8 = labeled.to(torch.uint8).contiguous()
    lidx = (torch.cumsum(labeled.to(torch.int64), 1) - 1).clamp_min(0).contiguous()
    n_lab = labeled.sum(1)
    big_l = max(1, int(n_lab.max())) if bsz else 1
    adj = torch.zeros(bsz * r_count * big_l if expand else 1, dtype=torch.uint8, device=dev)
    lg = logits.contiguous()
    # images below 2^31 pixels: packed (value, index) keys, the argmax in the scan's one pass;
    # larger ones: the scan's maxima, then _argmin_kernel's smallest index among them
    packed = hw <= PACKED_MAX_PIXELS
    if packed:
        best = torch.full((bsz * r_count * c,), -(1 << 63), dtype=torch.int64, device=dev)
    else:
        best = torch.full((bsz * r_count * c,), float("-inf"), dtype=torch.float32, device=dev)
    block_c = max(2, triton.next_power_of_2(c))
    block_n = scan_block(block_c)
    grid = (triton.cdiv(n, block_n),)
    _scan_kernel[grid](reg, labeled_u8, lidx, labels_u8, lg, best, adj, status, n, h, w, r_count, c, big_l,
                       float(temperature), DO_ADJ=expand, PACKED=packed, BLOCK=block_n, BLOCK_C=block_c)
    check_status(status)
    # low-resolution features, float32 channels-last (the assignment's taps are rows of D
    # contiguous floats), checked for NaN/Inf once the ids and logits passed, as in C++
    feat_cl = torch.empty((bsz, fh, fw, d), dtype=torch.float32, device=dev)
    if feat_cl.numel():
        fb = 32
        _channels_last_kernel[(triton.cdiv(fh * fw, fb), bsz)](
            features, feat_cl, status, d, fw, fh * fw, *features.stride(),
            BLOCK_P=fb, BLOCK_D=max(2, min(64, triton.next_power_of_2(d))))
    check_status(status)
    if packed:
        idx = torch.where(best != -(1 << 63), 2147483647 - (best & 0xFFFFFFFF), hw)
    else:
        idx = torch.full((bsz * r_count * c,), hw, dtype=torch.int64, device=dev)
        _argmin_kernel[grid](reg, labeled_u8, labels_u8, lg, best, idx, n, h, w, r_count, c, float(temperature),
                             BLOCK=block_n, BLOCK_C=block_c)
    proto_index = torch.where(labels_b.reshape(-1) & (idx < hw), idx, -1).view(bsz, r_count, c)

    out = torch.full((n,), IGNORE_INDEX, dtype=torch.int64, device=dev)
    thresholds = torch.full((bsz, r_count, c), float("nan"), dtype=torch.float32, device=dev)
    num_loc = torch.zeros(bsz, dtype=torch.int64, device=dev)
    num_exp = torch.zeros(bsz, dtype=torch.int64, device=dev)
    kb, kr, kc = torch.nonzero(proto_index >= 0).unbind(1)  # prototypes sorted by (image, region, class)
    k_count = kb.numel()
    if k_count == 0:
        return out.view(bsz, h, w), thresholds, num_loc, num_exp, proto_index

    sh, sw = _scale(fh, h), _scale(fw, w)
    geom = (hw, w, fh, fw, d, c, sh, sw, r_count)
    cells = cell_tiles(hw, fh, fw)
    protos = torch.empty((k_count, d), dtype=torch.float32, device=dev)
    proto_pix = (kb * hw + proto_index[kb, kr, kc]).contiguous()
    pk = 16
    _proto_kernel[(triton.cdiv(k_count, pk),)](feat_cl, proto_pix, protos, k_count, hw, w, fh, fw, d, sh, sw, EPS,
                                               BLOCK_K=pk, BLOCK_D=max(2, min(256, triton.next_power_of_2(d))))
    kcls = kc.contiguous()
    gkey = kb * r_count + kr
    own_cnt = torch.bincount(gkey, minlength=bsz * r_count)
    own_start = torch.cumsum(own_cnt, 0) - own_cnt
    identity = torch.arange(k_count, device=dev)

    if expand:
        # the prototype list of each unlabeled region: those of its labeled neighbours
        pb, pu, pl = torch.nonzero(adj.view(bsz, r_count, big_l)).unbind(1)  # sorted by (image, unlabeled)
        lab_region = torch.full((bsz, big_l), -1, dtype=torch.int64, device=dev)
        lb, lr = torch.nonzero(labeled).unbind(1)
        lab_region[lb, lidx[lb, lr]] = lr
        nb = pb * r_count + lab_region[pb, pl]
        cnt = own_cnt[nb]
        rep = torch.repeat_interleave(torch.arange(nb.numel(), device=dev), cnt)
        within = torch.arange(rep.numel(), device=dev) - torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
        plist = (own_start[nb][rep] + within).contiguous()
        group_cnt = torch.zeros(bsz * r_count, dtype=torch.int64, device=dev).index_add_(0, pb * r_count + pu, cnt)
        group_start = torch.cumsum(group_cnt, 0) - group_cnt
        expandable = (group_cnt > 0).to(torch.uint8)
    else:
        expandable = torch.zeros(bsz * r_count, dtype=torch.uint8, device=dev)
    # which pixels are localized (1) and which are candidates for expansion (2), in one pass
    flag = torch.empty(n, dtype=torch.uint8, device=dev)
    _select_kernel[(triton.cdiv(n, 1024),)](reg, labeled_u8, expandable, flag, n, hw, r_count, BLOCK=1024)

    # localization: thresholds -inf, so every own prototype is a candidate
    loc = torch.nonzero(flag == 1).squeeze(1)
    loc, loc_keys = _order(loc, reg, geom, cells)
    neg_inf = torch.full((k_count,), float("-inf"), dtype=torch.float32, device=dev)
    rec_k, rec_s = _assign(feat_cl, protos, neg_inf, kcls, identity, loc, loc_keys, own_start, own_cnt, out,
                           geom, record=True, cells=cells)
    num_loc = torch.bincount(torch.div(loc, hw, rounding_mode="floor"), minlength=bsz)

    # exact lower medians (sort by value, then stably by prototype)
    alpha = torch.ones(k_count, dtype=torch.float32, device=dev)
    if rec_k is not None:
        order = torch.argsort(rec_s, stable=True)
        order = order[torch.argsort(rec_k[order], stable=True)]
        vals = rec_s[order]
        cnt = torch.bincount(rec_k, minlength=k_count)
        start = torch.cumsum(cnt, 0) - cnt
        has = cnt > 0
        alpha[has] = vals[(start + (cnt - 1) // 2)[has]]
    thresholds[kb, kr, kc] = alpha

    if expand:
        exp = torch.nonzero(flag == 2).squeeze(1)
        exp, exp_keys = _order(exp, reg, geom, cells)
        _assign(feat_cl, protos, alpha, kcls, plist, exp, exp_keys, group_start, group_cnt, out, geom,
                record=False, cells=cells)
        got = exp[out[exp] != IGNORE_INDEX]
        num_exp = torch.bincount(torch.div(got, hw, rounding_mode="floor"), minlength=bsz)
    return out.view(bsz, h, w), thresholds, num_loc, num_exp, proto_index
