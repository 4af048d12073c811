"""The labels a run has collected: ``pool.npz`` (every answer so far) and one selection record
per round (``selections/round_XX.json``, the round's queries in selection order).

The pool cannot be recomputed — it holds what the oracle answered — so a damaged pool stops
the run with an error naming the file; a damaged selection record is rewritten from the pool.
Only rank 0 of a job writes; the others wait at a barrier.
"""
from __future__ import annotations

import logging
import os
import time

import numpy as np

from mulact import distributed as dist
from mulact.runstore import DamagedFileError, RunDir, RunStateError

from .oracle import Oracle
from .pool import RegionPool
from .selector import acquisition_for_round

__all__ = ["PoolRecords"]

log = logging.getLogger(__name__)


class PoolRecords:
    """Reads and writes the pool and the selection records of ``run``.

    ``image_names`` name the pool's images in the records; ``acquisition`` and ``labeling``
    are the run's options; ``warn_damaged(err, action)`` reports a file that is rewritten.
    """

    def __init__(self, run: RunDir, image_names, *, acquisition: str, labeling: str, warn_damaged):
        self.run = run
        self.image_names = image_names
        self.acquisition = acquisition
        self.labeling = labeling
        self.warn_damaged = warn_damaged

    def load(self, oracle: Oracle, num_classes: int) -> RegionPool:
        """The pool so far; an empty one over the oracle's regions for a new run."""
        run, path = self.run, self.run.pool
        if not run.exists(path):
            return RegionPool(oracle.offsets, num_classes, valid=oracle.pixels > 0)
        try:
            pool = RegionPool.load(path, run.manifest)
        except DamagedFileError as err:
            sha = run.manifest.entries.get(run.manifest.rel(path), {}).get("sha256")
            raise RunStateError(
                f"{err}. The pool holds the labels of every round so far and cannot be recomputed, so the "
                f"run stops here. Restore {os.path.basename(path)} from a backup"
                + (f" (the file written had SHA-256 {sha})" if sha else "")
                + ", or start a new run with another --name/--run-dir.") from None
        if not np.array_equal(pool.offsets, oracle.offsets):
            raise RunStateError(f"{path}: the pool's regions do not match the oracle's (other superpixels or "
                                f"images?); start a new run with another --name/--run-dir")
        return pool

    def add_round(self, t: int, pool: RegionPool, chosen, bits, cost, scores, started: float) -> None:
        """Put round ``t``'s answers into ``pool`` and save it with the round's selection record."""
        pool.add_round(chosen, bits, cost, scores=None if scores is None else scores[chosen])
        if dist.is_main():
            pool.save(self.run.pool)
            self._write_selection(t, pool)
        dist.barrier(f"round {t}: selection saved")
        log.info("round %d: %s selected %d regions (%d clicks) in %.1fs", t,
                 acquisition_for_round(t, self.acquisition), len(chosen), pool.clicks(t), time.time() - started)

    def check_selection(self, t: int, pool: RegionPool) -> None:
        """Rewrite a missing or damaged selection record of round ``t`` from the pool (rank 0)."""
        if not dist.is_main():
            return
        path = self.run.selection(t)
        try:
            rec = self.run.read_json(path, what="selection record")
            if rec.get("round") != t:
                raise DamagedFileError(path, f"records round {rec.get('round')!r}, not round {t}")
            return
        except DamagedFileError as err:
            if self.run.exists(path):
                self.warn_damaged(err, "rewriting it from pool.npz")
        except AttributeError:
            self.warn_damaged(DamagedFileError(path, "is not a selection record"), "rewriting it from pool.npz")
        self._write_selection(t, pool)

    def _write_selection(self, t: int, pool: RegionPool) -> None:
        rec = pool.selection_record(t, names=self.image_names, scores=pool.scores[t - 1])
        rec["acquisition"] = acquisition_for_round(t, self.acquisition)
        rec["labeling"] = self.labeling
        self.run.write_json(self.run.selection(t), rec)
