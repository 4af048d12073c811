"""Triton kernels of mulact, installed as ``mulact.kernels``.

Import through ``mulact.kernels`` (never the top-level name ``kernels``). Each module holds
one op's kernels and their launchers (plain functions of tensors). This package is a leaf: it
imports nothing from ``mulact``; validation, the status checks, the ``torch.library``
registration and autograd live in ``mulact.ops`` (docs/design.md §3).
On a machine without a GPU the kernels run under ``TRITON_INTERPRET=1`` (tests only).

The launch settings are public here (``from mulact.kernels import WARPS``); they are defined
in ``_tuning.py`` and read from it on every access, so a value patched there is what callers see.
"""
from . import _tuning

PUBLIC_SETTINGS = ("TILE", "WARPS", "ARGMAX_RUNS", "DEFAULTS", "DESIGNS", "DESIGN", "design", "designs",
                   "pixels_per_program", "settings")
__all__ = list(PUBLIC_SETTINGS)


def __getattr__(name: str):
    if name in PUBLIC_SETTINGS:
        return getattr(_tuning, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
