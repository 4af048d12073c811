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


def test_unmeasured_miou_and_missing_rounds_are_na_not_a_crash(tmp_path):
    """A folder dataset without validation masks records ``miou: null``; a seed may also stop
    early. Those seeds drop out of that round's numbers; a round no seed measured says n/a."""
    mod = runpy.run_path(str(SCRIPT))

    def write(root, seed, rounds):
        d = root / f"seed_{seed}"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"rounds": rounds}))

    def rec(t, miou, s1=None):
        return {"round": t, "miou": miou, "stage1_miou": miou, "miou_measured": miou is not None,
                "stage1_seconds": s1, "stage2_seconds": None}

    for seed, (a1, b1) in enumerate([(0.40, 0.42), (0.50, 0.53), (0.45, 0.46)]):
        write(tmp_path / "a", seed, [rec(1, a1, 10.0), rec(2, None, 20.0)])
        b_rounds = [rec(1, b1 if seed else None, 12.0), rec(2, None, 20.0)]
        write(tmp_path / "b", seed, b_rounds if seed < 2 else b_rounds[:1])  # seed 2 of b stopped after round 1
    text = mod["compare"](mod["load"](tmp_path / "a"), mod["load"](tmp_path / "b"), ["x", "y"])
    lines = text.splitlines()
    # round 1: b's seed 0 unmeasured -> b's mean over seeds 1, 2; differences 3 and 1 points
    # (mean 2, sd 1.414, t(0.975, 1) = 12.706 -> half width 12.7); a's mean over all three
    assert "| 1 | 45.0 | 49.5 | +2.0 [-10.7, +14.7], p = 0.30 | +2.0 [-10.7, +14.7], p = 0.30 | 10 | 12 |" in lines
    # round 2: nothing measured on either side; the seconds are those of the seeds that ran it
    assert "| 2 | n/a | n/a | n/a | n/a | 20 | 20 |" in lines
    assert "nan" not in text.lower()


def test_a_single_measured_seed_gives_its_difference_without_an_interval(tmp_path):
    mod = runpy.run_path(str(SCRIPT))
    _runs(tmp_path / "a", {0: (0.40, 0.30)})
    _runs(tmp_path / "b", {0: (0.43, 0.30)})
    text = mod["compare"](mod["load"](tmp_path / "a"), mod["load"](tmp_path / "b"), ["x", "y"])
    assert "| 1 | 40.0 | 43.0 | +3.0 (1 seed) | +0.0 (1 seed) | 15 | 15 |" in text
