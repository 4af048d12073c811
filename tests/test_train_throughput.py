"""benchmarks/train_throughput.py on the CPU at tiny shapes: the step's variants through
``train_model`` in their own processes, checked against the baseline, and the training
DataLoader's rate; plus the check itself on made-up results (it must be able to fail)."""
import json
import runpy
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"


@pytest.fixture(scope="module")
def tt():
    return runpy.run_path(str(SCRIPT), run_name="train_throughput_under_test")


def test_variant_names_round_trip_and_reject_unknown_options(tt):
    assert tt["variant_name"](set()) == "baseline"
    assert tt["variant_name"]({"compile", "channels_last"}) == "channels_last+compile"
    assert tt["parse_variant"]("channels_last+compile") == {"channels_last", "compile"}
    assert tt["parse_variant"]("baseline") == frozenset()
    with pytest.raises(ValueError, match="unknown option"):
        tt["parse_variant"]("channels_last+turbo")


def _result(tmp_path, name, loss, grad, precision="float32", median_ms=10.0, optimizer_rel_err=None,
            float32=None):
    path = tmp_path / f"{name}.grad.pt"
    torch.save(grad, path)
    res = {"variant": name, "status": "ok", "precision": precision, "first_loss": loss, "grad_file": str(path),
           "median_ms": median_ms, "optimizer_rel_err": optimizer_rel_err}
    if float32 is not None:  # (loss, gradient) of the float32 check step
        torch.save(float32[1], tmp_path / f"{name}.float32_grad.pt")
        res.update(float32_first_loss=float32[0], float32_grad_file=str(tmp_path / f"{name}.float32_grad.pt"))
    return res


def test_check_fails_on_a_wrong_loss_gradient_or_update(tt, tmp_path):
    g = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    base = _result(tmp_path, "baseline", 5.0, g)
    check = tt["check_against"]
    assert check(_result(tmp_path, "a", 5.0 * (1 + 1e-6), g * (1 + 1e-5)), base)["check"] == "ok"
    assert "first loss" in check(_result(tmp_path, "b", 5.01, g), base)["check"]
    flipped = g.clone()
    flipped[:10] = -flipped[:10]  # 1 % of the entries: a relative L2 error far above float32 noise
    res = check(_result(tmp_path, "c", 5.0, flipped), base)
    assert res["check"].startswith("failed") and "gradient" in res["check"] and res["grad_rel_err"] > 1e-2
    res = check(_result(tmp_path, "d", 5.0, g, optimizer_rel_err=0.5), base)
    assert "fused AdamW" in res["check"]


def test_bf16_check_scales_with_the_rounding_and_the_float32_step_is_strict(tt, tmp_path):
    check = tt["check_against"]
    g = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    g32 = g * 1.02  # the baseline's bf16 gradient is 2 % from its float32 one: tolerance about 6 %
    base = _result(tmp_path, "baseline", 5.0, g, precision="bf16", float32=(5.01, g32))
    ok = check(_result(tmp_path, "a", 5.02, g * 1.05, precision="bf16", float32=(5.01, g32 * (1 + 1e-4))), base)
    assert ok["check"] == "ok" and ok["grad_tolerance"] == pytest.approx(3 * 0.02 / 1.02, rel=1e-2)
    assert base["bf16_grad_floor"] == pytest.approx(0.0196, rel=1e-2)
    res = check(_result(tmp_path, "b", 5.0, g * 1.1, precision="bf16"), base)
    assert "gradient off" in res["check"]
    # within the bf16 tolerance, but its float32 step disagrees: the strict check fails
    res = check(_result(tmp_path, "c", 5.0, g, precision="bf16", float32=(5.01, g32 * 1.05)), base)
    assert "float32 gradient off" in res["check"] and res["float32_grad_rel_err"] == pytest.approx(0.05, rel=1e-2)
    res = check(_result(tmp_path, "d", 5.0, g, precision="bf16", float32=(5.1, g32)), base)
    assert "float32 loss off" in res["check"]
    # a bf16 rounding effect larger than the signal: capped, and a negated gradient still fails
    noisy = _result(tmp_path, "noisy", 5.0, g, precision="bf16", float32=(5.0, -g))
    res = check(_result(tmp_path, "e", 5.0, -g, precision="bf16"), noisy)
    assert res["grad_tolerance"] == tt["GRAD_TOLERANCE_MAX"] and "gradient off" in res["check"]


