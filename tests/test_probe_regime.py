"""benchmarks/probe_regime.py on a tiny demo: ceiling and rounds recorded, report written."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
sys.path.insert(0, os.path.dirname(__file__))

import probe_regime  # noqa: E402
from _tiny_run import TINY  # noqa: E402


def _tiny_sets():
    """TINY's flags as --set OPTION=VALUE pairs (2 rounds, 4 iterations)."""
    flags = dict(zip(TINY[::2], TINY[1::2]))
    flags.update({"--rounds": "2", "--iterations": "4"})
    out = []
    for k, v in flags.items():
        out += ["--set", f"{k[2:]}={v}"]
    return out


def test_probe_records_ceiling_and_rounds(tmp_path, monkeypatch):
    monkeypatch.setenv("MULACT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "out"
    args = ["--name", "tiny", *_tiny_sets(), "--no-stage2", "--out", str(out),
            "--runs-dir", str(tmp_path / "runs"), "--mode", "ceiling", "rounds", "curve", "--budgets", "25"]
    assert probe_regime.main(args) == 0
    results = json.loads((out / "results.json").read_text())
    entry = results["settings"]["tiny"]
    assert entry["overrides"]["stage2"] == "false" and entry["overrides"]["iterations"] == "4"
    run = entry["runs"]["0"]
    ceiling = run["ceiling"]
    assert 0.0 <= ceiling["miou"] <= 1.0 and ceiling["iterations"] == 4 and ceiling["train_images"] == 6
    rounds = run["rounds"]["rounds"]
    assert [m["round"] for m in rounds] == [1, 2]
    assert rounds[0]["cumulative_clicks"] < rounds[1]["cumulative_clicks"]
    assert "stage2_miou" not in rounds[0]  # --no-stage2 reached the child run
    # a one-round run at round 1's budget is round 1 itself (same seed, same random selection)
    curve = run["curve"]["25"]
    assert curve["round"] == 1 and curve["cumulative_clicks"] == rounds[0]["cumulative_clicks"]
    assert curve["miou"] == rounds[0]["miou"]
    # the run directory is the loop's own, with the setting's options
    cfg = (tmp_path / "runs" / "tiny" / "seed_0" / "config.yaml").read_text()
    assert "iterations: 4" in cfg and "stage2: false" in cfg
    text = (out / "report.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `tiny`"))
    assert f"{100 * ceiling['miou']:.1f}" in row and f"{100 * rounds[0]['miou']:.1f}" in row
    assert any(line.startswith("| `tiny` | 0 |") and "25 clicks" in line for line in text.splitlines())
    # a rerun measures nothing new; the same name with other options is refused
    mtime = os.path.getmtime(out / "results.json")
    assert probe_regime.main(args) == 0
    assert os.path.getmtime(out / "results.json") == mtime
    with pytest.raises(SystemExit):
        probe_regime.main([*args, "--set", "lr=0.001"])
    # a setting that differs only in AL options shares the ceiling; one with another lr does not
    base = [a for a in args if a != "tiny"]
    base[base.index("--name") + 1:base.index("--name") + 1] = ["other-budget"]
    base = base[:base.index("--mode")]
    assert probe_regime.main([*base, "--set", "budget=30", "--mode", "ceiling"]) == 0
    shared = json.loads((out / "results.json").read_text())["settings"]["other-budget"]["runs"]["0"]["ceiling"]
    assert shared["copied_from"] == "tiny" and shared["miou"] == ceiling["miou"]
    assert "= `tiny`" in (out / "report.md").read_text()
    key_lr = probe_regime.ceiling_key(probe_regime.resolve("demo", {"lr": "0.001"}, 0, str(tmp_path / "r")))
    assert key_lr != probe_regime.ceiling_key(probe_regime.resolve("demo", {}, 0, str(tmp_path / "r")))
    assert probe_regime.find_ceiling(json.loads((out / "results.json").read_text()), key_lr, 0) == (None, None)


@pytest.mark.parametrize("bad", ["iterations", "=3", "no_such_option=1"])
def test_bad_setting_is_named(bad, tmp_path, capsys):
    with pytest.raises(SystemExit):
        probe_regime.main(["--name", "x", "--set", bad, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert ("OPTION=VALUE" in err) or ("no_such_option" in err)
    assert not (tmp_path / "results.json").exists()


def test_cli_args_spell_booleans_as_flags():
    assert probe_regime.cli_args({"stage2": "false", "hflip": "true", "iterations": "7"}) == [
        "--no-stage2", "--hflip", "--iterations", "7"]


def test_report_of_runs_without_validation_masks_says_na(tmp_path):
    """``miou: null`` (a folder dataset without validation masks) is shown as n/a, not a crash."""
    rounds = [{"round": t, "miou": None, "stage1_miou": None, "stage2_miou": None, "percent_full_cost": 1.0 * t,
               "cumulative_clicks": 10 * t} for t in (1, 2)]
    results = {"settings": {"nomask": {"preset": "demo", "overrides": {}, "runs": {"0": {
        "ceiling": {"miou": None, "seconds": 5.0},
        "rounds": {"rounds": rounds, "seconds": 9.0},
        "curve": {"10": {**rounds[0], "seconds": 3.0}}, "load": 1.0}}}}}
    text = probe_regime.report(results)
    assert "- `nomask` seed 0: r1 n/a [n/a] @10, r2 n/a [n/a] @20" in text
    assert "10 clicks (1.0 %): n/a (3 s)" in text
    row = next(line for line in text.splitlines() if line.startswith("| `nomask`"))
    assert "| – | – | – (2) |" in row
