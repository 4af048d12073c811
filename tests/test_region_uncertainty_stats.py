import itertools

import numpy as np
import pytest
import torch
from _util import backend_device, nan_empty, raises_status

from mulact.ops import RegionUncertaintyStats, last_backend, region_uncertainty_stats
from mulact.ops import region_uncertainty_stats_reference as reference
from mulact.ops._cpp import ext

MEASURES = ("bvsb", "margin", "entropy", "least_confidence")


def naive_pixel_u(z, measure):
    """u(x) of one pixel from its scaled logits (numpy float64), written from the definitions."""
    p = np.exp(z - z.max())
    p /= p.sum()
    order = sorted(range(len(z)), key=lambda c: (-z[c], c))
    b = order[0]
    p_b = p[b]
    p_sb = p[order[1]] if len(z) > 1 else 0.0
    if measure == "bvsb":
        return p_sb / p_b, b
    if measure == "margin":
        return 1.0 - (p_b - p_sb), b
    if measure == "entropy":
        return -sum(pc * np.log(pc) for pc in p if pc > 0), b
    return 1.0 - p_b, b


def naive_stats(logits, regions, R, temperature, measure):
    x = logits.double().numpy() * float(np.float32(1.0 / temperature) if logits.dtype != torch.float64 else 1.0 / temperature)
    B, C, H, W = x.shape
    ids = regions.numpy()
    u_sum = np.zeros((B, R, C))
    count = np.zeros((B, R, C), np.int64)
    prob = np.zeros(C)
    for b, h, w in itertools.product(range(B), range(H), range(W)):
        r = ids[b, h, w]
        if r < 0:
            continue
        z = x[b, :, h, w]
        u, top = naive_pixel_u(z, measure)
        u_sum[b, r, top] += u
        count[b, r, top] += 1
        p = np.exp(z - z.max())
        prob += p / p.sum()
    return u_sum, count, prob, int((ids >= 0).sum())


def make_logits(shape, R, seed, ties=False, void=True):
    g = torch.Generator().manual_seed(seed)
    if ties:  # coarse integer logits: many exact top-1 (and top-2) ties
        logits = torch.randint(-1, 2, shape, generator=g).float()
    else:
        logits = torch.randn(shape, generator=g) * 2.0
    B, _, H, W = shape
    regions = torch.randint(-2 if void else 0, max(R - 2, 1), (B, H, W), generator=g)
    return logits, regions


def check_against(st, ref_u, ref_n, ref_p, ref_pixels, rtol=1e-5, atol=1e-5):
    assert torch.equal(st.count.long(), torch.as_tensor(ref_n).long())
    assert st.num_pixels == ref_pixels
    torch.testing.assert_close(st.u_sum.double(), torch.as_tensor(ref_u).double(), rtol=rtol, atol=atol)
    torch.testing.assert_close(st.prob_sum.double(), torch.as_tensor(ref_p).double(), rtol=rtol, atol=atol)


SHAPES = [(1, 1, 1, 1), (1, 2, 1, 1), (3, 5, 7, 13), (2, 1, 4, 3), (1, 19, 3, 5)]


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference_and_naive(backend, measure, shape):
    R = 9
    logits, regions = make_logits(shape, R, seed=shape[1] * 31 + shape[2])
    dev = backend_device(backend)
    st = region_uncertainty_stats(logits.to(dev), regions.to(dev), R, 0.7, measure, backend=backend)
    assert last_backend("region_uncertainty_stats") == backend
    assert isinstance(st, RegionUncertaintyStats)
    B, C = shape[:2]
    assert st.u_sum.shape == (B, R, C) and st.u_sum.dtype == torch.float32
    assert st.count.shape == (B, R, C) and st.count.dtype == torch.int32
    assert st.prob_sum.shape == (C,) and st.prob_sum.dtype == torch.float32
    assert st.num_pixels.shape == () and st.num_pixels.dtype == torch.int64
    assert st.num_pixels.device == st.u_sum.device
    st = RegionUncertaintyStats(st.u_sum.cpu(), st.count.cpu(), st.prob_sum.cpu(), st.num_pixels)
    ref = reference(logits, regions, R, 0.7, measure)
    check_against(st, ref.u_sum, ref.count, ref.prob_sum, ref.num_pixels)
    check_against(st, *naive_stats(logits, regions, R, 0.7, measure))


