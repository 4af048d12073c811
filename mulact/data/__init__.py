"""Datasets, superpixels, transforms and the oracle's inputs.

Usage::

    from mulact.data import build_dataset, TrainTransform, ensure_demo_dataset
    from mulact.ops import region_labels_from_mask, region_adjacency

    # the built-in demo (generated on first use under $MULACT_CACHE or ~/.cache/mulact)
    train = build_dataset("demo", None, "train", transform=TrainTransform((96, 192)))
    val = build_dataset("demo", None, "val")
    # real data: build_dataset("cityscapes", "/data/cityscapes", "train", region_size=32)
    #            build_dataset("voc", "/data/VOCdevkit", "train")

    item = train[0]           # image (3,H,W) f32 normalised, label (H,W) i64 255=void,
                              # regions (H,W) i64 -1=padding, index, name
    raw = train.raw(0)        # full-resolution uint8 image, label, regions, num_regions
    R = train.num_regions(0)
    oracle = region_labels_from_mask(raw["label"][None], raw["regions"][None], R, train.num_classes)
    oracle.multi_hot          # (1, R, C+1) bool; index C = undefined
    edges = region_adjacency(raw["regions"][None], R)[0]     # (E, 2) int64, u < v

Superpixel maps are computed on first access and cached as 16-bit PNGs; precompute a split in
parallel with ``mulact-superpixels --dataset cityscapes --root /data/cityscapes --split train``
(:mod:`mulact.data.precompute`). Metadata: ``ds.num_classes``, ``ds.class_names``,
``ds.ignore_index`` (255).
"""
from __future__ import annotations

import os

from .base import IGNORE_INDEX, DatasetNotFoundError, Sample, SegmentationDataset
from .cache import cache_dir, default_superpixel_dir
from .cityscapes import CityscapesDataset
from .demo import ensure_demo_dataset, render_scene
from .folder import ClassFileError, FolderDataset, read_class_table
from .superpixels import (
    METHODS,
    CacheMismatchError,
    SuperpixelCache,
    compute_superpixels,
    grid_superpixels,
    relabel_contiguous,
)
from .transforms import EvalTransform, TrainTransform, denormalize, normalize
from .voc import VOCDataset

DATASETS = ("cityscapes", "voc", "demo", "folder")


def build_dataset(name: str, root: str | os.PathLike | None, split: str, *, demo_options: dict | None = None,
                  **kwargs) -> SegmentationDataset:
    """Dataset by name: ``"cityscapes"``, ``"voc"``, ``"demo"`` or ``"folder"`` (README, "Your own images").

    For ``"demo"``, ``root`` is the demo cache root (None: ``<cache>/demo``) and
    ``demo_options`` go to :func:`ensure_demo_dataset` (seed, num_train, num_val, height,
    width); the result is a :class:`CityscapesDataset` over the generated files. ``kwargs``
    go to the dataset class (``superpixels``, ``region_size``, ``superpixel_dir``,
    ``superpixel_params``, ``transform``, ``require_labels``).
    """
    if name == "cityscapes":
        if root is None:
            raise ValueError("build_dataset: `root` is required for cityscapes")
        return CityscapesDataset(root, split, **kwargs)
    if name == "voc":
        if root is None:
            raise ValueError("build_dataset: `root` is required for voc")
        return VOCDataset(root, split, **kwargs)
    if name == "folder":
        if root is None:
            raise ValueError("build_dataset: `root` is required for folder (the directory holding classes.yaml)")
        return FolderDataset(root, split, **kwargs)
    if name == "demo":
        path = ensure_demo_dataset(root, **(demo_options or {}))
        return CityscapesDataset(path, split, **kwargs)
    raise ValueError(f"build_dataset: `name` must be one of {', '.join(DATASETS)}, got {name!r}")


__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "METHODS",
    "CacheMismatchError",
    "CityscapesDataset",
    "ClassFileError",
    "FolderDataset",
    "DatasetNotFoundError",
    "EvalTransform",
    "Sample",
    "SegmentationDataset",
    "SuperpixelCache",
    "TrainTransform",
    "VOCDataset",
    "build_dataset",
    "cache_dir",
    "compute_superpixels",
    "default_superpixel_dir",
    "denormalize",
    "ensure_demo_dataset",
    "grid_superpixels",
    "normalize",
    "read_class_table",
    "relabel_contiguous",
    "render_scene",
]
