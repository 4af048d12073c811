import importlib
import math
import os
import subprocess
import sys

import pytest
import torch
from _partial_labels import ODD_SHAPES, make_case, naive_partial_label_loss, saved_tensor_sizes, shape_id
from _partial_labels import many_triton_programs  # noqa: F401 (autouse fixture)
from _util import backend_device, raises_status

from mulact import ops
from mulact.ops import partial_label_loss, partial_label_loss_reference


SHAPES = [*ODD_SHAPES, (2, 4, 13, 5, 4)]  # (B, C, H, W, R)
NORMALIZE = ["pixel", "region"]


def _loss_and_grad(logits, regions, labels, temperature, normalize, backend, w_ce=3.0, w_mp=2.0):
    x = logits.detach().clone().requires_grad_(True)
    ce, mp = partial_label_loss(x, regions, labels, temperature, normalize, backend=backend)
    (g,) = torch.autograd.grad(w_ce * ce + w_mp * mp, x)
    return ce.detach(), mp.detach(), g


def _recompute_design(monkeypatch):
    """Select the recompute design (MULACT_TRITON_DESIGN=partial_label_loss=recompute) for this test."""
    from mulact.kernels import _tuning

    monkeypatch.setitem(_tuning.DESIGN, "partial_label_loss", "recompute")


def _close_grad(g, ref):
    # fp32 gradients of size ~1/tau: compare relative to the largest entry.
    torch.testing.assert_close(g.double().cpu(), ref.cpu(), rtol=1e-4, atol=1e-5 * float(ref.abs().max()) + 1e-9)


def _naive(logits, regions, labels, temperature, normalize, w_ce=3.0, w_mp=2.0):
    x = logits.detach().double().cpu().requires_grad_(True)
    ce, mp = naive_partial_label_loss(x, regions.cpu(), labels.cpu(), temperature, normalize)
    (g,) = torch.autograd.grad(w_ce * ce + w_mp * mp, x)
    return ce.detach(), mp.detach(), g


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("normalize", NORMALIZE)
@pytest.mark.parametrize("temperature", [0.1, 0.7])
def test_matches_naive_and_reference(backend, shape, normalize, temperature):
    device = backend_device(backend)
    logits, regions, labels = make_case(*shape, seed=sum(shape), device=device)
    ce, mp, g = _loss_and_grad(logits, regions, labels, temperature, normalize, backend)
    assert ce.dtype == torch.float32 and mp.dtype == torch.float32 and ce.dim() == 0
    assert ops.last_backend("partial_label_loss") == backend
    n_ce, n_mp, n_g = _naive(logits, regions, labels, temperature, normalize)
    torch.testing.assert_close(ce.double().cpu(), n_ce, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mp.double().cpu(), n_mp, rtol=1e-5, atol=1e-5)
    _close_grad(g, n_g)
    r_ce, r_mp, r_g = _loss_and_grad(logits, regions, labels, temperature, normalize, "reference")
    torch.testing.assert_close(ce, r_ce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mp, r_mp, rtol=1e-5, atol=1e-6)
    _close_grad(g, r_g.double())


def test_case_exercises_both_terms():
    # The cases above must contain CE and MP regions, absent regions and negative ids,
    # otherwise a kernel that drops a term would pass them.
    logits, regions, labels = make_case(3, 5, 7, 11, 9, seed=35)
    ce, mp, g = _naive(logits, regions, labels, 0.1, "pixel")
    assert ce > 0 and mp > 0
    assert (regions < 0).any() and not (regions == 8).any() and labels[:, 8].any()


