"""benchmarks/compare_runs.py: paired per-round differences between two sets of run directories."""
import json
import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_runs.py"


def _runs(root, values):
    for seed, (miou, s1) in values.items():
        d = root / f"seed_{seed}"
        d.mkdir(parents=True)
        rounds = [{"round": 1, "miou": miou, "stage1_miou": s1, "stage1_seconds": 10.0, "stage2_seconds": 5.0}]
        (d / "metrics.json").write_text(json.dumps({"rounds": rounds}))


def test_paired_differences_on_fixed_numbers(tmp_path):
    mod = runpy.run_path(str(SCRIPT))
    _runs(tmp_path / "a", {0: (0.40, 0.30), 1: (0.50, 0.40), 2: (0.45, 0.35)})
    _runs(tmp_path / "b", {0: (0.42, 0.30), 1: (0.53, 0.40), 2: (0.46, 0.35), 3: (0.9, 0.9)})  # seed 3 unpaired
    text = mod["compare"](mod["load"](tmp_path / "a"), mod["load"](tmp_path / "b"), ["x", "y"])
    assert "Seeds paired: 0, 1, 2." in text
    # differences 2, 3, 1 points: mean 2, sd 1, t(0.975, 2) = 4.303 -> half width 2.48
    assert "| 1 | 45.0 | 47.0 | +2.0 [-0.5, +4.5], p = 0.07 | +0.0 [+0.0, +0.0], p = 1.00 | 15 | 15 |" in text


def test_no_common_seed_is_an_error(tmp_path):
    mod = runpy.run_path(str(SCRIPT))
    _runs(tmp_path / "a", {0: (0.4, 0.3)})
    _runs(tmp_path / "b", {1: (0.4, 0.3)})
    with pytest.raises(SystemExit, match="no seed"):
        mod["compare"](mod["load"](tmp_path / "a"), mod["load"](tmp_path / "b"), ["x", "y"])
