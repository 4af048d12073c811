import numpy as np
import pytest
import torch
from skimage.morphology import dilation, footprint_rectangle
from skimage.segmentation import find_boundaries

from _util import backend_device
from mulact.ops import (
    dominant_labels,
    last_backend,
    region_labels_from_mask,
    region_labels_from_mask_naive,
    region_labels_from_mask_reference,
)

IGN = 255


def brute_force(gt, regions, R, C, ignore=IGN, trim=5):
    """Pixel-by-pixel formulation: skimage band, then per-region Python sets and counters."""
    B = regions.shape[0]
    mh = np.zeros((B, R, C + 1), bool)
    counts = np.zeros((B, R, C + 1), np.int64)
    dom = np.full((B, R), -1, np.int64)
    for b in range(B):
        reg = regions[b].numpy().astype(np.int64)
        g = gt[b].numpy().astype(np.int64)
        thick = find_boundaries(reg + 1, mode="thick")
        band = dilation(thick, footprint_rectangle((trim, trim))) if trim > 0 else np.zeros_like(thick)
        whole_sets = {}
        trim_sets = {}
        for y in range(reg.shape[0]):
            for x in range(reg.shape[1]):
                r = reg[y, x]
                if r < 0:
                    continue
                c = C if g[y, x] == ignore else g[y, x]
                counts[b, r, c] += 1
                whole_sets.setdefault(r, set()).add(c)
                if not band[y, x]:
                    trim_sets.setdefault(r, set()).add(c)
        for r, s in whole_sets.items():
            for c in trim_sets.get(r, s):
                mh[b, r, c] = True
            best = -1
            for c in range(C + 1):
                if counts[b, r, c] > (counts[b, r, best] if best >= 0 else 0):
                    best = c
            dom[b, r] = best
    return mh, dom, counts


def blocky(gen, B, H, W, R, block, neg=True):
    """Random block map with some 1-pixel regions and (optionally) padding ids."""
    hb, wb = -(-H // block), -(-W // block)
    coarse = torch.randint(0 if not neg else -1, R, (B, hb, wb), generator=gen)
    reg = coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :H, :W].clone()
    for _ in range(3):  # isolated single pixels of random regions
        b, y, x = (int(torch.randint(0, n, (1,), generator=gen)) for n in (B, H, W))
        reg[b, y, x] = int(torch.randint(0, R, (1,), generator=gen))
    return reg


def random_gt(gen, shape, C, void_frac=0.15):
    gt = torch.randint(0, C, shape, generator=gen)
    gt[torch.rand(shape, generator=gen) < void_frac] = IGN
    return gt


def check_all(out, ref, bf):
    mh, dom, counts = bf
    assert torch.equal(ref.multi_hot, torch.from_numpy(mh))
    assert torch.equal(ref.dominant, torch.from_numpy(dom))
    assert torch.equal(ref.class_counts, torch.from_numpy(counts))
    for name in ("multi_hot", "dominant", "class_counts", "cost"):
        a, b = getattr(out, name).cpu(), getattr(ref, name)
        assert a.dtype == b.dtype, name
        assert torch.equal(a, b), name
    assert torch.equal(out.cost.cpu(), torch.from_numpy(mh.sum(-1)))


