import pytest
import torch

from _util import backend_device
from mulact.ops import adjacency_csr, last_backend, neighbor_lists, region_adjacency, region_adjacency_reference


def brute_force(regions):
    out = []
    for img in regions.tolist():
        h, w = len(img), len(img[0]) if img else 0
        pairs = set()
        for y in range(h):
            for x in range(w):
                a = img[y][x]
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        yy, xx = y + dy, x + dx
                        if 0 <= yy < h and 0 <= xx < w:
                            b = img[yy][xx]
                            if a >= 0 and b >= 0 and a != b:
                                pairs.add((min(a, b), max(a, b)))
        out.append(sorted(pairs))
    return out


@pytest.mark.parametrize("shape,R,block", [((2, 13, 17), 9, 3), ((1, 31, 23), 60, 2), ((3, 5, 7), 4, 1)])
def test_matches_brute_force(backend, shape, R, block):
    gen = torch.Generator().manual_seed(R)
    B, H, W = shape
    coarse = torch.randint(-1, R, (B, -(-H // block), -(-W // block)), generator=gen)
    regions = coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :H, :W].contiguous()
    dev = backend_device(backend)
    out = region_adjacency(regions.to(dev), R, backend=backend)
    assert last_backend("region_adjacency") == backend
    want = brute_force(regions)
    ref = region_adjacency_reference(regions, R)
    assert len(out) == B
    for o, r, w in zip(out, ref, want):
        assert o.dtype == torch.int64 and o.shape[1] == 2
        assert o.cpu().tolist() == [list(p) for p in w]
        assert torch.equal(o.cpu(), r)


def test_diagonal_only_and_odd_shapes(backend):
    dev = backend_device(backend)
    regions = torch.tensor([[[0, 1], [2, 3]]], dtype=torch.int32)  # 0-3 and 1-2 touch diagonally
    assert region_adjacency(regions.to(dev), 4, backend=backend)[0].cpu().tolist() == [
        [0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    regions = torch.tensor([[[0, -1, 1]]])  # padding separates them
    assert region_adjacency(regions.to(dev), 2, backend=backend)[0].shape == (0, 2)
    for shape in [(1, 1, 1), (1, 1, 6), (1, 6, 1)]:
        regions = torch.arange(shape[1] * shape[2]).view(shape)
        got = region_adjacency(regions.to(dev), shape[1] * shape[2], backend=backend)[0].cpu().tolist()
        assert got == [list(p) for p in brute_force(regions)[0]]
    assert region_adjacency(torch.zeros(0, 3, 3, dtype=torch.int64, device=dev), 1, backend=backend) == []
    for shape in [(1, 0, 5), (2, 5, 0)]:
        got = region_adjacency(torch.zeros(shape, dtype=torch.int64, device=dev), 1, backend=backend)
        assert [e.shape for e in got] == [(0, 2)] * shape[0]


def test_bad_ids(backend):
    dev = backend_device(backend)
    regions = torch.zeros(1, 3, 3, dtype=torch.int64, device=dev)
    regions[0, 2, 2] = 5
    with pytest.raises(ValueError, match="regions.*5"):
        region_adjacency(regions, 3, backend=backend)
    with pytest.raises(TypeError, match="regions"):
        region_adjacency(regions.float(), 3, backend=backend)
    with pytest.raises(ValueError, match="regions"):
        region_adjacency(regions[0], 3, backend=backend)


def test_csr_and_neighbor_lists():
    edges = torch.tensor([[0, 2], [1, 2], [2, 3]])
    indptr, indices = adjacency_csr(edges, 5)
    assert indptr.tolist() == [0, 1, 2, 5, 6, 6]
    assert indices.tolist() == [2, 2, 0, 1, 3, 2]
    assert neighbor_lists(edges, 5) == [[2], [2], [0, 1, 3], [2], []]
    with pytest.raises(ValueError, match="edges"):
        adjacency_csr(torch.zeros(3), 2)
