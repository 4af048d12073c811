"""Stage-1 losses L_CE + L_MP, forward + backward: fused op vs what a user writes today.

Providers, side by side per shape (``16 * L_CE + 8 * L_MP``, pixel normalisation, tau = 0.1):
* ``mulact``    — :func:`mulact.ops.partial_label_loss`, automatic backend (C++ on CPU,
  Triton on CUDA);
* ``reference`` — the library's pure-torch oracle;
* ``loop``      — per image, per labeled region: boolean mask, ``log_softmax`` of the
  region's pixels, ``logsumexp`` over the label set; pixel losses collected per term, averaged;
* ``composite`` — vectorised torch: ``log_softmax`` + masked ``logsumexp`` with label masks
  gathered per pixel + ``scatter_add`` sums/counts per term;
* ``mulact_recompute`` (CUDA) — the Triton op with the previous design, the backward
  recomputing the gradient from the logits (``MULACT_TRITON_DESIGN=partial_label_loss=recompute``), beside
  the default gradient-in-forward design, so one run ranks the two.

Every provider's loss and gradient are checked against the reference before timing.
``extra_info``: the bytes any implementation must move (docs/design.md, "Byte model": the
labeled pixels' logits read once, the gradient written once, the region ids read once), the
achieved GB/s over them, and on CUDA the peak memory allocated beyond the inputs.

Run: ``python -m pytest benchmarks/bench_partial_label_loss.py --benchmark-only``.
"""
from __future__ import annotations

import pytest
import torch
from _measure import Compiled, cuda_peak_extra_bytes, gb_per_s, loss_and_grad
from _partial_label_inputs import stage1_inputs

from mulact.ops import last_backend, partial_label_loss, partial_label_loss_reference

TAU = 0.1
PROVIDERS = ["mulact", "mulact_recompute", "reference", "loop", "composite", "compiled"]
# (device, B, C, H, W, R): CPU scaled to a small machine; CUDA at Cityscapes training crops.
SHAPES = [("cpu", 2, 20, 256, 512, 512)]
if torch.cuda.is_available():
    SHAPES += [("cuda", 4, 20, 769, 769, 2048)]


def loop(logits, regions, labels, temperature=TAU):
    terms = {1: [], 2: []}
    for b in range(logits.shape[0]):
        for r in labels[b].any(-1).nonzero().flatten().tolist():
            mask = regions[b] == r
            if not mask.any():
                continue
            y = labels[b, r]
            lsm = torch.log_softmax(logits[b][:, mask].float() / temperature, dim=0)  # (C, n)
            terms[1 if int(y.sum()) == 1 else 2].append(-lsm[y].logsumexp(0))
    zero = logits.sum() * 0
    return tuple(torch.cat(terms[t]).mean() if terms[t] else zero for t in (1, 2))


def composite(logits, regions, labels, temperature=TAU):
    batch = logits.shape[0]
    lsm = torch.log_softmax(logits.float() / temperature, dim=1)
    valid = regions >= 0
    rid = regions.clamp(min=0)
    bidx = torch.arange(batch, device=logits.device).view(batch, 1, 1)
    member = labels[bidx, rid].permute(0, 3, 1, 2)  # (B, C, H, W) label mask per pixel
    count = labels.sum(-1)[bidx, rid] * valid  # |Y| per pixel, 0 where unlabeled
    member = member | (count == 0).unsqueeze(1)  # keep logsumexp finite on unlabeled pixels
    ell = -lsm.masked_fill(~member, float("-inf")).logsumexp(1)
    term = count.clamp(max=2).reshape(-1)  # 0 unlabeled, 1 CE, 2 MP
    sums = torch.zeros(3, device=logits.device).scatter_add(0, term, ell.reshape(-1))
    counts = torch.zeros(3, device=logits.device).scatter_add(0, term, torch.ones_like(ell).reshape(-1))
    means = sums / counts.clamp(min=1)
    return means[1], means[2]


COMPILED = None  # the composite under torch.compile, made per test (fresh compile time)


def run(provider, logits, regions, labels):
    if provider == "mulact":
        ce, mp = partial_label_loss(logits, regions, labels, temperature=TAU)
    elif provider == "mulact_recompute":
        from mulact.kernels import _tuning

        _tuning.DESIGN["partial_label_loss"] = "recompute"
        try:
            ce, mp = partial_label_loss(logits, regions, labels, temperature=TAU)
        finally:
            _tuning.DESIGN["partial_label_loss"] = "grad_in_forward"
    elif provider == "reference":
        ce, mp = partial_label_loss_reference(logits, regions, labels, TAU)
    elif provider == "loop":
        ce, mp = loop(logits, regions, labels)
    elif provider == "compiled":
        ce, mp = COMPILED(logits, regions, labels)
    else:
        ce, mp = composite(logits, regions, labels)
    loss = 16 * ce + 8 * mp
    return loss_and_grad(loss, logits)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(map(str, s)))
def test_partial_label_loss_fwd_bwd(benchmark, shape, provider):
    device, batch, classes, height, width, num_regions = shape
    if provider == "mulact_recompute" and device != "cuda":
        pytest.skip("a Triton design: CUDA only (the CPU runs the C++ kernel)")
    logits, regions, labels = stage1_inputs(device, batch, classes, height, width, num_regions)
    global COMPILED
    COMPILED = Compiled(composite)
    loss, grad = COMPILED.first_call(run, provider, logits, regions, labels)
    ref_loss, ref_grad = run("reference", logits, regions, labels)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-3, atol=1e-4 * float(ref_grad.abs().max()))
    del ref_grad, grad

    peak = cuda_peak_extra_bytes(run, provider, logits, regions, labels) if device == "cuda" else None

    benchmark.group = f"partial_label_loss fwd+bwd {device} {batch}x{classes}x{height}x{width} R={num_regions}"
    rounds = {"loop": 2}.get(provider, 5) if device == "cpu" else 20
    benchmark.pedantic(run, args=(provider, logits, regions, labels), rounds=rounds, iterations=1, warmup_rounds=1)
    if provider.startswith("mulact"):
        benchmark.extra_info["backend"] = last_backend("partial_label_loss")
    labeled = float((labels.any(-1).gather(1, regions.clamp(min=0).flatten(1)) & (regions >= 0).flatten(1)).float().mean())
    moved = int((1 + labeled) * logits.numel() * logits.element_size() + regions.numel() * regions.element_size())
    benchmark.extra_info["bytes"] = moved
    benchmark.extra_info["GB/s"] = gb_per_s(benchmark, moved)
    benchmark.extra_info["labeled_pixel_fraction"] = round(labeled, 3)
    benchmark.extra_info["peak_extra_bytes"] = peak
    if provider == "compiled":
        benchmark.extra_info["compile_s"] = COMPILED.compile_s
