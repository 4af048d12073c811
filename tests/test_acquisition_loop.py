"""Pool scanning, scoring and selection over several rounds (README, "Active learning: `mulact-train`")."""
import numpy as np
import pytest
import torch

from mulact.al.acquisition import acquire, scan_pool, score_pool
from mulact.al.pool import RegionPool
from mulact.ops import region_uncertainty_stats_reference
from mulact.ops.acquisition import ACQUISITION_METHODS

C = 3  # classes; channel C is "undefined"
K = C + 1


class FakeImages(torch.utils.data.Dataset):
    def __init__(self, n=6, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        self.R = []
        for i in range(n):
            h, w = 6 + i % 3, 9 - i % 2
            R = 4 + i % 3
            regions = torch.randint(0, R, (h, w), generator=g)
            regions[0, 0] = -1  # a pixel outside any region
            self.items.append({"image": torch.randn(3, h, w, generator=g), "label": torch.zeros(h, w, dtype=torch.long),
                               "regions": regions, "index": i})
            self.R.append(R)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class CountingModel(torch.nn.Module):
    """1x1 conv to C+1 channels; records the images it was called on."""

    def __init__(self, undefined_bias=0.0):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, K, 1)
        with torch.no_grad():
            self.conv.bias[C] = undefined_bias
        self.seen = []

    def forward(self, x):
        self.seen.append(x.shape[0])
        return self.conv(x).clamp(-1, 1)


def _pool(ds):
    offsets = np.concatenate([[0], np.cumsum(ds.R)])
    valid = np.zeros(offsets[-1], bool)
    for i, it in enumerate(ds.items):
        ids = it["regions"][it["regions"] >= 0].unique().numpy()
        valid[offsets[i] + ids] = True
    return RegionPool(offsets, C, valid=valid)


def _costs(pool, seed=0):
    return np.random.default_rng(seed).integers(1, 4, int(pool.offsets[-1]))


def test_one_forward_per_pool_image_and_stats_match_reference():
    ds = FakeImages()
    pool = _pool(ds)
    full = np.flatnonzero(pool.valid & (pool.image_of(np.arange(len(pool.valid))) == 2))
    pool.add_round(full, np.ones(len(full), np.uint64), np.ones(len(full), np.int64))  # image 2 fully labeled
    model = CountingModel()
    images = pool.images_with_unlabeled()
    assert 2 not in images.tolist()
    stats = scan_pool(model, ds, pool, images, measure="bvsb", temperature=0.1, device="cpu", batch_size=2)
    assert stats.forwards == len(ds) - 1 and sum(model.seen) == len(ds) - 1
    prob = torch.zeros(K, dtype=torch.float64)
    for i in images:
        it = ds[i]
        with torch.no_grad():
            ref = region_uncertainty_stats_reference(model.conv(it["image"][None]).clamp(-1, 1), it["regions"][None],
                                                     ds.R[i], temperature=0.1, measure="bvsb")
        lo, hi = pool.offsets[i], pool.offsets[i + 1]
        torch.testing.assert_close(stats.u_sum[lo:hi], ref.u_sum[0], rtol=1e-4, atol=1e-5)
        assert torch.equal(stats.count[lo:hi], ref.count[0].to(stats.count.dtype))
        prob += ref.prob_sum.double()
    assert stats.count[pool.offsets[2]:pool.offsets[3]].sum() == 0  # not scanned
    torch.testing.assert_close(stats.prob_sum.double(), prob, rtol=1e-4, atol=1e-4)


def test_pixbal_one_pass_equals_two_pass_naive():
    ds = FakeImages(seed=1)
    pool = _pool(ds)
    model = CountingModel()
    nu, tau = 6.0, 0.1
    stats = scan_pool(model, ds, pool, np.arange(len(ds)), measure="bvsb", temperature=tau, device="cpu", batch_size=4)
    scores, banned = score_pool("pixbal", pool, stats, nu=nu, seed=0, round_index=2)
    # naive: pass 1 computes the prior, pass 2 weights every pixel by its top-1 class
    with torch.no_grad():
        probs = [torch.softmax(model.conv(it["image"][None]).clamp(-1, 1)[0].double() / tau, 0) for it in ds.items]
    masks = [it["regions"] >= 0 for it in ds.items]
    prior = sum(p[:, m].sum(1) for p, m in zip(probs, masks)) / sum(m.sum() for m in masks)
    for i, (p, it) in enumerate(zip(probs, ds.items)):
        top2 = p.topk(2, dim=0)
        u = top2.values[1] / top2.values[0]
        w = (1 + nu * prior[top2.indices[0]]) ** -2
        for r in range(ds.R[i]):
            m = it["regions"] == r
            if m.any() and not banned[pool.offsets[i] + r]:
                assert scores[pool.offsets[i] + r] == pytest.approx(float((u * w)[m].mean()), rel=1e-4)


