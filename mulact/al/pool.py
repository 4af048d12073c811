"""The region pool: what has been asked and answered so far.

Regions are addressed by a *flat index*: image ``i`` owns the flat indices
``offsets[i] .. offsets[i+1]-1`` and region id ``r`` of image ``i`` is flat index
``offsets[i] + r``. Labels are bit masks (:mod:`mulact.al.labels`). :class:`RegionPool` holds
per region the label received (0 = unlabeled), its click cost and the round it was labeled in,
and per round the selection in order; it is saved as ``pool.npz``
(:class:`mulact.runstore.RunDir`), written atomically so a killed run never leaves a torn file.
"""
from __future__ import annotations

import numpy as np
import torch

from mulact.runstore import DamagedFileError, load_npz, write_npz

from .labels import bits_to_multi_hot

__all__ = ["RegionPool"]


class RegionPool:
    """Labeled regions, their labels and costs, and the per-round selections."""

    def __init__(self, offsets, num_classes: int, valid=None):
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.num_classes = int(num_classes)
        if self.num_classes + 1 > 63:
            raise ValueError(f"num_classes: at most 62 (plus undefined), got {num_classes}")
        n = int(self.offsets[-1])
        self.valid = np.ones(n, bool) if valid is None else np.asarray(valid, dtype=bool)
        self.labels = np.zeros(n, dtype=np.uint64)
        self.cost = np.zeros(n, dtype=np.int64)
        self.round = np.zeros(n, dtype=np.int64)
        self.selections: list[np.ndarray] = []
        self.scores: list[np.ndarray | None] = []  # acquisition scores of each selection (or None)

    # -- queries --------------------------------------------------------------------------
    @property
    def num_rounds(self) -> int:
        return len(self.selections)

    @property
    def labeled(self) -> np.ndarray:
        return self.round > 0

    def unlabeled_mask(self) -> np.ndarray:
        return self.valid & ~self.labeled

    def image_of(self, flat) -> np.ndarray:
        return np.searchsorted(self.offsets, np.asarray(flat, dtype=np.int64), side="right") - 1

    def region_of(self, flat) -> np.ndarray:
        flat = np.asarray(flat, dtype=np.int64)
        return flat - self.offsets[self.image_of(flat)]

    def labeled_images(self) -> np.ndarray:
        """Images holding at least one labeled region (the stage-1 training set)."""
        return np.unique(self.image_of(np.flatnonzero(self.labeled)))

    def images_with_unlabeled(self) -> np.ndarray:
        return np.unique(self.image_of(np.flatnonzero(self.unlabeled_mask())))

    def clicks(self, round_index: int | None = None) -> int:
        """Clicks spent in round ``round_index`` (1-based), or in total."""
        if round_index is None:
            return int(self.cost[self.labeled].sum())
        return int(self.cost[self.round == round_index].sum())

    def region_labels(self, image: int, num_regions: int | None = None) -> torch.Tensor:
        """``(R, C + 1)`` bool multi-hot labels of one image; unlabeled rows are all zero."""
        lo, hi = self.offsets[image], self.offsets[image + 1]
        R = int(hi - lo) if num_regions is None else int(num_regions)
        out = np.zeros((R, self.num_classes + 1), dtype=bool)
        n = min(R, int(hi - lo))
        out[:n] = bits_to_multi_hot(self.labels[lo:lo + n], self.num_classes + 1)
        return torch.from_numpy(out)

    # -- updates --------------------------------------------------------------------------
    def add_round(self, flat, bits, costs, scores=None) -> None:
        flat = np.asarray(flat, dtype=np.int64)
        bits = np.asarray(bits, dtype=np.uint64)
        costs = np.asarray(costs, dtype=np.int64)
        if len(np.unique(flat)) != len(flat):
            raise ValueError("flat: a region was selected twice in one round")
        if (~self.valid[flat]).any():
            raise ValueError("flat: selected a region that is not in the pool")
        if self.labeled[flat].any():
            raise ValueError("flat: selected an already labeled region")
        if (bits[costs > 0] == 0).any():
            raise ValueError("bits: a labeled region must have at least one class")
        r = self.num_rounds + 1
        self.labels[flat] = bits
        self.cost[flat] = costs
        self.round[flat] = r
        self.selections.append(flat.copy())
        self.scores.append(None if scores is None else np.asarray(scores, dtype=np.float64).copy())

    def until(self, round_index: int) -> "RegionPool":
        """The pool as it was after round ``round_index`` (labels of later rounds removed)."""
        if round_index >= self.num_rounds:
            return self
        p = RegionPool(self.offsets, self.num_classes, self.valid)
        keep = (self.round > 0) & (self.round <= round_index)
        p.labels = np.where(keep, self.labels, np.uint64(0))
        p.cost = np.where(keep, self.cost, 0)
        p.round = np.where(keep, self.round, 0)
        p.selections = self.selections[:round_index]
        p.scores = self.scores[:round_index]
        return p

    # -- persistence ----------------------------------------------------------------------
    def save(self, path: str) -> None:
        arrays = dict(offsets=self.offsets, valid=self.valid, labels=self.labels, cost=self.cost,
                      round=self.round, num_classes=np.int64(self.num_classes),
                      num_rounds=np.int64(self.num_rounds))
        for i, sel in enumerate(self.selections):
            arrays[f"selection_{i + 1}"] = sel
            if self.scores[i] is not None:
                arrays[f"scores_{i + 1}"] = self.scores[i]
        write_npz(path, **arrays)

    @classmethod
    def load(cls, path: str, manifest=None) -> "RegionPool":
        z = load_npz(path, manifest, what="region pool")
        try:
            pool = cls(z["offsets"], int(z["num_classes"]), z["valid"])
            pool.labels = z["labels"]
            pool.cost = z["cost"]
            pool.round = z["round"]
            n = int(z["num_rounds"])
            pool.selections = [z[f"selection_{i + 1}"] for i in range(n)]
            pool.scores = [z.get(f"scores_{i + 1}") for i in range(n)]
        except (KeyError, ValueError, TypeError) as exc:
            raise DamagedFileError(path, f"is not a region pool ({exc})") from None
        return pool

    def selection_record(self, round_index: int, names=None, scores=None) -> dict:
        """JSON-friendly description of one round's selection (in selection order)."""
        flat = self.selections[round_index - 1]
        imgs, regs = self.image_of(flat), self.region_of(flat)
        mh = bits_to_multi_hot(self.labels[flat], self.num_classes + 1)
        regions = []
        for k, f in enumerate(flat):
            entry = {
                "image": int(imgs[k]),
                "region": int(regs[k]),
                "classes": [int(c) for c in np.flatnonzero(mh[k])],
                "cost": int(self.cost[f]),
            }
            if names is not None:
                entry["name"] = str(names[int(imgs[k])])
            if scores is not None:
                entry["score"] = float(scores[k])
            regions.append(entry)
        return {
            "round": round_index,
            "num_regions": len(flat),
            "clicks": self.clicks(round_index),
            "cumulative_clicks": int(self.cost[(self.round > 0) & (self.round <= round_index)].sum()),
            "undefined_class": self.num_classes,
            "regions": regions,
        }
