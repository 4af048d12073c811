"""Input checks shared by every op.

Cheap checks (types, shapes, devices) run up front in Python. Value checks that need a pass
over the data (region ids >= R, NaN/Inf logits) are done *inside* the fused kernels, which
report through a small ``status`` tensor so the check costs no extra pass over the logits;
:func:`raise_on_status` turns it into the error. The reference backend uses
:func:`check_region_ids` / :func:`check_finite` instead.
"""
from __future__ import annotations

import functools
import inspect
import math

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
INT_DTYPES = (torch.int16, torch.int32, torch.int64, torch.uint8, torch.int8)

# status layout: [non-finite value seen (0/1), largest region id >= R seen (-1 if none)]
STATUS_NONFINITE, STATUS_BAD_ID = 0, 1

# The most regions an op accepts. The kernels report region ids in an int32 status slot and
# region_adjacency keys a pair as u * R + v in int64 (R**2 must fit): beyond this, ids would be
# clipped or keys wrap, and an adjacency would come back with wrong edges.
MAX_REGIONS = 2**31 - 1


def need_tensor(op: str, name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: `{name}` must be a torch.Tensor, got {type(t).__name__}")


def check_regions(op: str, regions, num_regions) -> None:
    """`regions` is an integer (B, H, W) tensor; `num_regions` a non-negative int."""
    need_tensor(op, "regions", regions)
    if regions.dtype not in INT_DTYPES:
        raise TypeError(f"{op}: `regions` must be an integer tensor of region ids, got {regions.dtype}")
    if regions.dim() != 3:
        raise ValueError(f"{op}: `regions` must have shape (B, H, W), got {tuple(regions.shape)}")
    if isinstance(num_regions, bool) or not isinstance(num_regions, int) or num_regions < 0:
        raise ValueError(f"{op}: `num_regions` must be a non-negative int, got {num_regions!r}")
    check_region_count(op, num_regions)


def check_region_count(op: str, num_regions: int, name: str = "num_regions") -> None:
    if num_regions > MAX_REGIONS:
        raise ValueError(f"{op}: `{name}`={num_regions} exceeds {MAX_REGIONS} (2**31 - 1), the most regions "
                         "the kernels can index")


def check_classes(op: str, logits: torch.Tensor, name: str = "logits") -> None:
    """At least one class channel: a softmax over no class has no value."""
    if logits.shape[1] == 0:
        raise ValueError(f"{op}: `{name}` needs at least one class, got shape {tuple(logits.shape)}")


def check_float(op: str, name: str, t, ndim: int | tuple[int, ...], layout: str) -> None:
    need_tensor(op, name, t)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: `{name}` must be float32/float16/bfloat16/float64, got {t.dtype}")
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if t.dim() not in dims:
        raise ValueError(f"{op}: `{name}` must have shape {layout}, got {tuple(t.shape)}")


def check_same_device(op: str, **tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        desc = ", ".join(f"`{n}` on {d}" for n, d in devices.items())
        raise ValueError(f"{op}: all tensors must be on one device, got {desc}")


def check_logits(op: str, logits, regions, name: str = "logits") -> None:
    """`logits` is (B, C, H, W) float with B, H, W matching `regions`."""
    check_float(op, name, logits, 4, "(B, C, H, W)")
    b, _, h, w = logits.shape
    if tuple(regions.shape) != (b, h, w):
        raise ValueError(f"{op}: `{name}` has shape {tuple(logits.shape)} but `regions` has "
                         f"{tuple(regions.shape)}; expected regions of shape ({b}, {h}, {w})")
    check_same_device(op, **{name: logits, "regions": regions})


def check_region_labels(op: str, region_labels, batch: int, num_regions: int, num_classes: int | None = None) -> None:
    """`region_labels` is a multi-hot (B, R, C) bool/uint8 tensor."""
    need_tensor(op, "region_labels", region_labels)
    if region_labels.dtype not in (torch.bool, torch.uint8):
        raise TypeError(f"{op}: `region_labels` must be bool or uint8 multi-hot, got {region_labels.dtype}")
    if region_labels.dim() != 3 or region_labels.shape[0] != batch or region_labels.shape[1] != num_regions or (
        num_classes is not None and region_labels.shape[2] != num_classes
    ):
        want = f"({batch}, {num_regions}, {num_classes if num_classes is not None else 'C'})"
        raise ValueError(f"{op}: `region_labels` must have shape {want}, got {tuple(region_labels.shape)}")


def check_temperature(op: str, temperature, dtype: torch.dtype = torch.float32) -> float:
    """A float ``tau`` whose reciprocal (every op computes ``z = logits * (1 / tau)``) is finite in
    the accumulation dtype of ``dtype`` logits: ``[1 / max, max]`` of float32 (about
    ``[2.9e-39, 3.4e38]``), of float64 for float64 logits. Small temperatures inside the range are
    valid and scale the losses like ``1 / tau``."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"{op}: `temperature` must be a float, got {type(temperature).__name__}")
    temperature = float(temperature)
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"{op}: `temperature` must be a positive finite number, got {temperature}")
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    top = torch.finfo(acc).max
    if not 1.0 / top <= temperature <= top:
        raise ValueError(f"{op}: `temperature`={temperature!r} is out of range for {str(dtype).replace('torch.', '')} "
                         f"logits: it must be in [{1.0 / top:.6g}, {top:.6g}] so that 1/temperature is finite in "
                         f"{str(acc).replace('torch.', '')}")
    return temperature


def check_choice(op: str, name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{op}: `{name}` must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_region_ids(op: str, regions: torch.Tensor, num_regions: int) -> None:
    """Full scan for ids >= R (reference backend; fused kernels report through `status`)."""
    if regions.numel() == 0:
        return
    worst = int(regions.max())
    if worst >= num_regions:
        raise ValueError(f"{op}: `regions` holds id {worst} but num_regions={num_regions}; ids must be < num_regions "
                         "(use a negative id for pixels outside every region)")


def check_finite(op: str, name: str, t: torch.Tensor) -> None:
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{op}: `{name}` contains NaN or Inf")


def new_status(device: torch.device) -> torch.Tensor:
    """Fresh status buffer for a fused kernel (see module docstring)."""
    # [0, -1] written by one kernel on the device: torch.tensor([0, -1], device="cuda") would
    # copy from pageable host memory, and that copy synchronises with the host on every call.
    return torch.arange(0, -2, -1, dtype=torch.int32, device=device)


def raise_on_status(op: str, status: torch.Tensor, num_regions: int, name: str = "logits",
                    regions: torch.Tensor | None = None) -> None:
    nonfinite, bad_id = (int(v) for v in status.tolist())
    if bad_id >= 0:
        if regions is not None:
            # the int32 status slot clips (and a kernel may see only part of the ids): report the
            # real largest id, found by one more pass on this error path only
            bad_id = max(bad_id, int(regions.max()))
        raise ValueError(f"{op}: `regions` holds id {bad_id} but num_regions={num_regions}; ids must be < num_regions "
                         "(use a negative id for pixels outside every region)")
    if nonfinite:
        raise ValueError(f"{op}: `{name}` contains NaN or Inf")


def check_labeled_logits(op: str, logits, regions, region_labels) -> int:
    """Checks for ops on (logits, regions, region_labels) where R = region_labels.shape[1] and
    C = logits.shape[1]; returns R."""
    check_float(op, "logits", logits, 4, "(B, C, H, W)")
    need_tensor(op, "regions", regions)
    need_tensor(op, "region_labels", region_labels)
    if region_labels.dtype not in (torch.bool, torch.uint8):
        raise TypeError(f"{op}: `region_labels` must be bool or uint8 multi-hot, got {region_labels.dtype}")
    if region_labels.dim() != 3:
        raise ValueError(f"{op}: `region_labels` must have shape (B, R, C), got {tuple(region_labels.shape)}")
    num_regions = int(region_labels.shape[1])
    check_regions(op, regions, num_regions)
    check_logits(op, logits, regions)
    check_classes(op, logits)
    check_region_labels(op, region_labels, int(logits.shape[0]), num_regions, int(logits.shape[1]))
    check_same_device(op, logits=logits, region_labels=region_labels)
    return num_regions


def check_labeled_loss(op: str, logits, regions, region_labels, temperature, normalize, choices) -> tuple[int, float]:
    """Checks shared by the stage-1 losses (logits, regions, region_labels, temperature,
    normalize in ``choices``); returns (R, temperature as float)."""
    num_regions = check_labeled_logits(op, logits, regions, region_labels)
    temperature = check_temperature(op, temperature, logits.dtype)
    check_choice(op, "normalize", normalize, choices)
    return num_regions, temperature


class SizeError(ValueError, MemoryError):
    """The outputs an op was asked for cannot be allocated; the message names the arguments."""


_ALLOC_MESSAGES = ("can't allocate memory", "out of memory", "storage size calculation overflowed",
                   "overflow when unpacking", "cannot allocate")


def names_sizes(*names: str):
    """Decorator: an allocation failure inside the op is re-raised as :class:`SizeError` naming
    the size arguments ``names`` and their values (the allocator's own message names only bytes)."""
    def deco(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (RuntimeError, TypeError, MemoryError) as exc:
                text = str(exc).lower()
                if isinstance(exc, SizeError) or not (isinstance(exc, torch.OutOfMemoryError)
                                                      or any(m in text for m in _ALLOC_MESSAGES)):
                    raise
                bound = sig.bind_partial(*args, **kwargs).arguments
                sizes = ", ".join(f"`{n}`={bound[n]!r}" for n in names if n in bound)
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                raise SizeError(f"{fn.__name__}: cannot allocate the outputs for {sizes} ({first}); "
                                f"check these sizes") from None
        return wrapper
    return deco