@pytest.mark.parametrize("method", ACQUISITION_METHODS)  # every registry entry
def test_rounds_never_reselect_and_respect_budget(method):
    from mulact.ops.acquisition import measure_for

    ds = FakeImages(n=5, seed=2)
    pool = _pool(ds)
    costs = _costs(pool)
    budget = 7
    seen = set()
    for t in range(1, 30):
        stats = None
        if method != "random":
            stats = scan_pool(CountingModel(), ds, pool, pool.images_with_unlabeled(), measure=measure_for(method),
                              temperature=0.1, device="cpu", batch_size=3)
        scores, banned = score_pool(method, pool, stats, nu=6.0, seed=0, round_index=t)
        chosen = acquire(pool, scores, banned, costs, budget)
        if len(chosen) == 0:
            break
        assert not (set(chosen.tolist()) & seen)
        assert pool.valid[chosen].all() and not banned[chosen].any()
        spent = costs[chosen].sum()
        assert spent >= budget or pool.unlabeled_mask().sum() == len(chosen) or \
            (pool.unlabeled_mask() & ~banned).sum() == len(chosen)
        assert spent - costs[chosen[-1]] < budget
        ranked = scores[chosen]
        assert np.all(ranked[:-1] >= ranked[1:])
        seen |= set(chosen.tolist())
        pool.add_round(chosen, np.ones(len(chosen), np.uint64), costs[chosen])
    else:
        pytest.fail("pool never exhausted")
    assert seen == set(np.flatnonzero(pool.valid).tolist()) or method != "random"


def test_undefined_dominant_regions_are_banned():
    ds = FakeImages(n=4, seed=3)
    pool = _pool(ds)
    model = CountingModel(undefined_bias=5.0)  # undefined is everyone's top-1 class
    stats = scan_pool(model, ds, pool, np.arange(len(ds)), measure="bvsb", temperature=0.1, device="cpu")
    for method in ("bvsb", "pixbal", "classbal"):
        scores, banned = score_pool(method, pool, stats, nu=6.0, seed=0, round_index=2)
        assert banned[pool.valid].all()
        assert len(acquire(pool, scores, banned, np.ones(len(scores), np.int64), 10**6)) == 0


def test_random_scores_are_seeded():
    ds = FakeImages(n=3)
    pool = _pool(ds)
    a, _ = score_pool("random", pool, None, nu=6.0, seed=5, round_index=1)
    b, _ = score_pool("random", pool, None, nu=6.0, seed=5, round_index=1)
    c, _ = score_pool("random", pool, None, nu=6.0, seed=5, round_index=2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("method", ACQUISITION_METHODS)  # every registry entry
def test_exhausted_pool_selects_nothing_for_every_method(method):
    from mulact.ops.acquisition import measure_for

    ds = FakeImages(n=3, seed=4)
    pool = _pool(ds)
    everything = np.flatnonzero(pool.valid)
    pool.add_round(everything, np.ones(len(everything), np.uint64), np.ones(len(everything), np.int64))
    assert len(pool.images_with_unlabeled()) == 0
    stats = None
    if method != "random":
        stats = scan_pool(CountingModel(), ds, pool, pool.images_with_unlabeled(), measure=measure_for(method),
                          temperature=0.1, device="cpu")
        assert stats.num_pixels == 0
    scores, banned = score_pool(method, pool, stats, nu=6.0, seed=0, round_index=2)
    assert len(acquire(pool, scores, banned, np.ones(len(scores), np.int64), 10**6)) == 0
