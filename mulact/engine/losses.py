"""Stage-1 objectives assembled from the fused ops, plus the partial-label baselines.

The model emits unscaled cosine logits; every loss here works on ``z = logits / τ``.

- :func:`mulact_loss` — the paper's Eq. 10: ``λ_CE·L_CE + λ_MP·L_MP + λ_PP·L_PP`` from the
  fused :func:`mulact.ops.partial_label_loss` and :func:`mulact.ops.prototypical_pixel_loss`
  (λ_MP = 0 / λ_PP = 0 give the Table-2 ablations "w/o MP" / "w/o PP"; the zero-weighted
  term is not computed).
- ``dominant`` — the dominant-label baseline: pixel CE over whole regions with their single
  (dominant) label; it is the CE term of ``partial_label_loss`` on one-hot region labels.
- :func:`infimum_loss` — Infimum loss (Cabannes et al. 2020, Appendix C.2): per pixel the
  smallest CE over the candidate set, ``-log max_{c∈Y} softmax(z)_c``.
- :func:`rc_loss` — RC loss (Feng et al. 2020, Appendix C.2): per pixel
  ``-Σ_{c∈Y} w_c(x) log softmax(z)_c`` with confidence weights over Y. Feng et al. start
  from uniform weights over Y and update them from the model's predictions
  (``w_c ∝ softmax(z)_c`` restricted to Y). Keeping a per-pixel weight table across random
  crops and rescalings is impractical for segmentation, so the weights are recomputed from
  the current (detached) prediction at every step after a warm-up with uniform weights
  (``warmup`` = fraction of the iterations, 10% by default).
All baselines average over labeled pixels (pixel-weighted, like L_CE / L_MP).
"""
from __future__ import annotations

import torch

__all__ = ["mulact_loss", "infimum_loss", "rc_loss", "pixel_label_sets", "stage1_loss"]


def pixel_label_sets(regions: torch.Tensor, region_labels: torch.Tensor):
    """Per-pixel candidate sets ``(B, H, W, K)`` bool and the mask of labeled pixels."""
    B, R, K = region_labels.shape
    ids = regions.clamp(min=0).long()
    sets = torch.gather(region_labels.bool(), 1, ids.reshape(B, -1, 1).expand(-1, -1, K))
    sets = sets.reshape(*regions.shape, K) & (regions >= 0).unsqueeze(-1)
    return sets, sets.any(-1)


def _acc(logits: torch.Tensor) -> torch.Tensor:
    """The logits in the ops' accumulation dtype (float32, float64 for float64 logits)."""
    from mulact.ops._dtypes import acc_dtype

    return logits.to(acc_dtype(logits))


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    n = mask.sum()
    if n == 0:
        return values.sum() * 0.0
    return (values * mask).sum() / n


def infimum_loss(logits, regions, region_labels, temperature: float = 0.1) -> torch.Tensor:
    logp = torch.log_softmax(_acc(logits) / temperature, dim=1).permute(0, 2, 3, 1)
    sets, labeled = pixel_label_sets(regions, region_labels)
    best = logp.masked_fill(~sets, float("-inf")).amax(-1)
    return _masked_mean(-best.masked_fill(~labeled, 0.0), labeled)


def rc_loss(logits, regions, region_labels, temperature: float = 0.1,
            uniform: bool = False) -> torch.Tensor:
    logp = torch.log_softmax(_acc(logits) / temperature, dim=1).permute(0, 2, 3, 1)
    sets, labeled = pixel_label_sets(regions, region_labels)
    if uniform:
        w = sets.to(logp.dtype)
    else:
        w = logp.detach().exp() * sets
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
    per_pixel = -(w * logp.masked_fill(~sets, 0.0)).sum(-1)
    return _masked_mean(per_pixel, labeled)


def mulact_loss(logits, regions, region_labels, temperature=0.1, lambda_ce=16.0,
                lambda_mp=8.0, lambda_pp=1.0):
    from mulact.ops import partial_label_loss, prototypical_pixel_loss

    ce, mp = partial_label_loss(logits, regions, region_labels, temperature=temperature)
    total = lambda_ce * ce + lambda_mp * mp
    parts = {"ce": ce.detach(), "mp": mp.detach()}
    if lambda_pp:
        pp = prototypical_pixel_loss(logits, regions, region_labels, temperature=temperature)
        total = total + lambda_pp * pp
        parts["pp"] = pp.detach()
    return total, parts


def stage1_loss(cfg, logits, regions, region_labels, progress: float):
    """The configured stage-1 objective; returns ``(loss, {name: detached value})``.

    ``progress`` in [0, 1) is the fraction of training done (RC loss warm-up).
    """
    tau = cfg.temperature
    if cfg.loss == "mulact":
        return mulact_loss(logits, regions, region_labels, tau, cfg.lambda_ce, cfg.lambda_mp,
                           cfg.lambda_pp)
    if cfg.loss == "dominant":
        from mulact.ops import partial_label_loss

        if (region_labels.sum(-1) > 1).any():
            raise ValueError("region_labels: loss 'dominant' needs single-class labels "
                             "(use labeling 'dominant')")
        ce, _ = partial_label_loss(logits, regions, region_labels, temperature=tau)
        return ce, {"ce": ce.detach()}
    if cfg.loss == "infimum":
        loss = infimum_loss(logits, regions, region_labels, tau)
        return loss, {"infimum": loss.detach()}
    if cfg.loss == "rc":
        loss = rc_loss(logits, regions, region_labels, tau, uniform=progress < 0.1)
        return loss, {"rc": loss.detach()}
    raise ValueError(f"loss: unknown {cfg.loss!r}")