def test_regions_weigh_differently_from_pixels(backend):
    device = backend_device(backend)
    regions = torch.zeros(1, 4, 4, dtype=torch.long, device=device)
    regions[0, 0, 0] = 1  # a 1-pixel CE region next to a 15-pixel one
    labels = torch.zeros(1, 2, 3, dtype=torch.bool, device=device)
    labels[0, 0, 0] = labels[0, 1, 2] = True
    logits = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(1)).to(device)
    pix, _ = partial_label_loss(logits, regions, labels, 1.0, "pixel", backend=backend)
    reg, _ = partial_label_loss(logits, regions, labels, 1.0, "region", backend=backend)
    n_pix, _, _ = _naive(logits, regions, labels, 1.0, "pixel")
    n_reg, _, _ = _naive(logits, regions, labels, 1.0, "region")
    torch.testing.assert_close(pix.double().cpu(), n_pix, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(reg.double().cpu(), n_reg, rtol=1e-5, atol=1e-6)
    assert abs(float(pix) - float(reg)) > 1e-3


def test_equal_logits_give_closed_form(backend):
    # All logits equal: l = log(C / |Y|) for every pixel, whatever the normalisation.
    device = backend_device(backend)
    regions = torch.tensor([[[0, 0, 1], [1, 2, -1]]], device=device)
    labels = torch.zeros(1, 3, 5, dtype=torch.bool, device=device)
    labels[0, 0, 1] = True
    labels[0, 1, [0, 2, 4]] = True
    logits = torch.full((1, 5, 2, 3), 0.25, device=device)
    for normalize in NORMALIZE:
        ce, mp, g = _loss_and_grad(logits, regions, labels, 0.1, normalize, backend)
        assert math.isclose(ce.item(), math.log(5), rel_tol=1e-6)
        assert math.isclose(mp.item(), math.log(5 / 3), rel_tol=1e-6)
        assert torch.isfinite(g).all() and g[0, :, 1, 2].abs().sum() == 0  # region 2 unlabeled


@pytest.mark.parametrize("which", ["ce_only", "mp_only", "unlabeled"])
def test_single_term_and_empty_batches(backend, which):
    device = backend_device(backend)
    sizes = {"ce_only": (0, 1), "mp_only": (0, 2, 3), "unlabeled": (0,)}[which]
    logits, regions, labels = make_case(2, 4, 5, 6, 5, seed=3, label_sizes=sizes, device=device)
    for normalize in NORMALIZE:
        ce, mp, g = _loss_and_grad(logits, regions, labels, 0.1, normalize, backend)
        n_ce, n_mp, n_g = _naive(logits, regions, labels, 0.1, normalize)
        assert torch.isfinite(g).all()
        torch.testing.assert_close(ce.double().cpu(), n_ce, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mp.double().cpu(), n_mp, rtol=1e-5, atol=1e-6)
        _close_grad(g, n_g)
        if which != "mp_only":
            assert float(mp) == 0.0
        if which != "ce_only":
            assert float(ce) == 0.0
        if which == "unlabeled":
            assert (g == 0).all()
        else:
            assert g.abs().sum() > 0


@pytest.mark.parametrize("use", ["ce", "mp"])
def test_unused_term_gets_no_gradient(backend, use):
    device = backend_device(backend)
    logits, regions, labels = make_case(2, 4, 6, 5, 6, seed=11, device=device)
    x = logits.clone().requires_grad_(True)
    ce, mp = partial_label_loss(x, regions, labels, 0.2, backend=backend)
    (g,) = torch.autograd.grad(ce if use == "ce" else mp, x)
    y = logits.double().cpu().requires_grad_(True)
    n_ce, n_mp = naive_partial_label_loss(y, regions.cpu(), labels.cpu(), 0.2, "pixel")
    (n_g,) = torch.autograd.grad(n_ce if use == "ce" else n_mp, y)
    _close_grad(g, n_g)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(backend, dtype):
    device = backend_device(backend)
    logits, regions, labels = make_case(2, 5, 6, 7, 6, seed=5, dtype=dtype, device=device)
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    for normalize in NORMALIZE:
        ce, mp, g = _loss_and_grad(logits, regions, labels, 0.5, normalize, backend)
        assert ce.dtype == torch.float32 and g.dtype == dtype
        # Oracle: the same half-precision inputs, computed in float64.
        n_ce, n_mp, n_g = _naive(logits, regions, labels, 0.5, normalize)
        torch.testing.assert_close(ce.double().cpu(), n_ce, rtol=tol, atol=tol)
        torch.testing.assert_close(mp.double().cpu(), n_mp, rtol=tol, atol=tol)
        torch.testing.assert_close(g.double().cpu(), n_g, rtol=4 * tol, atol=tol * float(n_g.abs().max()))


@pytest.mark.parametrize("normalize", NORMALIZE)
def test_gradcheck_float64(backend, normalize):
    device = backend_device(backend)
    logits, regions, labels = make_case(1, 3, 3, 4, 4, seed=21, dtype=torch.float64, device=device)
    x = logits.clone().requires_grad_(True)

    def fn(t):
        ce, mp = partial_label_loss(t, regions, labels, 0.5, normalize, backend=backend)
        return ce, mp

    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-7)
    ce, mp = fn(logits)
    assert ce.dtype == torch.float64 and float(ce) > 0 and float(mp) > 0


