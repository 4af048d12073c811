"""PASCAL VOC 2012 segmentation: 21 classes (background + 20), 255 = object border / void.

``root`` may be the ``VOC2012`` directory itself, or a directory holding ``VOC2012`` or
``VOCdevkit/VOC2012``. Expected inside::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png        (palette PNG; the palette index is the class)
    ImageSets/Segmentation/<split>.txt

Usage::

    ds = VOCDataset("/data/VOCdevkit", "train", region_size=32)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .base import IGNORE_INDEX, DatasetNotFoundError, Sample, SegmentationDataset, require_dir

CLASS_NAMES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")


def resolve_voc_root(root: Path) -> Path:
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir():
            return cand
    raise DatasetNotFoundError(f"voc: expected JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/ in {root} "
                               f"(or in {root / 'VOC2012'} or {root / 'VOCdevkit' / 'VOC2012'}), found none")


class VOCDataset(SegmentationDataset):
    name = "voc"
    class_names = CLASS_NAMES

    def find_samples(self) -> list[Sample]:
        self.root = resolve_voc_root(self.root)
        img_dir = require_dir(self.root / "JPEGImages", self.name, "the images (JPEGImages/<id>.jpg)")
        gt_dir = require_dir(self.root / "SegmentationClass", self.name, "the labels (SegmentationClass/<id>.png)")
        list_file = self.root / "ImageSets" / "Segmentation" / f"{self.split}.txt"
        if not list_file.is_file():
            raise DatasetNotFoundError(f"{self.name}: expected the image list of split {self.split!r} at {list_file}")
        samples = []
        for line in list_file.read_text().split():
            img, gt = img_dir / f"{line}.jpg", gt_dir / f"{line}.png"
            for p in (img, gt):
                if not p.is_file():
                    raise DatasetNotFoundError(f"{self.name}: {list_file} lists {line!r} but {p} does not exist")
            samples.append(Sample(line, img, gt))
        return samples

    def read_label_file(self, path: Path) -> np.ndarray:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise ValueError(f"{self.name}: {path} must be a palette or greyscale PNG of class indices, got mode {im.mode}")
            return np.asarray(im, dtype=np.uint8)

    def convert_label(self, raw: np.ndarray) -> np.ndarray:
        lab = raw.astype(np.int64)
        bad = (lab >= len(CLASS_NAMES)) & (lab != IGNORE_INDEX)
        if bad.any():
            raise ValueError(f"{self.name}: label values {sorted(np.unique(lab[bad]).tolist())} are neither classes "
                             f"0..{len(CLASS_NAMES) - 1} nor {IGNORE_INDEX}")
        return lab