def test_winners_need_the_check_and_the_gain(tt):
    base = {"variant": "baseline", "median_ms": 100.0, "check": "ok (the reference)"}
    results = [base,
               {"variant": "channels_last", "median_ms": 90.0, "check": "ok"},
               {"variant": "fused_adamw", "median_ms": 98.0, "check": "ok"},  # 2 %: below MIN_GAIN
               {"variant": "compile", "median_ms": 50.0, "check": "failed: gradient off"},
               {"variant": "cudnn_benchmark", "median_ms": 80.0, "check": "ok"}]
    assert tt["winners"](results, base) == ["channels_last", "cudnn_benchmark"]


def test_tiny_cpu_run_times_checked_variants_and_the_loader(tt, tmp_path, monkeypatch):
    # Inductor's C++ build of a ResNet takes minutes on a small CPU: the compile variant's
    # plumbing (TrainSettings(compile=True) in the child) runs with dynamo disabled here; the
    # CUDA run compiles for real.
    monkeypatch.setenv("TORCH_COMPILE_DISABLE", "1")
    report = tt["main"](["--tiny", "--device", "cpu", "--out", str(tmp_path), "--budget", "3000",
                         "--loader-reserve", "0", "--warmup", "1", "--iterations", "2",
                         "--variant-timeout", "900", "--compile-timeout", "900",
                         "--workers", "0", "1", "--loader-images", "2", "--loader-batches", "3",
                         "--loader-items", "2", "--loader-superpixels", "grid", "--note", "test"])
    step = report["step"]
    assert step["status"] == "ok", step
    by_name = {r["variant"]: r for r in step["variants"]}
    assert {"baseline", "channels_last", "fused_adamw", "compile"} <= set(by_name), list(by_name)
    assert step["not_applicable"] == ["cudnn_benchmark (CUDA only)"]
    for name, r in by_name.items():
        assert r["status"] == "ok", r
        assert r["check"].startswith("ok"), r
        assert r["precision"] == "float32" and r["timed_steps"] == 2 and r["median_ms"] > 0
        assert r["loss_rel_err"] <= 1e-4 and r["grad_rel_err"] <= 1e-3
    assert by_name["compile"]["compiled"] is True and by_name["baseline"]["compiled"] is False
    fused = by_name["fused_adamw"]["optimizer_rel_err"]
    assert isinstance(fused, float) and fused < 1e-3
    assert by_name["baseline"]["optimizer_rel_err"] is None
    assert step["best"] in by_name

    loader = report["loader"]
    assert loader["status"] == "ok", loader
    assert [r["workers"] for r in loader["rates"]] == [0, 1]
    assert all(r["images_per_s"] > 0 and r["counted_batches"] >= 2 for r in loader["rates"])
    parts, cpu = loader["item_seconds_one_thread"], loader["item_cpu_seconds_one_thread"]
    assert set(parts) == set(cpu) and "transform (scale, crop, flip)" in parts
    assert parts["total"] > 0 and cpu["total"] > 0
    # no CUDA step in this run: the recorded rehearsal stands for what the GPU consumes
    assert report["gpu_consumes"]["source"].startswith("cityscapes_rehearsal_cuda.json")

    saved = json.loads((tmp_path / "train_throughput_cpu.json").read_text())
    assert saved["step"]["best"] == step["best"]
    text = (tmp_path / "train_throughput_cpu.md").read_text()
    assert "| channels_last |" in text and "## Data loader" in text and "GPU step consumes" in text