@pytest.mark.parametrize("backend_", ["cpp", "triton"])
def test_backward_saves_only_small_tensors(monkeypatch, backend_):
    # The recompute design must keep the logits (no copy) plus per-region/per-term tensors only
    # (the gradient-in-forward design holds one more: the gradient, test_grad_in_forward_*).
    _recompute_design(monkeypatch)
    device = backend_device(backend_)
    logits, regions, labels = make_case(2, 6, 8, 9, 5, seed=2, device=device)
    x = logits.clone().requires_grad_(True)
    (ce, mp), saved = saved_tensor_sizes(lambda: partial_label_loss(x, regions, labels, backend=backend_, temperature=0.1))
    big = [s for s in saved if s[0] > regions.numel()]  # region map and smaller are fine
    assert big == [(x.numel(), x.data_ptr())], saved
    (ce + mp).backward()
    assert x.grad.shape == x.shape


def test_noncontiguous_and_int32_regions(backend):
    device = backend_device(backend)
    logits, regions, labels = make_case(2, 4, 5, 7, 5, seed=8, device=device)
    cl = logits.to(memory_format=torch.channels_last)
    ce, mp = partial_label_loss(cl, regions.to(torch.int32), labels.to(torch.uint8), 0.3, backend=backend)
    r_ce, r_mp = partial_label_loss_reference(logits, regions, labels, 0.3)
    torch.testing.assert_close(ce, r_ce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mp, r_mp, rtol=1e-5, atol=1e-6)


def test_deterministic(backend):
    device = backend_device(backend)
    logits, regions, labels = make_case(2, 5, 17, 19, 12, seed=4, device=device)
    a = _loss_and_grad(logits, regions, labels, 0.1, "region", backend)
    b = _loss_and_grad(logits, regions, labels, 0.1, "region", backend)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def test_bad_inputs(backend):
    device = backend_device(backend)
    logits, regions, labels = make_case(2, 4, 5, 6, 5, seed=1, device=device)
    bad = regions.clone()
    bad[1, 2, 3] = 7
    with raises_status(r"regions.*7"):
        partial_label_loss(logits, bad, labels, backend=backend, temperature=0.1)
    with pytest.raises(ValueError, match="region_labels"):
        partial_label_loss(logits, regions, labels[:, :, :3], backend=backend, temperature=0.1)
    with pytest.raises(ValueError, match="region_labels"):
        partial_label_loss(logits, regions, labels[:1], backend=backend, temperature=0.1)
    with pytest.raises(TypeError, match="region_labels"):
        partial_label_loss(logits, regions, labels.float(), backend=backend, temperature=0.1)
    with pytest.raises(TypeError, match="regions"):
        partial_label_loss(logits, regions.float(), labels, backend=backend, temperature=0.1)
    with pytest.raises(ValueError, match="regions"):
        partial_label_loss(logits, regions[:, :4], labels, backend=backend, temperature=0.1)
    with pytest.raises(ValueError, match="regions"):
        partial_label_loss(logits, regions.to("meta"), labels, backend=backend, temperature=0.1)
    with pytest.raises(ValueError, match="normalize"):
        partial_label_loss(logits, regions, labels, normalize="batch", backend=backend, temperature=0.1)
    with pytest.raises(ValueError, match="temperature"):
        partial_label_loss(logits, regions, labels, temperature=0.0, backend=backend)
    with pytest.raises(TypeError, match="logits"):
        partial_label_loss(logits.long(), regions, labels, backend=backend, temperature=0.1)
    poisoned = logits.clone()
    labeled = (regions >= 0) & labels.any(-1).gather(1, regions.clamp(min=0).flatten(1)).view_as(regions)
    b, h, w = labeled.nonzero()[0].tolist()
    poisoned[b, 2, h, w] = float("nan")
    with raises_status("logits"):
        partial_label_loss(poisoned, regions, labels, backend=backend, temperature=0.1)


