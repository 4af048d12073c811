"""Stage-1 partial-label losses L_CE and L_MP (paper Eq. 5-7, docs/design.md §2.3), fused.

For a labeled pixel x of region r with label set Y = Y(r) and ``z = logits / temperature``:

    l(x) = logsumexp_c z_c(x) - logsumexp_{c in Y} z_c(x) = -log sum_{c in Y} softmax(z(x))_c

Pixels of regions with ``|Y| = 1`` form L_CE (this is the usual cross-entropy), pixels of
regions with ``|Y| >= 2`` form L_MP (merged positive loss). Unlabeled regions and negative
region ids contribute nothing.

Normalisation (``normalize``):

- ``"pixel"`` (default): each term is the mean of ``l`` over its own pixels in the batch.
- ``"region"``: Eq. 6-7 literally: the mean over the term's regions in the batch of the
  per-region pixel mean. Regions without a pixel in the crop do not count. This mode counts
  the pixels of every region first (one pass over the region ids, never over the logits).

A term with nothing to average is 0 and passes a zero gradient (never NaN).

Backends: ``reference`` (pure torch, autograd through torch ops; the test oracle), ``cpp``
(``csrc/partial_label_loss.cpp``, OpenMP) and ``triton`` (``kernels/partial_label_loss.py``).
The fused forward reads the logits of the labeled pixels once and checks them for NaN/Inf and
the region ids for ``>= R`` in the same pass. The fused backward is one kernel launch for both
terms: it recomputes the softmax from the saved logits and writes
``(softmax(z) - q) / tau * scale`` with ``q`` the softmax renormalised over Y; the only
``(B, C, H, W)`` tensor it allocates is the gradient itself. A term whose upstream gradient is
``None`` (unused) is masked out, so its pixels are not even read. NaN/Inf checks cover the
logits of the pixels the loss reads (pixels of labeled regions), in every backend.
"""
from __future__ import annotations

import torch

from ._backend import LaunchTable, resolve_backend
from ._cpp import code, ext, index_tensor, ptr
from ._dtypes import acc_dtype, triton_acc
from ._labels import device_guard, labels_u8, num_labels, region_pixel_counts
from ._status import report as report_status
from ._validate import check_finite, check_labeled_loss, check_region_ids, new_status

OP = "partial_label_loss"
NORMALIZE = ("pixel", "region")


def region_terms(region_labels: torch.Tensor) -> torch.Tensor:
    """(B, R) int8 term of each region: 0 unlabeled, 1 CE (|Y| = 1), 2 MP (|Y| >= 2)."""
    return num_labels(region_labels).clamp(max=2).to(torch.int8)


