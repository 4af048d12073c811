import pytest
import torch
from _partial_labels import (
    ODD_SHAPES,
    make_case,
    many_triton_programs,  # noqa: F401 (autouse fixture)
    naive_prototypical_pixel_loss,
    naive_region_class_argmax,
    saved_tensor_sizes,
    shape_id,
)
from _util import backend_device, raises_status

from mulact import ops
from mulact.ops import prototypical_pixel_loss


SHAPES = [*ODD_SHAPES, (2, 6, 13, 5, 4)]  # (B, C, H, W, R)
NORMALIZE = ["pair", "region"]


def _loss_and_grad(logits, regions, labels, temperature, normalize, backend):
    x = logits.detach().clone().requires_grad_(True)
    loss = prototypical_pixel_loss(x, regions, labels, temperature, normalize, backend=backend)
    (g,) = torch.autograd.grad(2.5 * loss, x)
    return loss.detach(), g


def _naive(logits, regions, labels, temperature, normalize):
    x = logits.detach().cpu().double().requires_grad_(True)
    loss = naive_prototypical_pixel_loss(x, regions.cpu(), labels.cpu(), temperature, normalize)
    (g,) = torch.autograd.grad(2.5 * loss, x)
    return loss.detach(), g


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("normalize", NORMALIZE)
@pytest.mark.parametrize("temperature", [0.1, 0.6])
def test_matches_naive(backend, shape, normalize, temperature):
    device = backend_device(backend)
    logits, regions, labels = make_case(*shape, seed=sum(shape) + 1, device=device)
    loss, g = _loss_and_grad(logits, regions, labels, temperature, normalize, backend)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert ops.last_backend("prototypical_pixel_loss") == backend
    n_loss, n_g = _naive(logits, regions, labels, temperature, normalize)
    torch.testing.assert_close(loss.double().cpu(), n_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g.double().cpu(), n_g, rtol=1e-4, atol=1e-5 * float(n_g.abs().max()) + 1e-9)


def test_case_has_pairs_and_modes_differ():
    logits, regions, labels = make_case(3, 5, 7, 11, 9, seed=37)
    pair, _ = _naive(logits, regions, labels, 0.6, "pair")
    region, _ = _naive(logits, regions, labels, 0.6, "region")
    assert pair > 0 and abs(float(pair) - float(region)) > 1e-4


def test_only_chosen_pixels_get_gradient(backend):
    device = backend_device(backend)
    logits, regions, labels = make_case(2, 5, 8, 9, 6, seed=4, device=device)
    _, g = _loss_and_grad(logits, regions, labels, 0.1, "pair", backend)
    index = naive_region_class_argmax(logits.cpu(), regions.cpu(), labels.cpu(), 0.1, 2)
    chosen = torch.zeros(2, 8 * 9, dtype=torch.bool)
    b, r, c = (index >= 0).nonzero(as_tuple=True)
    chosen[b, index[b, r, c]] = True
    touched = g.cpu().flatten(2).abs().sum(1) > 0
    assert chosen.any() and torch.equal(touched, chosen)


@pytest.mark.parametrize("sizes", [(0,), (0, 1)], ids=["unlabeled", "single_class_only"])
def test_nothing_to_average(backend, sizes):
    device = backend_device(backend)
    logits, regions, labels = make_case(2, 4, 5, 6, 5, seed=3, label_sizes=sizes, device=device)
    for normalize in NORMALIZE:
        loss, g = _loss_and_grad(logits, regions, labels, 0.1, normalize, backend)
        assert loss.item() == 0.0 and (g == 0).all()


