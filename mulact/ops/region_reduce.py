"""Generic per-region reductions of pixel values (docs/design.md §2.1)."""
from __future__ import annotations

import torch

from . import _validate as V
from ._backend import LaunchTable, resolve_backend
from ._cpp import code, ext, index_tensor, ptr
from ._dtypes import acc_dtype as _acc
from ._labels import device_guard
from ._status import report as report_status

OP = "region_reduce"
REDUCTIONS = ("sum", "mean", "max", "min", "count", "argmax")
# kernel modes: "max"/"min" also find the arg-extremum, "max_value"/"min_value" need not
_CPP_MODE = {"sum": 0, "max": 1, "min": 2, "count": 3, "max_value": 4, "min_value": 5}


def _check(values, regions, num_regions, reduce) -> None:
    V.check_regions(OP, regions, num_regions)
    V.check_choice(OP, "reduce", reduce, REDUCTIONS)
    V.need_tensor(OP, "values", values)
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


def _forward_cpp(v3, reg, B, K, N, R, mode, acc, status):
    val = torch.empty(B, R, K, dtype=acc) if mode != "count" else None
    arg = torch.empty(B, R, K, dtype=torch.int64) if mode in ("max", "min") else None
    cnt = torch.empty(B, R, dtype=torch.int64)
    x = v3 if v3 is not None else cnt  # not read in count mode
    ext().region_reduce_forward(ptr(x), code(x) if v3 is not None else 0, ptr(reg), code(reg), B, K, N, R,
                                _CPP_MODE[mode], ptr(val), ptr(arg), ptr(cnt), ptr(status))
    return val, cnt, arg


def _forward_triton(v3, reg, B, K, N, R, mode, acc, status):
    from mulact.kernels.region_reduce import region_extremum_triton, region_sum_triton

    if mode in ("max", "min", "max_value", "min_value"):
        with device_guard(v3):
            val, arg = region_extremum_triton(v3, reg, R, mode.startswith("max"), status, acc)
        return val, None, arg
    val, cnt = region_sum_triton(v3 if mode != "count" else None, reg, B, K, N, R, status, acc)
    return val, cnt.to(torch.int64), None


def _gather_cpp(g, reg, B, K, N, R, dtype):
    out = torch.empty(B, K, N, dtype=dtype)
    ext().region_reduce_backward_gather(ptr(g), code(out), ptr(reg), code(reg), B, K, N, R, ptr(out))
    return out


def _gather_triton(g, reg, B, K, N, R, dtype):
    from mulact.kernels.region_reduce import region_gather_triton

    with device_guard(g):
        return region_gather_triton(g, reg, K, N, dtype)


# Triton's packed keys find the arg-extremum of max/min at no cost and hand it to the backward;
# the C++ kernel skips it and the backward finds it. The fake implementation gives the same shapes.
_forward_triton.gives_arg = True
_FORWARD = LaunchTable(OP, cpp=_forward_cpp, triton=_forward_triton)
_GATHER = LaunchTable(OP, cpp=_gather_cpp, triton=_gather_triton)


def _kernel_forward(which: str, v3: torch.Tensor | None, reg: torch.Tensor, B: int, K: int, N: int, R: int,
                    mode: str, acc: torch.dtype):
    """Returns ``(val (B, R, K) acc, count (B, R) int64, arg (B, R, K) int64 or None)``; the
    ``*_value`` modes return an arg only where the kernel finds it at no cost (Triton)."""
    launch = _FORWARD.launcher(which, reg)
    status = V.new_status(reg.device)
    val, cnt, arg = launch(v3, reg, B, K, N, R, mode, acc, status)
    report_status(OP, status, R, regions=reg)
    return val, cnt, arg


