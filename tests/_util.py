"""Helpers shared by the tests (import as ``from _util import ...``)."""
import contextlib

import pytest
import torch


def backend_device(backend: str) -> torch.device:
    """Where a backend's tests run: Triton on CUDA when present, else on the CPU interpreter."""
    if backend == "triton" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def nan_empty(*shape, dtype=torch.float32, device="cpu"):
    """torch.empty poisoned with NaN: catches outputs a kernel forgot to write."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


@contextlib.contextmanager
def raises_status(match: str):
    """A fused kernel's bad-input error (region id >= R, NaN/Inf logits): raised by the call
    itself on the CPU, by the next ``check_status()`` on CUDA, where the status read-back is
    deferred so that the call never synchronises (docs/design.md, "Status and NaN policy")."""
    from mulact import ops

    with pytest.raises(ValueError, match=match):
        yield
        ops.check_status()