def test_absent_region_is_skipped(backend):
    device = backend_device(backend)
    logits, regions, labels = make_case(1, 4, 5, 5, 3, seed=5, absent=0, negative=False, device=device)
    labels[0] = False
    labels[0, 0, [1, 2]] = True
    labels[0, 2, [0, 3]] = True
    only_first = regions.masked_fill(regions == 2, 1)  # region 2 no longer in the crop
    loss, _ = _loss_and_grad(logits, only_first, labels, 0.3, "region", backend)
    n_loss, _ = _naive(logits, only_first, labels, 0.3, "region")
    torch.testing.assert_close(loss.double().cpu(), n_loss, rtol=1e-5, atol=1e-6)
    labels_first = labels.clone()
    labels_first[0, 2] = False
    ref, _ = _loss_and_grad(logits, only_first, labels_first, 0.3, "region", "reference")
    torch.testing.assert_close(loss.cpu(), ref.cpu(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(backend, dtype):
    device = backend_device(backend)
    logits, regions, labels = make_case(2, 5, 6, 7, 6, seed=13, dtype=dtype, device=device)
    loss, g = _loss_and_grad(logits, regions, labels, 0.5, "pair", backend)
    assert loss.dtype == torch.float32 and g.dtype == dtype
    n_loss, n_g = _naive(logits, regions, labels, 0.5, "pair")
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(loss.double().cpu(), n_loss, rtol=tol, atol=tol)
    torch.testing.assert_close(g.double().cpu(), n_g, rtol=4 * tol, atol=tol * float(n_g.abs().max()))


@pytest.mark.parametrize("normalize", NORMALIZE)
def test_gradcheck_float64(backend, normalize):
    device = backend_device(backend)
    logits, regions, labels = make_case(1, 3, 3, 4, 3, seed=2, dtype=torch.float64, device=device, label_sizes=(2, 3))
    x = logits.clone().requires_grad_(True)
    fn = lambda t: prototypical_pixel_loss(t, regions, labels, 0.5, normalize, backend=backend)  # noqa: E731
    assert fn(logits).item() > 0
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend_", ["cpp", "triton"])
def test_saves_no_logits_sized_tensor(backend_):
    device = backend_device(backend_)
    logits, regions, labels = make_case(2, 6, 8, 9, 5, seed=2, device=device)
    x = logits.clone().requires_grad_(True)
    loss, saved = saved_tensor_sizes(lambda: prototypical_pixel_loss(x, regions, labels, backend=backend_, temperature=0.1))
    # nothing of the logits' size but the logits themselves (not copied): with the fused
    # cross-entropy kernel (Triton) the argmax's (B, R, C) pixels, else the (B, R, C, C) gather
    # of the prototypical pixels' logits, independent of H and W
    B, C = logits.shape[:2]
    fused = backend_ == "triton"
    others = [n for n, p in saved if p != x.data_ptr()]
    assert saved and others and max(others) < logits.numel()
    assert max(others) <= B * labels.shape[1] * C * (1 if fused else C)
    assert fused == any(p == x.data_ptr() for _, p in saved)
    loss.backward()
    assert x.grad.shape == x.shape


def test_bad_inputs(backend):
    device = backend_device(backend)
    logits, regions, labels = make_case(2, 4, 5, 6, 5, seed=1, device=device)
    with pytest.raises(ValueError, match="normalize"):
        prototypical_pixel_loss(logits, regions, labels, normalize="pixel", backend=backend, temperature=0.1)
    with pytest.raises(TypeError, match="region_labels"):
        prototypical_pixel_loss(logits, regions, labels.half(), backend=backend, temperature=0.1)
    with pytest.raises(ValueError, match="region_labels"):
        prototypical_pixel_loss(logits, regions, labels[:, :, :2], backend=backend, temperature=0.1)
    bad = regions.clone()
    bad[0, 0, 0] = 9
    with raises_status(r"regions.*9"):
        prototypical_pixel_loss(logits, bad, labels, backend=backend, temperature=0.1)


def test_channels_last_logits(backend):
    device = backend_device(backend)
    logits, regions, labels = make_case(2, 4, 6, 7, 5, seed=19, device=device, label_sizes=(2, 3))
    loss, g = _loss_and_grad(logits.to(memory_format=torch.channels_last), regions, labels, 0.4, "pair", backend)
    n_loss, n_g = _naive(logits, regions, labels, 0.4, "pair")
    torch.testing.assert_close(loss.double().cpu(), n_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g.double().cpu(), n_g, rtol=1e-4, atol=1e-5 * float(n_g.abs().max()))


@pytest.mark.parametrize("normalize", NORMALIZE)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [*SHAPES, (2, 4, 6, 7, 5)], ids=shape_id)
def test_cpu_selected_pairs_match_the_masked_form(shape, dtype, normalize):
    # Eager CPU selects the K pairs with nonzero; CUDA and torch.compile mask the (B, R, C, C)
    # slots (mulact/ops/prototypical_pixel_loss.py). Both must give the same loss and gradient.
    from mulact.ops.prototypical_pixel_loss import _loss_masked, _loss_selected
    from mulact.ops.region_class_argmax import region_class_argmax_reference

    logits, regions, labels = make_case(*shape, seed=sum(shape), dtype=dtype)
    index = region_class_argmax_reference(logits, regions, labels, 0.3, min_classes=2)
    if shape[0] == 2 and shape[-1] == 5:
        index[1] = -1  # an image without pairs
    out = []
    for form in (_loss_selected, _loss_masked):
        x = logits.detach().clone().requires_grad_(True)
        loss = form(x, index, 0.3, normalize)
        (g,) = torch.autograd.grad(loss, x)
        out.append((loss.detach(), g))
    (a, ga), (b, gb) = out
    assert a.dtype == b.dtype and ga.dtype == gb.dtype == dtype
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a, b, **tol)
    torch.testing.assert_close(ga.double(), gb.double(), **tol)
    if (index >= 0).any():
        assert float(a) > 0 and ga.abs().sum() > 0