@torch.library.custom_op("mulact::region_reduce", mutates_args=(), device_types=("cpu", "cuda"))
def _op(values: torch.Tensor, regions: torch.Tensor, num_regions: int, reduce: str,
        backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused reduction of ``(B, K, H, W)`` values: ``(out, aux)``. ``out`` is ``(B, R, K)`` in the
    values' dtype (sum/mean/max/min), ``(B, R)`` int64 (count) or ``(B, R, K)`` int64 (argmax);
    ``aux`` is what the backward needs: the ``(B, R)`` pixel counts (sum/mean), the ``(B, R, K)``
    arg-extremum of max/min where the kernel finds it at no cost (Triton's packed keys; the C++
    kernel skips it and the backward finds it), else an empty tensor."""
    B, K, H, W = values.shape
    N, R = H * W, num_regions
    reg = index_tensor(regions)
    empty = torch.empty(0, dtype=torch.int64, device=values.device)
    if reduce == "count":
        _, cnt, _ = _kernel_forward(backend, None, reg, B, K, N, R, "count", torch.float32)
        return cnt, empty
    v3 = values.reshape(B, K, N).contiguous()
    acc = _acc(values.dtype)
    mode = {"sum": "sum", "mean": "sum", "max": "max_value", "argmax": "max", "min": "min_value"}[reduce]
    val, cnt, arg = _kernel_forward(backend, v3, reg, B, K, N, R, mode, acc)
    if reduce == "argmax":
        return arg, empty
    if reduce in ("max", "min"):
        return val.to(values.dtype), arg if arg is not None else empty
    if reduce == "mean":
        val = val / cnt.clamp(min=1).unsqueeze(-1).to(acc)
    return val.to(values.dtype), cnt


@_op.register_fake
def _(values, regions, num_regions, reduce, backend):
    B, K = values.shape[:2]
    R = num_regions
    empty = values.new_empty(0, dtype=torch.int64)
    if reduce == "count":
        return values.new_empty(B, R, dtype=torch.int64), empty
    if reduce == "argmax":
        return values.new_empty(B, R, K, dtype=torch.int64), empty
    if reduce in ("sum", "mean"):
        aux = values.new_empty(B, R, dtype=torch.int64)
    else:  # max/min: the arg-extremum from Triton, nothing from C++
        gives_arg = getattr(_FORWARD.launchers.get(backend), "gives_arg", False)
        aux = values.new_empty((B, R, K) if gives_arg else (0,), dtype=torch.int64)
    return values.new_empty(B, R, K), aux


@torch.library.custom_op("mulact::region_reduce_backward", mutates_args=(), device_types=("cpu", "cuda"))
def _gather_op(grad: torch.Tensor, regions: torch.Tensor, count: torch.Tensor, reduce: str,
               backend: str) -> torch.Tensor:
    """Gradient of sum/mean: ``(B, K, H, W)`` with every pixel getting its region's gradient
    (divided by the region's pixel count for mean); 0 for pixels outside every region."""
    gather = _GATHER.launcher(backend, regions)
    B, R, K = grad.shape
    H, W = regions.shape[1:]
    N = H * W
    acc = _acc(grad.dtype)
    g = grad.to(acc)
    if reduce == "mean":
        g = g / count.clamp(min=1).unsqueeze(-1).to(acc)
    g = g.contiguous()
    out = gather(g, index_tensor(regions), B, K, N, R, grad.dtype)
    return out.view(B, K, H, W)


@_gather_op.register_fake
def _(grad, regions, count, reduce, backend):
    B, R, K = grad.shape
    return grad.new_empty(B, K, *regions.shape[1:])


def _setup_context(ctx, inputs, output):
    values, regions, num_regions, reduce, backend = inputs
    ctx.reduce, ctx.backend, ctx.dtype, ctx.num_regions = reduce, backend, values.dtype, num_regions
    find_arg = reduce in ("max", "min") and output[1].numel() == 0 and values.numel() > 0
    ctx.save_for_backward(regions, output[1], values if find_arg else None)


def _backward(ctx, grad, _grad_aux):
    regions, aux, values = ctx.saved_tensors
    if ctx.reduce in ("count", "argmax"):
        return None, None, None, None, None
    if ctx.reduce in ("sum", "mean"):
        return torch.ops.mulact.region_reduce_backward(grad, regions, aux, ctx.reduce, ctx.backend), None, None, None, None
    # max/min: the whole gradient goes to the reported pixel. scatter_add, not a boolean index:
    # empty regions (arg -1) add 0 at a dummy slot, with no data-dependent shape.
    B, R, K = grad.shape
    H, W = regions.shape[1:]
    if values is not None:  # the forward skipped the arg-extremum (C++): one more pass, here only
        aux, _ = torch.ops.mulact.region_reduce(values if ctx.reduce == "max" else -values, regions,
                                                ctx.num_regions, "argmax", ctx.backend)
    elif aux.numel() == 0:  # no pixels at all
        aux = torch.full((B, R, K), -1, dtype=torch.int64, device=grad.device)
    hit = aux >= 0
    src = torch.where(hit, grad, 0).to(ctx.dtype).transpose(1, 2)
    out = torch.zeros(B, K, H * W, dtype=ctx.dtype, device=grad.device)
    out.scatter_add_(2, aux.clamp(min=0).transpose(1, 2), src)
    return out.view(B, K, H, W), None, None, None, None


_op.register_autograd(_backward, setup_context=_setup_context)


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
    out, _ = torch.ops.mulact.region_reduce(values.unsqueeze(1) if squeeze else values, regions, num_regions,
                                            reduce, which)
    return out[..., 0] if squeeze and reduce != "count" else out
