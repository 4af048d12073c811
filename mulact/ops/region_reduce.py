"""Generic per-region reductions of pixel values (SPEC §3.1)."""
from __future__ import annotations

import torch

from . import _validate as V
from ._backend import resolve_backend
from ._cpp import code, ext, index_tensor, ptr

OP = "region_reduce"
REDUCTIONS = ("sum", "mean", "max", "min", "count", "argmax")
_CPP_MODE = {"sum": 0, "mean": 0, "max": 1, "argmax": 1, "min": 2, "count": 3}


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check(values, regions, num_regions, reduce) -> None:
    V.check_regions(OP, regions, num_regions)
    V.check_choice(OP, "reduce", reduce, REDUCTIONS)
    V._need_tensor(OP, "values", values)
    if reduce != "count":
        V.check_float(OP, "values", values, (3, 4), "(B, H, W) or (B, K, H, W)")
    elif values.dim() not in (3, 4):
        raise ValueError(f"{OP}: `values` must have shape (B, H, W) or (B, K, H, W), got {tuple(values.shape)}")
    b, h, w = values.shape[0], values.shape[-2], values.shape[-1]
    if tuple(regions.shape) != (b, h, w):
        raise ValueError(f"{OP}: `values` has shape {tuple(values.shape)} but `regions` has {tuple(regions.shape)}; "
                         f"expected regions of shape ({b}, {h}, {w})")
    V.check_same_device(OP, values=values, regions=regions)


def region_reduce_reference(values: torch.Tensor, regions: torch.Tensor, num_regions: int,
                            reduce: str = "sum") -> torch.Tensor:
    """Pure-torch oracle of :func:`region_reduce` (``index_add`` / ``scatter_reduce``);
    differentiable through torch's own autograd."""
    _check(values, regions, num_regions, reduce)
    V.check_region_ids(OP, regions, num_regions)
    squeeze = values.dim() == 3
    v4 = values.unsqueeze(1) if squeeze else values
    B, K, H, W = v4.shape
    N, R = H * W, num_regions
    dev = values.device
    ids = regions.reshape(B, N).long()
    valid = ids >= 0
    slot = (torch.arange(B, device=dev).unsqueeze(1) * R + ids)[valid]
    count = torch.zeros(B * R, dtype=torch.int64, device=dev).index_add_(0, slot, torch.ones_like(slot))
    if reduce == "count":
        return count.view(B, R)
    acc = _acc(values.dtype)
    v = v4.reshape(B, K, N).to(acc).transpose(1, 2)[valid]  # (M, K), pixels of valid ids
    if reduce in ("sum", "mean"):
        out = torch.zeros(B * R, K, dtype=acc, device=dev).index_add(0, slot, v)
        if reduce == "mean":
            out = out / count.clamp(min=1).unsqueeze(1).to(acc)
        out = out.view(B, R, K).to(values.dtype)
    else:
        largest = reduce != "min"
        index = slot.unsqueeze(1).expand(-1, K)
        fill = float("-inf") if largest else float("inf")
        best = torch.full((B * R, K), fill, dtype=acc, device=dev).scatter_reduce(
            0, index, v.detach(), "amax" if largest else "amin")
        pix = torch.arange(N, device=dev).expand(B, N)[valid].unsqueeze(1)
        cand = torch.where(v.detach() == best[slot], pix, N)
        arg = torch.full((B * R, K), N, dtype=torch.int64, device=dev).scatter_reduce(0, index, cand, "amin")
        arg = arg.masked_fill(arg == N, -1).view(B, R, K)
        if reduce == "argmax":
            return arg[..., 0] if squeeze else arg
        picked = v4.reshape(B, K, N).gather(2, arg.clamp(min=0).transpose(1, 2)).transpose(1, 2)
        out = torch.where(arg >= 0, picked, torch.zeros((), dtype=values.dtype, device=dev))
    return out[..., 0] if squeeze else out


def _kernel_forward(which: str, v3: torch.Tensor | None, reg: torch.Tensor, B: int, K: int, N: int, R: int,
                    mode: str, acc: torch.dtype):
    """Returns ``(val (B, R, K) acc, count (B, R) int64, arg (B, R, K) int64 or None)``."""
    status = V.new_status(reg.device)
    if which == "cpp":
        val = torch.empty(B, R, K, dtype=acc) if mode != "count" else None
        arg = torch.empty(B, R, K, dtype=torch.int64) if mode in ("max", "min") else None
        cnt = torch.empty(B, R, dtype=torch.int64)
        x = v3 if v3 is not None else cnt  # not read in count mode
        ext().region_reduce_forward(ptr(x), code(x) if v3 is not None else 0, ptr(reg), code(reg), B, K, N, R,
                                    _CPP_MODE[mode], ptr(val), ptr(arg), ptr(cnt), ptr(status))
    else:
        from mulact.kernels.region_reduce import region_extremum_triton, region_sum_triton

        arg = None
        if mode in ("max", "min"):
            val, arg = region_extremum_triton(v3, reg, R, mode == "max", status)
            cnt = None
        else:
            val, cnt = region_sum_triton(v3 if mode != "count" else None, reg, B, K, N, R, status, acc)
            cnt = cnt.to(torch.int64)
    V.raise_on_status(OP, status, R, regions=reg)
    return val, cnt, arg