# --------------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------------
def partial_label_loss_reference(logits, regions, region_labels, temperature, normalize="pixel"):
    """Pure-torch (L_CE, L_MP); same contract as :func:`partial_label_loss`. Differentiable
    through ordinary torch ops (it materialises several (B, C, H, W) temporaries)."""
    num_regions, temperature = check_labeled_loss(OP, logits, regions, region_labels, temperature, normalize, NORMALIZE)
    check_region_ids(OP, regions, num_regions)
    batch, num_classes, height, width = logits.shape
    acc = acc_dtype(logits)
    if num_regions == 0:  # every id is negative: nothing to average, zero gradient
        zero = logits.reshape(-1)[:0].to(acc).sum()
        return zero, zero.clone()
    rid = regions.long()
    valid = rid >= 0
    ridc = rid.clamp(min=0)
    labels = region_labels.bool()
    bidx = torch.arange(batch, device=logits.device).view(batch, 1, 1)
    member = labels[bidx, ridc].permute(0, 3, 1, 2)  # (B, C, H, W): c in Y(r(x))
    term = region_terms(region_labels)[bidx, ridc].long() * valid  # (B, H, W)
    used = term > 0
    z = logits.to(acc) / temperature
    check_finite(OP, "logits", z.permute(0, 2, 3, 1)[used])
    # Pixels without labels would give logsumexp over nothing (-inf and NaN gradients):
    # give them every class; their loss is masked out below anyway.
    member = member | ~used.unsqueeze(1)
    ell = z.logsumexp(1) - z.masked_fill(~member, float("-inf")).logsumexp(1)
    ell = torch.where(used, ell, torch.zeros((), dtype=acc, device=logits.device))
    out = []
    for t in (1, 2):
        sel = term == t
        if normalize == "pixel":
            total = torch.where(sel, ell, 0.0).sum()
            out.append(total / sel.sum().clamp(min=1))
        else:
            slot = (bidx.view(batch, 1, 1) * num_regions + ridc).reshape(-1)
            sums = torch.zeros(batch * num_regions, dtype=acc, device=logits.device)
            sums = sums.index_add(0, slot, torch.where(sel, ell, 0.0).reshape(-1))
            counts = torch.zeros(batch * num_regions, dtype=acc, device=logits.device)
            counts = counts.index_add(0, slot, sel.reshape(-1).to(acc))
            present = counts > 0
            means = sums / counts.clamp(min=1)
            out.append(torch.where(present, means, 0.0).sum() / present.sum().clamp(min=1))
    return out[0], out[1]


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------
def _forward_cpp(logits, regions, labels, terms, weight, temperature, status):
    batch, num_classes, height, width = logits.shape
    sums = torch.zeros(2, dtype=torch.float64)
    counts = torch.zeros(2, dtype=torch.int64)
    ext().partial_label_loss_forward(
        ptr(logits), code(logits), ptr(regions), code(regions), ptr(labels), ptr(terms), ptr(weight),
        batch, num_classes, height * width, labels.shape[1], temperature, ptr(sums), ptr(counts), ptr(status))
    return sums.to(acc_dtype(logits)), counts


def _backward_cpp(logits, regions, labels, scale, temperature):
    batch, num_classes, height, width = logits.shape
    grad = torch.empty_like(logits)
    ext().partial_label_loss_backward(
        ptr(logits), code(logits), ptr(regions), code(regions), ptr(labels), ptr(scale),
        batch, num_classes, height * width, labels.shape[1], temperature, ptr(grad))
    return grad


INT32_MAX = 2**31 - 1


def _check_int32_tiles(logits, labels):
    """The Triton kernels address a tile within one image with int32 offsets (fewer registers,
    no spills at the default tile); an image's logits and the label table must fit them."""
    batch, num_classes, height, width = logits.shape
    if num_classes * height * width > INT32_MAX or labels.shape[1] * num_classes > INT32_MAX:
        raise ValueError(f"{OP}: one image's logits ({num_classes}x{height}x{width}) or the label table "
                         f"({labels.shape[1]}x{num_classes}) exceed the {INT32_MAX} int32 offsets of the Triton kernels")


def _launch_forward_triton(logits, regions, labels, terms, weight, temperature, status, scale=None):
    """The forward kernel: ``(sums (2,), pixel counts (2,) int64, gradient or None)``. With
    ``scale`` (the gradient-in-forward design) it also writes ``scale(r) * (softmax(z) - q)``."""
    import triton

    from mulact.kernels import WARPS
    from mulact.kernels import partial_label_loss as kern

    batch, num_classes, height, width = logits.shape
    _check_int32_tiles(logits, labels)
    hw = height * width
    block_c, block_p = kern.block_sizes(num_classes, hw)
    nprog = triton.cdiv(hw, block_p)
    sums = torch.zeros(batch, nprog, 2, dtype=acc_dtype(logits), device=logits.device)
    counts = torch.zeros(batch, nprog, 2, dtype=torch.int32, device=logits.device)
    write_grad = scale is not None
    grad = torch.empty_like(logits) if write_grad else None
    if sums.numel() == 0:
        return sums.sum((0, 1)), counts.sum((0, 1), dtype=torch.int64), grad.zero_() if write_grad else None
    with device_guard(logits):
        kern.partial_label_loss_fwd_kernel[(nprog, batch)](
            logits, regions, labels, terms, weight if weight is not None else sums, sums, counts, status,
            scale if write_grad else sums, grad if write_grad else sums, num_classes, hw, labels.shape[1],
            1.0 / temperature, HAS_WEIGHT=weight is not None, WRITE_GRAD=write_grad, BLOCK_C=block_c,
            BLOCK_P=block_p, ACC=triton_acc(logits), num_warps=WARPS)
    return sums.sum((0, 1)), counts.sum((0, 1), dtype=torch.int64), grad


