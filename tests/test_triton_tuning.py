"""The launch-size knobs of the Triton kernels (kernels/_tuning.py)."""
import runpy
from pathlib import Path

import pytest

from mulact.kernels import _tuning as tuning


def test_default_tile_keeps_the_original_blocks(monkeypatch):
    monkeypatch.setattr(tuning, "TILE", 4096)
    # The blocks every kernel used before the knobs existed: max(16, min(hi, 4096 // block_c)).
    for block_c in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512):
        for hi in (256, 1024):
            assert tuning.pixels_per_program(block_c, 16, hi) == max(16, min(hi, 4096 // block_c))


@pytest.mark.parametrize("tile, block_c, expect", [(8192, 32, 256), (16384, 32, 512), (1024, 32, 32),
                                                   (256, 64, 16), (65536, 1, 1024 * 16)])
def test_other_tiles_scale_block_and_cap(monkeypatch, tile, block_c, expect):
    monkeypatch.setattr(tuning, "TILE", tile)
    assert tuning.pixels_per_program(block_c, 16, 1024) == expect


@pytest.mark.parametrize("raw", ["3000", "128", "131072", "x", "-4"])
def test_bad_tile_names_the_variable(monkeypatch, raw):
    monkeypatch.setenv("MULACT_TRITON_TILE", raw)
    with pytest.raises(ValueError, match="MULACT_TRITON_TILE"):
        tuning._pow2("MULACT_TRITON_TILE", 4096, 256, 65536)


def test_knobs_from_the_environment(monkeypatch):
    monkeypatch.setenv("MULACT_TRITON_WARPS", "8")
    assert tuning._pow2("MULACT_TRITON_WARPS", 4, 1, 16) == 8
    monkeypatch.delenv("MULACT_TRITON_WARPS")
    assert tuning._pow2("MULACT_TRITON_WARPS", 4, 1, 16) == 4
    monkeypatch.setenv("MULACT_TRITON_ARGMAX_RUNS", "1")
    assert tuning._flag("MULACT_TRITON_ARGMAX_RUNS") is True
    monkeypatch.setenv("MULACT_TRITON_ARGMAX_RUNS", "yes")
    with pytest.raises(ValueError, match="MULACT_TRITON_ARGMAX_RUNS"):
        tuning._flag("MULACT_TRITON_ARGMAX_RUNS")
    assert set(tuning.settings()) == {"tile", "num_warps", "argmax_runs"}


def test_tuning_script_starts_from_the_library_defaults():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "tune_triton.py"
    assert runpy.run_path(str(script))["DEFAULT"] == tuning.DEFAULTS
    assert (tuning.TILE, tuning.WARPS, tuning.ARGMAX_RUNS) == tuple(tuning.DEFAULTS.values())  # tests run these
