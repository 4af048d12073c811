"""Common machinery of the segmentation datasets: file lists, superpixels, items, raw access.

A :class:`SegmentationDataset` is a ``torch.utils.data.Dataset`` over ``(image, ground truth,
superpixel map)`` triples. ``ds[i]`` returns a dict

* ``image``   float32 ``(3, H, W)``, ImageNet-normalised, after the dataset's transform
* ``label``   int64 ``(H, W)``, train ids ``0..num_classes-1``, ``ignore_index`` (255) = void
* ``regions`` int64 ``(H, W)``, superpixel ids ``0..R-1``, ``-1`` = padding from the transform
* ``index``   int, ``name`` str (relative path of the image without suffix)

and ``ds.raw(i)`` the untransformed full-resolution ``image`` (uint8 RGB ``(H, W, 3)`` tensor),
``label``, ``regions`` and ``num_regions`` for the oracle and for pool scoring.
``ds.num_regions(i)`` is the region count of image ``i`` (from ``region_counts.json`` when the
split was precomputed, else by decoding the map; memoised), ``ds.adjacency(i)`` its 8-connected
region adjacency ``(E, 2)`` (memoised per map file).

Superpixel maps come from a :class:`~mulact.data.superpixels.SuperpixelCache`: computed on the
first access and cached as 16-bit PNGs (precompute a whole split in parallel with the
``mulact-superpixels`` command). The default cache directory is
:func:`~mulact.data.cache.default_superpixel_dir` (under ``$MULACT_CACHE``), so dataset
directories may be read-only.

A ``transform`` given here draws from torch's global RNG. Training in the loop does not use it:
:class:`mulact.al.data.AugmentedView` augments with an explicit per-item seed, the one
mechanism for reproducible augmentation.
"""
from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from mulact.runstore import DamagedFileError

from .cache import default_superpixel_dir
from .superpixels import SuperpixelCache
from .transforms import IGNORE_INDEX, EvalTransform, normalize, to_float_image


class DatasetNotFoundError(FileNotFoundError):
    """A dataset directory is missing or does not have the expected layout."""


@dataclass(frozen=True)
class Sample:
    name: str  # relative path without suffix; also the superpixel cache key
    image: Path
    label: Path | None  # None: an image without labels (require_labels=False)


