import sys

import pytest
import torch

from mulact import ops
from mulact.ops._backend import resolve_backend


def test_every_backend_is_present():
    # A missing extension or triton must fail loudly, never turn into a silent fallback.
    assert ops.cpp_available(), "mulact._C failed to import: the C++ extension was not built"
    if sys.platform.startswith("linux"):
        assert ops.triton_available()


def test_auto_backend_follows_device(monkeypatch):
    monkeypatch.delenv("MULACT_BACKEND", raising=False)
    assert resolve_backend("probe", torch.device("cpu")) == "cpp"
    assert ops.last_backend("probe") == "cpp"


def test_env_forces_backend(monkeypatch):
    monkeypatch.setenv("MULACT_BACKEND", "reference")
    assert resolve_backend("probe", torch.device("cpu")) == "reference"
    assert resolve_backend("probe", torch.device("cpu"), backend="cpp") == "cpp"  # argument wins


def test_impossible_forced_backend_raises(monkeypatch):
    monkeypatch.setenv("MULACT_BACKEND", "nonsense")
    with pytest.raises(RuntimeError, match="unknown backend"):
        resolve_backend("probe", torch.device("cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        resolve_backend("probe", torch.device("cpu"), backend="triton")
    with pytest.raises(RuntimeError, match="CPU tensors only"):
        resolve_backend("probe", torch.device("meta"), backend="cpp")