class _RegionReduceFn(torch.autograd.Function):
    """sum / mean / max / min over regions for the cpp and triton backends."""

    @staticmethod
    def forward(ctx, v3, reg, R, reduce, which):
        B, K, N = v3.shape
        acc = _acc(v3.dtype)
        mode = {"sum": "sum", "mean": "sum", "max": "max", "min": "min"}[reduce]
        val, cnt, arg = _kernel_forward(which, v3, reg, B, K, N, R, mode, acc)
        if reduce == "mean":
            val = val / cnt.clamp(min=1).unsqueeze(-1).to(acc)
        ctx.reduce, ctx.which, ctx.shape, ctx.dtype = reduce, which, (B, K, N, R), v3.dtype
        if reduce in ("sum", "mean"):
            ctx.save_for_backward(reg, cnt if reduce == "mean" else None)
        else:
            ctx.save_for_backward(arg)
        return val.to(v3.dtype)

    @staticmethod
    def backward(ctx, grad):
        B, K, N, R = ctx.shape
        acc = _acc(ctx.dtype)
        g = grad.to(acc).contiguous()
        if ctx.reduce in ("sum", "mean"):
            reg, cnt = ctx.saved_tensors
            if cnt is not None:
                g = (g / cnt.clamp(min=1).unsqueeze(-1).to(acc)).contiguous()
            if ctx.which == "cpp":
                out = torch.empty(B, K, N, dtype=ctx.dtype)
                ext().region_reduce_backward_gather(ptr(g), code(out), ptr(reg), code(reg), B, K, N, R, ptr(out))
            else:
                from mulact.kernels.region_reduce import region_gather_triton

                out = region_gather_triton(g, reg, K, N, ctx.dtype)
        else:
            (arg,) = ctx.saved_tensors
            # Each pixel lies in one region, so the chosen (image, plane, pixel) slots are distinct.
            out = torch.zeros(B * K * N, dtype=ctx.dtype, device=grad.device)
            dev = grad.device
            plane = torch.arange(B, device=dev).view(B, 1, 1) * K + torch.arange(K, device=dev).view(1, 1, K)
            hit = arg >= 0
            out[(plane * N + arg)[hit]] = grad[hit].to(ctx.dtype)
            out = out.view(B, K, N)
        return out, None, None, None, None


@V.names_sizes("num_regions")
def region_reduce(values: torch.Tensor, regions: torch.Tensor, num_regions: int, reduce: str = "sum", *,
                  backend: str | None = None) -> torch.Tensor:
    """Reduce pixel values over superpixel regions.

    Args:
        values: ``(B, H, W)`` or ``(B, K, H, W)`` float32 / float16 / bfloat16 / float64 (K value
            planes, e.g. class channels). For ``reduce="count"`` only the shape is used and any
            dtype is accepted.
        regions: ``(B, H, W)`` integer region ids in ``[0, R)``; pixels with a negative id are
            ignored. An id ``>= R`` raises ``ValueError`` (naming the op, the id and R).
        num_regions: R.
        reduce: ``"sum" | "mean" | "max" | "min" | "count" | "argmax"``.
        backend: ``"reference"``, ``"cpp"`` or ``"triton"``; default by device.

    Returns:
        * ``sum/mean/max/min``: ``(B, R)`` for 3-D values, ``(B, R, K)`` for 4-D values
          (region-major, like every ``(B, R, C)`` tensor of mulact), in the dtype of ``values``.
          Accumulation is in float32 (float64 for float64 values). Empty regions give 0.
        * ``count``: ``(B, R)`` int64 pixels per region (independent of K).
        * ``argmax``: int64 of the output shape above: flat pixel index ``h * W + w`` of the
          maximum, the smallest such index on ties, ``-1`` for an empty region.

    Autograd: ``sum`` and ``mean`` pass the region's gradient (divided by the region size for
    mean) to every pixel of the region; ``max``/``min`` pass it only to the pixel ``argmax``
    (resp. the arg-min) reports, i.e. the smallest flat index among tied extrema —
    deterministic, unlike an even split. ``count`` and ``argmax`` are not differentiable.

    Raises:
        TypeError: ``values`` not a float tensor (except for ``count``), ``regions`` not integer.
        ValueError: shapes that disagree, an id ``>= num_regions`` (checked inside the kernel's
            own pass), an unknown ``reduce``, tensors on different devices.
        RuntimeError: a forced ``backend`` that cannot run on the inputs' device.

    ``values`` should be finite: NaN propagates through sum/mean and makes max/min/argmax
    unspecified. Max/min/argmax/count are exact and identical on every backend; sums are
    reproducible for the C++ backend at a fixed thread count, and use float atomics on CUDA.

    Example:
        >>> v = torch.tensor([[[1., 5.], [5., 2.]]])          # (1, 2, 2)
        >>> r = torch.tensor([[[0, 0], [1, -1]]])
        >>> region_reduce(v, r, 3, "sum")
        tensor([[6., 5., 0.]])
        >>> region_reduce(v, r, 3, "argmax")
        tensor([[ 1,  2, -1]])
    """
    _check(values, regions, num_regions, reduce)
    which = resolve_backend(OP, values.device, backend)
    if which == "reference":
        return region_reduce_reference(values, regions, num_regions, reduce)
    squeeze = values.dim() == 3
    B, H, W = regions.shape
    K = 1 if squeeze else values.shape[1]
    N, R = H * W, num_regions
    reg = index_tensor(regions)
    if reduce == "count":
        _, cnt, _ = _kernel_forward(which, None, reg, B, K, N, R, "count", torch.float32)
        return cnt
    v3 = values.reshape(B, K, N).contiguous()
    if reduce == "argmax":
        with torch.no_grad():
            _, _, arg = _kernel_forward(which, v3, reg, B, K, N, R, "max", _acc(values.dtype))
        return arg[..., 0] if squeeze else arg
    out = _RegionReduceFn.apply(v3, reg, R, reduce, which)
    return out[..., 0] if squeeze else out