def read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f"could not read image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class SegmentationDataset(torch.utils.data.Dataset, abc.ABC):
    """Base class; subclasses implement :meth:`find_samples` and :meth:`convert_label`."""

    name = "segmentation"
    class_names: tuple[str, ...] = ()
    ignore_index = IGNORE_INDEX

    def __init__(self, root: str | os.PathLike, split: str, *, superpixels: str = "seeds", region_size: int = 32,
                 superpixel_dir: str | os.PathLike | None = None, superpixel_params: dict | None = None,
                 transform=None, require_labels: bool = True):
        self.root = Path(root).expanduser()
        self.split = split
        # False for images that nobody has labeled yet (the human oracle's train split): a
        # missing label file is allowed and reads as all void.
        self.require_labels = require_labels
        self.samples: list[Sample] = self.find_samples()
        if not self.samples:
            raise DatasetNotFoundError(f"{self.name}: no images found for split {split!r} under {self.root}")
        sp_dir = superpixel_dir if superpixel_dir is not None else default_superpixel_dir(
            self.root, split, superpixels, region_size)
        self.superpixels = SuperpixelCache(sp_dir, superpixels, region_size, **(superpixel_params or {}))
        self.transform = transform if transform is not None else EvalTransform()
        self._num_regions: dict[int, int] = {}

    # -- subclass interface ---------------------------------------------------------------
    @abc.abstractmethod
    def find_samples(self) -> list[Sample]:
        """The split's ``(name, image, label)`` files, in a fixed order."""

    @abc.abstractmethod
    def convert_label(self, raw: np.ndarray) -> np.ndarray:
        """Stored label image -> int64 train ids with ``ignore_index`` for void."""

    def read_label_file(self, path: Path) -> np.ndarray:
        lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if lab is None:
            raise OSError(f"could not read label image {path}")
        if lab.ndim != 2:
            raise ValueError(f"{self.name}: label image {path} must be single-channel, got shape {lab.shape}")
        return lab

    # -- metadata --------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
                f"superpixels={self.superpixels.method}-{self.superpixels.region_size}, transform={self.transform!r})")

    def names(self) -> list[str]:
        return [s.name for s in self.samples]

    # -- loading ---------------------------------------------------------------------------
    def _index(self, i: int) -> int:
        n = len(self.samples)
        if not -n <= i < n:
            raise IndexError(f"{self.name}: index {i} out of range for {n} images")
        return i % n

    def load_image(self, i: int) -> np.ndarray:
        """RGB uint8 ``(H, W, 3)``."""
        return read_rgb(self.samples[self._index(i)].image)

    def load_label(self, i: int) -> np.ndarray:
        """int64 train ids ``(H, W)``, ``ignore_index`` = void."""
        s = self.samples[self._index(i)]
        if s.label is None:
            return np.full(self.load_image(i).shape[:2], self.ignore_index, dtype=np.int64)
        return self.convert_label(self.read_label_file(s.label))

    def load_regions(self, i: int) -> np.ndarray:
        """int32 superpixel ids ``(H, W)``, computed and cached on a miss."""
        i = self._index(i)
        regions = self.superpixels.get(self.samples[i].name, lambda: self.load_image(i))
        self._num_regions[i] = int(regions.max()) + 1
        return regions

    def num_regions(self, i: int) -> int:
        """Number of superpixels of image ``i`` (ids are ``0..R-1``)."""
        i = self._index(i)
        if i not in self._num_regions:
            name = self.samples[i].name
            try:
                self._num_regions[i] = self.superpixels.num_regions(name)
            except (FileNotFoundError, DamagedFileError):
                self.load_regions(i)  # computes (or recomputes, with a warning) and caches the map
        return self._num_regions[i]

    def adjacency(self, i: int) -> torch.Tensor:
        """8-connected region adjacency of image ``i``: ``(E, 2)`` int64 pairs ``u < v`` (memoised)."""
        i = self._index(i)
        try:
            return self.superpixels.adjacency(self.samples[i].name)
        except (FileNotFoundError, DamagedFileError):
            self.load_regions(i)
            return self.superpixels.adjacency(self.samples[i].name)

    def raw(self, i: int) -> dict:
        """Untransformed full-resolution ``image`` (uint8 RGB), ``label``, ``regions``, ``num_regions``."""
        i = self._index(i)
        image, label, regions = self.load_image(i), self.load_label(i), self.load_regions(i)
        self._check_shapes(i, image, label, regions)
        return {"image": torch.from_numpy(image), "label": torch.from_numpy(label),
                "regions": torch.from_numpy(regions.astype(np.int64)), "num_regions": int(regions.max()) + 1,
                "index": i, "name": self.samples[i].name}

    def _check_shapes(self, i, image, label, regions) -> None:
        s = self.samples[i]
        if label.shape != image.shape[:2]:
            raise ValueError(f"{self.name}: label {s.label} has size {label.shape}, image {s.image} has {image.shape[:2]}")
        if regions.shape != image.shape[:2]:
            raise ValueError(f"{self.name}: cached superpixel map {self.superpixels.path(s.name)} has size "
                             f"{regions.shape} but image {s.image} has {image.shape[:2]}; delete the stale cache")

    def __getitem__(self, i: int) -> dict:
        i = self._index(i)
        image, label, regions = self.load_image(i), self.load_label(i), self.load_regions(i)
        self._check_shapes(i, image, label, regions)
        image_t = normalize(to_float_image(image))
        label_t = torch.from_numpy(label)
        regions_t = torch.from_numpy(regions.astype(np.int64))
        image_t, label_t, regions_t = self.transform(image_t, label_t, regions_t)
        return {"image": image_t, "label": label_t, "regions": regions_t, "index": i, "name": self.samples[i].name}


def require_dir(path: Path, dataset: str, what: str) -> Path:
    """Raise :class:`DatasetNotFoundError` naming ``path`` and what was expected there."""
    if not path.is_dir():
        raise DatasetNotFoundError(f"{dataset}: expected {what} at {path}, but it "
                                   f"{'is not a directory' if path.exists() else 'does not exist'}")
    return path
