"""Every kernel design of kernels/_tuning.py::DESIGNS against the reference, under the Triton
interpreter (or CUDA): odd class counts (a power of two, one more, the split remainders), ties,
void pixels, runs longer than a block, bad ids and NaN through the shared status path."""
import pytest
import torch
from _util import backend_device, raises_status

import mulact.kernels._tuning as tuning
from mulact.kernels import DESIGNS
from mulact.kernels.region_uncertainty_stats import class_rows, launch_blocks
from mulact.ops import (
    region_reduce,
    region_reduce_reference,
    region_uncertainty_stats,
    region_uncertainty_stats_reference,
)

DEV = backend_device("triton")


def _use(monkeypatch, op, name):
    monkeypatch.setitem(tuning.DESIGN, op, name)


def _regions(B, H, W, R, seed):
    """Runs of one id along rows (superpixel-like), some void, and ids spread over [0, R)."""
    g = torch.Generator().manual_seed(seed)
    ids = (torch.arange(H * W).view(1, H, W) // torch.randint(1, 9, (1,), generator=g)) % R
    ids = ids.expand(B, H, W).clone()
    ids[torch.rand(B, H, W, generator=g) < 0.1] = -1
    return ids


def test_class_rows_cover_every_class_once():
    for c in range(1, 70):
        head, tail = class_rows(c, True)
        assert head & (head - 1) == 0 and tail & (tail - 1) == 0
        assert head <= c <= head + tail and (tail == 1 or head < c)
        assert head + tail <= triton_next_pow2(c) + (1 if head == c else 0)
        assert class_rows(c, False) == (triton_next_pow2(c), 1)
    assert class_rows(20, True) == (16, 4)  # Cityscapes + the undefined class: 20 lanes, not 32


def triton_next_pow2(n):
    return 1 << (n - 1).bit_length()


@pytest.mark.parametrize("name", list(DESIGNS["region_uncertainty_stats"]))
@pytest.mark.parametrize("C", [1, 3, 16, 17, 20])
@pytest.mark.parametrize("measure", ["bvsb", "entropy", "margin"])
def test_stats_designs_match_reference(monkeypatch, name, C, measure):
    _use(monkeypatch, "region_uncertainty_stats", name)
    g = torch.Generator().manual_seed(C)
    B, H, W, R = 2, 9, 37, 11
    logits = torch.randn(B, C, H, W, generator=g)
    logits[:, :, 0, :5] = 0.25  # exact ties between classes: the smaller class is top-1
    regions = _regions(B, H, W, R, seed=C)
    want = region_uncertainty_stats_reference(logits, regions, R, 0.3, measure)
    got = region_uncertainty_stats(logits.to(DEV), regions.to(DEV), R, 0.3, measure, backend="triton")
    assert torch.equal(got.count.cpu(), want.count)
    torch.testing.assert_close(got.u_sum.cpu(), want.u_sum, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.prob_sum.cpu(), want.prob_sum, rtol=1e-5, atol=1e-5)


def test_stats_wide_design_doubles_the_block(monkeypatch):
    _use(monkeypatch, "region_uncertainty_stats", "padded")
    padded = launch_blocks(20)
    _use(monkeypatch, "region_uncertainty_stats", "split_wide")
    wide = launch_blocks(20)
    assert padded == (32, 1, 128) and wide == (16, 4, 256)


@pytest.mark.parametrize("name", list(DESIGNS["region_uncertainty_stats"]))
def test_stats_designs_report_bad_input(monkeypatch, name):
    _use(monkeypatch, "region_uncertainty_stats", name)
    logits = torch.randn(1, 20, 5, 7)
    regions = torch.zeros(1, 5, 7, dtype=torch.int64)
    regions[0, 4, 6] = 9
    with raises_status("id 9"):
        region_uncertainty_stats(logits.to(DEV), regions.to(DEV), 4, 1.0, backend="triton")
    logits[0, 18, 2, 3] = float("nan")  # a tail-tile row
    with raises_status("NaN or Inf"):
        region_uncertainty_stats(logits.to(DEV), regions.clamp(max=3).to(DEV), 4, 1.0, backend="triton")


@pytest.mark.parametrize("name", list(DESIGNS["region_reduce"]))
@pytest.mark.parametrize("reduce", ["max", "min", "argmax", "mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_reduce_designs_match_reference(monkeypatch, name, reduce, dtype):
    _use(monkeypatch, "region_reduce", name)
    g = torch.Generator().manual_seed(7)
    B, K, H, W, R = 2, 3, 23, 61, 13  # 1403 pixels: several blocks, runs across blocks
    values = (torch.randint(-3, 4, (B, K, H, W), generator=g) * 0.5).to(dtype)  # exact ties
    values[0, 0, 0, :4] = torch.tensor([0.0, -0.0, -0.0, 0.0], dtype=dtype)  # signed zeros tie
    regions = _regions(B, H, W, R, seed=3)
    regions[1] = regions[1].clamp(max=R - 3)  # empty regions
    want = region_reduce_reference(values, regions, R, reduce)
    got = region_reduce(values.to(DEV), regions.to(DEV), R, reduce, backend="triton").cpu()
    if reduce == "argmax":
        assert torch.equal(got, want)
    elif reduce in ("max", "min"):
        assert torch.equal(got, want) and torch.equal(got.signbit(), want.signbit())
    else:
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("reduce", ["max", "min"])
def test_extremum_gradient_without_a_forward_arg(backend, reduce):
    # C++ skips the arg-extremum in the forward and the backward finds it; Triton's packed keys
    # return it from the forward. Both must give the whole gradient to the first extremal pixel.
    dev = backend_device(backend)
    g = torch.Generator().manual_seed(2)
    values = torch.randint(-2, 3, (2, 3, 6, 11), generator=g).double()
    regions = _regions(2, 6, 11, 7, seed=4)
    grad_out = torch.randn(2, 7, 3, generator=g, dtype=torch.float64)
    x_ref = values.clone().requires_grad_(True)
    region_reduce_reference(x_ref, regions, 7, reduce).backward(grad_out)
    x = values.to(dev).requires_grad_(True)
    region_reduce(x, regions.to(dev), 7, reduce, backend=backend).backward(grad_out.to(dev))
    assert torch.equal(x.grad.cpu(), x_ref.grad)
    with torch.no_grad():  # the fast path, no arg at all
        out = region_reduce(values.to(dev), regions.to(dev), 7, reduce, backend=backend)
    assert torch.equal(out.cpu(), region_reduce_reference(values, regions, 7, reduce))


def test_reduce_packed_key_reports_bad_ids(monkeypatch):
    _use(monkeypatch, "region_reduce", "packed_key")
    values = torch.randn(1, 2, 4, 5)
    regions = torch.zeros(1, 4, 5, dtype=torch.int32)
    regions[0, 3, 1] = 12
    with raises_status("id 12"):
        region_reduce(values.to(DEV), regions.to(DEV), 5, "max", backend="triton")


def test_design_environment_is_checked(monkeypatch):
    assert tuning._designs("") == {op: next(iter(t)) for op, t in DESIGNS.items()}
    assert tuning._designs("region_reduce=two_pass")["region_reduce"] == "two_pass"
    for bad in ("region_reduce=fast", "nope=padded", "region_reduce"):
        with pytest.raises(ValueError, match="MULACT_TRITON_DESIGN"):
            tuning._designs(bad)


def test_launch_settings_are_public_and_live(monkeypatch):
    import mulact.kernels as kernels

    monkeypatch.setattr(tuning, "WARPS", 8)
    assert kernels.WARPS == 8 and kernels.design("region_reduce") == tuning.design("region_reduce")
    with pytest.raises(AttributeError):
        kernels.NOT_A_SETTING  # noqa: B018
    # the ops read the settings through the package, never the private module
    from pathlib import Path

    ops_dir = Path(__file__).resolve().parents[1] / "mulact" / "ops"
    assert not [p.name for p in ops_dir.glob("*.py") if "kernels._tuning" in p.read_text()]


def test_tile_helpers_live_in_one_module():
    # the labeled tile, its block sizes and the status reports are defined in kernels/_blocks.py
    # only: a kernel module that uses one imports it from there
    import importlib
    import pkgutil

    import mulact.kernels as kernels
    from mulact.kernels import _blocks

    shared = ("block_sizes", "load_labeled_tile", "report_tile_status", "report_bad_ids", "report_nonfinite")
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"mulact.kernels.{info.name}")
        for name in shared:
            if hasattr(module, name):
                assert getattr(module, name) is getattr(_blocks, name), (info.name, name)
