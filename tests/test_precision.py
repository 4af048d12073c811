"""Where `amp` turns on bfloat16 autocast (mulact.engine.precision)."""
import pytest
import torch

from mulact.engine import precision
from mulact.engine.precision import autocast, autocast_enabled, cpu_native_bf16, describe


def _cpuinfo(tmp_path, flags):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: fpu sse2 {flags}\n\n")
    return str(path)


@pytest.mark.parametrize("flags, native", [("avx2 avx512f", False), ("avx512f avx512_bf16", True),
                                           ("amx_tile amx_bf16", True), ("amx_int8", False), ("", False)])
def test_native_bf16_from_cpu_flags(tmp_path, flags, native):
    assert cpu_native_bf16(_cpuinfo(tmp_path, flags)) is native


def test_unreadable_cpuinfo_means_no_native_bf16(tmp_path):
    assert cpu_native_bf16(str(tmp_path / "missing")) is False


@pytest.mark.parametrize("native", [False, True])
def test_cpu_follows_the_processor_unless_overridden(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda: native)
    monkeypatch.delenv("MULACT_CPU_AMP", raising=False)
    assert autocast_enabled(True, "cpu") is native
    assert autocast_enabled(False, "cpu") is False
    monkeypatch.setenv("MULACT_CPU_AMP", "1")
    assert autocast_enabled(True, "cpu") is True
    assert autocast_enabled(False, "cpu") is False  # amp off wins over the environment
    monkeypatch.setenv("MULACT_CPU_AMP", "0")
    assert autocast_enabled(True, "cpu") is False
    assert "MULACT_CPU_AMP=0" in describe(True, "cpu")


def test_cuda_autocast_follows_amp_only(monkeypatch):
    monkeypatch.setenv("MULACT_CPU_AMP", "0")
    assert autocast_enabled(True, "cuda") is True
    assert autocast_enabled(False, "cuda") is False


def test_bad_override_names_the_variable(monkeypatch):
    monkeypatch.setenv("MULACT_CPU_AMP", "maybe")
    with pytest.raises(ValueError, match="MULACT_CPU_AMP"):
        autocast_enabled(True, "cpu")


@pytest.mark.parametrize("env, dtype", [("1", torch.bfloat16), ("0", torch.float32)])
def test_autocast_context_changes_the_matmul_dtype(monkeypatch, env, dtype):
    monkeypatch.setenv("MULACT_CPU_AMP", env)
    x, w = torch.randn(3, 4), torch.randn(5, 4)
    with autocast(True, "cpu"):
        y = torch.nn.functional.linear(x, w)
    assert y.dtype == dtype
    assert ("bfloat16" in describe(True, "cpu")) is (dtype == torch.bfloat16)


def test_tiny_run_under_cpu_bfloat16_autocast(tmp_path):
    # The whole loop (training, acquisition, stage 2, evaluation) with the model in bfloat16:
    # the fused ops get the float32 logits of the cosine head, the losses stay float32.
    import json
    import math
    import subprocess
    import sys

    from _tiny_run import TINY, env_for

    env = dict(env_for(tmp_path), MULACT_CPU_AMP="1")
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "mulact.cli", "--run-dir", str(run), *TINY, "--rounds", "2",
                        "--stage2"], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "model precision: bfloat16 autocast on cpu (MULACT_CPU_AMP=1)" in r.stdout + r.stderr
    rounds = json.loads((run / "metrics.json").read_text())["rounds"]
    assert len(rounds) == 2 and all(math.isfinite(m["miou"]) and 0 <= m["miou"] <= 100 for m in rounds)
