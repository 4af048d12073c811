import itertools

import numpy as np
import pytest
import torch
from _util import backend_device, nan_empty, raises_status

from mulact.ops import last_backend, region_reduce, region_reduce_reference
from mulact.ops._cpp import ext

REDUCES = ("sum", "mean", "max", "min", "count", "argmax")


def naive_region_reduce(values, regions, R, reduce):
    """Independent per-pixel loop in numpy float64 (first index wins ties)."""
    v = values.detach().double().numpy()
    squeeze = v.ndim == 3
    if squeeze:
        v = v[:, None]
    B, K, H, W = v.shape
    ids = regions.numpy()
    count = np.zeros((B, R), np.int64)
    acc = np.zeros((B, R, K))
    best = np.zeros((B, R, K))
    arg = -np.ones((B, R, K), np.int64)
    for b, h, w in itertools.product(range(B), range(H), range(W)):
        r = ids[b, h, w]
        if r < 0:
            continue
        count[b, r] += 1
        for k in range(K):
            x = v[b, k, h, w]
            acc[b, r, k] += x
            better = x > best[b, r, k] if reduce in ("max", "argmax") else x < best[b, r, k]
            if arg[b, r, k] < 0 or better:
                best[b, r, k], arg[b, r, k] = x, h * W + w
    if reduce == "count":
        return torch.from_numpy(count)
    if reduce == "argmax":
        out = torch.from_numpy(arg)
    elif reduce in ("max", "min"):
        out = torch.from_numpy(best)
    elif reduce == "sum":
        out = torch.from_numpy(acc)
    else:
        out = torch.from_numpy(acc / np.maximum(count, 1)[..., None])
    return out[..., 0] if squeeze else out


def make_case(shape, num_regions, seed, levels=4, void=True):
    """Values on a coarse grid (so max/min/argmax have exact ties) and ids with negatives,
    drawn from a range smaller than R so some regions are empty."""
    g = torch.Generator().manual_seed(seed)
    values = torch.randint(-levels, levels + 1, shape, generator=g).float() * 0.5
    B, H, W = shape[0], shape[-2], shape[-1]
    lo = -2 if void else 0
    regions = torch.randint(lo, max(num_regions - 3, 1), (B, H, W), generator=g)
    return values, regions


SHAPES = [(1, 1, 1), (3, 7, 13), (2, 3, 7, 13), (1, 2, 1, 1)]


@pytest.mark.parametrize("reduce", REDUCES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_matches_reference_and_naive(backend, reduce, shape):
    R = 9
    values, regions = make_case(shape, R, seed=len(shape) * 7 + shape[-1])
    dev = backend_device(backend)
    out = region_reduce(values.to(dev), regions.to(dev), R, reduce, backend=backend).cpu()
    assert last_backend("region_reduce") == backend
    ref = region_reduce_reference(values, regions, R, reduce)
    naive = naive_region_reduce(values, regions, R, reduce)
    out_shape = (shape[0], R) if (len(shape) == 3 or reduce == "count") else (shape[0], R, shape[1])
    assert out.shape == out_shape
    if reduce in ("count", "argmax"):
        assert out.dtype == torch.int64
        assert torch.equal(out, ref) and torch.equal(out, naive)
    else:
        assert out.dtype == values.dtype
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(out.double(), naive)


def test_docstring_example(backend):
    dev = backend_device(backend)
    v = torch.tensor([[[1.0, 5.0], [5.0, 2.0]]], device=dev)
    r = torch.tensor([[[0, 0], [1, -1]]], device=dev)
    assert region_reduce(v, r, 3, "sum", backend=backend).tolist() == [[6.0, 5.0, 0.0]]
    assert region_reduce(v, r, 3, "mean", backend=backend).tolist() == [[3.0, 5.0, 0.0]]
    assert region_reduce(v, r, 3, "min", backend=backend).tolist() == [[1.0, 5.0, 0.0]]
    assert region_reduce(v, r, 3, "argmax", backend=backend).tolist() == [[1, 2, -1]]
    assert region_reduce(v, r, 3, "count", backend=backend).tolist() == [[2, 1, 0]]


def test_argmax_ties_take_smallest_flat_index(backend):
    dev = backend_device(backend)
    # Region 0 holds the maximum 3.0 at flat indices 2, 5 and 9; region 1 is constant.
    v = torch.tensor([[1.0, 0.0, 3.0, 1.0, 1.0], [3.0, -1.0, 2.0, 2.0, 3.0]]).view(1, 2, 5)
    r = torch.tensor([[0, 1, 0, 1, 1], [0, 1, 1, 1, 0]]).view(1, 2, 5)
    arg = region_reduce(v.to(dev), r.to(dev), 2, "argmax", backend=backend).cpu()
    # region 1 pixels: flat 1 (0.0), 3 (1.0), 4 (1.0), 6 (-1.0), 7 (2.0), 8 (2.0) -> max 2.0 first at 7
    assert arg.tolist() == [[2, 7]]
    # max gradient goes only to the first maximal pixel of each region
    x = v.clone().to(dev).requires_grad_(True)
    region_reduce(x, r.to(dev), 2, "max", backend=backend).sum().backward()
    grad = x.grad.cpu().view(-1)
    expected = torch.zeros(10)
    expected[2] = expected[7] = 1.0
    assert torch.equal(grad, expected)


def test_large_multi_block_ties(backend):
    """Enough pixels for several C++ work blocks/threads and Triton programs; few distinct
    values so extrema tie across block boundaries."""
    R = 6
    # C++ blocks are 4096 pixels, Triton programs 256 (the interpreter is slow: keep it smaller).
    shape = (2, 2, 23, 50) if backend == "triton" else (2, 2, 70, 100)
    values, regions = make_case(shape, R, seed=3, levels=1)
    dev = backend_device(backend)
    for reduce in ("sum", "max", "min", "argmax", "count"):
        out = region_reduce(values.to(dev), regions.to(dev), R, reduce, backend=backend).cpu()
        ref = region_reduce_reference(values, regions, R, reduce)
        if reduce == "sum":
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-3)
        else:
            assert torch.equal(out, ref), reduce


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min", "argmax"])
def test_low_and_double_precision(backend, dtype, reduce):
    R = 8
    g = torch.Generator().manual_seed(5)
    values = torch.randn(2, 3, 7, 13, generator=g).to(dtype)
    regions = torch.randint(-1, R - 2, (2, 7, 13), generator=g)
    dev = backend_device(backend)
    out = region_reduce(values.to(dev), regions.to(dev), R, reduce, backend=backend).cpu()
    naive = naive_region_reduce(values, regions, R, reduce)
    if reduce == "argmax":
        assert torch.equal(out, naive)
        return
    assert out.dtype == dtype
    tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(out.double(), naive, rtol=tol, atol=tol * 4)