def test_large_logit_gaps_stay_finite(backend):
    # z gaps of hundreds: sum_Y exp(z - max) underflows unless Y gets its own maximum, and a
    # clamped exp must not overflow into inf * 0 = NaN.
    device = backend_device(backend)
    logits, regions, labels = make_case(2, 6, 5, 7, 5, seed=17, device=device)
    logits = logits * 7  # gaps stay below float64 underflow in the naive oracle
    for normalize in NORMALIZE:
        ce, mp, g = _loss_and_grad(logits, regions, labels, 0.1, normalize, backend)
        n_ce, n_mp, n_g = _naive(logits, regions, labels, 0.1, normalize)
        assert torch.isfinite(g).all() and float(n_ce) > 50
        torch.testing.assert_close(ce.double().cpu(), n_ce, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(mp.double().cpu(), n_mp, rtol=1e-5, atol=1e-4)
        _close_grad(g, n_g)


@pytest.mark.parametrize("backend_", ["cpp", "triton"])
@pytest.mark.parametrize("use", ["both", "ce", "mp"])
def test_one_backward_launch_and_unused_term_is_skipped(monkeypatch, backend_, use):
    _recompute_design(monkeypatch)
    module = importlib.import_module("mulact.ops.partial_label_loss")  # the package re-exports the function

    calls = []
    backward = module._BACKWARD.launchers[backend_]

    def spy(logits, regions, labels, scale, temperature):
        calls.append(scale.clone())
        return backward(logits, regions, labels, scale, temperature)

    monkeypatch.setitem(module._BACKWARD.launchers, backend_, spy)
    device = backend_device(backend_)
    logits, regions, labels = make_case(2, 4, 6, 5, 6, seed=11, device=device)
    x = logits.clone().requires_grad_(True)
    ce, mp = partial_label_loss(x, regions, labels, 0.2, backend=backend_)
    loss = {"both": 16 * ce + 8 * mp, "ce": ce, "mp": mp}[use]
    loss.backward()
    assert len(calls) == 1
    terms = labels.sum(-1).clamp(max=2)
    scale = calls[0]
    # A term outside the graph has a None upstream gradient: its regions get scale 0, so the
    # kernel does not even read their logits.
    assert bool((scale[terms == 1] != 0).all()) == (use in ("both", "ce"))
    assert bool((scale[terms == 2] != 0).all()) == (use in ("both", "mp"))
    assert (scale[terms == 0] == 0).all()


@pytest.mark.parametrize("shape", [(0, 3, 4, 4, 2), (2, 3, 0, 4, 2), (1, 3, 2, 2, 0)], ids=["B0", "H0", "R0"])
def test_empty_shapes(backend, shape):
    device = backend_device(backend)
    batch, classes, height, width, num_regions = shape
    x = torch.randn(batch, classes, height, width, device=device, requires_grad=True)
    regions = torch.full((batch, height, width), -1, device=device)
    labels = torch.ones(batch, num_regions, classes, dtype=torch.bool, device=device)
    ce, mp = partial_label_loss(x, regions, labels, backend=backend, temperature=0.1)
    (ce + mp).backward()
    assert ce.item() == 0 and mp.item() == 0 and (x.grad == 0).all()


@pytest.mark.parametrize("recompute", [False, True])
def test_default_triton_blocks(monkeypatch, recompute):
    # The other tests shrink the Triton blocks; run the shipped block sizes once, in both designs
    # (the recompute backward runs half the pixels per program: recompute_block_sizes)
    monkeypatch.undo()
    if recompute:
        _recompute_design(monkeypatch)
    device = backend_device("triton")
    logits, regions, labels = make_case(2, 5, 17, 19, 12, seed=4, device=device)
    for normalize in NORMALIZE:
        ce, mp, g = _loss_and_grad(logits, regions, labels, 0.1, normalize, "triton")
        r_ce, r_mp, r_g = _loss_and_grad(logits, regions, labels, 0.1, normalize, "reference")
        torch.testing.assert_close(ce, r_ce, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mp, r_mp, rtol=1e-5, atol=1e-6)
        _close_grad(g, r_g.double())


def test_cpp_many_chunks_and_tiles():
    # Several C++ work chunks per image, each with more active pixels than one tile holds.
    logits, regions, labels = make_case(2, 3, 48, 101, 6, seed=23, label_sizes=(1, 2, 3), absent=0)
    for normalize in NORMALIZE:
        ce, mp, g = _loss_and_grad(logits, regions, labels, 0.3, normalize, "cpp")
        r_ce, r_mp, r_g = _loss_and_grad(logits, regions, labels, 0.3, normalize, "reference")
        torch.testing.assert_close(ce, r_ce, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mp, r_mp, rtol=1e-5, atol=1e-6)
        _close_grad(g, r_g.double())


_THREAD_PROBE = """
import hashlib, sys, torch
sys.path.insert(0, sys.argv[1])
from _partial_labels import make_case
from mulact.ops import partial_label_loss, region_class_argmax
logits, regions, labels = make_case(2, 3, 48, 101, 6, seed=23, label_sizes=(1, 2, 3), absent=0)
x = logits.clone().requires_grad_(True)
ce, mp = partial_label_loss(x, regions, labels, 0.3, "region", backend="cpp")
(16 * ce + 8 * mp).backward()
idx = region_class_argmax(logits, regions, labels, 0.3, backend="cpp")
h = hashlib.sha256()
for t in (ce.detach(), mp.detach(), x.grad, idx):
    h.update(t.numpy().tobytes())
print(h.hexdigest())
"""


def test_cpp_results_independent_of_thread_count():
    here = os.path.dirname(os.path.abspath(__file__))
    digests = set()
    for threads in ("1", "2", "3"):
        env = dict(os.environ, OMP_NUM_THREADS=threads)
        done = subprocess.run([sys.executable, "-c", _THREAD_PROBE, here], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        digests.add(done.stdout.strip())
    assert len(digests) == 1


def test_cpp_large_gradient_streamed_stores():
    # A gradient of >= 8 MiB is written with streaming stores from a staged row; an odd H * W
    # leaves the class rows unaligned, so the scalar head/tail of every row is exercised too.
    logits, regions, labels = make_case(1, 4, 725, 725, 9, seed=29, dtype=torch.float32)
    assert logits.float().numel() * 4 >= 8 << 20
    logits = logits.float()
    ce, mp, g = _loss_and_grad(logits, regions, labels, 0.3, "pixel", "cpp")
    r_ce, r_mp, r_g = _loss_and_grad(logits, regions, labels, 0.3, "pixel", "reference")
    torch.testing.assert_close(ce, r_ce, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(mp, r_mp, rtol=1e-4, atol=1e-6)
    _close_grad(g, r_g.double())
    unlabeled = (labels.sum(-1)[0][regions[0].clamp(min=0)] == 0) | (regions[0] < 0)
    assert bool(unlabeled.any()) and bool((g[0][:, unlabeled] == 0).all())


# --------------------------------------------------------------------------------------------
# Gradient-in-forward design (Triton default; docs/design.md, "Byte model")
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("normalize", NORMALIZE)
def test_grad_in_forward_follows_changing_upstream_gradients(normalize):
    # The forward writes the gradient for the previous backward's upstream gradients; every
    # change of them (weights, an unused term, a term alone) must still give the exact gradient.
    pll = importlib.import_module("mulact.ops.partial_label_loss")
    device = backend_device("triton")
    logits, regions, labels = make_case(2, 5, 9, 11, 8, seed=31, device=device)
    for w_ce, w_mp in [(3.0, 2.0), (3.0, 2.0), (16.0, 8.0), (16.0, 0.0), (0.0, 8.0), (1.0, 1.0), (1.0, 1.0)]:
        x = logits.detach().clone().requires_grad_(True)
        ce, mp = partial_label_loss(x, regions, labels, 0.1, normalize, backend="triton")
        loss = (w_ce * ce if w_ce else 0) + (w_mp * mp if w_mp else 0)  # a weight of 0: the term is unused
        (g,) = torch.autograd.grad(loss, x)
        _, _, n_g = _naive(logits, regions, labels, 0.1, normalize, w_ce, w_mp)
        _close_grad(g, n_g)
        guess = pll._guess(x.device, torch.float32).cpu().tolist()
        assert guess == [w_ce or guess[0], w_mp or guess[1]]  # an unused term keeps its guess
        assert 0 not in guess


def test_grad_in_forward_rewrites_only_changed_terms():
    # The backward kernel touches nothing when the guess holds, and only the pixels of the term
    # whose gradient changed otherwise: poison the buffer and look at what was rewritten.
    pll = importlib.import_module("mulact.ops.partial_label_loss")
    device = backend_device("triton")
    logits, regions, labels = make_case(2, 4, 7, 9, 6, seed=5, device=device)
    terms = pll.region_terms(labels)
    term_px = terms.long().gather(1, regions.clamp(min=0).flatten(1)).view_as(regions) * (regions >= 0)
    denom = torch.tensor([5.0, 7.0])
    used = torch.tensor([3.0, 2.0])
    for actual, redone in [((3.0, 2.0), ()), ((4.0, 2.0), (1,)), ((3.0, 0.0), (2,)), ((1.0, 1.0), (1, 2))]:
        actual = torch.tensor(actual)
        scale = pll._term_scale(actual / denom / 0.1, terms, None)
        buf = torch.full_like(logits, 123.0)
        pll._redo_changed_triton(buf, logits, regions, pll.labels_u8(labels), terms, scale, used, actual, 0.1)
        full = pll._backward_triton(logits, regions, pll.labels_u8(labels), scale, 0.1)
        rewritten = torch.zeros_like(term_px, dtype=torch.bool)
        for t in redone:
            rewritten |= term_px == t
        rewritten = rewritten.unsqueeze(1).expand_as(buf)
        assert torch.equal(buf[rewritten], full[rewritten])
        assert (buf[~rewritten] == 123.0).all()


def test_grad_in_forward_second_backward_and_no_grad():
    device = backend_device("triton")
    logits, regions, labels = make_case(2, 4, 6, 7, 6, seed=9, device=device)
    x = logits.detach().clone().requires_grad_(True)
    ce, mp = partial_label_loss(x, regions, labels, 0.2, backend="triton")
    assert "grad_in_forward" in ce.grad_fn.name()  # the design under test ran
    first = torch.autograd.grad(3 * ce + 2 * mp, x, retain_graph=True)[0]
    second = torch.autograd.grad(5 * ce + 1 * mp, x)[0]  # recomputed: the buffer was handed on
    _close_grad(first, _naive(logits, regions, labels, 0.2, "pixel", 3.0, 2.0)[2])
    _close_grad(second, _naive(logits, regions, labels, 0.2, "pixel", 5.0, 1.0)[2])
    with torch.no_grad():  # no gradient wanted: no buffer is written
        ce2, _ = partial_label_loss(x, regions, labels, 0.2, backend="triton")
    assert ce2.grad_fn is None and torch.equal(ce2, ce.detach())


def test_grad_in_forward_holds_one_gradient_buffer():
    device = backend_device("triton")
    logits, regions, labels = make_case(2, 6, 8, 9, 5, seed=2, device=device)
    x = logits.clone().requires_grad_(True)
    (ce, mp), saved = saved_tensor_sizes(lambda: partial_label_loss(x, regions, labels, backend="triton",
                                                                     temperature=0.1))
    big = [s for s in saved if s[0] > regions.numel()]
    assert big == [(x.numel(), x.data_ptr())], saved  # the logits, not copied
    (ce + mp).backward()
    assert x.grad.shape == x.shape


def test_grad_in_forward_guess_miss_equals_hit():
    # A missed guess rewrites the pixels with the forward's own formula and scale.
    pll = importlib.import_module("mulact.ops.partial_label_loss")
    device = backend_device("triton")
    logits, regions, labels = make_case(2, 5, 6, 7, 6, seed=21, device=device)
    grads = []
    for guess in ([3.0, 2.0], [1.0, 5.0]):
        pll._guess(logits.device, torch.float32).copy_(torch.tensor(guess))
        x = logits.detach().clone().requires_grad_(True)
        ce, mp = partial_label_loss(x, regions, labels, 0.1, "region", backend="triton")
        grads.append(torch.autograd.grad(3 * ce + 2 * mp, x)[0])
    assert torch.equal(grads[0], grads[1])
