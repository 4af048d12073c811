"""benchmarks/gpu_check.py on the CPU (--cpu, tiny shapes): every section runs and the report
files hold what it measured. The CUDA-only parts (bandwidth table, events, memory) are the
same code paths with ``device="cuda"``. The test-section subprocess runs one quick test here."""
import json
import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    return runpy.run_path(str(SCRIPT), run_name="gpu_check_under_test")


def test_peak_bandwidth_table(gpu_check):
    peak = gpu_check["peak_bandwidth"]
    assert peak("NVIDIA H200") == 4.8e12
    assert peak("NVIDIA H100 80GB HBM3") == 3.35e12
    assert peak("NVIDIA H100 PCIe") == 2.0e12
    assert peak("NVIDIA A100-SXM4-80GB") == 2.039e12
    assert peak("Some Future GPU") is None


def test_cpu_run_writes_every_section(gpu_check, tmp_path):
    report = gpu_check["main"](["--cpu", "--out", str(tmp_path), "--compile-backend", "aot_eager",
                                "--tests", "test_dispatch.py", "--tests-k", "test_every_public_op_is_registered",
                                "--budget", "3000", "--tests-timeout", "1800"])  # generous: a loaded CI machine
    assert not report["errors"], report["errors"]
    rows = report["benchmarks"]
    ops = {r["op"] for r in rows}
    assert ops == {"region_uncertainty_stats", "partial_label_loss", "prototypical_pixel_loss", "region_reduce_mean"}
    for r in rows:
        assert r["status"] == "ok", r
        assert r["ms"] > 0 and r["GBps"] > 0 and r["bytes"] > 0
    assert all("compile_s" in r for r in rows if r["provider"] == "compiled")
    # correctness before timing: the fused op against the reference, outputs and gradients
    errors = [r["rel_err_vs_reference"] for r in rows if r["provider"] == "mulact"]
    assert len(errors) == 4 and all(isinstance(e, float) and e < 1e-5 for e in errors), errors
    assert {r["provider"] for r in rows} == {"mulact", "reference", "composite", "compiled"}
    assert report["tests"]["status"] == "ok", report["tests"]
    assert "passed" in report["tests"]["summary"]
    smoke = report["training_smoke"]
    assert smoke["status"] == "ok" and smoke["iterations"] == 2
    rehearsal = report["rehearsal"]
    assert rehearsal["status"] == "ok", rehearsal
    assert {"acquisition", "train_iteration", "pseudo_labels", "evaluation"} <= set(rehearsal["stages"])
    assert all((tmp_path / f).is_file() for f in rehearsal["files"])
    md = [f for f in tmp_path.glob("*.md") if not f.name.startswith("cityscapes_rehearsal")]
    js = [f for f in tmp_path.glob("*.json") if not f.name.startswith("cityscapes_rehearsal")]
    assert len(md) == 1 and len(js) == 1 and md[0].stem == js[0].stem
    assert json.loads(js[0].read_text())["benchmarks"] == rows
    text = md[0].read_text()
    assert "| partial_label_loss |" in text and "## Training smoke" in text and "## Rehearsal" in text
