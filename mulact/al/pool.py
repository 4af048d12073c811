"""Region pool and run state of an active-learning experiment.

Regions are addressed by a *flat index*: image ``i`` owns the flat indices
``offsets[i] .. offsets[i+1]-1`` and region id ``r`` of image ``i`` is flat index
``offsets[i] + r``. Multi-hot labels are stored as bit masks (bit ``c`` = class ``c``; bit
``C`` = the *undefined* class), so a label costs 8 bytes whatever the number of classes
(``C + 1 <= 63``).

:class:`OracleTable` holds the ground-truth answers for every region of the train split
(docs/design.md, "The ops": `region_labels_from_mask`), computed once and cached. :class:`RegionPool` holds what has been *asked and
answered*: per region the label received (0 = unlabeled), its click cost and the round it was
labeled in, and per round the selection in order. Everything is saved with atomic writes
(:func:`atomic_save_npz`, :func:`atomic_write_json`) so a killed run never leaves a torn file.
"""
from __future__ import annotations

import io
import json

import numpy as np
import torch

from mulact.runstore import DamagedFileError, atomic_torch_save, atomic_write  # noqa: F401  (re-exported)

__all__ = [
    "OracleTable",
    "RegionPool",
    "atomic_save_npz",
    "atomic_write_json",
    "atomic_torch_save",
    "bits_to_multi_hot",
    "multi_hot_to_bits",
    "popcount",
    "select_by_budget",
]


# -- atomic file helpers ---------------------------------------------------------------------

def read_verified(path: str, manifest=None) -> bytes:
    """The bytes of ``path``, checked against ``manifest`` (a :class:`mulact.runstore.Manifest`)
    when given; :class:`DamagedFileError` if missing or not what was written."""
    if manifest is not None:
        return manifest.read_bytes(path)
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise DamagedFileError(path, f"cannot be read ({exc.strerror})") from None


def load_npz(path: str, manifest=None, *, what: str = "array archive") -> dict:
    """All arrays of an ``.npz`` file (verified when ``manifest`` is given); a torn or foreign
    file raises :class:`DamagedFileError` naming it, never a bare ``BadZipFile``."""
    data = read_verified(path, manifest)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile.BadZipFile, EOFError, ValueError, OSError ...
        raise DamagedFileError(path, f"is not a readable {what} ({type(exc).__name__}: {exc})") from None


def load_json(path: str, manifest=None, *, what: str = "JSON file"):
    data = read_verified(path, manifest)
    try:
        return json.loads(data)
    except ValueError as exc:
        raise DamagedFileError(path, f"is not a readable {what} ({exc})") from None


def load_torch(path: str, manifest=None, *, map_location="cpu", what: str = "checkpoint"):
    data = read_verified(path, manifest)
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
    except Exception as exc:  # pickle/zip errors of a torn or foreign file
        raise DamagedFileError(path, f"is not a readable {what} ({type(exc).__name__}: {exc})") from None


def atomic_write_json(path: str, obj) -> None:
    atomic_write(path, lambda fh: fh.write((json.dumps(obj, indent=1, allow_nan=True) + "\n").encode()))


def atomic_save_npz(path: str, **arrays) -> None:
    atomic_write(path, lambda fh: np.savez(fh, **arrays))


# -- label bit masks ---------------------------------------------------------------------------

def multi_hot_to_bits(multi_hot) -> np.ndarray:
    """``(..., K)`` bool → ``(...)`` uint64 with bit ``k`` set where ``multi_hot[..., k]``."""
    mh = np.asarray(multi_hot.cpu() if torch.is_tensor(multi_hot) else multi_hot).astype(bool)
    if mh.shape[-1] > 63:
        raise ValueError(f"multi_hot: at most 63 classes (incl. undefined), got {mh.shape[-1]}")
    weights = np.left_shift(np.uint64(1), np.arange(mh.shape[-1], dtype=np.uint64))
    return (mh.astype(np.uint64) * weights).sum(axis=-1, dtype=np.uint64)


def bits_to_multi_hot(bits, num_bits: int) -> np.ndarray:
    b = np.asarray(bits, dtype=np.uint64)
    return ((b[..., None] >> np.arange(num_bits, dtype=np.uint64)) & np.uint64(1)).astype(bool)


