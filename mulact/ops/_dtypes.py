"""The accumulation dtype of every op (docs/design.md, "Conventions").

Half, bfloat16 and float32 inputs are accumulated in float32; float64 inputs (gradcheck, exact
references) in float64. One helper, so that the ops, their launchers and the stage-1 losses in
:mod:`mulact.engine.losses` cannot drift apart. ``kernels/`` is a leaf package and receives the
dtype from its callers.
"""
from __future__ import annotations

import torch


def acc_dtype(x: torch.Tensor | torch.dtype) -> torch.dtype:
    """float64 for float64 input, float32 for anything else."""
    dtype = x if isinstance(x, torch.dtype) else x.dtype
    return torch.float64 if dtype == torch.float64 else torch.float32


def triton_acc(x: torch.Tensor | torch.dtype):
    """:func:`acc_dtype` as a ``triton.language`` dtype (a kernel's ``ACC`` constexpr)."""
    import triton.language as tl

    return tl.float64 if acc_dtype(x) == torch.float64 else tl.float32
