"""Who answers the queries: the simulated oracle (ground truth) or a human (answer files).

Both implement :class:`Oracle`, the only way the loop learns labels:

- ``offsets`` / ``pixels`` — the region table of the train split (flat indices, see
  :class:`mulact.al.pool.RegionPool`); a region with 0 pixels is not in the pool.
- :meth:`Oracle.planned_costs` — the click cost per region the budget cut uses.
- :meth:`Oracle.answer` — labels and click costs of the chosen regions of round ``t``, or
  :class:`AnswersPending` when they are not known yet.

:class:`SimulatedOracle` is today's behaviour: every answer and cost comes from the trimmed
ground-truth masks (:class:`~mulact.al.oracle_table.OracleTable`), so the budget cut uses the true
costs. :class:`HumanOracle` never reads train ground truth: the region table comes from the
superpixel maps, the queries are written for ``mulact-label`` and the answers read back from
``answers/`` (:mod:`mulact.al.answers`).

Budget rule with unknown costs (human mode, README "Label your own data"): a multi-class
query costs as many clicks as classes the annotator picks, known only after the answer. The
regions are taken in score order until the *expected* cost reaches the budget, where the
expected cost of every region is the mean number of classes per answered region over all
earlier rounds (``expected_classes_prior`` in round 1, when nothing is answered yet). The
real clicks are then counted from the answers; the metrics report both (``planned_clicks``,
``clicks``). Dominant-class queries cost one click each, known in advance.
"""
from __future__ import annotations

import abc
import copy
import os

import numpy as np
from tqdm.auto import tqdm

from mulact.config import ORACLES
from mulact.runstore import DamagedFileError, RunDir

from .answers import QueryStore
from .labels import popcount
from .oracle_table import OracleTable
from .pool import RegionPool

__all__ = ["AnswersPending", "HumanOracle", "Oracle", "SimulatedOracle", "expected_classes_per_region",
           "load_oracle_table", "make_oracle", "without_ground_truth"]

class AnswersPending(Exception):
    """Round ``round`` waits for ``missing`` of ``total`` human answers (the run stops here)."""

    def __init__(self, message: str, round: int, missing: int, total: int):
        super().__init__(message)
        self.round, self.missing, self.total = round, missing, total


class Oracle(abc.ABC):
    """Interface of the loop's source of labels (see the module docstring)."""

    name = "oracle"
    offsets: np.ndarray
    pixels: np.ndarray

    def full_annotation_cost(self) -> int | None:
        """Clicks to label the whole split, or None when unknown."""
        return None

    @abc.abstractmethod
    def planned_costs(self, pool: RegionPool, labeling: str) -> np.ndarray:
        """``(N,)`` clicks each pool region is expected to cost (the budget cut uses them)."""

    @abc.abstractmethod
    def answer(self, t: int, chosen: np.ndarray, scores: np.ndarray, labeling: str):
        """``(bits, costs)`` of the ``chosen`` regions of round ``t``."""

    def pending(self, t: int):
        """``(flat regions, their scores)`` already chosen for round ``t`` and waiting for
        answers, else None."""
        return None

    def round_metrics(self, t: int) -> dict:
        return {}


class SimulatedOracle(Oracle):
    """Answers from the ground truth, as in the paper's experiments."""

    name = "simulated"

    def __init__(self, table: OracleTable):
        self.table = table
        self.offsets = table.offsets
        self.pixels = table.pixels

    def full_annotation_cost(self) -> int:
        return self.table.full_annotation_cost()

    def planned_costs(self, pool, labeling):
        _, costs = self.table.answer(np.arange(int(self.table.offsets[-1])), "multi")
        return np.ones_like(costs) if labeling == "dominant" else costs

    def answer(self, t, chosen, scores, labeling):
        return self.table.answer(chosen, labeling)


def expected_classes_per_region(pool: RegionPool, prior: float) -> float:
    """Mean classes (clicks) per labeled region of ``pool``; ``prior`` when none is labeled."""
    if not pool.labeled.any():
        return float(prior)
    return float(popcount(pool.labels[pool.labeled]).mean())


def without_ground_truth(dataset):
    """A shallow copy of ``dataset`` whose labels are all void, so no code path reads them.

    The loop's views, the pool scan and stage 2 all load items through ``load_label``; in
    human mode the train labels may not exist, and reading them would leak the answers.
    """
    view = copy.copy(dataset)

    def load_label(i):
        return np.full(dataset.load_regions(i).shape, dataset.ignore_index, dtype=np.int64)

    view.load_label = load_label
    return view