@pytest.mark.parametrize("trim", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("case", [(2, 13, 17, 9, 4, 3), (1, 23, 29, 40, 5, 2), (1, 11, 7, 6, 3, 5)])
def test_matches_brute_force(backend, trim, case):
    B, H, W, R, C, block = case
    gen = torch.Generator().manual_seed(hash((trim, case)) % 2**31)
    regions = blocky(gen, B, H, W, R, block)
    gt = random_gt(gen, (B, H, W), C)
    # one region entirely void, one id absent
    regions[regions == R - 1] = R - 2
    gt[regions == 0] = IGN
    dev = backend_device(backend)
    out = region_labels_from_mask(gt.to(dev), regions.to(dev), R, C, trim=trim, backend=backend)
    assert last_backend("region_labels_from_mask") == backend
    ref = region_labels_from_mask_reference(gt, regions, R, C, trim=trim)
    check_all(out, ref, brute_force(gt, regions, R, C, trim=trim))
    assert not out.multi_hot[:, R - 1].any() and (out.dominant[:, R - 1] == -1).all()
    present0 = (regions == 0).flatten(1).any(1)
    assert torch.equal(out.multi_hot[present0.to(dev), 0].cpu(), torch.eye(C + 1, dtype=torch.bool)[C].expand(int(present0.sum()), -1))


def test_naive_matches_brute_force():
    gen = torch.Generator().manual_seed(3)
    regions = blocky(gen, 2, 19, 23, 15, 4)
    gt = random_gt(gen, (2, 19, 23), 6)
    for trim in (0, 2, 5):
        naive = region_labels_from_mask_naive(gt, regions, 15, 6, trim=trim)
        mh, dom, counts = brute_force(gt, regions, 15, 6, trim=trim)
        assert torch.equal(naive.multi_hot, torch.from_numpy(mh))
        assert torch.equal(naive.dominant, torch.from_numpy(dom))
        assert torch.equal(naive.class_counts, torch.from_numpy(counts))


def test_trim_excludes_boundary_classes(backend):
    """A class present only within 2 px of the region border disappears with trim=5."""
    dev = backend_device(backend)
    regions = torch.zeros(1, 20, 20, dtype=torch.int64)
    regions[:, :, 10:] = 1
    gt = torch.zeros(1, 20, 20, dtype=torch.int64)
    gt[:, :, 8:10] = 2  # hugs the boundary inside region 0 (columns 9 and 10 are boundary)
    gt[:, 5, 3] = 3     # interior pixel of region 0
    gt[:, :, 10:] = 1
    out = region_labels_from_mask(gt.to(dev), regions.to(dev), 2, 4, trim=5, backend=backend)
    assert out.multi_hot[0, 0].cpu().tolist() == [True, False, False, True, False]
    assert out.multi_hot[0, 1].cpu().tolist() == [False, True, False, False, False]
    out0 = region_labels_from_mask(gt.to(dev), regions.to(dev), 2, 4, trim=0, backend=backend)
    assert out0.multi_hot[0, 0].cpu().tolist() == [True, False, True, True, False]
    assert out0.cost[0].cpu().tolist() == [3, 1]


def test_region_inside_band_uses_whole_region(backend):
    dev = backend_device(backend)
    regions = torch.zeros(1, 9, 9, dtype=torch.int32)
    regions[0, 4, 4] = 1           # 1-pixel region
    regions[0, 0:2, 7:9] = 2       # 2x2 region in the corner
    gt = torch.zeros(1, 9, 9, dtype=torch.int64)
    gt[0, 4, 4] = 2
    gt[0, 0, 7] = 1
    gt[0, 1, 8] = IGN
    out = region_labels_from_mask(gt.to(dev), regions.to(dev), 3, 3, trim=5, backend=backend)
    assert out.multi_hot[0, 1].cpu().tolist() == [False, False, True, False]
    assert out.multi_hot[0, 2].cpu().tolist() == [True, True, False, True]
    assert out.cost[0, 2].item() == 3


def test_dominant_ties_and_undefined(backend):
    dev = backend_device(backend)
    regions = torch.tensor([[[0, 0, 0, 0, 1, 1, 1, 2, 2, 2]]])
    gt = torch.tensor([[[3, 3, 1, 1, IGN, IGN, 0, IGN, 2, 2]]])
    out = region_labels_from_mask(gt.to(dev), regions.to(dev), 4, 4, trim=0, backend=backend)
    assert out.dominant[0].cpu().tolist() == [1, 4, 2, -1]
    assert out.dominant_cost[0].cpu().tolist() == [1, 1, 1, 0]
    one_hot = dominant_labels(gt.to(dev), regions.to(dev), 4, 4, backend=backend).cpu()
    assert one_hot.sum(-1).tolist() == [[1, 1, 1, 0]]
    assert one_hot[0, 1, 4] and one_hot[0, 0, 1]


def test_odd_shapes(backend):
    dev = backend_device(backend)
    for shape in [(1, 1, 1), (1, 1, 9), (2, 7, 1), (0, 4, 4), (1, 0, 5), (2, 5, 0)]:
        regions = torch.zeros(shape, dtype=torch.int64)
        gt = torch.ones(shape, dtype=torch.uint8)
        out = region_labels_from_mask(gt.to(dev), regions.to(dev), 2, 2, trim=5, backend=backend)
        assert out.multi_hot.shape == (shape[0], 2, 3)
        if shape[0] and shape[1] * shape[2] == 0:
            assert not out.multi_hot.any() and (out.dominant.cpu() == -1).all() and not out.cost.any()
        elif shape[0]:
            assert out.multi_hot[:, 0].cpu().tolist() == [[False, True, False]] * shape[0]
            assert (out.class_counts[:, 0, 1].cpu() == shape[1] * shape[2]).all()
            assert (out.dominant[:, 1].cpu() == -1).all()


def test_bad_inputs(backend):
    dev = backend_device(backend)
    regions = torch.zeros(1, 4, 4, dtype=torch.int64, device=dev)
    gt = torch.zeros(1, 4, 4, dtype=torch.int64, device=dev)
    with pytest.raises(ValueError, match="regions"):
        bad = regions.clone()
        bad[0, 1, 1] = 7
        region_labels_from_mask(gt, bad, 3, 2, backend=backend)
    with pytest.raises(ValueError, match="gt.*value 5"):
        g = gt.clone()
        g[0, 2, 2] = 5
        region_labels_from_mask(g, regions, 3, 2, backend=backend)
    with pytest.raises(ValueError, match="gt.*value -3"):
        g = gt.clone()
        g[0, 0, 1] = -3
        region_labels_from_mask(g, regions, 3, 2, backend=backend)
    with pytest.raises(ValueError, match="gt"):
        region_labels_from_mask(gt[:, :3], regions, 3, 2, backend=backend)
    with pytest.raises(TypeError, match="gt"):
        region_labels_from_mask(gt.float(), regions, 3, 2, backend=backend)
    with pytest.raises(TypeError, match="regions"):
        region_labels_from_mask(gt, regions.float(), 3, 2, backend=backend)
    with pytest.raises(ValueError, match="trim"):
        region_labels_from_mask(gt, regions, 3, 2, trim=-1, backend=backend)
    with pytest.raises(ValueError, match="ignore_index"):
        region_labels_from_mask(gt, regions, 3, 2, ignore_index=1, backend=backend)
    with pytest.raises(ValueError, match="num_classes"):
        region_labels_from_mask(gt, regions, 3, 0, backend=backend)


@pytest.mark.parametrize("trim", [4, 5])
def test_piecewise_constant_and_noisy_rows(backend, trim):
    """Long label runs next to rows of per-pixel noise, over several 32-row chunks."""
    gen = torch.Generator().manual_seed(11)
    B, H, W, R, C = 1, 70, 90, 50, 6
    regions = blocky(gen, B, H, W, R, 7)
    gt = torch.randint(0, C, (B, H // 10 + 1, W // 15 + 1), generator=gen)
    gt = gt.repeat_interleave(10, 1).repeat_interleave(15, 2)[:, :H, :W].clone()
    gt[:, 30:36] = random_gt(gen, (B, 6, W), C)
    gt[:, 50:52, 40:] = IGN
    dev = backend_device(backend)
    out = region_labels_from_mask(gt.to(dev), regions.to(dev), R, C, trim=trim, backend=backend)
    ref = region_labels_from_mask_reference(gt, regions, R, C, trim=trim)
    check_all(out, ref, brute_force(gt, regions, R, C, trim=trim))
