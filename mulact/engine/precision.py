"""Where the ``amp`` option (bfloat16 autocast of the model) takes effect.

On CUDA, ``amp`` always means bfloat16 autocast. On the CPU it means bfloat16 autocast only when
the processor computes bfloat16 natively (AMX-BF16 or AVX512-BF16, read from ``/proc/cpuinfo``):
there oneDNN runs the convolutions of the model about 1.6x (training step) to 1.8x (inference)
faster than float32 (README, "Precision"). On a CPU without native bfloat16, oneDNN emulates it
and is slower than float32, so the model stays in float32 there. ``MULACT_CPU_AMP=0`` (or
``--amp false``) keeps the CPU in float32 on any processor; ``MULACT_CPU_AMP=1`` forces autocast.

Only the model runs under autocast. The fused ops accept bfloat16 logits and accumulate in
float32 (docs/design.md, "Conventions"); the losses are float32.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os

import torch

__all__ = ["autocast", "autocast_enabled", "cpu_native_bf16", "describe"]

log = logging.getLogger(__name__)
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=None)
def cpu_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU has a bfloat16 dot-product instruction set (AMX-BF16 or AVX512-BF16)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return any(f in line.split() for f in NATIVE_BF16_FLAGS)
    except OSError:
        pass
    return False


def _cpu_override() -> bool | None:
    value = os.environ.get("MULACT_CPU_AMP", "").strip().lower()
    if value in ("", "auto"):
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"MULACT_CPU_AMP: expected 0, 1 or auto, got {value!r}")


def autocast_enabled(amp: bool, device) -> bool:
    """Whether the model runs under bfloat16 autocast for this ``amp`` setting on ``device``."""
    if not amp:
        return False
    kind = torch.device(device).type
    if kind == "cuda":
        return True
    if kind == "cpu":
        forced = _cpu_override()
        return cpu_native_bf16() if forced is None else forced
    return False


def describe(amp: bool, device) -> str:
    """One line naming the precision the model runs in, and why (logged at the start of a run)."""
    kind = torch.device(device).type
    if autocast_enabled(amp, device):
        why = "" if kind == "cuda" else (" (MULACT_CPU_AMP=1)" if _cpu_override() else " (CPU with native bfloat16)")
        return f"model precision: bfloat16 autocast on {kind}{why}"
    if not amp:
        return f"model precision: float32 on {kind} (amp off)"
    if kind == "cpu":
        why = "MULACT_CPU_AMP=0" if _cpu_override() is False else "this CPU has no native bfloat16"
        return f"model precision: float32 on cpu ({why})"
    return f"model precision: float32 on {kind}"


def autocast(amp: bool, device):
    """The autocast context of the model's forward pass (a no-op context when disabled)."""
    kind = torch.device(device).type
    if not autocast_enabled(amp, device):
        return contextlib.nullcontext()
    return torch.autocast(device_type=kind, dtype=torch.bfloat16)