def test_cpu_selected_pairs_without_any_pair_give_zero_and_zero_grad():
    from mulact.ops.prototypical_pixel_loss import _loss_selected

    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    index = torch.full((2, 6, 3), -1, dtype=torch.int64)
    for normalize in NORMALIZE:
        loss = _loss_selected(x, index, 0.1, normalize)
        (g,) = torch.autograd.grad(loss, x)
        assert float(loss.detach()) == 0.0 and not g.any()


@pytest.mark.parametrize("normalize", NORMALIZE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_cross_entropy_matches_the_gather(monkeypatch, normalize, dtype):
    # design fused_ce (default) against gather (the torch (B, R, C, C) gather), on the same argmax;
    # label_sizes with many classes per region make several slots pick one pixel (merged rows).
    from mulact.kernels import _tuning

    device = backend_device("triton")
    logits, regions, labels = make_case(2, 7, 5, 6, 4, seed=13, device=device, label_sizes=(2, 5, 7))
    logits = logits.to(dtype)
    results = []
    for design in ("fused_ce", "gather"):
        monkeypatch.setitem(_tuning.DESIGN, "prototypical_pixel_loss", design)
        x = logits.detach().clone().requires_grad_(True)
        loss = prototypical_pixel_loss(x, regions, labels, 0.3, normalize, backend="triton")
        (g,) = torch.autograd.grad(3.0 * loss, x)
        results.append((loss.detach(), g))
    index = ops.region_class_argmax(logits, regions, labels, 0.3, min_classes=2, backend="triton")
    flat = index[index >= 0]
    assert flat.numel() > flat.unique().numel()  # some pixel is the prototype of several classes
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(results[0][0], results[1][0], **tol)
    torch.testing.assert_close(results[0][1].float(), results[1][1].float(), **tol)


def test_confident_pixels_keep_their_tiny_loss(backend):
    # Prototypical pixels are the most confident ones: their loss is tiny next to the logits, and
    # must not be rounded to the logits' ulp (lse - z computed as log(s) - (z - max)).
    device = backend_device(backend)
    logits, regions, labels = make_case(1, 5, 24, 32, 6, seed=3, device=device, label_sizes=(2,))
    logits = logits * 0.5  # z up to ~30, losses ~1e-8: lse - z in float32 would give 0 or ~2e-6
    loss = prototypical_pixel_loss(logits, regions, labels, 0.1, backend=backend)
    ref = ops.prototypical_pixel_loss_reference(logits.double(), regions, labels, 0.1)
    assert 0 < float(ref) < 1e-6
    torch.testing.assert_close(loss.double().cpu(), ref.cpu(), rtol=0.05, atol=0)  # float32 rounding of 1 + tiny
