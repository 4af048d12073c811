"""Cityscapes (fine annotations): 19 train classes, void = 255.

Layout expected under ``root``::

    leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png
    gtFine/<split>/<city>/<stem>_gtFine_labelIds.png

labelIds are mapped to trainIds with the table of ``cityscapesscripts.helpers.labels``
(trainId 255 or -1 -> 255). The built-in demo dataset (:mod:`mulact.data.demo`) uses the same
layout and loader. Usage::

    ds = CityscapesDataset("/data/cityscapes", "train", transform=TrainTransform(768))
"""
from __future__ import annotations

import numpy as np

from .base import IGNORE_INDEX, DatasetNotFoundError, Sample, SegmentationDataset, require_dir


def _label_tables() -> tuple[np.ndarray, tuple[str, ...]]:
    from cityscapesscripts.helpers.labels import labels

    lut = np.full(256, IGNORE_INDEX, dtype=np.int64)
    names: dict[int, str] = {}
    for lab in labels:
        if 0 <= lab.id < 256 and 0 <= lab.trainId < 255:
            lut[lab.id] = lab.trainId
            names[lab.trainId] = lab.name
    return lut, tuple(names[k] for k in sorted(names))


ID_TO_TRAIN_ID, CLASS_NAMES = _label_tables()


class CityscapesDataset(SegmentationDataset):
    name = "cityscapes"
    class_names = CLASS_NAMES

    def find_samples(self) -> list[Sample]:
        img_root = require_dir(self.root / "leftImg8bit" / self.split, self.name,
                               f"the images of split {self.split!r} (leftImg8bit/{self.split}/<city>/*_leftImg8bit.png)")
        gt_root = require_dir(self.root / "gtFine" / self.split, self.name,
                              f"the fine labels of split {self.split!r} (gtFine/{self.split}/<city>/*_gtFine_labelIds.png)")
        samples = []
        for img in sorted(img_root.glob("*/*_leftImg8bit.png")):
            city = img.parent.name
            stem = img.name[: -len("_leftImg8bit.png")]
            gt = gt_root / city / f"{stem}_gtFine_labelIds.png"
            if not gt.is_file():
                raise DatasetNotFoundError(f"{self.name}: image {img} has no label file; expected {gt}")
            samples.append(Sample(f"{city}/{stem}", img, gt))
        if not samples:
            raise DatasetNotFoundError(f"{self.name}: no <city>/*_leftImg8bit.png files under {img_root}")
        return samples

    def convert_label(self, raw: np.ndarray) -> np.ndarray:
        if raw.dtype != np.uint8:
            raise ValueError(f"{self.name}: labelIds images must be 8-bit, got {raw.dtype}")
        return ID_TO_TRAIN_ID[raw]
