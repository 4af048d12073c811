import math

import pytest
import torch
from _util import backend_device

from mulact.ops import (
    ACQUISITION_METHODS,
    PoolStatistics,
    class_prior,
    classbal_scores,
    dominant_class,
    dominant_class_fraction,
    mean_uncertainty,
    measure_for,
    pixbal_scores,
    random_scores,
    region_scores,
    region_uncertainty_stats,
    selectable,
)
from mulact.ops.region_uncertainty_stats import pixel_uncertainty


def make_pool(num_batches=3, B=2, C=5, H=6, W=11, R=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    pool = []
    for _ in range(num_batches):
        logits = torch.randn(B, C, H, W, generator=g) * 2
        regions = torch.randint(-1, R - 1, (B, H, W), generator=g)  # region R-1 always empty
        pool.append((logits, regions))
    return pool


def naive_region_mean(pool, R, measure, weight=None):
    """Per-region mean of (optionally class-weighted) u, straight from the pixels."""
    out = []
    for logits, regions in pool:
        u, top1, _ = pixel_uncertainty(logits, 1.0, measure)
        if weight is not None:
            u = u * weight[top1]
        for b in range(logits.shape[0]):
            row = []
            for r in range(R):
                m = regions[b] == r
                row.append(float(u[b][m].mean()) if m.any() else 0.0)
            out.append(row)
    return torch.tensor(out)


def collect(pool, R, measure, backend):
    dev = backend_device(backend)
    stats = PoolStatistics()
    for logits, regions in pool:
        stats.update(region_uncertainty_stats(logits.to(dev), regions.to(dev), R, measure=measure, backend=backend, temperature=1.0))
    return stats


def test_pixbal_equals_two_pass_formulation(backend):
    """Eq. (3)-(4) done directly: pass 1 computes P(c) over all pool pixels, pass 2 weighs every
    pixel by w(c_b) = (1 + nu P(c_b))^-2 and averages per region."""
    R, nu = 8, 6.0
    pool = make_pool()
    total, pixels = 0.0, 0
    for logits, regions in pool:  # pass 1
        p = torch.softmax(logits.double(), dim=1)
        m = regions >= 0
        total = total + p.permute(0, 2, 3, 1)[m].sum(0)
        pixels += int(m.sum())
    prior = total / pixels
    weight = (1 + nu * prior) ** -2
    expected = naive_region_mean(pool, R, "bvsb", weight.float())  # pass 2
    stats = collect(pool, R, measure_for("pixbal"), backend)
    torch.testing.assert_close(stats.prior().double(), prior, rtol=1e-5, atol=1e-6)
    scores = stats.scores("pixbal", nu=nu)
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-6)
    # The class weighting matters on this data: plain BvSB ranks differently.
    assert not torch.allclose(scores, stats.scores("bvsb"), rtol=1e-3)


@pytest.mark.parametrize("method", ["bvsb", "margin", "entropy", "least_confidence"])
def test_uncertainty_methods_are_region_means(backend, method):
    R = 8
    pool = make_pool(num_batches=2, seed=4)
    stats = collect(pool, R, measure_for(method), backend)
    expected = naive_region_mean(pool, R, measure_for(method))
    scores = stats.scores(method)
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-6)
    assert (scores[:, R - 1] == 0).all() and (scores[:, : R - 1] > 0).any()


def test_measure_for():
    assert [measure_for(m) for m in ACQUISITION_METHODS] == [
        "bvsb", "bvsb", "margin", "entropy", "least_confidence", "bvsb", "bvsb", "bvsb"]
    with pytest.raises(ValueError, match="method"):
        measure_for("coreset")


def test_dominant_class_ties_and_empty():
    count = torch.tensor([[[0, 3, 3, 1], [0, 0, 0, 0], [5, 0, 0, 6]]], dtype=torch.int32)
    assert dominant_class(count).tolist() == [[1, -1, 3]]


def test_class_prior():
    torch.testing.assert_close(class_prior(torch.tensor([2.0, 6.0]), 8), torch.tensor([0.25, 0.75]))
    with pytest.raises(ValueError, match="num_pixels"):
        class_prior(torch.tensor([1.0]), 0)
    with pytest.raises(TypeError, match="prob_sum"):
        class_prior(torch.tensor([[1.0]]), 3)


def test_class_prior_takes_the_ops_0d_pixel_count():
    # region_uncertainty_stats returns num_pixels as a 0-d tensor (no host sync on CUDA)
    torch.testing.assert_close(class_prior(torch.tensor([2.0, 6.0]), torch.tensor(8)), torch.tensor([0.25, 0.75]))
    with pytest.raises(RuntimeError, match="num_pixels"):  # checked by torch._assert_async
        class_prior(torch.tensor([1.0]), torch.tensor(0))
    with pytest.raises(ValueError, match="num_pixels"):
        class_prior(torch.tensor([1.0]), torch.tensor([3]))


