"""Glue between torch tensors and the raw-pointer interface of ``mulact._C``."""
from __future__ import annotations

import torch

from ._backend import _import_error

DTYPE_CODES = {  # keep in sync with csrc/common.h::DType
    torch.float32: 0,
    torch.float64: 1,
    torch.float16: 2,
    torch.bfloat16: 3,
    torch.int32: 4,
    torch.int64: 5,
}


def ext():
    """The compiled extension; raises with the import error if it is missing."""
    err = _import_error("mulact._C")
    if err is not None:
        raise RuntimeError(f"mulact._C is not available ({err}); reinstall with `pip install -e .`")
    from mulact import _C

    return _C


def ptr(t: torch.Tensor | None) -> int:
    """Data pointer of a contiguous CPU tensor (0 for None)."""
    if t is None:
        return 0
    assert t.device.type == "cpu" and t.is_contiguous(), "internal: pass contiguous CPU tensors"
    return t.data_ptr()


def code(t: torch.Tensor) -> int:
    return DTYPE_CODES[t.dtype]


def index_tensor(regions: torch.Tensor) -> torch.Tensor:
    """Region ids as contiguous int32/int64 (other integer types are widened to int32)."""
    if regions.dtype not in (torch.int32, torch.int64):
        regions = regions.to(torch.int32)
    return regions.contiguous()
