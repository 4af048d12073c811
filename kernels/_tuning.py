"""Launch sizes of the Triton kernels, and the environment knobs a GPU session tunes them with.

The defaults were chosen without a GPU (about 4K tile elements per program, 4 warps) and are
what every test runs. ``benchmarks/tune_triton.py`` times other settings on a CUDA machine by
starting one process per setting with these variables set; they are read once, at import:

* ``MULACT_TRITON_TILE``: elements of the (classes x pixels) tile of one program, a power of
  two in [256, 65536] (default 4096). The pixel block is ``TILE // next_pow2(C)``, within the
  per-kernel bounds (scaled by ``TILE / 4096``).
* ``MULACT_TRITON_WARPS``: ``num_warps`` of the tiled kernels (1, 2, 4, 8, 16; default 4).
* ``MULACT_TRITON_ARGMAX_RUNS``: 1 makes ``region_class_argmax`` reduce runs of pixels of one
  region inside the program before its ``atomic_max`` (one atomic per run and class instead of
  one per pixel and class); 0 (default) issues one per pixel. Its segmented scan makes the
  compile slow at large tiles (sm_90: 12 s at 8192, 424 s at 16384), so pair it with tiles of
  at most 8192.

* ``MULACT_TRITON_DESIGN``: the kernel design of some ops, ``op=name`` pairs separated by
  commas (e.g. ``region_uncertainty_stats=padded,region_reduce=two_pass``); every op not named
  runs its default design. :data:`DESIGNS` lists each op's designs and their knob values; the
  replaced design of each op stays selectable so that a GPU run can rank old against new
  (docs/design.md, "Byte model").

Results of a tuning run go to ``benchmarks/results/``; a setting that wins there becomes the
default here, with the measurement cited.

The public face of this module is ``mulact.kernels`` (``from mulact.kernels import WARPS``):
the ops read the settings there, at call time, so a test that patches a value here is seen.
"""
from __future__ import annotations

import os

DEFAULT_TILE = 4096
DEFAULTS = {"tile": DEFAULT_TILE, "num_warps": 4, "argmax_runs": False}  # what every test runs


def _pow2(name: str, default: int, lo: int, hi: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < lo or value > hi or value & (value - 1):
        raise ValueError(f"{name}: expected a power of two in [{lo}, {hi}], got {raw!r}")
    return value


def _flag(name: str) -> bool:
    raw = os.environ.get(name, "").strip()
    if raw not in ("", "0", "1"):
        raise ValueError(f"{name}: expected 0 or 1, got {raw!r}")
    return raw == "1"


TILE = _pow2("MULACT_TRITON_TILE", DEFAULT_TILE, 256, 65536)
WARPS = _pow2("MULACT_TRITON_WARPS", DEFAULTS["num_warps"], 1, 16)
ARGMAX_RUNS = _flag("MULACT_TRITON_ARGMAX_RUNS")


# Designs per op: name -> knob values, the default first. A design changes the kernel (what a
# program loads, how it aggregates), not its result beyond float summation order;
# benchmarks/tune_triton.py ranks them on a GPU, each checked against the reference first.
DESIGNS = {
    "region_uncertainty_stats": {
        # class rows split into a power-of-two block and a remainder (C = 20 loads 16 + 4 rows,
        # not 32), with twice the pixels per program and twice the warps (pixel_scale scales
        # both): sm_90, fp32, C = 20: 63 registers against the padded design's 128, no spills
        # (benchmarks/results/kernel_metadata_sm90.md)
        "split_wide": {"split_classes": True, "pixel_scale": 2},
        "split": {"split_classes": True, "pixel_scale": 1},
        "padded": {"split_classes": False, "pixel_scale": 1},  # the 2026-11-30 design (C padded to 32)
    },
    "region_reduce": {
        # max/min/argmax in one pass: atomic_max of a packed (ordered value, inverted index) key;
        # float64 values keep the two passes (the value alone fills 64 bits)
        # block 512: 56 registers on sm_90 (1024 would take 128 at 4 warps)
        "packed_key": {"extremum_passes": 1, "block": 512},
        "packed_key_256": {"extremum_passes": 1, "block": 256},
        "two_pass": {"extremum_passes": 2, "block": 256},  # the 2026-11-30 design
    },
    "partial_label_loss": {
        # the forward writes the gradient while the logits are in registers, the backward only
        # rewrites terms whose upstream gradient differs from the device-side guess
        "grad_in_forward": {"grad_in_forward": True},
        "recompute": {"grad_in_forward": False},  # the 2026-11-30 design: the backward re-reads the logits
    },
    "prototype_pseudo_labels": {
        # assignment tiles of up to 4 bilinear cells of one region: each cell's four taps are
        # loaded once per sub-tile of <= 16 pixels instead of once per pixel, the region's
        # prototype rows once per tile; same arithmetic, same labels (features at about the full
        # resolution keep the pixel tiles: prototype_pseudo_labels.cell_tiles). sm_90: 148-255
        # registers at 4 warps, no spills; one cell per tile (2 warps) holds 64-155 but loads the
        # prototype rows 4x as often (docs/design.md, "Byte model")
        "cell_tiles": {"cell_tiles": True, "cells_per_tile": 4},
        "cell_tiles_1": {"cell_tiles": True, "cells_per_tile": 1},
        "pixel_tiles": {"cell_tiles": False, "cells_per_tile": 1},  # the 2026-11-30 design: four taps per pixel
    },
    "prototypical_pixel_loss": {
        # cross-entropy and sparse gradient rows from one kernel per region after the argmax
        "fused_ce": {"fused_ce": True},
        "gather": {"fused_ce": False},  # the 2026-11-30 design: a torch (B, R, C, C) gather + autograd
    },
}


def _designs(raw: str) -> dict:
    chosen = {op: next(iter(table)) for op, table in DESIGNS.items()}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        op, _, name = item.partition("=")
        if op not in DESIGNS or name not in DESIGNS[op]:
            known = "; ".join(f"{o}: {', '.join(t)}" for o, t in DESIGNS.items())
            raise ValueError(f"MULACT_TRITON_DESIGN: expected op=design pairs ({known}), got {item!r}")
        chosen[op] = name
    return chosen


DESIGN = _designs(os.environ.get("MULACT_TRITON_DESIGN", ""))


def design(op: str) -> dict:
    """Knob values of ``op``'s active design (see :data:`DESIGNS`)."""
    return DESIGNS[op][DESIGN[op]]


def pixels_per_program(block_c: int, lo: int, hi: int) -> int:
    """Pixels per program for a tile of ``block_c`` class rows: ``TILE // block_c`` clamped to
    ``[lo, hi * TILE / DEFAULT_TILE]`` (the default tile reproduces the original bounds)."""
    cap = max(lo, hi * TILE // DEFAULT_TILE)
    return max(lo, min(cap, TILE // max(block_c, 1)))


def settings() -> dict:
    """The active knobs, for benchmark records."""
    return {"tile": TILE, "num_warps": WARPS, "argmax_runs": ARGMAX_RUNS}


def designs() -> dict:
    """The active design of every op that has several, for benchmark records."""
    return dict(DESIGN)