@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min"])
@pytest.mark.parametrize("ndim", [3, 4])
def test_gradcheck(backend, reduce, ndim):
    dev = backend_device(backend)
    g = torch.Generator().manual_seed(11)
    # Tiny: numerical Jacobians cost two forward calls per input element (interpreter speed).
    shape = (2, 3, 5) if ndim == 3 else (2, 2, 3, 5)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dev).requires_grad_(True)
    regions = torch.tensor([[[0, 0, 1, 1, -1], [0, 2, 2, 1, 6], [3, 3, 2, -1, 6]],
                            [[5, 5, 5, 4, 4], [-1, 5, 4, 4, 0], [-1, -1, 0, 0, 0]]], device=dev)
    # Under the Triton interpreter a launch costs ~0.1 s: check random projections of the
    # Jacobian there (fast mode) and the full Jacobian elsewhere.
    fast = backend == "triton" and dev.type == "cpu"
    assert torch.autograd.gradcheck(lambda v: region_reduce(v, regions, 8, reduce, backend=backend), (x,),
                                    fast_mode=fast)


@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min"])
def test_backward_matches_reference(backend, reduce):
    R = 7
    values, regions = make_case((2, 3, 7, 13), R, seed=21)
    grad_out = torch.randn(2, R, 3, generator=torch.Generator().manual_seed(2))
    x_ref = values.clone().requires_grad_(True)
    region_reduce_reference(x_ref, regions, R, reduce).backward(grad_out)
    dev = backend_device(backend)
    x = values.clone().to(dev).requires_grad_(True)
    region_reduce(x, regions.to(dev), R, reduce, backend=backend).backward(grad_out.to(dev))
    torch.testing.assert_close(x.grad.cpu(), x_ref.grad)
    assert x_ref.grad.abs().sum() > 0  # the comparison is not between two zero tensors


def test_all_unlabeled(backend):
    dev = backend_device(backend)
    values = torch.randn(2, 3, 4, 5, device=dev, requires_grad=True)
    regions = torch.full((2, 4, 5), -1, device=dev)
    assert torch.equal(region_reduce(values, regions, 3, "argmax", backend=backend).cpu(), torch.full((2, 3, 3), -1))
    assert torch.equal(region_reduce(values, regions, 3, "count", backend=backend).cpu(), torch.zeros(2, 3, dtype=torch.long))
    for reduce in ("sum", "mean", "max", "min"):
        out = region_reduce(values, regions, 3, reduce, backend=backend)
        assert torch.equal(out.detach().cpu(), torch.zeros(2, 3, 3))
        (grad,) = torch.autograd.grad(out.sum(), values)
        assert torch.equal(grad.cpu(), torch.zeros_like(grad.cpu()))


def test_count_accepts_any_values_dtype(backend):
    dev = backend_device(backend)
    regions = torch.tensor([[[0, 2], [2, -1]]], device=dev)
    for values in (torch.zeros(1, 2, 2, dtype=torch.bool), torch.zeros(1, 5, 2, 2, dtype=torch.int64)):
        out = region_reduce(values.to(dev), regions, 3, "count", backend=backend)
        assert out.tolist() == [[1, 0, 2]]


