import pytest
import torch
from _partial_labels import ODD_SHAPES, make_case, naive_region_class_argmax, shape_id
from _partial_labels import many_triton_programs  # noqa: F401 (autouse fixture)
from _util import backend_device, raises_status

from mulact import ops
from mulact.ops import region_class_argmax, region_class_argmax_reference


SHAPES = [*ODD_SHAPES, (2, 6, 13, 5, 4)]  # (B, C, H, W, R)


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("min_classes", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_naive(backend, shape, min_classes, dtype):
    device = backend_device(backend)
    logits, regions, labels = make_case(*shape, seed=sum(shape) + min_classes, dtype=dtype, device=device)
    out = region_class_argmax(logits, regions, labels, 0.3, min_classes, backend=backend)
    assert out.dtype == torch.int64 and out.shape == labels.shape
    assert ops.last_backend("region_class_argmax") == backend
    expect = naive_region_class_argmax(logits.cpu(), regions.cpu(), labels.cpu(), 0.3, min_classes)
    assert torch.equal(out.cpu(), expect)


def test_cases_are_not_trivial():
    logits, regions, labels = make_case(3, 5, 7, 11, 9, seed=33)
    expect = naive_region_class_argmax(logits, regions, labels, 0.3, 1)
    assert (expect >= 0).sum() > 20
    assert (expect[:, 8] == -1).all() and labels[:, 8].any()  # labeled but absent region


def test_probability_not_raw_logit(backend):
    # Pixel 0 has the larger raw logit for class 0, pixel 1 the larger probability.
    device = backend_device(backend)
    logits = torch.tensor([[5.0, 1.0], [5.0, -3.0]]).view(1, 2, 1, 2).to(device)
    regions = torch.zeros(1, 1, 2, dtype=torch.long, device=device)
    labels = torch.tensor([[[True, True]]], device=device)
    out = region_class_argmax(logits, regions, labels, 1.0, backend=backend)
    assert out.cpu().tolist() == [[[1, 0]]]


def test_exact_ties_pick_smallest_index(backend):
    device = backend_device(backend)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 1, 1, generator=g)
    logits = base.expand(1, 4, 6, 7).contiguous()  # every pixel identical
    logits[0, :, 0, 0] += torch.tensor([-3.0, 3.0, -3.0, 3.0])  # index 0: worse for classes 0 and 2
    regions = torch.arange(6 * 7).view(1, 6, 7) % 3  # three interleaved regions
    regions[0, 0, 1] = -1
    labels = torch.zeros(1, 3, 4, dtype=torch.bool)
    labels[0, 0, [0, 2]] = True
    labels[0, 1, 1] = True
    labels[0, 2, [1, 3]] = True
    out = region_class_argmax(logits.to(device), regions.to(device), labels.to(device), 0.1, backend=backend).cpu()
    # Region 0 holds flat indices 0 (worse), 3, 6...; region 1 holds 1 (ignored), 4, ...
    assert out[0, 0].tolist() == [3, -1, 3, -1]
    assert out[0, 1].tolist() == [-1, 4, -1, -1]
    assert out[0, 2].tolist() == [-1, 2, -1, 2]
    expect = naive_region_class_argmax(logits, regions, labels, 0.1, 1)
    assert torch.equal(out, expect)