def test_classbal_example():
    # Dominant classes over the pool: region0 -> 0, region1 -> 2, region2 -> 0, region3 empty.
    count = torch.tensor([[[2, 1, 0], [0, 1, 3], [4, 0, 0], [0, 0, 0]]])
    u_sum = torch.tensor([[[1.0, 0.5, 0.0], [0.0, 0.2, 0.6], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    frac = dominant_class_fraction(dominant_class(count), 3)
    torch.testing.assert_close(frac, torch.tensor([2 / 3, 0.0, 1 / 3]))
    expected = torch.tensor([[math.exp(-2 / 3) * 0.5, math.exp(-1 / 3) * 0.2, math.exp(-2 / 3) * 0.5, 0.0]])
    torch.testing.assert_close(classbal_scores(u_sum, count, frac), expected)
    torch.testing.assert_close(region_scores("classbal", u_sum, count), expected)  # fractions from `count`
    torch.testing.assert_close(region_scores("classbal", u_sum, count, dominant_fraction=frac), expected)


def test_pixbal_weights_by_top1_class():
    count = torch.tensor([[[2, 2], [0, 0]]])
    u_sum = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    prior = torch.tensor([0.9, 0.1])
    w = (1 + 6 * prior) ** -2
    torch.testing.assert_close(pixbal_scores(u_sum, count, prior, 6.0), torch.stack([(w[0] + w[1]) / 4, torch.tensor(0.0)]).view(1, 2))


def test_undefined_and_empty_regions_score_zero():
    count = torch.tensor([[[1, 0, 4], [3, 0, 1], [0, 0, 0]]])
    u_sum = torch.tensor([[[0.5, 0.0, 2.0], [1.0, 0.0, 0.5], [0.0, 0.0, 0.0]]])
    prior = torch.tensor([0.3, 0.3, 0.4])
    gen = torch.Generator().manual_seed(0)
    for method in ACQUISITION_METHODS:
        s = region_scores(method, u_sum, count, prior=prior, undefined_class=2, generator=gen)
        assert s.shape == (1, 3) and s.dtype == torch.float32
        assert s[0, 0] == 0 and s[0, 2] == 0 and s[0, 1] > 0, method
    assert selectable(count, undefined_class=2).tolist() == [[False, True, False]]
    assert selectable(count).tolist() == [[True, True, False]]


def test_random_scores_are_seeded():
    a = random_scores((4, 5), torch.Generator().manual_seed(3))
    b = random_scores((4, 5), torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and (a > 0).all() and (a <= 1).all()
    assert not torch.equal(a, random_scores((4, 5), torch.Generator().manual_seed(4)))


def test_mean_uncertainty_empty_is_zero():
    count = torch.tensor([[0, 0], [1, 3]])
    u = torch.tensor([[0.0, 0.0], [0.5, 1.5]])
    assert mean_uncertainty(u, count).tolist() == [0.0, 0.5]


def test_pool_statistics_pads_region_counts():
    pool = PoolStatistics()
    a = region_uncertainty_stats(torch.randn(1, 3, 4, 4), torch.randint(0, 3, (1, 4, 4)), 3, backend="reference", temperature=1.0)
    b = region_uncertainty_stats(torch.randn(2, 3, 4, 4), torch.randint(0, 5, (2, 4, 4)), 5, backend="reference", temperature=1.0)
    pool.update(a)
    pool.update(b)
    u, n = pool.stacked()
    assert u.shape == (3, 5, 3) and n.shape == (3, 5, 3) and (n[0, 3:] == 0).all()
    assert pool.num_pixels == 48
    torch.testing.assert_close(pool.prior().sum(), torch.tensor(1.0))
    assert pool.scores("pixbal").shape == (3, 5)
    with pytest.raises(ValueError, match="classes"):
        pool.update(region_uncertainty_stats(torch.randn(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), 1, temperature=1.0))


def test_bad_arguments():
    count = torch.ones(2, 3, 4, dtype=torch.int32)
    u = torch.ones(2, 3, 4)
    with pytest.raises(ValueError, match="method"):
        region_scores("coreset", u, count)
    with pytest.raises(ValueError, match="prior"):
        region_scores("pixbal", u, count)
    with pytest.raises(ValueError, match="prior"):
        region_scores("pixbal", u, count, prior=torch.ones(5))
    with pytest.raises(ValueError, match="nu"):
        region_scores("pixbal", u, count, prior=torch.ones(4), nu=-1.0)
    with pytest.raises(ValueError, match="u_sum"):
        region_scores("bvsb", u[:, :2], count)
    with pytest.raises(TypeError, match="count"):
        region_scores("bvsb", u, count.float())
    with pytest.raises(TypeError, match="u_sum"):
        region_scores("bvsb", count, count)
    with pytest.raises(ValueError, match="undefined_class"):
        region_scores("bvsb", u, count, undefined_class=4)
    with pytest.raises(ValueError, match="dominant_fraction"):
        region_scores("classbal", u, count, dominant_fraction=torch.ones(3))
    with pytest.raises(ValueError, match="num_classes"):
        dominant_class_fraction(torch.tensor([0, 5]), 3)
