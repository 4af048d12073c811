"""Prototypical pixels (paper Eq. 8, docs/design.md §2.4): per region and labeled class, the pixel with
the most confident prediction for that class.

``region_class_argmax(logits, regions, region_labels, temperature, min_classes)[b, r, c]`` is
the flat index ``h * W + w`` of ``argmax_{x in r} log_softmax(z(x))_c`` (the probability, not
the raw logit), for every region ``r`` with ``|Y(r)| >= min_classes`` and every ``c in Y(r)``;
ties go to the smallest flat index. It is ``-1`` where ``c`` is not in ``Y(r)``, where
``|Y(r)| < min_classes``, or where ``r`` has no pixel in the crop. Stage 1's prototypical pixel
loss uses ``min_classes=2`` (Eq. 9 only covers multi-class regions); stage 2's prototypes use
``min_classes=1``.

Backends: ``reference`` (``scatter_reduce`` amax, then amin of the index among the maxima),
``cpp`` (``csrc/region_class_argmax.cpp``: per-thread best tables merged by "larger value, then
smaller index"), ``triton`` (``kernels/region_class_argmax.py``: one ``atomic_max`` over packed
(value, index) int64 keys; float64 logits take a two-launch max-then-min-index path). All are
deterministic. Every backend evaluates ``log_softmax_c`` as ``(z_c - max) - log1p(sum of the
other classes' exp(z - max))``: with ``tau = 0.1`` many confident pixels would otherwise all
round to exactly 0 in float32 and the "smallest index" tie rule would pick among them
arbitrarily. Only pixels of active regions are read; NaN/Inf among them and ids ``>= R``
raise ``ValueError``. The output is integer: there is no autograd.
"""
from __future__ import annotations

import torch

from ._backend import LaunchTable, resolve_backend
from ._cpp import code, ext, index_tensor, ptr
from ._dtypes import acc_dtype, triton_acc
from ._labels import device_guard, labels_u8, num_labels
from ._status import report as report_status
from ._validate import check_finite, check_labeled_logits, check_region_ids, check_temperature, new_status

OP = "region_class_argmax"
INT64_MIN = -(2**63)


def _check(logits, regions, region_labels, temperature, min_classes):
    num_regions = check_labeled_logits(OP, logits, regions, region_labels)
    temperature = check_temperature(OP, temperature, logits.dtype)
    if isinstance(min_classes, bool) or not isinstance(min_classes, int) or min_classes < 1:
        raise ValueError(f"{OP}: `min_classes` must be an int >= 1, got {min_classes!r}")
    return num_regions, temperature


def region_class_argmax_reference(logits, regions, region_labels, temperature, min_classes=1):
    """Pure-torch reference of :func:`region_class_argmax` (vectorised scatter_reduce)."""
    num_regions, temperature = _check(logits, regions, region_labels, temperature, min_classes)
    check_region_ids(OP, regions, num_regions)
    batch, num_classes, height, width = logits.shape
    hw = height * width
    if num_regions == 0 or hw == 0:
        return torch.full(tuple(region_labels.shape), -1, dtype=torch.int64, device=logits.device)
    with torch.no_grad():
        active_r = num_labels(region_labels) >= min_classes  # (B, R)
        rid = regions.reshape(batch, hw).long()
        valid = rid >= 0
        act = valid & active_r.gather(1, rid.clamp(min=0))  # (B, HW)
        z = logits.detach().to(acc_dtype(logits)).reshape(batch, num_classes, hw) / temperature
        check_finite(OP, "logits", z.transpose(1, 2)[act])
        # (z - max) - log1p(sum of the other classes' exp(z - max)): like the fused kernels,
        # so confident pixels do not all round to log_softmax = 0 in float32.
        top = z.max(dim=1, keepdim=True)
        e = torch.exp(z - top.values).scatter(1, top.indices, 0.0)
        lsm = (z - top.values) - torch.log1p(e.sum(1, keepdim=True))
        slot = torch.where(act, rid, num_regions).unsqueeze(1).expand(batch, num_classes, hw)
        best = torch.full((batch, num_classes, num_regions + 1), float("-inf"), dtype=lsm.dtype, device=lsm.device)
        best = best.scatter_reduce(2, slot, lsm, "amax", include_self=True)
        is_best = act.unsqueeze(1) & (lsm == best.gather(2, slot))
        pos = torch.arange(hw, device=lsm.device).expand(batch, num_classes, hw)
        cand = torch.where(is_best, pos, hw)
        first = torch.full((batch, num_classes, num_regions + 1), hw, dtype=torch.int64, device=lsm.device)
        first = first.scatter_reduce(2, slot, cand, "amin", include_self=True)
        first = first[:, :, :num_regions].transpose(1, 2)  # (B, R, C)
        keep = region_labels.bool() & active_r.unsqueeze(2) & (first < hw)
        return torch.where(keep, first, -1).contiguous()


def _argmax_cpp(logits, regions, labels, active, temperature, status):
    batch, num_classes, height, width = logits.shape
    out = torch.empty(batch, labels.shape[1], num_classes, dtype=torch.int64)
    ext().region_class_argmax_forward(
        ptr(logits), code(logits), ptr(regions), code(regions), ptr(labels), ptr(active),
        batch, num_classes, height * width, labels.shape[1], temperature, ptr(out), ptr(status))
    return out


