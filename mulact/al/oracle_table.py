"""The simulated oracle's answers for every region of the train split (docs/design.md, "The
ops": ``region_labels_from_mask``), computed once per run and kept in ``oracle.npz``."""
from __future__ import annotations

import numpy as np

from mulact.runstore import DamagedFileError, load_npz, write_npz

from .labels import popcount

__all__ = ["OracleTable"]


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
        write_npz(path, offsets=self.offsets, bits=self.bits, dominant=self.dominant,
                        pixels=self.pixels, num_classes=np.int64(self.num_classes))

    @classmethod
    def load(cls, path: str, manifest=None) -> "OracleTable":
        z = load_npz(path, manifest, what="oracle table")
        try:
            return cls(z["offsets"], z["bits"], z["dominant"], z["pixels"], int(z["num_classes"]))
        except (KeyError, ValueError, TypeError) as exc:
            raise DamagedFileError(path, f"is not an oracle table ({exc})") from None
