"""Stage 2 (paper §3.3): pseudo labels from the stage-1 model, then plain CE training.

Pseudo labels are generated once per round for every image that holds a labeled region, on
the untransformed image, with :func:`mulact.ops.prototype_pseudo_labels` (localization +
optional expansion; ``cfg.pseudo = "confident"`` uses the "w/o prototypes" baseline instead,
without expansion). Each map is stored as an int16 ``.npy`` (255 = no label) under
``round_XX/pseudo/`` and augmented together with the image during training.

Pseudo-label accuracy (reported per round) = fraction of pixels with a pseudo label in
``[0, C)`` whose ground truth (not void) agrees; pixels labeled *undefined* and void ground
truth are left out.

Integrity: ``pseudo/summary.json`` (recorded in the run's manifest) lists the SHA-256 of every
map; all maps are checked against it before stage 2 trains on them, and a missing, torn or
swapped map makes the whole round's set be generated again (deterministically) with a warning.

Under ``torchrun`` the labeled images are dealt to the ranks in whole batches
(:func:`mulact.distributed.shard_batches`); each rank writes its own maps (atomically) and the
counts are summed over ranks; rank 0 writes ``summary.json``, which marks the step done.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mulact.data import IGNORE_INDEX
from mulact.engine.precision import autocast
from mulact.runstore import DamagedFileError, atomic_write, digest, worker_init_fn, write_json

__all__ = ["generate_pseudo_labels", "pseudo_summary", "stage2_step"]


def pseudo_summary(run, t: int, images) -> dict | None:
    """The verified summary of round ``t``'s finished pseudo-label pass in ``run``
    (:class:`~mulact.runstore.RunDir`), else None.

    Raises :class:`~mulact.runstore.DamagedFileError` naming the file when the summary or one
    of the maps of ``images`` is not what was written (the caller generates them again).
    """
    if not run.exists(run.pseudo_summary(t)):
        return None
    return _verified_summary(run, t, images)


@torch.no_grad()
def generate_pseudo_labels(model, dataset, pool, images, run, t: int, *, device, pseudo: str = "prototype",
                           expand: bool = True, temperature: float = 0.1, batch_size: int = 4,
                           num_workers: int = 0, amp: bool = False, desc: str = "pseudo labels") -> dict:
    """Pseudo labels of ``images`` with round ``t``'s stage-1 ``model``, written into ``run``
    (:class:`~mulact.runstore.RunDir`); returns (and writes) the summary.

    Always generates: the caller checks for a finished pass first (:func:`pseudo_summary`).
    Under torchrun a collective: every rank must call it (see the module docstring).
    """
    from mulact import distributed as dist
    from mulact.engine.train import collate_pad
    from mulact.ops.prototype_pseudo_labels import prototype_pseudo_labels, pseudo_labels_without_prototypes

    done = run.pseudo_summary(t)
    hashes = {}
    device = torch.device(device)
    model.eval()
    C = pool.num_classes
    R = int(np.diff(pool.offsets).max())
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=dist.shard_batches([int(i) for i in images], batch_size),
        num_workers=num_workers, collate_fn=collate_pad,
        worker_init_fn=worker_init_fn() if num_workers else None)
    correct = labeled = localized = expanded = 0
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not dist.is_main()):
        idx = batch["index"].tolist()
        regions = batch["regions"].to(device)
        region_labels = torch.stack([pool.region_labels(i, R) for i in idx]).to(device)
        with autocast(amp, device):
            logits, feats = model(batch["image"].to(device), return_features=True)
        if pseudo == "prototype":
            labels, info = prototype_pseudo_labels(feats, logits, regions, region_labels, expand=expand,
                                                   temperature=temperature, return_info=True)
            localized += int(info.num_localized.sum())
            expanded += int(info.num_expanded.sum())
        else:
            labels = pseudo_labels_without_prototypes(logits, regions, region_labels, temperature=temperature)
            localized += int((labels != IGNORE_INDEX).sum())
        labels = labels.cpu()
        gt = batch["label"]
        valid = (labels < C) & (gt != IGNORE_INDEX)
        correct += int((valid & (labels == gt)).sum())
        labeled += int(valid.sum())
        for b, i in enumerate(idx):
            h, w = (int(v) for v in batch["sizes"][b])
            arr = labels[b, :h, :w].numpy().astype(np.int16)
            path = run.pseudo_label(t, i)
            # recorded in summary.json below rather than in the run manifest, one entry per map
            hashes[os.path.basename(path)] = atomic_write(path, lambda fh, a=arr: np.save(fh, a), record=False)
    counts = dist.all_reduce_sum(torch.tensor([correct, labeled, localized, expanded], dtype=torch.int64),
                                 what="pseudo labels: counts")
    correct, labeled, localized, expanded = (int(v) for v in counts)
    info = {"accuracy": correct / labeled if labeled else float("nan"), "localized": localized,
            "expanded": expanded, "images": len(images)}
    shards = dist.all_gather_objects(hashes, what="pseudo labels: hashes")
    if dist.is_main():
        write_json(done, {**info, "files": {k: v for shard in shards for k, v in shard.items()}})
    dist.barrier("pseudo labels: written")
    return info


def _verified_summary(run, t: int, images) -> dict:
    done = run.pseudo_summary(t)
    info = run.read_json(done, what="pseudo-label summary")
    if not isinstance(info, dict) or not isinstance(info.get("files"), dict):
        raise DamagedFileError(done, "lists no pseudo-label maps (written by an older mulact?)")
    files = info.pop("files")
    for i in images:
        path = run.pseudo_label(t, i)
        want = files.get(os.path.basename(path))
        if want is None:
            raise DamagedFileError(path, f"is not listed in {done}")
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise DamagedFileError(path, f"cannot be read ({exc.strerror})") from None
        if digest(data) != want:
            raise DamagedFileError(path, f"is not the map recorded in {os.path.basename(done)} "
                                         f"(truncated, overwritten or swapped)")
    return info


def stage2_step(model, batch, *, device, temperature: float):
    """Cross-entropy of one batch against its pseudo labels (255 = no label)."""
    logits = model(batch["image"].to(device, non_blocking=True))
    target = batch["label"].to(device)
    if not (target != IGNORE_INDEX).any():
        return logits.sum() * 0.0, {"ce": torch.zeros(())}
    loss = F.cross_entropy(logits.float() / temperature, target, ignore_index=IGNORE_INDEX)
    return loss, {"ce": loss.detach()}