def _forward_triton(logits, regions, labels, terms, weight, temperature, status):
    return _launch_forward_triton(logits, regions, labels, terms, weight, temperature, status)[:2]


def _backward_triton(logits, regions, labels, scale, temperature):
    import triton

    from mulact.kernels import WARPS
    from mulact.kernels import partial_label_loss as kern

    batch, num_classes, height, width = logits.shape
    _check_int32_tiles(logits, labels)
    hw = height * width
    block_c, block_p = kern.recompute_block_sizes(num_classes, hw)
    grad = torch.empty_like(logits)
    if grad.numel() == 0:
        return grad
    with device_guard(logits):
        kern.partial_label_loss_bwd_kernel[(triton.cdiv(hw, block_p), batch)](
            logits, regions, labels, scale, grad, scale, scale, scale, num_classes, hw, labels.shape[1],
            1.0 / temperature, ONLY_CHANGED=False, BLOCK_C=block_c, BLOCK_P=block_p, ACC=triton_acc(logits),
            num_warps=WARPS)
    return grad


_FORWARD = LaunchTable(OP, cpp=_forward_cpp, triton=_forward_triton)
_BACKWARD = LaunchTable(OP, cpp=_backward_cpp, triton=_backward_triton)


# Gradient in the forward (Triton; docs/design.md, "Byte model"). The forward writes the gradient
# for a guess of the upstream gradients of (L_CE, L_MP): those the previous backward on this device
# received (training multiplies the terms by constant weights, so the guess holds from the second
# step on). The guess lives on the device and is read and updated by kernels and device ops only,
# so no call waits for the GPU. A term whose actual gradient differs from the guess has its pixels
# rewritten by the backward, from the logits, exactly as the forward would have written them.
_GUESS: dict = {}


def _guess(device, dtype):
    key = (str(device), dtype)
    if key not in _GUESS:
        _GUESS[key] = torch.ones(2, dtype=dtype, device=device)
    return _GUESS[key]


def _region_counts_triton(regions, num_regions):
    """(B, R) int32 pixels per region: one read of the region ids (not the torch scatter of
    ``region_pixel_counts``, which moves several int64 copies of the map)."""
    import triton

    from mulact.kernels import partial_label_loss as kern
    from mulact.kernels._segments import log2

    batch = regions.shape[0]
    hw = regions[0].numel() if batch else 0
    counts = torch.zeros(batch, num_regions, dtype=torch.int32, device=regions.device)
    if counts.numel() and hw:
        with device_guard(regions):
            kern.region_count_kernel[(triton.cdiv(hw, kern.COUNT_BLOCK), batch)](
                regions, counts, hw, num_regions, BLOCK=kern.COUNT_BLOCK, LOG2_BLOCK=log2(kern.COUNT_BLOCK))
    return counts


def _weight_of(pixels, acc):
    """(B, R) 1 / pixels of the region, 0 for a region without pixels ("region" normalisation)."""
    return torch.where(pixels > 0, 1.0 / pixels.clamp(min=1).to(acc), 0.0).to(acc)


def _pixel_weight(regions, num_regions, acc):
    return _weight_of(_region_counts_triton(regions, num_regions), acc)


def _term_scale(coef, terms, weight):
    """(B, R) per-region gradient scale: ``coef[term]`` (coef[0] = 0 for unlabeled regions), times
    1 / pixels(r) for "region" normalisation."""
    scale = torch.cat([coef.new_zeros(1), coef])[terms.long()]
    return scale if weight is None else scale * weight


def _forward_grad_triton(logits, regions, labels, terms, weight, scale, temperature, status):
    """The forward kernel that also writes the gradient ``scale(r) * (softmax(z) - q)``."""
    sums, _, grad = _launch_forward_triton(logits, regions, labels, terms, weight, temperature, status, scale)
    return sums, grad


# "region" normalisation's pixel counts: Triton counts them in one read of the ids, C++ with
# torch's scatter; the gradient-in-forward design exists on Triton only.
_PIXELS = LaunchTable(OP, cpp=region_pixel_counts, triton=_region_counts_triton)
_GRAD_IN_FORWARD = LaunchTable(OP, design="grad_in_forward", triton=_forward_grad_triton)