@pytest.mark.parametrize("measure", MEASURES)
def test_top1_ties_take_smaller_class(backend, measure):
    R = 5
    logits, regions = make_logits((2, 4, 7, 13), R, seed=3, ties=True)
    dev = backend_device(backend)
    st = region_uncertainty_stats(logits.to(dev), regions.to(dev), R, 1.0, measure, backend=backend)
    u, n, p, pixels = naive_stats(logits, regions, R, 1.0, measure)
    st = RegionUncertaintyStats(st.u_sum.cpu(), st.count.cpu(), st.prob_sum.cpu(), st.num_pixels)
    check_against(st, u, n, p, pixels)


def test_exact_tie_example(backend):
    dev = backend_device(backend)
    # Pixel 0: classes 1 and 2 tie at the top -> class 1, bvsb = 1. Pixel 1: class 0 clear winner.
    logits = torch.tensor([[0.0, 5.0], [2.0, 1.0], [2.0, 1.0]]).view(1, 3, 1, 2)
    regions = torch.tensor([[[1, 1]]])
    st = region_uncertainty_stats(logits.to(dev), regions.to(dev), 2, backend=backend, temperature=1.0)
    assert st.count.cpu().tolist() == [[[0, 0, 0], [1, 1, 0]]]
    u = st.u_sum.cpu()
    assert u[0, 1, 1].item() == pytest.approx(1.0)
    assert u[0, 1, 0].item() == pytest.approx(float(np.exp(-4.0)), rel=1e-5)
    assert u[0, 0].abs().sum() == 0 and u[0, 1, 2] == 0


