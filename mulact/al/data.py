"""Dataset views used by the AL loop, built on :mod:`mulact.data`.

- :class:`AugmentedView` — training items keyed by ``(image index, augmentation seed)``
  (see :class:`mulact.engine.train.ResumableBatchSampler`), with the image's region labels
  from the pool (``(R_max, C + 1)`` bool; unlabeled rows all zero) or a per-image pseudo
  label map in place of the ground truth (stage 2).
- :func:`build_oracle` — the oracle's answers for every region of the train split.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from mulact.data.transforms import normalize, to_float_image

from .labels import multi_hot_to_bits
from .oracle_table import OracleTable

__all__ = ["AugmentedView", "build_oracle", "build_split"]


def build_split(cfg, split: str):
    """The ``split`` dataset of a :class:`~mulact.config.TrainConfig` (loop and labeling page);
    None for a folder dataset's non-train split that has no ``images/<split>/``."""
    import os

    from mulact.data import build_dataset

    # the human oracle's train images need no label files: nobody has labeled them yet
    # a folder dataset's validation masks are optional: without them mIoU is not measured
    kwargs = dict(superpixels=cfg.superpixel_method, region_size=cfg.region_size,
                  require_labels=not (split == "train" and cfg.oracle == "human")
                  and not (split != "train" and cfg.dataset == "folder"))
    if cfg.superpixel_dir:
        kwargs["superpixel_dir"] = os.path.join(cfg.superpixel_dir, split)
    if cfg.dataset == "folder" and split != "train" and not os.path.isdir(
            os.path.join(os.path.expanduser(cfg.data_root), "images", split)):
        return None  # the split is optional (README, "Your own images")
    demo = None
    if cfg.dataset == "demo":
        demo = dict(seed=0, height=cfg.demo_height, width=cfg.demo_width, num_train=cfg.demo_train_images,
                    num_val=cfg.demo_val_images, progress=True)
    return build_dataset(cfg.dataset, cfg.data_root, split, demo_options=demo, **kwargs)


class AugmentedView(torch.utils.data.Dataset):
    """Items of ``dataset`` transformed with ``transform`` under an explicit per-item seed.

    ``region_labels_fn(i)`` → ``(R_max, K)`` bool labels of image ``i`` (stage 1);
    ``label_fn(i)`` → int64 ``(H, W)`` label map replacing the ground truth (stage 2).
    """

    def __init__(self, dataset, transform, region_labels_fn=None, label_fn=None):
        self.dataset = dataset
        self.transform = transform
        self.region_labels_fn = region_labels_fn
        self.label_fn = label_fn

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        i, seed = key
        ds = self.dataset
        image = normalize(to_float_image(ds.load_image(i)))
        label = torch.from_numpy(ds.load_label(i)) if self.label_fn is None else self.label_fn(i)
        regions = torch.from_numpy(ds.load_regions(i).astype(np.int64))
        gen = torch.Generator().manual_seed(int(seed))
        image, label, regions = self.transform(image, label, regions, generator=gen)
        item = {"image": image, "label": label, "regions": regions, "index": i}
        if self.region_labels_fn is not None:
            item["region_labels"] = self.region_labels_fn(i)
        return item


def build_oracle(dataset, indices, trim: int = 5) -> OracleTable:
    """Multi-hot (trimmed, Appendix B) and dominant labels of every region of ``indices``."""
    from mulact.ops import region_labels_from_mask

    C = dataset.num_classes
    counts = [dataset.num_regions(int(i)) for i in tqdm(indices, desc="superpixels", leave=False, dynamic_ncols=True)]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    N = int(offsets[-1])
    bits = np.zeros(N, np.uint64)
    dominant = np.full(N, -1, np.int64)
    pixels = np.zeros(N, np.int64)
    for k, i in enumerate(tqdm(indices, desc="oracle labels", leave=False, dynamic_ncols=True)):
        label = torch.from_numpy(dataset.load_label(int(i)))
        regions = torch.from_numpy(dataset.load_regions(int(i)).astype(np.int64))
        if label.shape != regions.shape:
            raise ValueError(f"dataset: label and superpixel map of image {int(i)} differ in size "
                             f"({tuple(label.shape)} vs {tuple(regions.shape)})")
        R = int(offsets[k + 1] - offsets[k])
        out = region_labels_from_mask(label[None], regions[None], R, C,
                                      ignore_index=dataset.ignore_index, trim=trim)
        lo = int(offsets[k])
        px = out.class_counts[0].sum(-1).cpu().numpy()
        pixels[lo:lo + R] = px
        bits[lo:lo + R] = multi_hot_to_bits(out.multi_hot[0])
        dominant[lo:lo + R] = np.where(px > 0, out.dominant[0].cpu().numpy(), -1)
    return OracleTable(offsets, bits, dominant, pixels, C)