def _redo_changed_triton(grad, logits, regions, labels, terms, scale, used, actual, temperature):
    """Rewrite, in place, the pixels of a term whose actual upstream gradient is not the guess."""
    import triton

    from mulact.kernels import WARPS
    from mulact.kernels import partial_label_loss as kern

    batch, num_classes, height, width = logits.shape
    _check_int32_tiles(logits, labels)
    hw = height * width
    if grad.numel() == 0:
        return
    block_c, block_p = kern.block_sizes(num_classes, hw)
    with device_guard(logits):
        kern.partial_label_loss_bwd_kernel[(triton.cdiv(hw, block_p), batch)](
            logits, regions, labels, scale, grad, terms, used, actual, num_classes, hw, labels.shape[1],
            1.0 / temperature, ONLY_CHANGED=True, BLOCK_C=block_c, BLOCK_P=block_p, ACC=triton_acc(logits),
            num_warps=WARPS)


# --------------------------------------------------------------------------------------------
# Registered op (docs/design.md, "Dispatch") and its autograd
# --------------------------------------------------------------------------------------------
def _region_weight(regions, num_regions, acc):
    """(B, R) 1 / pixels of the region (0 for a region without pixels): "region" normalisation."""
    pixels = region_pixel_counts(regions, num_regions)
    return torch.where(pixels > 0, 1.0 / pixels.clamp(min=1).to(acc), 0.0).to(acc), pixels > 0


