"""Semantic-segmentation evaluation: dataset-level confusion matrix and mIoU.

Conventions (README, "Active learning: `mulact-train`"):
- The model's extra *undefined* channel (index ``num_classes``) is dropped before the argmax,
  so every evaluated pixel is predicted as one of the dataset's classes.
- Ground-truth pixels equal to ``ignore_index`` (255) are not counted.
- IoU of class c = TP / (TP + FP + FN) over the whole split (one confusion matrix summed over
  all images, not a mean of per-image IoUs). A class absent from both the ground truth and
  the predictions has 0/0: its IoU is NaN and it is excluded from the mean (``np.nanmean``),
  as in the Cityscapes and VOC evaluation scripts; the per-class list keeps the NaN.

Multi-process runs (:mod:`mulact.distributed`): :func:`evaluate_dataset` deals whole batches of
the split to the ranks (:func:`mulact.distributed.shard_batches`) and sums the integer
confusion matrices over ranks, so every rank gets the matrix — and the mIoU — of a
one-process run, exactly.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from mulact.data import IGNORE_INDEX
from mulact.engine.precision import autocast

__all__ = ["confusion_matrix", "iou_from_confusion", "evaluate", "evaluate_dataset"]


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``(num_classes, num_classes)`` int64 counts, rows = ground truth, columns = prediction."""
    if pred.shape != target.shape:
        raise ValueError(f"pred: shape {tuple(pred.shape)} differs from target {tuple(target.shape)}")
    t = target.reshape(-1).long()
    p = pred.reshape(-1).long()
    keep = t != ignore_index
    t, p = t[keep], p[keep]
    if t.numel() and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"target: labels must be in [0, {num_classes}) or {ignore_index}, "
                         f"got range [{int(t.min())}, {int(t.max())}]")
    if p.numel() and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"pred: predictions must be in [0, {num_classes})")
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes).cpu()


def iou_from_confusion(conf) -> tuple[float, list[float]]:
    """(mIoU, per-class IoU) from a confusion matrix; NaN classes are excluded from the mean."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    denom = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(denom > 0, tp / np.where(denom > 0, denom, 1), np.nan)
    miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else math.nan
    return miou, [float(x) for x in iou]


@torch.no_grad()
def evaluate(model, loader, num_classes: int, device, ignore_index: int = IGNORE_INDEX,
             amp: bool = False, desc: str = "evaluate", sharded: bool = False) -> dict:
    """mIoU of ``model`` over ``loader`` (items with ``image`` and ``label``).

    ``sharded=True``: ``loader`` yields only this rank's share of the split; the confusion
    matrices of all ranks are summed (a collective: every rank must call it).
    """
    from mulact import distributed as dist

    was_training = model.training
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=dist.rank() != 0):
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        with autocast(amp, device):
            logits = model(images)
        pred = logits[:, :num_classes].argmax(dim=1)
        conf += confusion_matrix(pred, labels, num_classes, ignore_index)
    model.train(was_training)
    if sharded:
        dist.all_reduce_sum(conf, what=f"{desc}: confusion matrix")
    miou, iou = iou_from_confusion(conf)
    return {"miou": miou, "iou": iou, "confusion": conf.tolist()}


def evaluate_dataset(model, dataset, num_classes: int, device, *, batch_size: int = 1, num_workers: int = 0,
                     ignore_index: int = IGNORE_INDEX, amp: bool = False, desc: str = "evaluate",
                     collate_fn=None) -> dict:
    """mIoU of ``model`` over ``dataset``, sharded over the ranks of a multi-process run.

    With one process this is :func:`evaluate` over a plain sequential loader. With N ranks,
    rank r evaluates batches r, r + N, ... of the batches one process would form, and the
    confusion matrices are summed; the result is identical on every rank and to N = 1.
    """
    from mulact import distributed as dist
    from mulact.engine.train import collate_pad

    batches = dist.shard_batches(range(len(dataset)), batch_size)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                                         collate_fn=collate_fn or collate_pad)
    return evaluate(model, loader, num_classes, device, ignore_index, amp=amp, desc=desc,
                    sharded=dist.world_size() > 1)
