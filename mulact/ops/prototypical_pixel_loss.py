"""Prototypical pixel loss L_PP (paper Eq. 8-9, docs/design.md §2.5).

For every labeled region r with ``|Y(r)| >= 2`` and every ``c in Y(r)``, the prototypical pixel
``x*_{r,c} = argmax_{x in r} softmax(z(x))_c`` (:func:`region_class_argmax` with
``min_classes=2``) is trained with cross-entropy towards ``c``:

    L_PP = mean over (r, c) of -log softmax(z(x*_{r,c}))_c          (normalize="pair")
    L_PP = mean over r of mean over c in Y(r) of the same            (normalize="region", Eq. 9)

Implementation: the fused argmax kernel (the only pass over the logits; ``backend`` picks it)
returns the chosen pixels. With Triton (design ``fused_ce``, the default), one small
kernel per region then reads the chosen pixels' C logits and gives the per-pair losses, and in the
backward the rows of the sparse gradient, written into a zeroed gradient; no ``(B, R, C, C)``
tensor exists (docs/design.md, "Byte model"). Otherwise (C++, or the ``gather`` design) the C logits
are gathered into a ``(B, R, C, C)`` tensor (unused slots masked) and ``log_softmax`` runs there
in torch, with autograd through the gather. Either way the only ``(B, C, H, W)`` tensor the
backward allocates is the gradient itself, and only the chosen pixels get a non-zero gradient.
The argmax is treated as a constant (it is piecewise constant in the logits). Pairs whose
region has no pixel in the crop are skipped; with no pair the loss is 0 with a zero gradient.
"""
from __future__ import annotations

import torch

from ._backend import LaunchTable, resolve_backend
from ._dtypes import acc_dtype, triton_acc
from ._labels import device_guard
from ._validate import check_labeled_loss
from .region_class_argmax import region_class_argmax_reference

OP = "prototypical_pixel_loss"
NORMALIZE = ("pair", "region")


def loss_from_prototypes(logits, index, temperature, normalize="pair"):
    """L_PP given the ``(B, R, C)`` prototypical-pixel indices (``-1`` = no pair).

    On CUDA and under ``torch.compile``, every (image, region, class) slot gathers the C logits
    of its pixel into a ``(B, R, C, C)`` tensor and unused slots are masked, rather than
    selecting the K used pairs with ``nonzero``: K depends on the data, so selecting would cost a
    host sync on CUDA and a graph break under ``torch.compile``. R·C² is small next to the
    logits (Cityscapes: 2048·20² per image, against 769²·20). In eager mode on the CPU there is
    no sync to avoid, and the K pairs (a few percent of the R·C slots) are selected: the masked
    form's ``(B, R, C, C)`` work was a third of the loss's CPU time (README, "Benchmarks")."""
    if logits.device.type == "cpu" and not torch.compiler.is_compiling():
        return _loss_selected(logits, index, temperature, normalize)
    return _loss_masked(logits, index, temperature, normalize)