@torch.library.custom_op("mulact::partial_label_loss", mutates_args=(), device_types=("cpu", "cuda"))
def _op(logits: torch.Tensor, regions: torch.Tensor, region_labels: torch.Tensor, temperature: float,
        normalize: str, backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused forward: ``(loss_ce, loss_mp, normalisers (2,))``; the normalisers (pixel or
    region counts of each term, at least 1) are what the backward divides by."""
    forward = _FORWARD.launcher(backend, logits)
    num_regions = region_labels.shape[1]
    acc = acc_dtype(logits)
    logits = logits.contiguous()
    regions = index_tensor(regions)
    terms = region_terms(region_labels)
    weight = None
    if normalize == "region":
        pixels = _PIXELS.launcher(backend, regions)(regions, num_regions)  # inside the op, so never traced
        weight, present = _weight_of(pixels, acc), pixels > 0
        denom = torch.stack([((terms == t) & present).sum() for t in (1, 2)]).to(acc)
    status = new_status(logits.device)
    sums, counts = forward(logits, regions, labels_u8(region_labels), terms, weight, temperature, status)
    report_status(OP, status, num_regions, regions=regions)
    if normalize == "pixel":
        denom = counts.to(acc)
    denom = denom.clamp(min=1)
    return sums[0] / denom[0], sums[1] / denom[1], denom  # separate tensors, not views of one


@_op.register_fake
def _(logits, regions, region_labels, temperature, normalize, backend):
    acc = acc_dtype(logits)
    return logits.new_empty((), dtype=acc), logits.new_empty((), dtype=acc), logits.new_empty(2, dtype=acc)


@torch.library.custom_op("mulact::partial_label_loss_backward", mutates_args=(), device_types=("cpu", "cuda"))
def _backward_op(logits: torch.Tensor, regions: torch.Tensor, region_labels: torch.Tensor, scale: torch.Tensor,
                 temperature: float, backend: str) -> torch.Tensor:
    """``d(Σ_x scale[b, r(x)] · l(x)) / d logits`` in one launch; ``scale`` is ``(B, R)``."""
    backward = _BACKWARD.launcher(backend, logits)
    return backward(logits.contiguous(), index_tensor(regions), labels_u8(region_labels), scale.contiguous(),
                    temperature)


@_backward_op.register_fake
def _(logits, regions, region_labels, scale, temperature, backend):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    logits, regions, region_labels, temperature, normalize, backend = inputs
    ctx.temperature, ctx.normalize, ctx.backend = temperature, normalize, backend
    # the logits are saved as they are (no copy); nothing else of size (B, C, H, W)
    ctx.save_for_backward(logits, regions, region_labels, output[2])


def _backward(ctx, grad_ce, grad_mp, _grad_denom):
    logits, regions, region_labels, denom = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None, None, None, None, None
    zero = torch.zeros((), dtype=denom.dtype, device=denom.device)
    # coef[t] = upstream gradient of term t / its normaliser / tau; term 0 (unlabeled) -> 0.
    coef = torch.stack([
        zero,
        zero if grad_ce is None else grad_ce.to(denom.dtype) / denom[0],
        zero if grad_mp is None else grad_mp.to(denom.dtype) / denom[1],
    ]) / ctx.temperature
    scale = coef[region_terms(region_labels).long()]  # a term with zero gradient: its pixels are not read
    if ctx.normalize == "region":
        scale = scale * _region_weight(regions, region_labels.shape[1], denom.dtype)[0]
    grad = torch.ops.mulact.partial_label_loss_backward(logits, regions, region_labels, scale, ctx.temperature,
                                                        ctx.backend)
    return grad, None, None, None, None, None


_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("mulact::partial_label_loss_grad_in_forward", mutates_args=(), device_types=("cpu", "cuda"))
def _grad_op(logits: torch.Tensor, regions: torch.Tensor, region_labels: torch.Tensor, temperature: float,
             normalize: str, backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                    torch.Tensor]:
    """Gradient-in-forward design (Triton only): ``(loss_ce, loss_mp, normalisers (2,),
    gradient for the guessed upstream gradients, the guess (2,))``."""
    forward = _GRAD_IN_FORWARD.launcher(backend, logits)
    num_regions = region_labels.shape[1]
    acc = acc_dtype(logits)
    logits = logits.contiguous()
    regions = index_tensor(regions)
    terms = region_terms(region_labels)
    pixels = _region_counts_triton(regions, num_regions)
    weight = None
    if normalize == "region":
        weight = _weight_of(pixels, acc)
        denom = torch.stack([((terms == t) & (pixels > 0)).sum() for t in (1, 2)]).to(acc)
    else:
        denom = torch.stack([torch.where(terms == t, pixels, 0).sum() for t in (1, 2)]).to(acc)
    denom = denom.clamp(min=1)
    used = _guess(logits.device, acc).clone()
    scale = _term_scale(used / denom / temperature, terms, weight)
    status = new_status(logits.device)
    sums, grad = forward(logits, regions, labels_u8(region_labels), terms, weight, scale, temperature, status)
    report_status(OP, status, num_regions, regions=regions)
    return sums[0] / denom[0], sums[1] / denom[1], denom, grad, used


@_grad_op.register_fake
def _(logits, regions, region_labels, temperature, normalize, backend):
    acc = acc_dtype(logits)
    scalar = logits.new_empty((), dtype=acc)
    return (scalar, scalar.clone(), logits.new_empty(2, dtype=acc),
            torch.empty_like(logits, memory_format=torch.contiguous_format), logits.new_empty(2, dtype=acc))


def _setup_grad_context(ctx, inputs, output):
    logits, regions, region_labels, temperature, normalize, backend = inputs
    ctx.temperature, ctx.normalize, ctx.backend = temperature, normalize, backend
    # The written gradient is held outside save_for_backward: the backward hands it on after
    # rewriting some pixels in place, which must not trip the saved-tensor version check.
    # Detached, so the graph does not hold itself through it.
    ctx.grad_buffer = output[3].detach()
    ctx.save_for_backward(logits, regions, region_labels, output[2], output[4])


def _grad_backward(ctx, grad_ce, grad_mp, _grad_denom, _grad_buffer, _grad_used):
    logits, regions, region_labels, denom, used = ctx.saved_tensors
    buffer, ctx.grad_buffer = ctx.grad_buffer, None  # handed on once; a second backward recomputes
    if not ctx.needs_input_grad[0]:
        return None, None, None, None, None, None
    zero = torch.zeros((), dtype=denom.dtype, device=denom.device)
    actual = torch.stack([zero if g is None else g.to(denom.dtype) for g in (grad_ce, grad_mp)])
    if buffer is None or type(buffer) is not torch.Tensor:
        # retain_graph's second backward, or a trace (torch.compile, opcheck): the recompute design
        coef = torch.cat([zero.view(1), actual / denom]) / ctx.temperature
        scale = coef[region_terms(region_labels).long()]
        if ctx.normalize == "region":
            scale = scale * _region_weight(regions, region_labels.shape[1], denom.dtype)[0]
        grad = torch.ops.mulact.partial_label_loss_backward(logits, regions, region_labels, scale, ctx.temperature,
                                                            ctx.backend)
        return grad, None, None, None, None, None
    terms = region_terms(region_labels)
    weight = _pixel_weight(regions, region_labels.shape[1], denom.dtype) if ctx.normalize == "region" else None
    scale = _term_scale(actual / denom / ctx.temperature, terms, weight)
    _redo_changed_triton(buffer, logits.contiguous(), index_tensor(regions), labels_u8(region_labels), terms, scale,
                         used, actual, ctx.temperature)
    guess = _guess(buffer.device, denom.dtype)
    guess.copy_(torch.where((actual != 0) & torch.isfinite(actual), actual, guess))
    return buffer, None, None, None, None, None


_grad_op.register_autograd(_grad_backward, setup_context=_setup_grad_context)


def _grad_in_forward(logits, backend):
    """Whether this call takes the gradient-in-forward design: Triton, a gradient wanted, eager
    (under torch.compile the recompute design keeps the graph free of in-place updates)."""
    from mulact.kernels import design

    return (_GRAD_IN_FORWARD.covers(backend) and design(OP)["grad_in_forward"] and torch.is_grad_enabled()
            and logits.requires_grad and not torch.compiler.is_compiling())


# --------------------------------------------------------------------------------------------
# Public
# --------------------------------------------------------------------------------------------
def partial_label_loss(logits, regions, region_labels, temperature, normalize="pixel", *, backend=None):
    """Stage-1 losses ``(L_CE, L_MP)`` for region-wise multi-class (partial) labels.

    Args:
        logits: ``(B, C, H, W)`` float32/float16/bfloat16 (float64 for gradcheck); the
            model's extra "undefined" class is simply one of the ``C`` channels.
        regions: ``(B, H, W)`` integer region ids; negative = no region (ignored). An id
            ``>= R`` raises ``ValueError``.
        region_labels: ``(B, R, C)`` bool/uint8 multi-hot labels; ``R = region_labels.shape[1]``.
            A region with no bit set is unlabeled.
        temperature: ``tau`` > 0; the losses work on ``z = logits / tau`` (paper: 0.1).
        normalize: ``"pixel"`` (mean over each term's pixels in the batch) or ``"region"``
            (mean over the term's regions of the per-region pixel mean, Eq. 6-7).
        backend: ``"reference" | "cpp" | "triton"``; default by device (see
            :func:`mulact.ops.resolve_backend`).

    Returns:
        ``(loss_ce, loss_mp)`` scalars, float32 (float64 for float64 logits). A term without
        pixels is 0 with a zero gradient.

    Example:
        >>> logits = torch.randn(2, 20, 64, 64, requires_grad=True)
        >>> regions = torch.randint(0, 16, (2, 64, 64))
        >>> labels = torch.zeros(2, 16, 20, dtype=torch.bool); labels[:, 0, 3] = True
        >>> labels[:, 1, [4, 7]] = True
        >>> ce, mp = partial_label_loss(logits, regions, labels, temperature=0.1)
        >>> (16 * ce + 8 * mp).backward()
    """
    check_labeled_loss(OP, logits, regions, region_labels, temperature, normalize, NORMALIZE)
    temperature = float(temperature)
    backend = resolve_backend(OP, logits.device, backend)
    if backend == "reference":
        return partial_label_loss_reference(logits, regions, region_labels, temperature, normalize)
    if _grad_in_forward(logits, backend):
        loss_ce, loss_mp = torch.ops.mulact.partial_label_loss_grad_in_forward(
            logits, regions, region_labels, temperature, normalize, backend)[:2]
        return loss_ce, loss_mp
    loss_ce, loss_mp, _ = torch.ops.mulact.partial_label_loss(logits, regions, region_labels, temperature, normalize,
                                                              backend)
    return loss_ce, loss_mp