def _argmax_triton(logits, regions, labels, active, temperature, status):
    import triton

    from mulact.kernels import ARGMAX_RUNS, WARPS
    from mulact.kernels import region_class_argmax as kern
    from mulact.kernels._segments import log2

    batch, num_classes, height, width = logits.shape
    hw = height * width
    if hw > kern.MAX_INDEX:
        raise ValueError(f"{OP}: images of {hw} pixels exceed the {kern.MAX_INDEX} flat indices the packed keys hold")
    num_regions = labels.shape[1]
    block_c, block_p = kern.block_sizes(num_classes, hw)
    grid = (triton.cdiv(hw, block_p), batch)
    shape = (batch, num_regions, num_classes)
    keys = torch.full(shape, INT64_MIN, dtype=torch.int64, device=logits.device)
    if batch * hw == 0:
        return torch.full(shape, -1, dtype=torch.int64, device=logits.device)
    args = (num_classes, hw, num_regions, 1.0 / temperature)
    meta = dict(BLOCK_C=block_c, BLOCK_P=block_p, LOG2_BLOCK_P=log2(block_p), ACC=triton_acc(logits),
                RUNS=ARGMAX_RUNS, num_warps=WARPS)
    launch = kern.region_class_argmax_kernel[grid]
    with device_guard(logits):
        if logits.dtype != torch.float64:
            launch(logits, regions, labels, active, keys, keys, status, *args, PASS=0, **meta)
            if keys.numel():
                kern.keys_to_index_kernel[(triton.cdiv(keys.numel(), 1024),)](keys, keys.numel(), BLOCK=1024)
            return keys
        index = torch.full(shape, hw, dtype=torch.int64, device=logits.device)
        launch(logits, regions, labels, active, keys, index, status, *args, PASS=1, **meta)
        launch(logits, regions, labels, active, keys, index, status, *args, PASS=2, **meta)
        return torch.where(index < hw, index, -1)


_LAUNCH = LaunchTable(OP, cpp=_argmax_cpp, triton=_argmax_triton)


@torch.library.custom_op("mulact::region_class_argmax", mutates_args=(), device_types=("cpu", "cuda"))
def _op(logits: torch.Tensor, regions: torch.Tensor, region_labels: torch.Tensor, temperature: float,
        min_classes: int, backend: str) -> torch.Tensor:
    """The fused kernel (docs/design.md, "Dispatch") on validated arguments."""
    launch = _LAUNCH.launcher(backend, logits)
    num_regions = region_labels.shape[1]
    active = (num_labels(region_labels) >= min_classes).to(torch.int8)
    status = new_status(logits.device)
    out = launch(logits.detach().contiguous(), index_tensor(regions), labels_u8(region_labels), active,
                           temperature, status)
    report_status(OP, status, num_regions, regions=regions)
    return out


@_op.register_fake
def _(logits, regions, region_labels, temperature, min_classes, backend):
    return logits.new_empty(region_labels.shape, dtype=torch.int64)


def region_class_argmax_fused(logits, regions, region_labels, temperature, min_classes, backend):
    """Run a fused backend on validated arguments (used by the prototypical pixel loss)."""
    return torch.ops.mulact.region_class_argmax(logits.detach(), regions, region_labels, temperature, min_classes,
                                                backend)


def region_class_argmax(logits, regions, region_labels, temperature, min_classes=1, *, backend=None):
    """Flat index of the prototypical pixel of every (image, region, labeled class).

    Args:
        logits: ``(B, C, H, W)`` float32/float16/bfloat16/float64.
        regions: ``(B, H, W)`` integer region ids; negative = no region; ``>= R`` raises.
        region_labels: ``(B, R, C)`` bool/uint8 multi-hot labels, ``R = region_labels.shape[1]``.
        temperature: ``tau`` > 0, ``z = logits / tau`` (it changes the softmax, hence the argmax).
        min_classes: only regions with at least this many labeled classes get an answer
            (1: every labeled region, as for stage-2 prototypes; 2: Eq. 8-9's multi-class regions).
        backend: ``"reference" | "cpp" | "triton"`` or None (by device).

    Returns:
        ``(B, R, C)`` int64: ``h * W + w`` of ``argmax_{x in r} log_softmax(z(x))_c`` (ties: the
        smallest index), ``-1`` where ``c`` is not in ``Y(r)``, ``|Y(r)| < min_classes`` or ``r``
        has no pixel in the crop. Not differentiable.

    Example:
        >>> logits = torch.randn(2, 20, 64, 64)
        >>> regions = torch.randint(0, 16, (2, 64, 64))
        >>> labels = torch.zeros(2, 16, 20, dtype=torch.bool); labels[:, 1, [4, 7]] = True
        >>> idx = region_class_argmax(logits, regions, labels, temperature=0.1, min_classes=2)
        >>> b, r, c = (idx >= 0).nonzero(as_tuple=True)
        >>> chosen_logits = logits.flatten(2)[b, :, idx[b, r, c]]   # (K, C): 2 images x 2 classes
        >>> chosen_logits.shape
        torch.Size([4, 20])
    """
    num_regions, temperature = _check(logits, regions, region_labels, temperature, min_classes)
    backend = resolve_backend(OP, logits.device, backend)
    if backend == "reference":
        return region_class_argmax_reference(logits, regions, region_labels, temperature, min_classes)
    return region_class_argmax_fused(logits, regions, region_labels, temperature, min_classes, backend)