class HumanOracle(Oracle):
    """Answers from people, through query and answer files of the run directory."""

    name = "human"

    def __init__(self, run: RunDir | str, dataset, indices, *, labeling: str, prior: float, class_names):
        if not prior > 0:
            raise ValueError(f"expected_classes_prior: expected a positive number, got {prior}")
        run = run if isinstance(run, RunDir) else RunDir(run)
        self.store = QueryStore(run)
        self.dataset = dataset
        self.labeling = labeling
        self.prior = float(prior)
        self.class_names = list(class_names)
        self.offsets, self.pixels = self._region_table(run, dataset, indices)
        self._expected = 1.0  # expected clicks per region of the last planning (planned_costs)

    @staticmethod
    def _region_table(run: RunDir, dataset, indices):
        if run.exists(run.regions):
            z = run.read_npz(run.regions, what="region table")
            return z["offsets"], z["pixels"]
        counts = [dataset.num_regions(int(i)) for i in indices]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        pixels = np.zeros(int(offsets[-1]), np.int64)
        for k, i in enumerate(tqdm(indices, desc="region sizes", leave=False, dynamic_ncols=True)):
            regions = dataset.load_regions(int(i)).ravel()
            n = int(offsets[k + 1] - offsets[k])
            pixels[offsets[k]:offsets[k + 1]] = np.bincount(regions[regions >= 0], minlength=n)[:n]
        run.write_npz(run.regions, offsets=offsets, pixels=pixels)
        return offsets, pixels

    def planned_costs(self, pool, labeling):
        e = 1.0 if labeling == "dominant" else expected_classes_per_region(pool, self.prior)
        self._expected = e
        return np.full(int(self.offsets[-1]), e, dtype=np.float64)

    def _flat(self, queries) -> np.ndarray:
        return np.array([int(self.offsets[q["image"]]) + int(q["region"]) for q in queries], dtype=np.int64)

    def pending(self, t):
        if not os.path.isfile(self.store.queries_path(t)):
            return None
        qs = self.store.queries(t)["queries"]
        return self._flat(qs), np.array([q["score"] for q in qs], dtype=np.float64)

    def _write_queries(self, t, chosen, scores, labeling) -> None:
        names = self.dataset.names()
        images = np.searchsorted(self.offsets, chosen, side="right") - 1
        queries: list[dict | None] = [None] * len(chosen)
        for i in np.unique(images):  # one superpixel-map read per image
            regions = self.dataset.load_regions(int(i))
            for k in np.flatnonzero(images == i):
                f = int(chosen[k])
                r = f - int(self.offsets[i])
                ys, xs = np.nonzero(regions == r)
                queries[k] = {"order": int(k), "image": int(i), "name": str(names[int(i)]), "region": r,
                              "bbox": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
                              "pixels": int(len(ys)), "score": float(scores[f])}
        e = self._expected
        self.store.write_queries(t, {
            "round": t, "labeling": labeling, "class_names": self.class_names,
            "undefined_class": len(self.class_names), "expected_classes_per_region": e,
            "planned_clicks": e * len(chosen), "num_queries": len(chosen), "queries": queries})

    def answer(self, t, chosen, scores, labeling):
        if not os.path.isfile(self.store.queries_path(t)):
            self._write_queries(t, chosen, scores, labeling)
        rec = self.store.queries(t)
        n = len(rec["queries"])
        answers = self.store.answers(t)
        missing = n - len(answers)
        if missing:
            how = (f"answer them in the browser with `mulact-label {self.store.dir}` (or import a file with "
                   f"`mulact-label import {self.store.dir} FILE`), then run the same mulact-train command "
                   f"again to train on them and continue")
            if len(answers) == 0:
                msg = f"round {t}: wrote {n} queries to {self.store.queries_path(t)}; {how}"
            else:
                msg = f"round {t}: {missing} of {n} queries are not answered yet; {how}"
            raise AnswersPending(msg, t, missing, n)
        bits = np.zeros(n, np.uint64)
        for k, a in answers.items():
            for c in a["classes"]:
                bits[k] |= np.uint64(1) << np.uint64(c)
        costs = np.ones(n, np.int64) if labeling == "dominant" else popcount(bits)
        return bits, costs

    def round_metrics(self, t):
        rec = self.store.queries(t)
        answers = list(self.store.answers(t).values())
        seconds = [a["seconds"] for a in answers if a.get("seconds") is not None]
        clicks = sum(len(a["classes"]) for a in answers) if self.labeling == "multi" else len(answers)
        total = float(sum(seconds)) if seconds else None
        return {
            "oracle": "human",
            "planned_clicks": rec["planned_clicks"],
            "expected_classes_per_region": rec["expected_classes_per_region"],
            "annotation_seconds": total,
            "seconds_per_query": total / len(seconds) if seconds else None,
            "seconds_per_click": total / clicks if seconds and clicks else None,
            "annotators": sorted({a.get("annotator", "anonymous") for a in answers}),
        }


def load_oracle_table(run: RunDir, dataset, indices, *, trim: int, echo, warn_damaged) -> OracleTable:
    """The simulated oracle's answers: ``oracle.npz`` when it is intact, else computed from
    the ground truth (sharded over the ranks of a job) and saved."""
    from mulact import distributed as dist

    from .sharding import build_oracle_sharded

    path = run.oracle
    table = None
    if dist.is_main() and run.exists(path):
        try:
            table = OracleTable.load(path, run.manifest)
        except DamagedFileError as err:
            # simulated answers are a function of the dataset and its superpixels
            warn_damaged(err, "recomputing the oracle answers from the ground truth")
    # rank 0 decides (it verified the file); the other ranks follow, so the collective
    # recomputation below runs on every rank or on none
    if dist.broadcast_object(table is not None, what="oracle lookup"):
        return table if dist.is_main() else OracleTable.load(path, run.manifest)
    echo(f"computing superpixels and oracle labels for {len(indices)} training images")
    table = build_oracle_sharded(dataset, indices, trim=trim)
    if dist.is_main():
        table.save(path)
    dist.barrier("oracle saved")
    return table


def make_oracle(kind: str, run: RunDir, dataset, indices, *, labeling: str, prior: float, class_names,
                trim: int, echo, warn_damaged) -> Oracle:
    """The oracle of a run: ``simulated`` (ground truth, ``trim``) or ``human`` (answer files,
    budget planned with ``prior`` classes per region in round 1)."""
    if kind == "simulated":
        return SimulatedOracle(load_oracle_table(run, dataset, indices, trim=trim, echo=echo,
                                                 warn_damaged=warn_damaged))
    if kind == "human":
        return HumanOracle(run, dataset, indices, labeling=labeling, prior=prior, class_names=class_names)
    raise ValueError(f"oracle: expected one of {ORACLES}, got {kind!r}")
