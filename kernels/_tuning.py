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

Design switches (docs/design.md, "Byte model"), 1 = the new design (default), 0 = the one it
replaced, kept so that a GPU run can rank both:

* ``MULACT_TRITON_LOSS_GRAD_IN_FORWARD``: the partial-label loss writes its gradient in the
  forward and the backward only rescales it (0: the backward recomputes it from the logits).
* ``MULACT_TRITON_PROTO_FUSED_CE``: the prototypical pixel loss takes its cross-entropy and
  sparse gradient from one small kernel per region after the argmax (0: a torch gather of
  ``(B, R, C, C)`` logits and autograd through it).

Results of a tuning run go to ``benchmarks/results/``; a setting that wins there becomes the
default here, with the measurement cited.
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


def _switch(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip()
    return default if not raw else _flag(name)


DESIGN_DEFAULTS = {"loss_grad_in_forward": True, "proto_fused_ce": True}
LOSS_GRAD_IN_FORWARD = _switch("MULACT_TRITON_LOSS_GRAD_IN_FORWARD", DESIGN_DEFAULTS["loss_grad_in_forward"])
PROTO_FUSED_CE = _switch("MULACT_TRITON_PROTO_FUSED_CE", DESIGN_DEFAULTS["proto_fused_ce"])


def pixels_per_program(block_c: int, lo: int, hi: int) -> int:
    """Pixels per program for a tile of ``block_c`` class rows: ``TILE // block_c`` clamped to
    ``[lo, hi * TILE / DEFAULT_TILE]`` (the default tile reproduces the original bounds)."""
    cap = max(lo, hi * TILE // DEFAULT_TILE)
    return max(lo, min(cap, TILE // max(block_c, 1)))


def settings() -> dict:
    """The active knobs, for benchmark records."""
    return {"tile": TILE, "num_warps": WARPS, "argmax_runs": ARGMAX_RUNS}


def designs() -> dict:
    """The active design switches, for benchmark records."""
    return {"loss_grad_in_forward": LOSS_GRAD_IN_FORWARD, "proto_fused_ce": PROTO_FUSED_CE}