def test_random_ties_across_blocks(backend):
    # Ties between pixels far apart (different Triton programs / C++ chunks).
    device = backend_device(backend)
    g = torch.Generator().manual_seed(3)
    palette = torch.randn(4, 3, generator=g)  # few distinct pixel vectors: many exact ties
    logits = palette[torch.randint(0, 4, (2, 9, 40), generator=g)].permute(0, 3, 1, 2).contiguous()
    regions = torch.randint(0, 3, (2, 9, 40), generator=g)
    labels = torch.ones(2, 3, 3, dtype=torch.bool)
    out = region_class_argmax(logits.to(device), regions.to(device), labels.to(device), 1.0, backend=backend)
    assert torch.equal(out.cpu(), naive_region_class_argmax(logits, regions, labels, 1.0, 1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(backend, dtype):
    device = backend_device(backend)
    logits, regions, labels = make_case(2, 5, 6, 7, 6, seed=9, dtype=dtype, device=device)
    out = region_class_argmax(logits, regions, labels, 0.5, backend=backend).cpu()
    expect = naive_region_class_argmax(logits.cpu(), regions.cpu(), labels.cpu(), 0.5, 1)
    assert torch.equal(out < 0, expect < 0)
    # Near-ties may resolve differently after float32 rounding: compare the chosen values.
    lsm = torch.log_softmax(logits.cpu().double() / 0.5, dim=1).flatten(2)
    b, r, c = (expect >= 0).nonzero(as_tuple=True)
    got = lsm[b, c, out[b, r, c]]
    want = lsm[b, c, expect[b, r, c]]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_chosen_pixel_belongs_to_region(backend):
    device = backend_device(backend)
    logits, regions, labels = make_case(2, 4, 9, 10, 7, seed=12, device=device)
    out = region_class_argmax(logits, regions, labels, 0.2, backend=backend).cpu()
    b, r, c = (out >= 0).nonzero(as_tuple=True)
    assert b.numel() > 0
    assert (regions.cpu().flatten(1)[b, out[b, r, c]] == r).all()


def test_deterministic_and_matches_reference(backend):
    device = backend_device(backend)
    logits, regions, labels = make_case(2, 5, 31, 23, 12, seed=6, device=device)
    a = region_class_argmax(logits, regions, labels, backend=backend, temperature=0.1)
    b = region_class_argmax(logits, regions, labels, backend=backend, temperature=0.1)
    assert torch.equal(a, b)
    assert torch.equal(a, region_class_argmax_reference(logits, regions, labels, temperature=0.1))


def test_nan_outside_active_regions_is_not_read(backend):
    device = backend_device(backend)
    logits, regions, labels = make_case(1, 3, 4, 5, 3, seed=2, device=device, negative=False, absent=0)
    labels[0, 2] = False  # region 2 unlabeled: its pixels are never read
    poisoned = logits.clone()
    poisoned[:, :, regions[0] == 2] = float("nan")
    out = region_class_argmax(poisoned, regions, labels, backend=backend, temperature=0.1)
    assert torch.equal(out, region_class_argmax_reference(logits, regions, labels, temperature=0.1))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy in the Triton interpreter
def test_bad_inputs(backend):
    device = backend_device(backend)
    logits, regions, labels = make_case(2, 4, 5, 6, 5, seed=1, device=device)
    bad = regions.clone()
    bad[0, 1, 1] = 5
    with raises_status(r"regions.*5"):
        region_class_argmax(logits, bad, labels, backend=backend, temperature=0.1)
    with pytest.raises(ValueError, match="region_labels"):
        region_class_argmax(logits, regions, labels[:, :, 1:], backend=backend, temperature=0.1)
    with pytest.raises(TypeError, match="region_labels"):
        region_class_argmax(logits, regions, labels.to(torch.int64), backend=backend, temperature=0.1)
    with pytest.raises(ValueError, match="regions"):
        region_class_argmax(logits, regions.to("meta"), labels, backend=backend, temperature=0.1)
    with pytest.raises(ValueError, match="min_classes"):
        region_class_argmax(logits, regions, labels, min_classes=0, backend=backend, temperature=0.1)
    poisoned = logits.clone()
    b, r, c = (region_class_argmax_reference(logits, regions, labels, temperature=0.1) >= 0).nonzero()[0].tolist()
    poisoned.flatten(2)[b, 0, (regions[b].flatten() == r).nonzero()[0]] = float("inf")
    with raises_status("logits"):
        region_class_argmax(poisoned, regions, labels, backend=backend, temperature=0.1)


@pytest.mark.parametrize("shape", [(0, 3, 4, 4, 2), (2, 3, 0, 4, 2), (1, 3, 2, 2, 0)], ids=["B0", "H0", "R0"])
def test_empty_shapes(backend, shape):
    device = backend_device(backend)
    batch, classes, height, width, num_regions = shape
    logits = torch.randn(batch, classes, height, width, device=device)
    regions = torch.full((batch, height, width), -1, device=device)
    labels = torch.ones(batch, num_regions, classes, dtype=torch.bool, device=device)
    out = region_class_argmax(logits, regions, labels, backend=backend, temperature=0.1)
    assert out.shape == labels.shape and (out == -1).all()


def test_default_triton_blocks(monkeypatch):
    monkeypatch.undo()
    device = backend_device("triton")
    for dtype in (torch.float32, torch.float64):
        logits, regions, labels = make_case(2, 5, 17, 19, 12, seed=4, dtype=dtype, device=device)
        out = region_class_argmax(logits, regions, labels, backend="triton", temperature=0.1)
        assert torch.equal(out.cpu(), naive_region_class_argmax(logits.cpu(), regions.cpu(), labels.cpu(), 0.1, 1))


def test_cpp_many_chunks_and_tiles():
    logits, regions, labels = make_case(2, 3, 48, 101, 6, seed=23, label_sizes=(1, 2, 3), absent=0)
    out = region_class_argmax(logits, regions, labels, 0.3, backend="cpp")
    assert torch.equal(out, naive_region_class_argmax(logits, regions, labels, 0.3, 1))


@pytest.mark.parametrize("block_p", [16, None])
def test_triton_run_reduction_matches_naive(monkeypatch, block_p):
    # MULACT_TRITON_ARGMAX_RUNS=1: one atomic per run of same-region pixels (kernels/_tuning.py).
    import mulact.kernels._tuning as tuning

    monkeypatch.setattr(tuning, "ARGMAX_RUNS", True)
    if block_p is None:  # the default blocks: one program covers whole rows of these images
        monkeypatch.undo()
        monkeypatch.setattr(tuning, "ARGMAX_RUNS", True)
    device = backend_device("triton")
    g = torch.Generator().manual_seed(5)
    palette = torch.randn(3, 4, generator=g)  # exact ties inside runs and across programs
    cases = [make_case(2, 5, 9, 23, 7, seed=8, device="cpu"), make_case(*SHAPES[1], seed=2, device="cpu")]
    ties = palette[torch.randint(0, 3, (2, 6, 29), generator=g)].permute(0, 3, 1, 2).contiguous()
    runs = (torch.arange(6 * 29).view(1, 6, 29) // 5 % 4).expand(2, 6, 29).clone()  # runs of 5 pixels
    runs[0, 2, 3:9] = -1
    cases.append((ties, runs, torch.ones(2, 4, 4, dtype=torch.bool)))
    for logits, regions, labels in cases:
        for min_classes in (1, 2):
            out = region_class_argmax(logits.to(device), regions.to(device), labels.to(device), 0.3, min_classes,
                                      backend="triton")
            assert torch.equal(out.cpu(), naive_region_class_argmax(logits, regions, labels, 0.3, min_classes))