def test_int32_and_uint8_region_ids(backend):
    dev = backend_device(backend)
    values, regions = make_case((2, 7, 13), 9, seed=4, void=False)
    ref = region_reduce_reference(values, regions, 9, "sum")
    for dtype in (torch.int32, torch.uint8, torch.int16):
        out = region_reduce(values.to(dev), regions.to(dtype).to(dev), 9, "sum", backend=backend).cpu()
        torch.testing.assert_close(out, ref)


def test_bad_inputs(backend):
    dev = backend_device(backend)
    values = torch.randn(2, 4, 5, device=dev)
    regions = torch.zeros(2, 4, 5, dtype=torch.long, device=dev)
    bad = regions.clone()
    bad[1, 2, 3] = 7
    with raises_status(r"region_reduce.*`regions` holds id 7 but num_regions=5"):
        region_reduce(values, bad, 5, "sum", backend=backend)
    with raises_status(r"region_reduce.*id 7.*num_regions=5"):
        region_reduce(values, bad, 5, "argmax", backend=backend)
    with raises_status(r"region_reduce.*id 7"):
        region_reduce(values, bad, 5, "count", backend=backend)
    with pytest.raises(ValueError, match="regions"):
        region_reduce(values, regions[:, :3], 5, backend=backend)
    with pytest.raises(ValueError, match="values"):
        region_reduce(values[0], regions, 5, backend=backend)
    with pytest.raises(TypeError, match="values"):
        region_reduce(values.long(), regions, 5, "sum", backend=backend)
    with pytest.raises(TypeError, match="values"):
        region_reduce(values.numpy() if dev.type == "cpu" else [1.0], regions, 5, backend=backend)
    with pytest.raises(TypeError, match="regions"):
        region_reduce(values, regions.float(), 5, backend=backend)
    with pytest.raises(ValueError, match="reduce"):
        region_reduce(values, regions, 5, "median", backend=backend)
    with pytest.raises(ValueError, match="num_regions"):
        region_reduce(values, regions, -1, backend=backend)
    with pytest.raises(ValueError, match="device"):
        region_reduce(values, regions.to("meta"), 5, backend=backend)


def test_cpp_writes_every_output_entry():
    B, K, N, R = 2, 3, 50, 7
    values, regions = make_case((B, K, 5, 10), R, seed=8)
    reg = regions.contiguous()
    for mode in (0, 1, 2):
        val = nan_empty(B, R, K)
        arg = torch.full((B, R, K), -7, dtype=torch.int64)
        cnt = torch.full((B, R), -7, dtype=torch.int64)
        status = torch.tensor([0, -1], dtype=torch.int32)
        ext().region_reduce_forward(values.data_ptr(), 0, reg.data_ptr(), 5, B, K, N, R, mode, val.data_ptr(),
                                    arg.data_ptr(), cnt.data_ptr(), status.data_ptr())
        assert not val.isnan().any() and (cnt >= 0).all()
        if mode:
            assert (arg >= -1).all()
    grad = nan_empty(B, K, N)
    g = torch.randn(B, R, K)
    ext().region_reduce_backward_gather(g.data_ptr(), 0, reg.data_ptr(), 5, B, K, N, R, grad.data_ptr())
    assert not grad.isnan().any()


def test_cpp_is_deterministic():
    values = torch.randn(2, 4, 90, 110)
    regions = torch.randint(-1, 40, (2, 90, 110))
    a = region_reduce(values, regions, 40, "mean", backend="cpp")
    b = region_reduce(values, regions, 40, "mean", backend="cpp")
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_low_precision_backward(backend, dtype, reduce):
    R = 6
    values, regions = make_case((2, 2, 5, 9), R, seed=17)
    grad_out = torch.randn(2, R, 2, generator=torch.Generator().manual_seed(3)).to(dtype)
    x_ref = values.to(dtype).requires_grad_(True)
    region_reduce_reference(x_ref, regions, R, reduce).backward(grad_out)
    dev = backend_device(backend)
    x = values.to(dtype).to(dev).requires_grad_(True)
    region_reduce(x, regions.to(dev), R, reduce, backend=backend).backward(grad_out.to(dev))
    assert x.grad.dtype == dtype
    torch.testing.assert_close(x.grad.cpu(), x_ref.grad)


def test_long_runs_of_one_id(backend):
    """Runs longer than a Triton block (256) and than half of it, crossing block edges, plus a
    repeated id after a gap: exercises the run pre-aggregation (pointer jumping, doubling)."""
    H, W = 9, 70
    flat = torch.arange(H * W)
    ids = (flat // 300) * 2  # runs of 300 pixels: ids 0, 2, 4
    ids[200:210] = -1
    ids[400:405] = 0  # id 0 again, inside the run of id 2
    regions = ids.view(1, H, W)
    values = torch.randn(1, 2, H, W, generator=torch.Generator().manual_seed(5))
    dev = backend_device(backend)
    for reduce in ("sum", "mean", "max", "min", "argmax", "count"):
        out = region_reduce(values.to(dev), regions.to(dev), 5, reduce, backend=backend).cpu()
        naive = naive_region_reduce(values, regions, 5, reduce)
        if reduce in ("argmax", "count"):
            assert torch.equal(out, naive), reduce
        else:
            torch.testing.assert_close(out.double(), naive, rtol=1e-5, atol=1e-4)
