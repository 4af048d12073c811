"""One run of a sweep, in its own process: ``python -m mulact.sweep.worker JOB.json``.

The job file holds ``{"preset", "overrides", "threads"}``; the run is resolved with
:func:`mulact.config.resolve_config` and executed (or resumed) by
:func:`mulact.al.loop.run_experiment`, exactly as ``mulact-train`` would. Thread counts are
fixed through the environment by the parent (``OMP_NUM_THREADS`` must be set before torch
loads OpenMP) and again with ``torch.set_num_threads``.
"""
from __future__ import annotations

import json
import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m mulact.sweep.worker JOB.json", file=sys.stderr)
        return 2
    with open(argv[0]) as fh:
        job = json.load(fh)
    import torch

    torch.set_num_threads(int(job["threads"]))
    from mulact.al.loop import run_experiment
    from mulact.config import resolve_config

    cfg = resolve_config(job["preset"], None, job["overrides"])
    try:
        run_experiment(cfg)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
