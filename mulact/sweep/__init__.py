"""Multi-seed sweeps of ``mulact-train`` variants with confidence intervals (``mulact-sweep``).

- :mod:`.spec` — sweep files (YAML) and their validation; built-in sweeps in ``builtin/``;
- :mod:`.runner` — one run directory per (variant, seed), resumable, ``--jobs`` processes;
- :mod:`.sharing` — what runs share because it is provably identical;
- :mod:`.stats` — mean, std, t-intervals, paired differences;
- :mod:`.report` — Markdown / CSV tables and the mIoU-vs-clicks plot.

See README, "Sweeps: several seeds, confidence intervals".
"""
from .report import write_report
from .runner import run_sweep
from .spec import SweepFileError, SweepSpec, builtin_sweeps, load_sweep, parse_sweep
from .stats import Summary, paired_difference, summarize

__all__ = ["SweepFileError", "SweepSpec", "Summary", "builtin_sweeps", "load_sweep", "paired_difference",
           "parse_sweep", "run_sweep", "summarize", "write_report"]
