"""Byte model of the statistics, region reduction and stage-2 kernels (docs/design.md, "Byte model").

    python benchmarks/byte_model.py            # prints the markdown rows of docs/design.md

For each op and Cityscapes shape it gives the bytes the op must move (each input read once,
each output written once) and the bytes the Triton path moves, counted from the code of each
design: every load and store a kernel issues (re-reads included, whether or not a cache would
serve them), each atomic as a read plus a write of its slot, the buffers torch fills or reduces
between launches, and one read + one write per element-wise torch step on the way. Masked
lanes (the padded classes) issue no memory traffic and are not bytes; the lanes column says how
many of the loaded lanes hold a class. Atomics are counted on the benchmarks' synthetic inputs
(``_shapes.blocky_regions``, random logits: top-1 changes at almost every pixel, the worst case
for the run pre-aggregation), block by block as the kernels see them. Roofline time = bytes
over the datasheet bandwidth (H100 SXM 3.35 TB/s, H200 4.8 TB/s; a device copy reaches ~88 %).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _partial_label_inputs import partial_labels  # noqa: E402
from _shapes import blocky_regions  # noqa: E402

SHAPES = [(1, 20, 1024, 2048, 2048), (4, 20, 769, 769, 2048)]
BW = {"H100": 3.35e12, "H200": 4.8e12}
E = 4  # float32 logits / values (the dtype of benchmarks/gpu_check.py)
ID = 4  # int32 region ids
FEAT_D, FEAT_STRIDE = 256, 4  # stage 2: DeepLabV3+ decoder features, 256 channels at stride 4


def run_tails(keys: torch.Tensor, block: int) -> int:
    """Runs of equal, valid (>= 0) keys inside blocks of ``block`` pixels of each image: the
    atomics the run pre-aggregation issues."""
    B, N = keys.shape
    pad = (-N) % block
    k = torch.nn.functional.pad(keys, (0, pad), value=-1).view(B, -1, block)
    starts = torch.ones_like(k, dtype=torch.bool)
    starts[..., 1:] = k[..., 1:] != k[..., :-1]
    return int((starts & (k >= 0)).sum())


def inputs(shape):
    B, C, H, W, R = shape
    g = torch.Generator().manual_seed(0)
    ids = blocky_regions(B, H, W, R, seed=0, void_fraction=0.02).view(B, -1)
    top1 = torch.randint(0, C, (B, H * W), generator=g)  # argmax of i.i.d. logits: uniform
    return ids, top1


def stats_rows(shape, ids, top1):
    B, C, H, W, R = shape
    N = H * W
    must = B * C * N * E + B * N * ID + B * R * C * 8 + C * 4
    slot = torch.where(ids >= 0, ids * C + top1, -1)
    out = {}
    for name, block, lanes in (("before: padded, 128 px", 128, 32), ("after: split_wide, 256 px", 256, 20)):
        progs = B * -(-N // block)
        moved = (B * R * C * 8  # zero-filled u_sum and count
                 + B * C * N * E + B * N * ID  # one pass over logits and ids
                 + 2 * progs * C * 4  # per-program softmax rows: written, then summed by torch
                 + 2 * run_tails(slot, block) * 8  # u and count atomics per run of (region, top-1)
                 + B * R * C * 4)  # num_pixels = count.sum()
        out[name] = (must, moved, f"{C}/{lanes}")
    return out


def reduce_rows(shape, ids):
    B, K, H, W, R = shape
    N = H * W
    valid_px = int((ids >= 0).sum())
    out = {}
    must_mean = B * K * N * E + B * N * ID + B * R * K * E
    for name, block in (("mean, before: 256 px", 256), ("mean, after: 512 px", 512)):
        runs = run_tails(ids, block)
        moved = (B * R * K * 4 + B * R * 4  # zero-filled sums and counts
                 + B * K * N * E + B * N * ID  # values and ids once
                 + runs * 8 * (K + 1)  # one atomic per run per plane, one for the count
                 + B * R * 4 + B * R * 8  # counts to int64
                 + B * R * K * 4 + B * R * 8 + B * R * K * 4)  # sum / count
        out[name] = (must_mean, moved, "")
    must_max = B * K * N * E + B * N * ID + B * R * K * E
    epilogue = B * R * K * (8 + 1) + B * R * K * (8 + 8) + B * R * K * (8 + 4 + 4) + B * R * K * 8
    runs = run_tails(ids, 256)
    two_pass = (B * R * K * (4 + 8)  # best and arg filled
                + 2 * (B * K * N * E + B * N * ID)  # two passes over values and ids
                + valid_px * K * 4  # pass 2 re-reads the region's best at every pixel
                + 2 * runs * K * 8  # atomic_max, then atomic_min, per run and plane
                + epilogue)  # arg == N, masked_fill, gather of the value, masked_fill
    runs = run_tails(ids, 512)
    packed = (B * R * K * 8  # keys filled
              + B * K * N * E + B * N * ID  # one pass
              + runs * K * 16  # one int64 atomic_max per run and plane
              + epilogue)  # keys == MIN, index from the key, gather of the value, masked_fill
    out["max / argmax, before: two passes, 256 px"] = (must_max, two_pass, "")
    out["max / argmax, after: packed key, 512 px"] = (must_max, packed, "")
    return out


def prototype_rows(shape, ids):
    """Stage 2 at full resolution: prototypes, localization and expansion (the Triton path)."""
    B, C, H, W, R = shape
    N = H * W
    D, fh, fw = FEAT_D, -(-H // FEAT_STRIDE), -(-W // FEAT_STRIDE)
    labels = partial_labels(B, R, C, seed=0)
    labeled = labels.any(-1)
    lab_px = torch.zeros_like(ids, dtype=torch.bool)
    classes_px = torch.zeros(ids.shape, dtype=torch.int64)
    for b in range(B):
        ok = ids[b] >= 0
        lab_px[b, ok] = labeled[b, ids[b, ok]]
        classes_px[b, ok] = labels[b, ids[b, ok]].sum(-1)
    n_lab = int(lab_px.sum())
    n_cls = int(classes_px.sum())  # (pixel, labeled class) candidates
    n_exp = int(((ids >= 0) & ~lab_px).sum()) // 2  # about half the unlabeled pixels touch a labeled region
    feat = B * D * fh * fw * 4
    outputs = B * N * 8 + B * R * C * (4 + 8)
    must = B * N * ID + n_lab * C * E + feat + B * R * C + outputs
    scan = B * N * (ID + 1) + B * N * 4 * (ID + 1) + n_lab * C * (E + 1) + n_cls * 8
    argmin = B * N * (ID + 1) + n_lab * C * (E + 1) + n_cls * 4
    # full-resolution index bookkeeping between launches: before 2026-12-03 evening, torch steps
    # over every pixel (ids to int64, the (image, region) group of each pixel, inside / labeled
    # masks) and the two nonzero lists; now one _select_kernel pass (ids read, a byte per pixel
    # written) and, per list, flag == k and its nonzero; the sort by tile key in both
    old_bookkeeping = B * N * (4 + 8) + B * N * 8 * 5 + B * N * (8 + 1) + (n_lab + n_exp) * (8 + 8 * 4 * 2)
    bookkeeping = B * N * (ID + 1) + 2 * B * N * 3 + (n_lab + n_exp) * (8 + 8 * 4 * 2)
    k_exp = 8  # prototypes of an expanded pixel's labeled neighbours (assumed)
    cls_region = labels.sum(-1)  # own prototypes of a labeled region
    # Each assignment tile loads its 4 scalars and its prototype list (index, D floats, threshold,
    # class), each of its sub-tiles its start and count; each pixel its index and its label (+ the
    # recorded prototype and similarity when localized). The pixel design reads 4 taps of D floats
    # per pixel, the cell design per sub-tile (one cell).
    per_proto = 8 + D * 4 + 4 + 8
    pixel_io = (n_lab + n_exp) * 16 + n_lab * 12

    def tiles(block, cells, per_tile):
        """(localization sub-tiles, tiles and the prototypes they load, expansion sub-tiles and
        tiles) for sub-tiles of <= ``block`` pixels of one region (and one bilinear cell when
        ``cells``), ``per_tile`` sub-tiles of one region per tile."""
        loc = [0, 0, 0]
        unl = [0, 0]
        for b in range(B):
            ok = ids[b] >= 0
            key = ids[b].clone()
            if cells:
                key = key * (fh * fw) + cell
            for on, is_loc in ((ok & lab_px[b], True), (ok & ~lab_px[b], False)):
                k, cnt = torch.unique(key[on], return_counts=True)
                nsub = (cnt + block - 1) // block
                region = k // (fh * fw) if cells else k
                reg_u, inv = torch.unique(region, return_inverse=True)
                sub_per_region = torch.zeros(reg_u.numel(), dtype=torch.int64).index_add_(0, inv, nsub)
                nt = (sub_per_region + per_tile - 1) // per_tile
                if is_loc:
                    loc[0] += int(nsub.sum())
                    loc[1] += int(nt.sum())
                    loc[2] += int((nt * cls_region[b, reg_u]).sum())
                else:
                    unl[0] += int(nsub.sum())
                    unl[1] += int(nt.sum())
        # about half the unlabeled pixels touch a labeled region
        return loc[0], loc[1], loc[2], unl[0] // 2, unl[1] // 2

    def first_tap(out, size):  # PyTorch's first bilinear source index (align_corners=False)
        scale = torch.tensor(size, dtype=torch.float32) / torch.tensor(out, dtype=torch.float32)
        src = scale * (torch.arange(out, dtype=torch.float32) + 0.5) - 0.5
        return src.clamp_min(0).to(torch.int64).clamp_max(size - 1)

    cell = (first_tap(H, fh)[:, None] * fw + first_tap(W, fw)[None, :]).reshape(-1)
    rows = {}
    # (name, pixels per (sub-)tile, cell design, cells per tile, the code of 2026-12-03 evening:
    # tile keys from one kernel, NaN/Inf check fused into the features' copy, pixel selection in
    # one kernel, packed argmax keys)
    for name, block, cells, per_tile, current in (
            ("before: pixel tiles, 64 px (pixel_tiles)", 64, False, 1, False),
            ("cell tiles, 1 cell x 16 px per tile (superseded 2026-12-03)", 16, True, 1, False),
            ("cell tiles, 1 cell x 16 px per tile, current keys and copy (cell_tiles_1)", 16, True, 1, True),
            ("after: cell tiles, 4 cells x 16 px per tile (cell_tiles)", 16, True, 4, True)):
        loc_s, loc_t, loc_k, exp_s, exp_t = tiles(block, cells, per_tile)
        n_sub, n_tiles = loc_s + exp_s, loc_t + exp_t
        protos = (loc_k + exp_t * k_exp) * per_proto
        taps = n_sub * 4 * D * 4 if cells else (n_lab + n_exp) * 4 * D * 4
        # the tile key of each pixel (after: one _tile_key_kernel pass, pixel id and region id
        # read, key written; superseded: 10 element-wise torch steps) and the tiles' groups
        if not cells:
            keys = 0
        elif not current:
            keys = (n_lab + n_exp) * 10 * 16 + n_sub * 16
        else:
            keys = (n_lab + n_exp) * (8 + ID + 8) + n_sub * 16 * 2
        assign = n_tiles * 4 * 8 + n_sub * 2 * 8 + protos + taps + pixel_io + keys
        # the features' float32 channels-last copy (read + write); before the after design the
        # NaN/Inf check was a torch pass of its own (isfinite: read + a bool per value written,
        # all(): the bools read; not counted in this table before 2026-12-03), now it is fused
        # into the copy kernel (_channels_last_kernel)
        check = 0 if current else feat + feat // 4 * 2
        # current: one scan with packed (value, index) int64 keys (16-byte atomics) and their
        # decoding over (B, R, C) instead of float maxima (8-byte atomics) and the argmin pass
        argmax = (scan + n_cls * 8 + B * R * C * (8 + 8)) if current else (scan + argmin)
        moved = feat * 2 + check + argmax + (bookkeeping if current else old_bookkeeping) + assign + outputs
        rows[name] = (must, moved, "")
    # A design the model points at (not built): similarities and tap Gram entries at low resolution
    # (u.p = sum_i w_i f_i.p and |u|^2 = sum_ij w_i w_j f_i.f_j are linear in the taps), so a full-
    # resolution pixel reads 4 taps x (its prototypes + 4 Gram entries) floats instead of 4 x D.
    # Not bit-equal to the reference's float32 similarities (another summation order).
    lowres = feat + B * fh * fw * (k_exp + 4) * 4 * 2
    assign = (n_lab + n_exp) * 4 * (k_exp + 4) * 4 + pixel_io
    target = feat * 2 + scan + n_cls * 8 + B * R * C * 16 + bookkeeping + lowres + assign + outputs
    rows[f"not built: low-res similarities (~{k_exp} prototypes/px)"] = (must, target, "")
    return rows


def table() -> str:
    """Rows in the format of docs/design.md's "Byte model" table; the roofline time is that of
    the bytes the op must move (the floor no design beats)."""
    lines = ["| op | shape | must move (MB) | current kernels move (MB) | ratio | roofline time H100 / H200 |",
             "|---|---|---:|---:|---:|---:|"]
    for shape in SHAPES:
        B, C, H, W, R = shape
        label = f"{B}×{C}×{H}×{W}, R={R}"
        ids, top1 = inputs(shape)
        groups = [("region_uncertainty_stats", stats_rows(shape, ids, top1)),
                  ("region_reduce", reduce_rows(shape, ids)),
                  (f"prototype_pseudo_labels (D={FEAT_D}, stride {FEAT_STRIDE})", prototype_rows(shape, ids))]
        for op, rows in groups:
            for design, (must, moved, lanes) in rows.items():
                t = " / ".join(f"{must / bw * 1e6:.0f} µs" for bw in BW.values())
                lanes = f", {lanes} class lanes loaded" if lanes else ""
                lines.append(f"| {op}, {design}{lanes} | {label} | {must / 1e6:.1f} | {moved / 1e6:.1f} | "
                             f"{moved / must:.2f} | {t} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