def test_single_class_is_certain(backend):
    dev = backend_device(backend)
    logits = torch.randn(2, 1, 3, 4, device=dev)
    regions = torch.zeros(2, 3, 4, dtype=torch.long, device=dev)
    for measure in MEASURES:
        st = region_uncertainty_stats(logits, regions, 1, measure=measure, backend=backend, temperature=1.0)
        assert torch.equal(st.u_sum.cpu(), torch.zeros(2, 1, 1))
        assert st.count.cpu().tolist() == [[[12]], [[12]]]
        torch.testing.assert_close(st.prob_sum.cpu(), torch.tensor([24.0]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_double_precision(backend, dtype):
    R = 6
    logits, regions = make_logits((2, 5, 7, 13), R, seed=9)
    logits = logits.to(dtype)
    dev = backend_device(backend)
    st = region_uncertainty_stats(logits.to(dev), regions.to(dev), R, 0.5, "bvsb", backend=backend)
    st = RegionUncertaintyStats(st.u_sum.cpu(), st.count.cpu(), st.prob_sum.cpu(), st.num_pixels)
    # Inputs are exact in float64, so the naive loop on the same values is the oracle.
    check_against(st, *naive_stats(logits, regions, R, 0.5, "bvsb"), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("measure", MEASURES)
def test_many_blocks_and_temperature(backend, measure):
    """Several C++ work blocks / threads and Triton programs; small temperature."""
    R = 23
    logits, regions = make_logits((2, 6, 37, 41), R, seed=12)
    dev = backend_device(backend)
    st = region_uncertainty_stats(logits.to(dev), regions.to(dev), R, 0.1, measure, backend=backend)
    ref = reference(logits, regions, R, 0.1, measure)
    assert torch.equal(st.count.cpu(), ref.count)
    assert st.num_pixels == ref.num_pixels
    torch.testing.assert_close(st.u_sum.cpu(), ref.u_sum, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(st.prob_sum.cpu(), ref.prob_sum, rtol=1e-5, atol=1e-3)
    assert st.u_sum.abs().sum() > 0


def test_all_unlabeled(backend):
    dev = backend_device(backend)
    logits = torch.randn(2, 4, 3, 5, device=dev)
    regions = torch.full((2, 3, 5), -3, device=dev)
    st = region_uncertainty_stats(logits, regions, 4, backend=backend, temperature=1.0)
    assert st.num_pixels == 0
    assert torch.equal(st.u_sum.cpu(), torch.zeros(2, 4, 4))
    assert torch.equal(st.count.cpu(), torch.zeros(2, 4, 4, dtype=torch.int32))
    assert torch.equal(st.prob_sum.cpu(), torch.zeros(4))


def test_no_autograd(backend):
    dev = backend_device(backend)
    logits = torch.randn(1, 3, 4, 4, device=dev, requires_grad=True)
    regions = torch.zeros(1, 4, 4, dtype=torch.long, device=dev)
    st = region_uncertainty_stats(logits, regions, 1, backend=backend, temperature=1.0)
    assert not st.u_sum.requires_grad and not st.prob_sum.requires_grad


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's inf - inf
@pytest.mark.parametrize("poison", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_logits_raise(backend, poison):
    dev = backend_device(backend)
    logits = torch.randn(2, 3, 5, 6)
    logits[1, 2, 4, 5] = poison
    regions = torch.zeros(2, 5, 6, dtype=torch.long)
    with raises_status(r"region_uncertainty_stats: `logits` contains NaN or Inf"):
        region_uncertainty_stats(logits.to(dev), regions.to(dev), 1, backend=backend, temperature=1.0)
    regions[1, 4, 5] = -1  # documented: checked even where the pixel has no region
    with raises_status("logits"):
        region_uncertainty_stats(logits.to(dev), regions.to(dev), 1, backend=backend, temperature=1.0)


def test_bad_inputs(backend):
    dev = backend_device(backend)
    logits = torch.randn(2, 3, 4, 5, device=dev)
    regions = torch.zeros(2, 4, 5, dtype=torch.long, device=dev)
    bad = regions.clone()
    bad[1, 3, 4] = 11
    with raises_status(r"region_uncertainty_stats.*`regions` holds id 11 but num_regions=4"):
        region_uncertainty_stats(logits, bad, 4, backend=backend, temperature=1.0)
    with pytest.raises(ValueError, match="regions"):
        region_uncertainty_stats(logits, regions[:, :, :4], 4, backend=backend, temperature=1.0)
    with pytest.raises(ValueError, match="logits"):
        region_uncertainty_stats(logits[0], regions, 4, backend=backend, temperature=1.0)
    with pytest.raises(TypeError, match="logits"):
        region_uncertainty_stats(logits.long(), regions, 4, backend=backend, temperature=1.0)
    with pytest.raises(ValueError, match="logits"):
        region_uncertainty_stats(logits[:, :0], regions, 4, backend=backend, temperature=1.0)
    with pytest.raises(TypeError, match="regions"):
        region_uncertainty_stats(logits, regions.float(), 4, backend=backend, temperature=1.0)
    with pytest.raises(ValueError, match="measure"):
        region_uncertainty_stats(logits, regions, 4, measure="variance", backend=backend, temperature=1.0)
    with pytest.raises(ValueError, match="temperature"):
        region_uncertainty_stats(logits, regions, 4, temperature=0.0, backend=backend)
    with pytest.raises(TypeError, match="temperature"):
        region_uncertainty_stats(logits, regions, 4, temperature="hot", backend=backend)
    with pytest.raises(ValueError, match="num_regions"):
        region_uncertainty_stats(logits, regions, 2.5, backend=backend, temperature=1.0)
    with pytest.raises(ValueError, match="device"):
        region_uncertainty_stats(logits, regions.to("meta"), 4, backend=backend, temperature=1.0)


def test_cpp_writes_every_output_entry():
    B, C, H, W, R = 2, 5, 9, 31, 7
    logits, regions = make_logits((B, C, H, W), R, seed=1)
    u = nan_empty(B, R, C)
    n = torch.full((B, R, C), -7, dtype=torch.int32)
    p = nan_empty(C)
    status = torch.tensor([0, -1], dtype=torch.int32)
    pixels = ext().region_uncertainty_stats_forward(logits.data_ptr(), 0, regions.data_ptr(), 5, B, C, H * W, R,
                                                    1.0, 0, u.data_ptr(), n.data_ptr(), p.data_ptr(),
                                                    status.data_ptr())
    assert not u.isnan().any() and not p.isnan().any() and (n >= 0).all()
    assert pixels == int((regions >= 0).sum()) and status.tolist() == [0, -1]


def test_cpp_is_deterministic():
    logits, regions = make_logits((2, 19, 64, 80), 50, seed=2)
    a = region_uncertainty_stats(logits, regions, 50, backend="cpp", temperature=1.0)
    b = region_uncertainty_stats(logits, regions, 50, backend="cpp", temperature=1.0)
    assert torch.equal(a.u_sum, b.u_sum) and torch.equal(a.prob_sum, b.prob_sum) and torch.equal(a.count, b.count)


def test_long_runs_of_one_region(backend):
    """Long runs of one (region, top-1 class) key across block edges (run pre-aggregation)."""
    H, W = 9, 70
    flat = torch.arange(H * W)
    regions = ((flat // 300) * 2).view(1, H, W)
    regions.view(-1)[400:405] = 0
    logits = torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(6)) * 0.3
    logits[:, 1] += 2.0  # mostly one top-1 class: runs of the same key are long
    dev = backend_device(backend)
    st = region_uncertainty_stats(logits.to(dev), regions.to(dev), 5, backend=backend, temperature=1.0)
    st = RegionUncertaintyStats(st.u_sum.cpu(), st.count.cpu(), st.prob_sum.cpu(), st.num_pixels)
    check_against(st, *naive_stats(logits, regions, 5, 1.0, "bvsb"), rtol=1e-5, atol=1e-4)
