"""Prototypical pixel loss L_PP (paper Eq. 8-9, SPEC §3.3).

For every labeled region r with ``|Y(r)| >= 2`` and every ``c in Y(r)``, the prototypical pixel
``x*_{r,c} = argmax_{x in r} softmax(z(x))_c`` (:func:`region_class_argmax` with
``min_classes=2``) is trained with cross-entropy towards ``c``:

    L_PP = mean over (r, c) of -log softmax(z(x*_{r,c}))_c          (normalize="pair")
    L_PP = mean over r of mean over c in Y(r) of the same            (normalize="region", Eq. 9)

Implementation: the fused argmax kernel (the only pass over the logits; ``backend`` picks it)
returns K chosen pixels; their C logits are gathered into a ``(K, C)`` tensor (K is at most
the number of labeled (region, class) pairs: tiny) and ``log_softmax`` runs there in torch.
Autograd through the gather scatters the gradient back: the only ``(B, C, H, W)`` tensor the
backward allocates is the gradient itself, and only the chosen pixels get a non-zero gradient.
The argmax is treated as a constant (it is piecewise constant in the logits). Pairs whose
region has no pixel in the crop are skipped; with no pair the loss is 0 with a zero gradient.
Finding K costs one device-to-host sync (``nonzero``).
"""
from __future__ import annotations

import torch

from ._backend import resolve_backend
from ._labels import acc_dtype
from ._validate import check_choice, check_labeled_logits, check_temperature
from .region_class_argmax import region_class_argmax_fused, region_class_argmax_reference

OP = "prototypical_pixel_loss"
NORMALIZE = ("pair", "region")


def _check(logits, regions, region_labels, temperature, normalize):
    num_regions = check_labeled_logits(OP, logits, regions, region_labels)
    temperature = check_temperature(OP, temperature)
    check_choice(OP, "normalize", normalize, NORMALIZE)
    return num_regions, temperature


def loss_from_prototypes(logits, index, temperature, normalize="pair"):
    """L_PP given the ``(B, R, C)`` prototypical-pixel indices (``-1`` = no pair)."""
    batch, num_classes, height, width = logits.shape
    num_regions = index.shape[1]
    b, r, c = (index >= 0).nonzero(as_tuple=True)
    pix = index[b, r, c]
    picked = logits[b, :, pix // width, pix % width]  # (K, C); no reshape copy of the logits
    nll = -torch.log_softmax(picked.to(acc_dtype(logits)) / temperature, dim=1).gather(1, c.unsqueeze(1)).squeeze(1)
    if normalize == "pair":
        return nll.sum() / max(int(nll.numel()), 1)
    slot = b * num_regions + r
    sums = torch.zeros(batch * num_regions, dtype=nll.dtype, device=nll.device).index_add(0, slot, nll)
    counts = torch.zeros(batch * num_regions, dtype=nll.dtype, device=nll.device).index_add(0, slot, torch.ones_like(nll))
    present = counts > 0
    means = torch.where(present, sums / counts.clamp(min=1), 0.0)
    return means.sum() / present.sum().clamp(min=1)


def prototypical_pixel_loss_reference(logits, regions, region_labels, temperature=0.1, normalize="pair"):
    """Pure-torch reference: :func:`region_class_argmax_reference` + the same gather."""
    _, temperature = _check(logits, regions, region_labels, temperature, normalize)
    index = region_class_argmax_reference(logits, regions, region_labels, temperature, min_classes=2)
    return loss_from_prototypes(logits, index, temperature, normalize)


def prototypical_pixel_loss(logits, regions, region_labels, temperature=0.1, normalize="pair", *, backend=None):
    """Prototypical pixel loss L_PP over the multi-class labeled regions of a batch.

    Args:
        logits: ``(B, C, H, W)`` float32/float16/bfloat16/float64.
        regions: ``(B, H, W)`` integer region ids; negative = no region; ``>= R`` raises.
        region_labels: ``(B, R, C)`` bool/uint8 multi-hot, ``R = region_labels.shape[1]``.
        temperature: ``tau`` > 0 (paper: 0.1), used for the argmax and the CE.
        normalize: ``"pair"`` (mean over all (region, class) pairs in the batch) or
            ``"region"`` (Eq. 9: mean over regions of the mean over the region's classes).
        backend: backend of the argmax kernel (``"reference" | "cpp" | "triton"`` or None).

    Returns:
        Scalar, float32 (float64 for float64 logits); 0 with zero gradient when no region has
        two or more labeled classes present in the crop.

    Example:
        >>> ce, mp = partial_label_loss(logits, regions, labels)
        >>> loss = 16 * ce + 8 * mp + prototypical_pixel_loss(logits, regions, labels)
    """
    _, temperature = _check(logits, regions, region_labels, temperature, normalize)
    backend = resolve_backend(OP, logits.device, backend)
    if backend == "reference":
        index = region_class_argmax_reference(logits, regions, region_labels, temperature, min_classes=2)
    else:
        index = region_class_argmax_fused(logits, regions, region_labels, temperature, 2, backend)
    return loss_from_prototypes(logits, index, temperature, normalize)
