"""Acquisition statistics in one pass over the logits (docs/design.md §2.2).

For every image b, region r and class c this op returns the sum of the pixel uncertainty
u(x) over the pixels of r whose top-1 class is c, the number of those pixels, and, over the
whole batch, the sum of the softmax probabilities of every pixel that belongs to a region.
Every region-level acquisition function (BvSB, PixBal, ClassBal, ...) is a cheap function of
these ``(B, R, C)`` tensors: see :mod:`mulact.ops.acquisition`.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from . import _validate as V
from ._backend import LaunchTable, resolve_backend
from ._cpp import code, ext, index_tensor, ptr
from ._dtypes import acc_dtype
from ._labels import device_guard
from ._status import report as report_status

OP = "region_uncertainty_stats"
# The integer code of each pixel measure, as the kernels receive it. Defined here once; the C++
# kernel (csrc/region_uncertainty_stats.cpp, ``enum Measure``) and the Triton kernel
# (kernels/region_uncertainty_stats.py, ``MEASURE_CODES``) keep copies that
# tests/test_measure_codes.py checks against this table.
MEASURE_CODES = {"bvsb": 0, "margin": 1, "entropy": 2, "least_confidence": 3}
MEASURES = tuple(MEASURE_CODES)


class RegionUncertaintyStats(NamedTuple):
    """Output of :func:`region_uncertainty_stats`.

    Attributes:
        u_sum: ``(B, R, C)`` float32 — sum of u(x) over the pixels of region r whose top-1
            class is c.
        count: ``(B, R, C)`` int32 — number of those pixels.
        prob_sum: ``(C,)`` float32 — sum of softmax(z) over every pixel with a region id >= 0,
            summed over the batch.
        num_pixels: ``()`` int64 tensor — number of pixels with a region id >= 0
            (= ``count.sum()``); a tensor, so that a CUDA call does not wait for the GPU.
    """

    u_sum: torch.Tensor
    count: torch.Tensor
    prob_sum: torch.Tensor
    num_pixels: torch.Tensor


def _check(logits, regions, num_regions, temperature, measure) -> float:
    V.check_regions(OP, regions, num_regions)
    V.check_logits(OP, logits, regions)
    V.check_classes(OP, logits)
    V.check_choice(OP, "measure", measure, MEASURES)
    return V.check_temperature(OP, temperature, logits.dtype)


def _inv_t(temperature: float, dtype: torch.dtype) -> float:
    """1/τ rounded to the computation dtype, so every backend multiplies by the same number."""
    return float(torch.tensor(1.0 / temperature, dtype=torch.float64).to(acc_dtype(dtype)))


def pixel_uncertainty(logits: torch.Tensor, temperature: float, measure: str = "bvsb"):
    """Per-pixel ``(u, top1, p)`` of ``(B, C, H, W)`` logits: u ``(B, H, W)`` in float32
    (float64 for float64 logits), top-1 class ``(B, H, W)`` int64 (ties → smaller class) and
    the softmax ``p (B, C, H, W)``.

    Pure torch; the building block of :func:`region_uncertainty_stats_reference`.
    """
    z = logits.to(acc_dtype(logits)) * _inv_t(temperature, logits.dtype)
    top1 = z.argmax(dim=1)  # first maximal index on ties
    m1 = z.gather(1, top1.unsqueeze(1)).squeeze(1)
    C = z.shape[1]
    if C > 1:
        m2 = z.scatter(1, top1.unsqueeze(1), float("-inf")).amax(dim=1)
    else:
        m2 = torch.full_like(m1, float("-inf"))
    logp = torch.log_softmax(z, dim=1)
    p = logp.exp()
    p_b = torch.exp(-torch.logsumexp(z - m1.unsqueeze(1), dim=1))
    if measure == "bvsb":
        u = torch.exp(m2 - m1)
    elif measure == "margin":
        u = 1.0 - (p_b - p_b * torch.exp(m2 - m1))
    elif measure == "entropy":
        u = -(p * logp).sum(dim=1)
    elif measure == "least_confidence":
        u = 1.0 - p_b
    else:
        raise ValueError(f"{OP}: `measure` must be one of {', '.join(map(repr, MEASURES))}, got {measure!r}")
    return u, top1, p


def region_uncertainty_stats_reference(logits: torch.Tensor, regions: torch.Tensor, num_regions: int,
                                       temperature: float, measure: str = "bvsb") -> RegionUncertaintyStats:
    """Pure-torch oracle of :func:`region_uncertainty_stats` (materialises softmax)."""
    temperature = _check(logits, regions, num_regions, temperature, measure)
    V.check_region_ids(OP, regions, num_regions)
    V.check_finite(OP, "logits", logits)
    B, C, H, W = logits.shape
    R = num_regions
    u, top1, p = pixel_uncertainty(logits, temperature, measure)
    ids = regions.reshape(B, -1).long()
    valid = ids >= 0
    bidx = torch.arange(B, device=logits.device).unsqueeze(1).expand_as(ids)
    slot = ((bidx * R + ids) * C + top1.reshape(B, -1))[valid]
    u_sum = torch.zeros(B * R * C, dtype=u.dtype, device=logits.device)
    u_sum.index_add_(0, slot, u.reshape(B, -1)[valid])
    count = torch.zeros(B * R * C, dtype=torch.int64, device=logits.device)
    count.index_add_(0, slot, torch.ones_like(slot))
    prob_sum = p.permute(0, 2, 3, 1).reshape(B, -1, C)[valid].sum(dim=0)
    return RegionUncertaintyStats(
        u_sum.view(B, R, C).to(torch.float32),
        count.view(B, R, C).to(torch.int32),
        prob_sum.to(torch.float32),
        valid.sum(),
    )


def _cpp(logits, regions, num_regions, inv_t, measure, status):
    B, C, H, W = logits.shape
    u = torch.empty(B, num_regions, C, dtype=torch.float32)
    n = torch.empty(B, num_regions, C, dtype=torch.int32)
    prob = torch.empty(C, dtype=torch.float32)
    pixels = ext().region_uncertainty_stats_forward(
        ptr(logits), code(logits), ptr(regions), code(regions), B, C, H * W, num_regions, inv_t,
        MEASURE_CODES[measure], ptr(u), ptr(n), ptr(prob), ptr(status))
    return u, n, prob, torch.tensor(pixels, dtype=torch.int64)


def _triton(logits, regions, num_regions, inv_t, measure, status):
    from mulact.kernels.region_uncertainty_stats import region_uncertainty_stats_triton

    with device_guard(logits):
        u, n, prob = region_uncertainty_stats_triton(logits, regions, num_regions, inv_t, measure, status,
                                                      acc_dtype(logits))
    return u, n, prob, n.sum(dtype=torch.int64)  # stays on the device: no sync


_LAUNCH = LaunchTable(OP, cpp=_cpp, triton=_triton)


@torch.library.custom_op("mulact::region_uncertainty_stats", mutates_args=(), device_types=("cpu", "cuda"))
def _op(logits: torch.Tensor, regions: torch.Tensor, num_regions: int, temperature: float, measure: str,
        backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused kernel (docs/design.md, "Dispatch"): C++ on CPU tensors, Triton on CUDA ones
    (and on CPU tensors when ``backend="triton"`` under the interpreter)."""
    launch = _LAUNCH.launcher(backend, logits)
    status = V.new_status(logits.device)
    out = launch(logits.contiguous(), index_tensor(regions), num_regions, _inv_t(temperature, logits.dtype),
                 measure, status)
    report_status(OP, status, num_regions, regions=regions)
    return out


