"""benchmarks/tune_triton.py: the settings grid, the ranking, and a CPU run under the
interpreter (the knobs must reach the child processes' kernels)."""
import json
import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "tune_triton.py"


@pytest.fixture(scope="module")
def tune():
    return runpy.run_path(str(SCRIPT), run_name="tune_triton_under_test")


def test_grid_puts_the_default_first(tune):
    grid = tune["settings_grid"]([2048, 4096], [8, 4], [1, 0])
    assert grid[0] == tune["DEFAULT"] and len(grid) == 8
    assert len({tuple(s.values()) for s in grid}) == 8
    assert tune["settings_grid"]([8192], [8], [1])[0] == tune["DEFAULT"]  # added when not in the grid
    big = tune["settings_grid"]([4096, 16384], [4], [0, 1])
    assert dict(tile=16384, num_warps=4, argmax_runs=0) in big
    assert dict(tile=16384, num_warps=4, argmax_runs=1) not in big  # its compile takes minutes


def test_design_candidates_follow_the_designs_table(tune):
    from mulact.kernels import DESIGNS

    cands = tune["design_candidates"](DESIGNS)
    assert len(cands) == sum(len(t) - 1 for t in DESIGNS.values())  # every design but each op's default
    for c in cands:
        (op, name), = c["design"].items()
        assert name in DESIGNS[op] and name != next(iter(DESIGNS[op]))
        assert {k: v for k, v in c.items() if k != "design"} == tune["DEFAULT"]
        assert name in tune["label"](c)
        assert set(tune["rows_of"](c)) == set(tune["DESIGN_ROWS"][op])
    assert set(tune["DESIGN_ROWS"]) == set(DESIGNS)  # a new design table needs its rows here
    assert tune["design_candidates"](DESIGNS, ["region_reduce=two_pass"]) == [
        dict(tune["DEFAULT"], design={"region_reduce": "two_pass"})]
    assert tune["rows_of"](tune["DEFAULT"]) is None


def test_ranking_uses_only_correct_settings(tune):
    default, fast, wrong = tune["DEFAULT"], dict(tile=8192, num_warps=8, argmax_runs=0), \
        dict(tile=2048, num_warps=4, argmax_runs=1)
    row = dict(op="region_reduce_mean", shape="1x2x3x4", R=5, status="ok")
    results = [{"settings": default, "rows": [dict(row, ms=2.0, GBps=10.0, rel_err_vs_reference=1e-7)]},
               {"settings": fast, "rows": [dict(row, ms=1.0, GBps=20.0, rel_err_vs_reference=2e-7)]},
               {"settings": wrong, "rows": [dict(row, ms=0.5, GBps=40.0, rel_err_vs_reference=0.3)]}]
    (block,) = tune["rank"](results, peak=100e9)
    assert block["best"] == fast
    by = {tuple(e["settings"].values()): e for e in block["entries"]}
    assert by[tuple(fast.values())]["speedup_vs_default"] == 2.0
    assert by[tuple(fast.values())]["pct_of_peak"] == 20.0


def test_cpu_run_reaches_the_kernels(tune, tmp_path):
    # two launch settings and two designs; generous caps: the interpreter on a shared CPU is slow
    report = tune["main"](["--cpu", "--out", str(tmp_path), "--tiles", "4096", "1024", "--warps", "4",
                           "--argmax-runs", "0", "--reps", "1", "--budget", "1800", "--setting-timeout", "900",
                           "--designs", "region_uncertainty_stats=padded", "region_reduce=two_pass",
                           "prototype_pseudo_labels=pixel_tiles"])
    runs = report["settings_run"]
    assert len(runs) == 5 and all(r["status"] == "ok" for r in runs), [r["status"] for r in runs]
    assert runs[0]["settings"] == tune["DEFAULT"]
    assert [r["settings"].get("design") for r in runs[1:4]] == [{"region_uncertainty_stats": "padded"},
                                                                 {"region_reduce": "two_pass"},
                                                                 {"prototype_pseudo_labels": "pixel_tiles"}]
    ops = {"region_uncertainty_stats", "partial_label_loss", "prototypical_pixel_loss", "region_reduce_mean",
           "region_reduce_max", "prototype_pseudo_labels"}
    for r in runs:
        want = set(tune["rows_of"](r["settings"]) or ops)
        assert {row["op"] for row in r["rows"]} == want
        for row in r["rows"]:
            assert row["status"] == "ok" and row["backend"] == "triton", row
            assert row["rel_err_vs_reference"] < 1e-5, row
    assert {b["op"] for b in report["ranking"]} == ops and all(b["best"] for b in report["ranking"])
    md, js = (tmp_path / Path(f).name for f in report["files"])
    assert json.loads(js.read_text())["ranking"] == report["ranking"]
    assert "## prototypical_pixel_loss" in md.read_text()