def _loss_selected(logits, index, temperature, normalize):
    width = logits.shape[3]
    valid = index >= 0
    b, r, c = valid.nonzero(as_tuple=True)
    pix = index[b, r, c]
    picked = logits[b, :, pix // width, pix % width]  # (K, C)
    z = picked.to(acc_dtype(logits)) / temperature
    nll = -torch.log_softmax(z, dim=-1).gather(1, c.unsqueeze(1)).squeeze(1)  # (K,)
    if normalize == "pair":
        return nll.sum() / valid.sum().clamp(min=1)
    pairs = valid.sum(-1)  # (B, R)
    return (nll / pairs[b, r]).sum() / (pairs > 0).sum().clamp(min=1)


def _loss_masked(logits, index, temperature, normalize):
    batch, num_classes, height, width = logits.shape
    valid = index >= 0
    pix = index.clamp(min=0)
    bidx = torch.arange(batch, device=logits.device).view(batch, 1, 1)
    picked = logits[bidx, :, pix // width, pix % width]  # (B, R, C, C); no reshape copy of the logits
    # masked before the softmax, so a NaN at an unused slot's stand-in pixel cannot leak into the gradient
    picked = torch.where(valid.unsqueeze(-1), picked, 0).to(acc_dtype(logits)) / temperature
    nll = -torch.log_softmax(picked, dim=-1).diagonal(dim1=2, dim2=3)  # slot (b, r, c) -> class c
    nll = torch.where(valid, nll, 0)
    if normalize == "pair":
        return nll.sum() / valid.sum().clamp(min=1)
    pairs = valid.sum(-1)
    means = nll.sum(-1) / pairs.clamp(min=1)
    return means.sum() / (pairs > 0).sum().clamp(min=1)


def slot_weights(index, normalize, acc):
    """(B, R, C) weight of each (region, class) slot in L_PP: 1 / pairs for "pair", 1 / (pairs of
    the region * regions with a pair) for "region"; 0 where ``index`` is -1."""
    valid = index >= 0
    if normalize == "pair":
        return valid.to(acc) / valid.sum().clamp(min=1).to(acc)
    pairs = valid.sum(-1, keepdim=True)
    regions_with_pairs = (pairs > 0).sum().clamp(min=1).to(acc)
    return valid.to(acc) / pairs.clamp(min=1).to(acc) / regions_with_pairs


def _launch_ce(logits, index, weight, out, grad, gout, temperature, backward):
    from mulact.kernels import region_class_argmax as kern

    batch, num_classes, height, width = logits.shape
    num_regions = index.shape[1]
    if batch * num_regions * num_classes == 0 or height * width == 0:
        return
    block_c = max(2, 1 << (num_classes - 1).bit_length())
    with device_guard(logits):
        kern.prototype_ce_kernel[(num_regions, batch)](
            logits, index, weight, out, grad, gout, num_classes, height * width, num_regions, 1.0 / temperature,
            BACKWARD=backward, BLOCK_C=block_c, ACC=triton_acc(logits))


_FUSED_CE = LaunchTable(OP, design="fused_ce", triton=_launch_ce)


@torch.library.custom_op("mulact::prototype_cross_entropy", mutates_args=(), device_types=("cpu", "cuda"))
def _ce_op(logits: torch.Tensor, index: torch.Tensor, temperature: float, normalize: str,
           backend: str) -> torch.Tensor:
    """L_PP given the argmax's ``(B, R, C)`` pixels, from the Triton kernel (one program per region)."""
    launch = _FUSED_CE.launcher(backend, logits)
    logits, index = logits.contiguous(), index.contiguous()
    weight = slot_weights(index, normalize, acc_dtype(logits))
    out = torch.zeros_like(weight)
    launch(logits, index, weight, out, out, out, temperature, False)
    return out.sum()


@_ce_op.register_fake
def _(logits, index, temperature, normalize, backend):
    return logits.new_empty((), dtype=acc_dtype(logits))


@torch.library.custom_op("mulact::prototype_cross_entropy_backward", mutates_args=(), device_types=("cpu", "cuda"))
def _ce_backward_op(logits: torch.Tensor, index: torch.Tensor, grad_output: torch.Tensor, temperature: float,
                    normalize: str, backend: str) -> torch.Tensor:
    """The gradient of :func:`_ce_op`: zeros except the rows of the chosen pixels."""
    launch = _FUSED_CE.launcher(backend, logits)
    logits, index = logits.contiguous(), index.contiguous()
    weight = slot_weights(index, normalize, acc_dtype(logits))
    grad = torch.zeros_like(logits)
    launch(logits, index, weight, weight, grad, grad_output.to(weight.dtype).reshape(1), temperature, True)
    return grad


@_ce_backward_op.register_fake
def _(logits, index, grad_output, temperature, normalize, backend):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _ce_setup_context(ctx, inputs, output):
    logits, index, temperature, normalize, backend = inputs
    ctx.temperature, ctx.normalize, ctx.backend = temperature, normalize, backend
    ctx.save_for_backward(logits, index)


def _ce_backward(ctx, grad_output):
    logits, index = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None, None, None, None
    grad = torch.ops.mulact.prototype_cross_entropy_backward(logits, index, grad_output, ctx.temperature,
                                                            ctx.normalize, ctx.backend)
    return grad, None, None, None, None


_ce_op.register_autograd(_ce_backward, setup_context=_ce_setup_context)


def _fused_ce(backend):
    from mulact.kernels import design

    return _FUSED_CE.covers(backend) and design(OP)["fused_ce"]


def _composite(logits, regions, region_labels, temperature, normalize, backend):
    index = torch.ops.mulact.region_class_argmax(logits.detach(), regions, region_labels, temperature, 2, backend)
    if _fused_ce(backend):
        return torch.ops.mulact.prototype_cross_entropy(logits, index, temperature, normalize, backend)
    return loss_from_prototypes(logits, index, temperature, normalize)


# A composite of the fused argmax and torch ops: autograd, shapes and compilation come from them.
torch.library.define("mulact::prototypical_pixel_loss",
                     "(Tensor logits, Tensor regions, Tensor region_labels, float temperature, str normalize, "
                     "str backend) -> Tensor")
torch.library.impl("mulact::prototypical_pixel_loss", "CompositeImplicitAutograd", _composite)


def prototypical_pixel_loss_reference(logits, regions, region_labels, temperature, normalize="pair"):
    """Pure-torch reference: :func:`region_class_argmax_reference` + the same gather."""
    _, temperature = check_labeled_loss(OP, logits, regions, region_labels, temperature, normalize, NORMALIZE)
    index = region_class_argmax_reference(logits, regions, region_labels, temperature, min_classes=2)
    return loss_from_prototypes(logits, index, temperature, normalize)


def prototypical_pixel_loss(logits, regions, region_labels, temperature, normalize="pair", *, backend=None):
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
        >>> from mulact.ops import partial_label_loss
        >>> logits = torch.randn(2, 20, 64, 64, requires_grad=True)
        >>> regions = torch.randint(0, 16, (2, 64, 64))
        >>> labels = torch.zeros(2, 16, 20, dtype=torch.bool); labels[:, 0, 3] = True
        >>> labels[:, 1, [4, 7]] = True
        >>> ce, mp = partial_label_loss(logits, regions, labels, temperature=0.1)
        >>> loss = 16 * ce + 8 * mp + prototypical_pixel_loss(logits, regions, labels, temperature=0.1)
        >>> loss.backward()
    """
    _, temperature = check_labeled_loss(OP, logits, regions, region_labels, temperature, normalize, NORMALIZE)
    backend = resolve_backend(OP, logits.device, backend)
    if backend == "reference":
        index = region_class_argmax_reference(logits, regions, region_labels, temperature, min_classes=2)
        return loss_from_prototypes(logits, index, temperature, normalize)
    return torch.ops.mulact.prototypical_pixel_loss(logits, regions, region_labels, temperature, normalize, backend)