@_op.register_fake
def _(logits, regions, num_regions, temperature, measure, backend):
    B, C = logits.shape[:2]
    return (logits.new_empty(B, num_regions, C, dtype=torch.float32),
            logits.new_empty(B, num_regions, C, dtype=torch.int32),
            logits.new_empty(C, dtype=torch.float32),
            logits.new_empty((), dtype=torch.int64))


@V.names_sizes("num_regions")
@torch.no_grad()
def region_uncertainty_stats(logits: torch.Tensor, regions: torch.Tensor, num_regions: int,
                             temperature: float, measure: str = "bvsb", *,
                             backend: str | None = None) -> RegionUncertaintyStats:
    """Per-region acquisition statistics from one pass over the logits.

    With ``z = logits · (1/τ)`` (1/τ rounded to the computation dtype), ``p = softmax(z)`` over
    classes, ``b`` the top-1 class (ties → smaller class) and ``sb`` the runner-up, the pixel
    uncertainty ``u(x)`` is, by ``measure``:

    * ``"bvsb"``: ``p_sb / p_b = exp(z_sb − z_b)`` (Eq. 2; 1 = maximally uncertain);
    * ``"margin"``: ``1 − (p_b − p_sb)``;
    * ``"entropy"``: ``−Σ_c p_c log p_c``;
    * ``"least_confidence"``: ``1 − p_b``.

    With one class (C = 1) there is no runner-up: ``p_sb = 0``, so bvsb, margin, entropy and
    least confidence are all 0 (a one-class model is certain).

    Args:
        logits: ``(B, C, H, W)`` float32 / float16 / bfloat16 / float64. Computation is in
            float32 (float64 for float64 logits). Every logit must be finite, including those
            of pixels with a negative id (the check runs inside the same pass).
        regions: ``(B, H, W)`` integer region ids in ``[0, R)``; a negative id excludes the
            pixel from every output. An id ``>= R`` raises ``ValueError``.
        num_regions: R.
        temperature: τ > 0.
        measure: one of ``"bvsb"``, ``"margin"``, ``"entropy"``, ``"least_confidence"``.
        backend: ``"reference"``, ``"cpp"`` or ``"triton"``; default by device (see
            :func:`mulact.ops.resolve_backend`).

    Returns:
        :class:`RegionUncertaintyStats` ``(u_sum (B, R, C) float32, count (B, R, C) int32,
        prob_sum (C,) float32, num_pixels () int64)``. The region mean uncertainty is
        ``u_sum.sum(-1) / count.sum(-1)``; the mean softmax probability over the pixels seen is
        ``prob_sum / num_pixels`` (PixBal's P(c), Eq. 3).

    Raises:
        TypeError: non-float ``logits``, non-integer ``regions``, non-numeric ``temperature``.
        ValueError: shapes that disagree, ``C == 0``, an id ``>= num_regions``, a NaN/Inf
            logit (both found inside the kernel's single pass), unknown ``measure``,
            ``temperature <= 0``, tensors on different devices.
        RuntimeError: a forced ``backend`` that cannot run on the inputs' device.

    No autograd: acquisition runs under ``torch.no_grad()`` and this op is decorated with it,
    so the outputs never require grad.

    Determinism: top-1 assignment and ``count`` are exact on every backend. The C++ backend
    reduces per-thread partial sums in thread order (bitwise reproducible for a fixed thread
    count). On CUDA, ``u_sum`` is accumulated with float atomics (after summing runs of
    equal (region, class) pixels inside each block), so it is not bitwise reproducible across
    runs (differences are rounding-level); ``prob_sum`` is reduced without atomics and is.

    Example:
        >>> logits = torch.randn(2, 19, 64, 64)
        >>> regions = torch.randint(0, 16, (2, 64, 64))
        >>> st = region_uncertainty_stats(logits, regions, 16, temperature=1.0)
        >>> st.u_sum.shape, st.count.shape, st.prob_sum.shape, st.num_pixels
        (torch.Size([2, 16, 19]), torch.Size([2, 16, 19]), torch.Size([19]), tensor(8192))
    """
    temperature = _check(logits, regions, num_regions, temperature, measure)
    which = resolve_backend(OP, logits.device, backend)
    if which == "reference":
        return region_uncertainty_stats_reference(logits, regions, num_regions, temperature, measure)
    return RegionUncertaintyStats(*torch.ops.mulact.region_uncertainty_stats(
        logits, regions, num_regions, temperature, measure, which))
