"""Helpers shared by the tests (import as ``from _util import ...``)."""
import torch


def backend_device(backend: str) -> torch.device:
    """Where a backend's tests run: Triton on CUDA when present, else on the CPU interpreter."""
    if backend == "triton" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def nan_empty(*shape, dtype=torch.float32, device="cpu"):
    """torch.empty poisoned with NaN: catches outputs a kernel forgot to write."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)
