"""prototype_pseudo_labels: every backend vs the reference and vs a naive per-region loop."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from _util import backend_device
from mulact import ops
from mulact.ops import prototype_pseudo_labels, prototype_pseudo_labels_reference, pseudo_labels_without_prototypes

IGNORE = 255


# ------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------
def make_case(seed, B=2, H=13, W=17, C=4, R=10, D=5, stride=1, used=None, p_labeled=0.5, p_class=0.4,
              negative=True, feature_palette=0, logit_palette=0, smooth=False):
    """Voronoi regions with ids drawn from a subset of [0, R) (the rest are absent), a band of
    negative ids, random multi-hot labels (single-class, multi-class and absent regions labeled
    too) and features at 1/stride resolution. Palettes draw whole vectors from a few choices,
    so exact ties (equal similarities / equal log-probabilities) happen often."""
    g = torch.Generator().manual_seed(seed)
    used = R if used is None else used
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    regions = torch.empty(B, H, W, dtype=torch.int64)
    for b in range(B):
        sy = torch.randint(0, H, (used,), generator=g)
        sx = torch.randint(0, W, (used,), generator=g)
        near = ((yy[None] - sy[:, None, None]) ** 2 + (xx[None] - sx[:, None, None]) ** 2).argmin(0)
        ids = torch.randperm(R, generator=g)[:used]
        regions[b] = ids[near]
        if negative and H > 2 and W > 2:
            y0 = int(torch.randint(0, H - 1, (1,), generator=g))
            regions[b, y0, : W // 3] = -1
    labels = (torch.rand(B, R, C, generator=g) < p_class) & (torch.rand(B, R, 1, generator=g) < p_labeled)
    fh, fw = -(-H // stride), -(-W // stride)
    if feature_palette:
        pal = torch.randn(feature_palette, D, generator=g)
        features = pal[torch.randint(0, feature_palette, (B, fh, fw), generator=g)].permute(0, 3, 1, 2).contiguous()
    elif smooth:  # spatially correlated, like real features: similar neighbours, real expansion
        coarse = torch.randn(B, D, max(1, fh // 3), max(1, fw // 3), generator=g)
        features = F.interpolate(coarse, size=(fh, fw), mode="bilinear", align_corners=False)
        features = features + 0.2 * torch.randn(B, D, fh, fw, generator=g)
    else:
        features = torch.randn(B, D, fh, fw, generator=g)
    if logit_palette:
        pal = 2 * torch.randn(logit_palette, C, generator=g)
        logits = pal[torch.randint(0, logit_palette, (B, H, W), generator=g)].permute(0, 3, 1, 2).contiguous()
    else:
        logits = 2 * torch.randn(B, C, H, W, generator=g)
    return features, logits, regions, labels


def run(backend, features, logits, regions, labels, **kw):
    kw.setdefault("temperature", 1.0)
    dev = backend_device(backend)
    out, info = prototype_pseudo_labels(features.to(dev), logits.to(dev), regions.to(dev), labels.to(dev),
                                        backend=backend, return_info=True, **kw)
    assert ops.last_backend("prototype_pseudo_labels") == backend
    return out.cpu(), type(info)(*(t.cpu() for t in info))


def assert_same(ref, got, atol=1e-5):
    (o1, i1), (o2, i2) = ref, got
    assert o2.dtype == torch.int64 and i2.thresholds.dtype == torch.float32
    assert i2.num_localized.dtype == torch.int64 and i2.prototype_index.dtype == torch.int64
    torch.testing.assert_close(i2.prototype_index, i1.prototype_index, rtol=0, atol=0)
    assert torch.equal(torch.isnan(i2.thresholds), torch.isnan(i1.thresholds))
    torch.testing.assert_close(i2.thresholds, i1.thresholds, rtol=0, atol=atol, equal_nan=True)
    torch.testing.assert_close(o2, o1, rtol=0, atol=0)
    torch.testing.assert_close(i2.num_localized, i1.num_localized, rtol=0, atol=0)
    torch.testing.assert_close(i2.num_expanded, i1.num_expanded, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------
# independent naive formulation: a Python loop over regions, dilation by scipy, numpy median
# ------------------------------------------------------------------------------------------
def naive(features, logits, regions, labels, expand=True, temperature=1.0):
    B, C, H, W = logits.shape
    R = labels.shape[1]
    up = F.interpolate(features.float(), size=(H, W), mode="bilinear", align_corners=False).double().numpy()
    z = logits.double().numpy() / temperature
    regs = regions.numpy()
    labs = labels.bool().numpy()
    out = np.full((B, H, W), IGNORE, dtype=np.int64)
    thresholds = np.full((B, R, C), np.nan, dtype=np.float32)
    n_loc, n_exp = [0] * B, [0] * B

    def cos(fx, p):  # fx (D, N), p (D,) unit; float32 decisions, like the op
        n = np.maximum(np.linalg.norm(fx, axis=0), 1e-12)
        return np.clip((p @ fx) / n, -1, 1).astype(np.float32)

    for b in range(B):
        reg, f = regs[b], up[b]
        lsm = z[b] - z[b].max(0) - np.log(np.exp(z[b] - z[b].max(0)).sum(0))
        labeled = labs[b].any(1)
        best = {}  # pixel -> (similarity, class) over all expansions
        for r in range(R):
            mask = reg == r
            if not labeled[r] or not mask.any():
                continue
            ys = np.flatnonzero(labs[b, r])
            flat = np.flatnonzero(mask.reshape(-1))  # ascending: argmax ties -> smallest index
            protos = []
            for c in ys:
                x = flat[np.argmax(lsm[c].reshape(-1)[flat])]
                p = f.reshape(len(f), -1)[:, x]
                protos.append(p / max(np.linalg.norm(p), 1e-12))
            fx = f[:, mask]
            sims = np.stack([cos(fx, p) for p in protos])  # (|Y|, N)
            who = np.argmax(sims, 0)  # first maximum -> smaller class
            out[b][mask] = ys[who]
            n_loc[b] += int(mask.sum())
            alpha = []
            for j, c in enumerate(ys):
                mine = sims[j][who == j]
                alpha.append(np.sort(mine)[(len(mine) - 1) // 2] if len(mine) else np.float32(1.0))
                thresholds[b, r, c] = alpha[-1]
            if not expand:
                continue
            ring = ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool)) & ~mask
            for q in np.unique(reg[ring]):
                if q < 0 or labeled[q]:
                    continue
                qm = reg == q
                coords = np.argwhere(qm)
                qs = np.stack([cos(f[:, qm], p) for p in protos])
                for j, c in enumerate(ys):
                    for i in np.flatnonzero(qs[j] > alpha[j]):
                        key = tuple(coords[i])
                        cand = (float(qs[j, i]), -int(c))
                        if key not in best or cand > best[key]:
                            best[key] = cand
        for (y, x), (_, negc) in best.items():
            out[b, y, x] = -negc
            n_exp[b] += 1
    return torch.from_numpy(out), torch.from_numpy(thresholds), torch.tensor(n_loc), torch.tensor(n_exp)


# ------------------------------------------------------------------------------------------
# backends vs the reference
# ------------------------------------------------------------------------------------------
CASES = {
    "stride1": dict(seed=0),
    "stride2_odd": dict(seed=1, H=15, W=11, stride=2, D=8),
    "stride4_odd": dict(seed=2, H=19, W=23, stride=4, D=16, R=14, used=9),
    "d1_ties": dict(seed=3, D=1, stride=2),
    "duplicates": dict(seed=4, feature_palette=3, logit_palette=4, C=5),
    "dense_labels": dict(seed=5, B=1, H=16, W=16, C=12, R=9, p_labeled=0.6, p_class=0.6, D=6, stride=2),
    "b3_large_d": dict(seed=6, B=3, H=9, W=14, D=40, stride=3, R=7),
    "all_labeled": dict(seed=7, p_labeled=1.0, p_class=0.7),
    "all_unlabeled": dict(seed=8, p_labeled=0.0),
    # regions much larger than their low-resolution footprint: the C++ expansion pre-filter
    # (linear low-resolution tables, exact re-evaluation near the thresholds) is active
    "big_regions_s4": dict(seed=14, B=2, H=32, W=40, R=6, D=12, stride=4, smooth=True),
    "big_regions_d1": dict(seed=15, B=1, H=30, W=36, R=5, D=1, stride=4, p_labeled=0.6),
    "big_regions_d2_s2": dict(seed=17, B=1, H=28, W=33, R=4, D=2, stride=2, p_labeled=0.5, smooth=True),
    "one_pixel": dict(seed=9, B=1, H=1, W=1, R=2, used=1, p_labeled=1.0, p_class=0.9),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(backend, case):
    args = make_case(**CASES[case])
    ref = prototype_pseudo_labels_reference(*args, temperature=1.0)
    assert_same(ref, run(backend, *args))


@pytest.mark.parametrize("backend_", ["cpp", "triton"])
def test_no_expand_and_temperature(backend_):
    args = make_case(seed=11, stride=2, D=6)
    for kw in (dict(expand=False, temperature=1.0), dict(temperature=0.1)):
        ref = prototype_pseudo_labels_reference(*args, **kw)
        got = run(backend_, *args, **kw)
        assert_same(ref, got)
    assert int(got[1].num_expanded.sum()) > 0  # the case does expand
    assert int(run(backend_, *args, expand=False)[1].num_expanded.sum()) == 0


def test_cases_hit_the_edge_cases():
    # guard the generator: the cases above really contain what they are meant to cover
    _, info = prototype_pseudo_labels_reference(*make_case(**CASES["duplicates"]), temperature=1.0)
    assert (info.thresholds == 1.0).any(), "a prototype that owns no pixel"
    f, lg, reg, lab = make_case(**CASES["stride4_odd"])
    present = torch.zeros(lab.shape[:2], dtype=torch.bool)
    for b in range(reg.shape[0]):
        present[b, reg[b][reg[b] >= 0].unique()] = True
    assert (lab.any(-1) & ~present).any(), "a labeled region absent from the image"
    assert (lab.sum(-1) == 1).any() and (lab.sum(-1) >= 2).any()
    assert (reg < 0).any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(backend, dtype):
    f, lg, reg, lab = make_case(seed=12, stride=2, D=6)
    f, lg = f.to(dtype), lg.to(dtype)
    ref = prototype_pseudo_labels_reference(f, lg, reg, lab, temperature=1.0)
    assert_same(ref, run(backend, f, lg, reg, lab))


@pytest.mark.parametrize("rdtype", [torch.int32, torch.int16])
def test_region_dtypes_and_uint8_labels(backend, rdtype):
    f, lg, reg, lab = make_case(seed=13, stride=2)
    ref = prototype_pseudo_labels_reference(f, lg, reg, lab, temperature=1.0)
    assert_same(ref, run(backend, f, lg, reg.to(rdtype), lab.to(torch.uint8)))


# ------------------------------------------------------------------------------------------
# Triton designs (kernels/_tuning.py DESIGNS): the cell design loads a cell's four taps once per
# tile and forms every pixel's feature by the same formula as the pixel design, so the two must
# agree bit for bit, near-ties included (palettes make many exact ties at every stride)
# ------------------------------------------------------------------------------------------
DESIGN_CASES = {
    **CASES,
    "palette_s2": dict(seed=60, feature_palette=3, logit_palette=3, stride=2, D=3, p_labeled=0.6),
    "palette_s3_d2": dict(seed=61, H=17, W=19, feature_palette=2, logit_palette=3, stride=3, D=2),
    # cells of up to 7 x 7 pixels: a cell spans several tiles of CELL_BLOCK_P pixels
    "big_cells_s6": dict(seed=62, B=1, H=31, W=29, R=5, D=7, stride=6, smooth=True, p_labeled=0.6),
    "prime_d_s4": dict(seed=63, B=2, H=23, W=13, R=7, D=13, stride=4, used=5),
    "one_row": dict(seed=64, B=1, H=1, W=37, R=4, D=5, stride=3, negative=False, p_labeled=0.5),
}


def _designs_agree(monkeypatch, args, **kw):
    import mulact.kernels._tuning as tuning
    from mulact.kernels import DESIGNS
    from mulact.kernels import prototype_pseudo_labels as kern

    monkeypatch.setattr(kern, "CELL_MIN_PIXELS", 0)  # cell tiles at every stride, stride 1 included
    got = {}
    for name in DESIGNS["prototype_pseudo_labels"]:
        monkeypatch.setitem(tuning.DESIGN, "prototype_pseudo_labels", name)
        got[name] = run("triton", *args, **kw)
    (o1, i1), *others = got.values()
    assert len(others) >= 2
    for o2, i2 in others:
        assert torch.equal(o1, o2)
        for a, b in zip(i1, i2):
            assert torch.equal(a.nan_to_num(-7.0), b.nan_to_num(-7.0))
    return o1, i1


# float32 (both Triton designs, and the C++ backend) and float64 (the reference) similarities order a near-tie of this
# case differently at 2 pixels (module docstring: "same labels up to float32 rounding of the
# similarities"): the designs must still agree bit for bit, the thresholds up to rounding
FLOAT32_NEAR_TIES = {"palette_s3_d2"}


@pytest.mark.parametrize("case", list(DESIGN_CASES))
def test_triton_designs_bit_equal(monkeypatch, case):
    args = make_case(**DESIGN_CASES[case])
    got = _designs_agree(monkeypatch, args)
    ref = prototype_pseudo_labels_reference(*args, temperature=1.0)
    if case in FLOAT32_NEAR_TIES:
        torch.testing.assert_close(got[1].thresholds, ref[1].thresholds, rtol=0, atol=1e-6, equal_nan=True)
        assert int((got[0] != ref[0]).sum()) <= 2
    else:
        assert_same(ref, got)


def test_cell_tiles_span_several_cells(monkeypatch):
    # the design cases must exercise tiles of several cells (their prototypes loaded once for
    # all) as well as partial tiles, or the bit-equality above would not cover them
    from mulact.kernels import prototype_pseudo_labels as kern

    from mulact.kernels import DESIGNS

    per_tile = DESIGNS["prototype_pseudo_labels"]["cell_tiles"]["cells_per_tile"]
    assert per_tile > 1
    seen = []
    tiles = kern._tiles

    def spy(keys, block):
        got = tiles(keys, block)
        if block == per_tile:
            seen.append(got[2])
        return got

    monkeypatch.setattr(kern, "_tiles", spy)
    _designs_agree(monkeypatch, make_case(**DESIGN_CASES["prime_d_s4"]))
    counts = torch.cat(seen).cpu()
    assert int(counts.max()) == per_tile and int(counts.min()) < per_tile


@pytest.mark.parametrize("case", ["palette_s2", "prime_d_s4", "one_row"])
def test_triton_two_pass_argmax_for_huge_images(monkeypatch, case):
    # images above PACKED_MAX_PIXELS take the scan's float maxima + _argmin_kernel instead of
    # the packed keys: the same prototypes (ties -> smallest index), so the same everything
    from mulact.kernels import prototype_pseudo_labels as kern

    args = make_case(**DESIGN_CASES[case])
    packed = run("triton", *args, temperature=1.0)
    monkeypatch.setattr(kern, "PACKED_MAX_PIXELS", 0)
    assert_same(packed, run("triton", *args, temperature=1.0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_designs_bit_equal_low_precision(monkeypatch, dtype):
    f, lg, reg, lab = make_case(seed=65, stride=4, D=9, H=21, W=18, smooth=True)
    args = (f.to(dtype), lg.to(dtype), reg, lab)
    for kw in (dict(temperature=1.0), dict(temperature=0.1, expand=False)):
        got = _designs_agree(monkeypatch, args, **kw)
        assert_same(prototype_pseudo_labels_reference(*args, **kw), got)


def test_cell_tiles_only_for_coarse_features(monkeypatch):
    import mulact.kernels._tuning as tuning
    from mulact.kernels.prototype_pseudo_labels import CELL_MIN_PIXELS, cell_tiles

    assert CELL_MIN_PIXELS == 4
    assert cell_tiles(1024 * 2048, 256, 512) and cell_tiles(16 * 16, 8, 8)  # stride 4, stride 2
    assert not cell_tiles(15 * 11, 8, 6) and not cell_tiles(13 * 17, 13, 17)  # odd stride 2, stride 1
    monkeypatch.setitem(tuning.DESIGN, "prototype_pseudo_labels", "pixel_tiles")
    assert not cell_tiles(1024 * 2048, 256, 512)


def test_cells_are_the_pixels_sharing_their_taps():
    # _tile_key_kernel must key every pixel by its region and PyTorch's first bilinear tap
    # (align_corners=False) of its row and column: the grouping of the cell design relies on it
    from mulact.kernels.prototype_pseudo_labels import _order, _scale

    dev = torch.device(backend_device("triton"))
    for (oh, ow), (fh, fw) in (((1024, 6), (256, 2)), ((769, 3), (193, 3)), ((7, 7), (7, 7)), ((1, 1), (1, 1)),
                               ((13, 31), (2, 6)), ((3, 13), (1, 2))):
        sh, sw = _scale(fh, oh), _scale(fw, ow)
        want = []
        for out, size, scale in ((oh, fh, sh), (ow, fw, sw)):
            src = torch.tensor(scale, dtype=torch.float32) * (torch.arange(out, dtype=torch.float32) + 0.5) - 0.5
            want.append(src.clamp_min(0).to(torch.int64).clamp_max(size - 1))
        # two images, regions 0 / 2 in stripes, R = 3; every pixel but each third one, in flat
        # order (as torch.nonzero lists them)
        reg = (torch.arange(oh)[:, None] % 2 * 2).expand(oh, ow).repeat(2, 1, 1).to(torch.int32)
        pix = torch.arange(2 * oh * ow)
        pix = pix[(pix % 3 != 1) | (pix == 1)]
        geom = (oh * ow, ow, fh, fw, 5, 4, sh, sw, 3)
        got_pix, keys = _order(pix.to(dev), reg.to(dev), geom, cells=True)
        got_pix, keys = got_pix.cpu(), keys.cpu()
        b, p = got_pix // (oh * ow), got_pix % (oh * ow)
        cell = want[0][p // ow] * fw + want[1][p % ow]
        assert torch.equal(keys, (b * 3 + reg.reshape(-1)[got_pix].long()) * (fh * fw) + cell), (oh, ow)
        assert torch.equal(torch.sort(keys).values, keys)
        same = keys[1:] == keys[:-1]
        assert bool((got_pix[1:][same] > got_pix[:-1][same]).all())  # flat order within a tile key
        _, gkeys = _order(pix.to(dev), reg.to(dev), geom, cells=False)
        assert torch.equal(gkeys.cpu(), torch.div(keys, fh * fw, rounding_mode="floor"))
        # the upsampled value of every pixel is a function of its cell and its own weights:
        # one-hot low-resolution maps touch exactly the pixels whose cell taps them
        for out, size, first in ((oh, fh, want[0]), (ow, fw, want[1])):
            for j in range(size):
                hot = torch.zeros(1, 1, size, 1)
                hot[0, 0, j, 0] = 1.0
                touched = F.interpolate(hot, size=(out, 1), mode="bilinear", align_corners=False)[0, 0, :, 0] != 0
                taps = (first == j) | (torch.clamp(first + 1, max=size - 1) == j)
                assert touched.any() and not (touched & ~taps).any(), (out, size, j)


# ------------------------------------------------------------------------------------------
# vs the naive loop
# ------------------------------------------------------------------------------------------
NAIVE_CASES = [
    dict(seed=20, B=1, H=7, W=9, R=5, C=3, D=3),
    dict(seed=21, B=2, H=9, W=8, R=6, C=4, D=4, stride=2),
    dict(seed=22, B=1, H=11, W=10, R=8, C=3, D=1, stride=3, used=6),
    dict(seed=23, B=1, H=8, W=8, R=6, C=4, D=2, feature_palette=3, logit_palette=3, p_labeled=0.6),
    dict(seed=24, B=1, H=10, W=12, R=9, C=5, D=5, stride=4, p_labeled=0.7, p_class=0.6),
]


@pytest.mark.parametrize("idx", range(len(NAIVE_CASES)))
def test_matches_naive_loop(backend, idx):
    args = make_case(**NAIVE_CASES[idx])
    out, thr, n_loc, n_exp = naive(*args)
    got, info = run(backend, *args)
    torch.testing.assert_close(got, out, rtol=0, atol=0)
    torch.testing.assert_close(info.thresholds, thr, rtol=0, atol=1e-5, equal_nan=True)
    assert torch.equal(info.num_localized, n_loc) and torch.equal(info.num_expanded, n_exp)


# ------------------------------------------------------------------------------------------
# hand-made semantics
# ------------------------------------------------------------------------------------------
def _hand_case():
    """1 x 8 pixels, D=2. Regions: 0 (labeled {0,1}) | 1 (unlabeled) | 2 (labeled {1}) | 3 (labeled {2})
    ids: [0 0 0 | 1 1 | 2 | -1 | 3]. Classes 0 and 1 of region 0 share their prototypical pixel,
    so class 1 owns no pixel (threshold 1.0) and never expands, even to an exact copy of it."""
    f = torch.tensor([[1.0, 1.0, 0.8, 1.0, 0.0, 0.0, 1.0, 0.0],
                      [0.0, 0.0, 0.6, 0.0, 1.0, 1.0, 0.0, 1.0]])[None, :, None, :]
    lg = torch.zeros(1, 3, 1, 8)
    lg[0, :2, 0, 0] = 4.0  # pixel 0 is x* of classes 0 and 1 in region 0
    reg = torch.tensor([[[0, 0, 0, 1, 1, 2, -1, 3]]])
    lab = torch.zeros(1, 4, 3, dtype=torch.bool)
    lab[0, 0, :2] = True
    lab[0, 2, 1] = True
    lab[0, 3, 2] = True
    return f, lg, reg, lab


def test_hand_made_case(backend):
    out, info = run(backend, *_hand_case())
    # region 0: all pixels -> class 0 (tie with the identical class-1 prototype -> smaller class)
    # alpha_{0,0} = lower median of {1, 1, 0.8} = 1 -> pixel 3 (cos 1) is not > 1; class 1 has alpha 1.0
    # pixel 4 of region 1 touches region 2 (labeled {1}, alpha 1.0, single pixel) -> no candidate
    # pixel 6 has a negative id, region 3 is labeled: localization only
    assert out.tolist() == [[[0, 0, 0, IGNORE, IGNORE, 1, IGNORE, 2]]]
    assert info.prototype_index[0].tolist() == [[0, 0, -1], [-1, -1, -1], [-1, 5, -1], [-1, -1, 7]]
    th = info.thresholds[0]
    assert th[0, 0] == 1.0 and th[0, 1] == 1.0 and th[2, 1] == 1.0 and th[3, 2] == 1.0
    assert torch.isnan(th[1]).all() and torch.isnan(th[0, 2])
    assert info.num_localized.tolist() == [5] and info.num_expanded.tolist() == [0]


def test_expansion_picks_best_neighbour(backend):
    # unlabeled region 1 in the middle touches labeled regions 0 (class 0) and 2 (class 2);
    # each pixel of region 1 goes to the more similar prototype above its threshold
    f = torch.tensor([[1.0, 0.9, 0.95, 0.1, 0.0, 0.1, 0.5],
                      [0.0, 0.1, 0.05, 0.95, 1.0, 0.9, 0.5]])[None, :, None, :]
    reg = torch.tensor([[[0, 0, 1, 1, 2, 2, 1]]])
    lab = torch.zeros(1, 3, 3, dtype=torch.bool)
    lab[0, 0, 0] = True
    lab[0, 2, 2] = True
    lg = torch.zeros(1, 3, 1, 7)
    lg[0, 0, 0, 0] = 3.0
    lg[0, 2, 0, 4] = 3.0
    out, info = run(backend, f, lg, reg, lab)
    # alpha_0 = lower median {1, cos(p0, (.9,.1))}; pixel 2 (.95,.05) is closer than pixel 1 -> class 0;
    # pixel 3 (.1,.95) is closer to p2 than pixel 5 -> class 2; pixel 6 (.5,.5) below both thresholds
    assert out.tolist() == [[[0, 0, 0, 2, 2, 2, IGNORE]]]
    assert info.num_expanded.tolist() == [2]
    # a labeled neighbour is never expanded into, even when it is very similar
    lab[0, 1, 1] = True
    out, info = run(backend, f, lg, reg, lab)
    assert info.num_expanded.tolist() == [0] and (out != IGNORE).all()


# ------------------------------------------------------------------------------------------
# baseline without prototypes
# ------------------------------------------------------------------------------------------
def test_without_prototypes_matches_loop():
    f, lg, reg, lab = make_case(seed=30, logit_palette=3)
    got = pseudo_labels_without_prototypes(lg, reg, lab, temperature=0.5)
    want = torch.full_like(reg, IGNORE)
    for b in range(reg.shape[0]):
        for y in range(reg.shape[1]):
            for x in range(reg.shape[2]):
                r = int(reg[b, y, x])
                if r < 0 or not lab[b, r].any():
                    continue
                ys = torch.nonzero(lab[b, r]).squeeze(1)
                want[b, y, x] = ys[int(torch.argmax(lg[b, ys, y, x]))]
    assert got.dtype == torch.int64
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="regions"):
        pseudo_labels_without_prototypes(lg, reg + 100, lab, temperature=1.0)
    bad = lg.clone()
    bad[reg[:, None].expand_as(bad) >= 0] = float("nan")
    with pytest.raises(ValueError, match="logits"):
        pseudo_labels_without_prototypes(bad, reg, lab, temperature=1.0)


# ------------------------------------------------------------------------------------------
# bad inputs
# ------------------------------------------------------------------------------------------
def test_bad_inputs_raise(backend):
    dev = backend_device(backend)
    f, lg, reg, lab = (t.to(dev) for t in make_case(seed=40, stride=2))

    def call(features=f, logits=lg, regions=reg, region_labels=lab, **kw):
        kw.setdefault("temperature", 1.0)
        return prototype_pseudo_labels(features, logits, regions, region_labels, backend=backend, **kw)

    with pytest.raises(ValueError, match="features"):
        call(features=torch.randn(2, 3, 30, 9, device=dev))  # h > H
    with pytest.raises(ValueError, match="features"):
        call(features=f[:1])
    with pytest.raises(TypeError, match="features"):
        call(features=f.to(torch.int64))
    one_nan = f.clone()
    one_nan[1, 2, 3, 1] = float("nan")  # a single value, in the second image
    with pytest.raises(ValueError, match="features"):
        call(features=one_nan)
    inf_last = f.clone()
    inf_last[-1, -1, -1, -1] = -float("inf")  # the last value of the last channel
    with pytest.raises(ValueError, match="features"):
        call(features=inf_last.to(memory_format=torch.channels_last))
    with pytest.raises(ValueError, match="features"):  # checked even when no region is labeled
        call(features=one_nan, region_labels=torch.zeros_like(lab))
    with pytest.raises(ValueError, match="logits"):
        call(logits=lg[:, :, :5])
    with pytest.raises(ValueError, match="region_labels"):
        call(region_labels=lab[:, :, :2])
    with pytest.raises(TypeError, match="region_labels"):
        call(region_labels=lab.float())
    with pytest.raises(TypeError, match="regions"):
        call(regions=reg.float())
    with pytest.raises(ValueError, match="regions"):
        call(regions=reg + lab.shape[1])  # ids >= R: detected inside the kernels
    with pytest.raises(ValueError, match="temperature"):
        call(temperature=0.0)
    with pytest.raises(TypeError, match="expand"):
        call(expand=1)
    nan = lg.clone()
    labeled_pix = lab.any(-1).gather(1, reg.clamp_min(0).flatten(1)).view_as(reg) & (reg >= 0)
    nan[:, 1][labeled_pix] = float("nan")
    with pytest.raises(ValueError, match="logits"):
        call(logits=nan)
    # NaN only where no labeled region is: never read, no error
    off = lg.clone()
    off[:, 1][~labeled_pix] = float("nan")
    assert torch.equal(call(logits=off).cpu(), call().cpu())


def test_feature_layouts(backend):
    # the features are read in any memory layout and dtype (the Triton path copies them to
    # float32 channels-last with its own kernel): the same labels as from contiguous float32
    dev = backend_device(backend)
    f, lg, reg, lab = (t.to(dev) for t in make_case(seed=41, stride=2, D=5))
    want = prototype_pseudo_labels(f, lg, reg, lab, temperature=1.0, backend=backend, return_info=True)
    wide = torch.randn(f.shape[0], f.shape[1] * 2, f.shape[2], f.shape[3] + 3, device=dev)
    wide[:, ::2, :, 1:-2] = f
    for layout in (f.to(memory_format=torch.channels_last), wide[:, ::2, :, 1:-2], f.double().to(memory_format=torch.channels_last)):
        assert_same(want, prototype_pseudo_labels(layout, lg, reg, lab, temperature=1.0, backend=backend,
                                                  return_info=True))


def test_confident_pixels_stay_apart(backend):
    # at tau = 0.1 the class-0 log-probabilities of these pixels are about -2e-9, -1e-11 and
    # -9e-14: log(sum exp) rounds all three to 0 in float32, log1p keeps the last one the best
    f = torch.randn(1, 3, 1, 4, generator=torch.Generator().manual_seed(0))
    lg = torch.zeros(1, 3, 1, 4)
    lg[0, 0, 0, :3] = torch.tensor([2.0, 2.5, 3.0])
    reg = torch.tensor([[[0, 0, 0, 1]]])
    lab = torch.zeros(1, 2, 3, dtype=torch.bool)
    lab[0, 0, 0] = True
    _, info = run(backend, f, lg, reg, lab, temperature=0.1)
    assert info.prototype_index[0, 0, 0] == 2


def test_prototype_argmax_skips_nothing_that_could_win(backend):
    # the cpp pass skips a pixel's exps when (z_c - max) cannot beat the running best; the pixels
    # here sit on both sides of that bound: pixel 0 has c=0 as its argmax but a low log-prob,
    # pixel 1 is the best, pixel 2 ties it exactly (the smaller index must stay), pixel 3's
    # bound loses; for class 2, pixel 4 is the best and pixel 5 passes the bound but loses
    f = torch.randn(1, 2, 1, 6, generator=torch.Generator().manual_seed(1))
    lg = torch.tensor([[1.0, 5.0, 5.0, 0.0, 0.0, 0.0],
                       [1.0, 0.0, 0.0, 9.0, 0.0, 3.0],
                       [0.0, 0.0, 0.0, 0.0, 2.0, 3.0]]).view(1, 3, 1, 6)
    reg = torch.zeros(1, 1, 6, dtype=torch.int64)
    lab = torch.tensor([[[True, False, True]]])
    _, info = run(backend, f, lg, reg, lab)
    assert info.prototype_index[0, 0].tolist() == [1, -1, 4]


def test_cpp_result_does_not_depend_on_thread_count(tmp_path):
    # the per-thread argmax partials, adjacency pairs and dynamic schedules must not leak into
    # the result: rerun in a single-threaded process and compare bit for bit
    import os
    import subprocess
    import sys

    args = make_case(seed=50, B=2, H=40, W=48, R=9, D=16, stride=4, smooth=True)
    here = prototype_pseudo_labels(*args, temperature=1.0, backend="cpp", return_info=True)
    torch.save(args, tmp_path / "case.pt")
    code = (
        "import sys, torch\n"
        "from mulact.ops import prototype_pseudo_labels\n"
        f"args = torch.load({str(tmp_path / 'case.pt')!r})\n"
        "out, info = prototype_pseudo_labels(*args, temperature=1.0, backend='cpp', return_info=True)\n"
        f"torch.save((out, tuple(info)), {str(tmp_path / 'out.pt')!r})\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    out, info = torch.load(tmp_path / "out.pt")
    assert torch.equal(out, here[0])
    for a, b in zip(info, here[1]):
        assert torch.equal(a.nan_to_num(-7.0), b.nan_to_num(-7.0))
