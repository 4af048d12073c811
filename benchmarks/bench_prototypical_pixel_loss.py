"""Prototypical pixel loss L_PP, forward + backward: fused argmax + gather vs what a user
writes today.

Providers, side by side per shape (tau = 0.1, mean over (region, class) pairs):
* ``mulact``    — :func:`mulact.ops.prototypical_pixel_loss`, automatic backend;
* ``reference`` — the library's pure-torch oracle (``scatter_reduce`` amax/amin);
* ``loop``      — per image: ``log_softmax``; per multi-class region, per labeled class:
  boolean mask, ``argmax`` over the region's pixels, CE at the chosen pixel;
* ``composite`` — vectorised torch: ``log_softmax`` over the whole batch, ``scatter_reduce``
  amax per (image, class, region), first pixel reaching it, gather, CE;
* ``mulact_gather`` (CUDA) — the Triton op with the previous design, a torch gather of
  ``(B, R, C, C)`` logits after the argmax (``MULACT_TRITON_DESIGN=prototypical_pixel_loss=gather``), beside the
  default fused cross-entropy kernel, so one run ranks the two.

Losses and gradients are checked against the reference before timing. ``extra_info``: the
bytes any implementation must move (docs/design.md, "Byte model": the logits of the pixels of
multi-label regions read once for the argmax, the gradient written, region ids read), GB/s,
and on CUDA the peak memory allocated beyond the inputs.

Run: ``python -m pytest benchmarks/bench_prototypical_pixel_loss.py --benchmark-only``.
"""
from __future__ import annotations

import pytest
import torch
from _measure import Compiled, cuda_peak_extra_bytes, gb_per_s, loss_and_grad
from _partial_label_inputs import stage1_inputs

from mulact.ops import last_backend, prototypical_pixel_loss, prototypical_pixel_loss_reference

TAU = 0.1
PROVIDERS = ["mulact", "mulact_gather", "reference", "loop", "composite", "compiled"]
SHAPES = [("cpu", 2, 20, 256, 512, 512)]
if torch.cuda.is_available():
    SHAPES += [("cuda", 4, 20, 769, 769, 2048)]


def loop(logits, regions, labels, temperature=TAU):
    losses = []
    for b in range(logits.shape[0]):
        lsm = torch.log_softmax(logits[b].float() / temperature, dim=0).flatten(1)  # (C, HW)
        flat = regions[b].flatten()
        for r in (labels[b].sum(-1) >= 2).nonzero().flatten().tolist():
            pix = (flat == r).nonzero().flatten()
            if pix.numel() == 0:
                continue
            for c in labels[b, r].nonzero().flatten().tolist():
                best = pix[lsm[c, pix].argmax()]
                losses.append(-lsm[c, best])
    return torch.stack(losses).mean() if losses else logits.sum() * 0


def composite(logits, regions, labels, temperature=TAU):
    batch, classes, height, width = logits.shape
    hw = height * width
    lsm = torch.log_softmax(logits.float() / temperature, dim=1).reshape(batch, classes, hw)
    num_regions = labels.shape[1]
    multi = labels.sum(-1) >= 2
    rid = regions.reshape(batch, hw)
    active = (rid >= 0) & multi.gather(1, rid.clamp(min=0))
    slot = torch.where(active, rid, num_regions).unsqueeze(1).expand(batch, classes, hw)
    with torch.no_grad():
        best = torch.full((batch, classes, num_regions + 1), float("-inf"), device=lsm.device)
        best = best.scatter_reduce(2, slot, lsm, "amax")
        hit = active.unsqueeze(1) & (lsm == best.gather(2, slot))
        cand = torch.where(hit, torch.arange(hw, device=lsm.device), hw)
        first = torch.full((batch, classes, num_regions + 1), hw, device=lsm.device).scatter_reduce(2, slot, cand, "amin")
        first = first[:, :, :num_regions].transpose(1, 2)
        b, r, c = (labels & multi.unsqueeze(-1) & (first < hw)).nonzero(as_tuple=True)
    return -lsm[b, c, first[b, r, c]].mean()


COMPILED = None  # the composite under torch.compile, made per test (fresh compile time)


def run(provider, logits, regions, labels):
    if provider == "mulact":
        loss = prototypical_pixel_loss(logits, regions, labels, TAU)
    elif provider == "mulact_gather":
        from mulact.kernels import _tuning

        _tuning.DESIGN["prototypical_pixel_loss"] = "gather"
        try:
            loss = prototypical_pixel_loss(logits, regions, labels, TAU)
        finally:
            _tuning.DESIGN["prototypical_pixel_loss"] = "fused_ce"
    elif provider == "reference":
        loss = prototypical_pixel_loss_reference(logits, regions, labels, TAU)
    elif provider == "loop":
        loss = loop(logits, regions, labels)
    elif provider == "compiled":
        loss = COMPILED(logits, regions, labels)
    else:
        loss = composite(logits, regions, labels)
    return loss_and_grad(loss, logits)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(map(str, s)))
def test_prototypical_pixel_loss_fwd_bwd(benchmark, shape, provider):
    device, batch, classes, height, width, num_regions = shape
    if provider == "mulact_gather" and device != "cuda":
        pytest.skip("a Triton design: CUDA only (the CPU runs the C++ kernel)")
    logits, regions, labels = stage1_inputs(device, batch, classes, height, width, num_regions)
    global COMPILED
    COMPILED = Compiled(composite)
    loss, grad = COMPILED.first_call(run, provider, logits, regions, labels)
    ref_loss, ref_grad = run("reference", logits, regions, labels)
    # Random logits have no near-ties between pixels, so every provider picks the same pixels.
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-3, atol=1e-4 * float(ref_grad.abs().max()))
    del ref_grad, grad

    peak = cuda_peak_extra_bytes(run, provider, logits, regions, labels) if device == "cuda" else None

    benchmark.group = f"prototypical_pixel_loss fwd+bwd {device} {batch}x{classes}x{height}x{width} R={num_regions}"
    rounds = {"loop": 2}.get(provider, 5) if device == "cpu" else 20
    benchmark.pedantic(run, args=(provider, logits, regions, labels), rounds=rounds, iterations=1, warmup_rounds=1)
    if provider.startswith("mulact"):
        benchmark.extra_info["backend"] = last_backend("prototypical_pixel_loss")
    multi = labels.sum(-1) >= 2
    in_multi = float((multi.gather(1, regions.clamp(min=0).flatten(1)) & (regions >= 0).flatten(1)).float().mean())
    moved = int((1 + in_multi) * logits.numel() * logits.element_size() + regions.numel() * regions.element_size())
    benchmark.extra_info["bytes"] = moved
    benchmark.extra_info["GB/s"] = gb_per_s(benchmark, moved)
    benchmark.extra_info["pairs"] = int((labels & (labels.sum(-1, keepdim=True) >= 2)).sum())
    benchmark.extra_info["peak_extra_bytes"] = peak
    if provider == "compiled":
        benchmark.extra_info["compile_s"] = COMPILED.compile_s