def popcount(bits) -> np.ndarray:
    b = np.asarray(bits, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(b).astype(np.int64)
    out = np.zeros(b.shape, dtype=np.int64)
    for k in range(64):
        out += ((b >> np.uint64(k)) & np.uint64(1)).astype(np.int64)
    return out


# -- oracle ---------------------------------------------------------------------------------

class OracleTable:
    """Ground-truth answers for every region of the train split.

    Attributes (flat arrays of length ``offsets[-1]``): ``bits`` (multi-hot label as a bit
    mask, undefined = bit ``num_classes``), ``dominant`` (dominant class, ``num_classes`` for
    undefined, −1 for a region id with no pixel), ``pixels`` (pixel count; 0 means the id
    does not occur in the image and the region is not part of the pool).
    """

    def __init__(self, offsets, bits, dominant, pixels, num_classes: int):
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.bits = np.asarray(bits, dtype=np.uint64)
        self.dominant = np.asarray(dominant, dtype=np.int64)
        self.pixels = np.asarray(pixels, dtype=np.int64)
        self.num_classes = int(num_classes)
        n = int(self.offsets[-1])
        for name in ("bits", "dominant", "pixels"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name}: expected shape ({n},), got {getattr(self, name).shape}")

    @property
    def num_images(self) -> int:
        return len(self.offsets) - 1

    def num_regions(self, image: int) -> int:
        return int(self.offsets[image + 1] - self.offsets[image])

    def answer(self, flat, labeling: str):
        """Labels and click costs the oracle returns for ``flat`` regions.

        ``multi``: all classes of the trimmed region (undefined included), cost = bits set.
        ``dominant``: the dominant class only, cost 1.
        """
        flat = np.asarray(flat, dtype=np.int64)
        if labeling == "multi":
            bits = self.bits[flat]
            return bits, popcount(bits)
        if labeling == "dominant":
            dom = self.dominant[flat]
            if (dom < 0).any():
                raise ValueError("flat: asked the oracle about a region with no pixels")
            return np.left_shift(np.uint64(1), dom.astype(np.uint64)), np.ones(len(flat), np.int64)
        raise ValueError(f"labeling: expected 'multi' or 'dominant', got {labeling!r}")

    def full_annotation_cost(self) -> int:
        """Clicks to label every region of the split with multi-class labels.

        This is the reference of "% of full-annotation cost" in the metrics: the paper's
        Table 1 uses polygon clicks instead, which need polygon annotations we do not have;
        multi-class clicks over every region is the cost of the densest labelling this query
        type can express.
        """
        return int(popcount(self.bits[self.pixels > 0]).sum())

    def save(self, path: str) -> None:
        atomic_save_npz(path, offsets=self.offsets, bits=self.bits, dominant=self.dominant,
                        pixels=self.pixels, num_classes=np.int64(self.num_classes))

    @classmethod
    def load(cls, path: str, manifest=None) -> "OracleTable":
        z = load_npz(path, manifest, what="oracle table")
        try:
            return cls(z["offsets"], z["bits"], z["dominant"], z["pixels"], int(z["num_classes"]))
        except (KeyError, ValueError, TypeError) as exc:
            raise DamagedFileError(path, f"is not an oracle table ({exc})") from None


# -- selection -------------------------------------------------------------------------------

def select_by_budget(scores, candidates, costs, budget: int) -> np.ndarray:
    """Flat indices chosen by descending ``scores`` among ``candidates`` until ``budget``
    clicks are spent.

    Ties are broken by the smaller flat index. The region whose cost crosses the budget is
    still taken, so the overshoot is less than that one region's cost; when the candidates run
    out first, all of them are returned (the caller reports the pool as exhausted).
    """
    scores = np.asarray(scores, dtype=np.float64)
    cand = np.flatnonzero(np.asarray(candidates, dtype=bool))
    if budget <= 0 or len(cand) == 0:
        return np.zeros(0, dtype=np.int64)
    s = scores[cand]
    if np.isnan(s).any():
        raise ValueError("scores: NaN among candidate scores")
    order = cand[np.lexsort((cand, -s))]
    # float: a human oracle plans with expected (fractional) costs; exact for integer costs
    spent = np.cumsum(np.asarray(costs, dtype=np.float64)[order])
    k = int(np.searchsorted(spent, budget, side="left"))
    return order[: k + 1].astype(np.int64)


# -- pool --------------------------------------------------------------------------------------

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
        atomic_save_npz(path, **arrays)

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
