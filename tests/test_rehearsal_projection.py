"""benchmarks/cityscapes_rehearsal.py: the projection of the paper's protocol from per-step
times (the README's table), with GPU numbers measured or estimated."""
import re
import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cityscapes_rehearsal.py"


@pytest.fixture(scope="module")
def rehearsal():
    return runpy.run_path(str(SCRIPT), run_name="rehearsal_under_test")


def _result(per_step: dict, name: str, threads: int = 2) -> dict:
    return {"device_name": name, "cpu_threads": threads,
            "stages": {k: {"median_s": v, "median_cpu_s": v} for k, v in per_step.items()}}


CPU = {"seeds": 9.0, "oracle": 0.04, "acquisition": 23.0, "train_iteration": 80.0, "pseudo_labels": 27.0,
       "evaluation": 27.0}
GPU = {"seeds": 0.004, "oracle": 0.005, "acquisition": 0.01, "train_iteration": 0.064, "pseudo_labels": 0.02,
       "evaluation": 0.011}


def test_project_counts_every_stage_of_the_protocol(rehearsal):
    p = rehearsal["PROTOCOL"]
    out = rehearsal["project"](CPU)
    assert out["training"] == pytest.approx(5 * 2 * 80_000 * 80.0)
    assert out["acquisition"] == pytest.approx(4 * p["pool_images"] * 23.0)  # round 1 is random
    assert out["evaluation"] == pytest.approx(5 * 2 * p["val_images"] * 27.0)
    assert out["superpixels_and_oracle"] == pytest.approx(p["pool_images"] * 9.04 + p["val_images"] * 9.0)
    assert out["total"] == pytest.approx(sum(v for k, v in out.items() if k != "total"))
    halved = rehearsal["project"](CPU, gpus=2)
    assert halved["acquisition"] == pytest.approx(out["acquisition"] / 2)


def _hours(table: str, label: str) -> list[float]:
    row = next(line for line in table.splitlines() if label in line)
    return [float(x.replace(",", "")) for x in re.findall(r"\| \**([\d,]+\.\d)\**", row)]


def test_measured_gpu_result_replaces_the_estimates(rehearsal):
    table = rehearsal["projection_table"](_result(CPU, "cpu"), gpu_res=_result(GPU, "NVIDIA H200"))
    assert "1 GPU (NVIDIA H200, measured)" in table and "estimated" not in table
    sp, train, other, total = _hours(table, "1 GPU (NVIDIA H200")
    assert train == pytest.approx(5 * 2 * 80_000 * 0.064 / 3600, abs=0.05)
    assert total == pytest.approx(sp + train + other, abs=0.15)
    # batch 4 over at most 4 ranks: 8 GPUs train no faster than 4
    assert _hours(table, "4 GPUs")[1] == _hours(table, "8 GPUs, 1 node")[1]
    estimated = rehearsal["projection_table"](_result(CPU, "cpu"))
    assert "1 GPU (estimated)" in estimated
    assert _hours(estimated, "1 GPU (estimated)")[1] == pytest.approx(
        5 * 2 * 80_000 * rehearsal["GPU_ESTIMATES"]["train_iteration"] / 3600, abs=0.05)
