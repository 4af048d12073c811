"""What a run gives to other tools: its model as a plain segmentation-models-pytorch file, and
the labels it collected as mask images (README, "Your own images").

**The model file** (``RUN_DIR/model_smp.pt``, written after every finished round; or
``mulact-predict RUN_DIR --export-model FILE``) is a ``torch.save`` of plain containers, so
``torch.load(path, weights_only=True)`` reads it without mulact::

    {"format": "mulact-smp/1", "arch": "DeepLabV3Plus",
     "smp_kwargs": {"encoder_name", "encoder_weights": None, "encoder_output_stride",
                    "decoder_channels", "classes": num_classes + 1},
     "state_dict": the smp model's weights,
     "num_classes", "class_names", "colors" ([r, g, b] per class), "undefined_class",
     "temperature", "mean", "std" (input normalisation of RGB in [0, 1]),
     "round", "stage"}

mulact's model (:mod:`mulact.model`) is smp's ``DeepLabV3Plus`` whose segmentation head is a
*cosine* classifier: features and class weights are L2-normalised, the scores are their dot
products, bilinearly upsampled ×4 (``align_corners=False``) and divided by the temperature
for probabilities. The file folds that head into smp's standard 1×1 convolution head
(``segmentation_head.0``): weight = the unit-length class weights, bias = 0. Applying that
convolution to unit-length decoder features reproduces the model's scores exactly (the README
example); smp's own ``net(x)`` applies it to the raw features and upsamples with
``align_corners=True``, which picks the same class at every feature position (the scores are
the cosines times the positive feature norm) but may differ between positions near class
boundaries, and its scores are not the model's probabilities.

**Label masks** (``mulact-predict RUN_DIR --export-labels DIR``): for every training image with
a labeled region, ``DIR/masks/<image name>.png`` (single-channel, class index per pixel): the
pixels of regions answered with exactly one class of the dataset, then, on the remaining
pixels, stage-2 pseudo labels where the run has them, and 255 (void) everywhere else (the
*undefined* class is void too). ``DIR/classes.yaml`` is in the folder-dataset format and
``DIR/labels.json`` lists per image its source and pixel counts.
"""
from __future__ import annotations

import io
import json
import os

import numpy as np
import torch

from mulact.data.transforms import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from mulact.runstore import DamagedFileError, RunDir, RunStateError, atomic_write

__all__ = ["SMP_FORMAT", "export_labels", "smp_model_record", "write_smp_model"]

SMP_FORMAT = "mulact-smp/1"


def smp_model_record(model, *, class_names, colors, temperature: float, round_index: int, stage: str) -> dict:
    """The contents of a ``model_smp.pt`` file for a :class:`~mulact.model.CosineDeepLabV3Plus`."""
    state = {k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
             for k, v in model.net.state_dict().items()}
    w = torch.nn.functional.normalize(model.classifier.weight.detach().float().cpu(), dim=1,
                                      eps=model.classifier.eps)
    state["segmentation_head.0.weight"] = w[:, :, None, None].contiguous()
    state["segmentation_head.0.bias"] = torch.zeros(w.shape[0])
    return {
        "format": SMP_FORMAT,
        "arch": "DeepLabV3Plus",
        "smp_kwargs": {"encoder_name": model.encoder_name, "encoder_weights": None,
                       "encoder_output_stride": int(model.output_stride),
                       "decoder_channels": int(model.feature_dim), "classes": int(model.num_outputs)},
        "state_dict": state,
        "num_classes": int(model.num_classes),
        "class_names": [str(n) for n in class_names],
        "colors": [[int(v) for v in c] for c in colors],
        "undefined_class": int(model.num_classes),
        "temperature": float(temperature),
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "round": int(round_index),
        "stage": stage,
    }


def write_smp_model(path: str | os.PathLike, model, **record) -> str:
    """Write :func:`smp_model_record` of ``model`` to ``path`` (atomically); returns the path."""
    rec = smp_model_record(model, **record)
    buf = io.BytesIO()
    torch.save(rec, buf)
    atomic_write(path, buf.getvalue())
    return os.fspath(path)


def write_run_smp_model(run: RunDir, model, **record) -> str:
    """The run's ``model_smp.pt`` (recorded in its manifest when the run has it open)."""
    return write_smp_model(run.smp_model, model, **record)


def _single_class_region_labels(pool, image: int, num_classes: int) -> np.ndarray:
    """Per region of ``image``: its class when the answer named exactly one dataset class, else 255."""
    mh = pool.region_labels(image).numpy()  # (R, C + 1)
    out = np.full(mh.shape[0], IGNORE_INDEX, dtype=np.int64)
    single = (mh.sum(1) == 1) & ~mh[:, num_classes]
    out[single] = mh[single, :num_classes].argmax(1)
    return out


def _latest_pseudo_round(run: RunDir, pool, rounds) -> tuple[int | None, dict | None]:
    """The latest of ``rounds`` whose pseudo labels exist and verify, with its summary."""
    from mulact.al.stage2 import pseudo_summary

    for t in sorted(rounds, reverse=True):
        info = pseudo_summary(run, t, pool.until(t).labeled_images())  # DamagedFileError names a bad map
        if info is not None:
            return t, info
    return None, None


def _finite_or_none(x):
    return float(x) if x is not None and np.isfinite(x) else None


def export_labels(run, out: str, *, round_index: int | None = None, progress: bool = True) -> dict:
    """Write the label masks of ``run`` (a :class:`mulact.predict.RunFiles`) to ``out``.

    ``round_index``: the labels of rounds ``1..round_index`` (default: every round in the
    pool) and the pseudo labels of the latest of those rounds that has them. Returns the
    summary also written to ``out/labels.json``.
    """
    import cv2
    import yaml
    from tqdm.auto import tqdm

    from mulact.al.data import build_split
    from mulact.al.pool import RegionPool

    rundir = run.rundir
    pool_path = rundir.pool
    if not rundir.exists(pool_path):
        raise RunStateError(f"RUN_DIR: {run.dir!r} has no labels yet ({os.path.basename(pool_path)} is missing: "
                            f"no round has been answered)")
    pool = RegionPool.load(pool_path, rundir.manifest)
    if round_index is not None:
        if not 1 <= round_index <= pool.num_rounds:
            raise ValueError(f"--round {round_index}: the run has labels of rounds 1..{pool.num_rounds}")
        pool = pool.until(round_index)
    t_last = pool.num_rounds
    if t_last == 0:
        raise RunStateError(f"RUN_DIR: {run.dir!r} has no labeled regions yet")
    C = pool.num_classes
    if C != len(run.class_names):
        raise RunStateError(f"{pool_path}: holds labels of {C} classes, the run's model has {len(run.class_names)}")
    pseudo_round, pseudo_info = (None, None)
    if run.cfg.stage2:
        pseudo_round, pseudo_info = _latest_pseudo_round(rundir, pool, range(1, t_last + 1))
    pseudo_images = set()
    if pseudo_round is not None:
        pseudo_images = {int(i) for i in pool.until(pseudo_round).labeled_images()}
    train = build_split(run.cfg, "train")
    if len(train) < len(pool.offsets) - 1:
        raise RunStateError(f"{pool_path}: labels {len(pool.offsets) - 1} images, the run's train split "
                            f"now has {len(train)}; the dataset changed since the run")
    images = [int(i) for i in pool.labeled_images()]
    names = train.names()
    records = []
    for i in tqdm(images, desc="export labels", unit="image", disable=not progress, dynamic_ncols=True):
        regions = train.load_regions(i).astype(np.int64)
        R = int(pool.offsets[i + 1] - pool.offsets[i])
        if int(regions.max()) + 1 != R:
            raise RunStateError(f"superpixel map of {names[i]!r} has {int(regions.max()) + 1} regions, the run "
                                f"labeled {R}: the superpixels changed since the run (another --superpixel-dir?)")
        per_region = _single_class_region_labels(pool, i, C)
        mask = per_region[regions]
        from_regions = int((mask != IGNORE_INDEX).sum())
        from_pseudo = 0
        if i in pseudo_images:
            path = rundir.pseudo_label(pseudo_round, i)
            pseudo = np.load(path).astype(np.int64)  # verified by _latest_pseudo_round
            if pseudo.shape != mask.shape:
                raise DamagedFileError(path, f"has size {pseudo.shape}, its image {mask.shape}")
            fill = (mask == IGNORE_INDEX) & (pseudo >= 0) & (pseudo < C)
            mask[fill] = pseudo[fill]
            from_pseudo = int(fill.sum())
        ok, buf = cv2.imencode(".png", mask.astype(np.uint8))
        if not ok:
            raise RuntimeError(f"could not encode the mask of {names[i]!r} as PNG")
        rel = os.path.join("masks", f"{names[i]}.png")
        atomic_write(os.path.join(out, rel), buf.tobytes())
        records.append({"image": i, "name": names[i], "source": str(train.samples[i].image), "mask": rel,
                        "labeled_regions": int((pool.round[pool.offsets[i]:pool.offsets[i + 1]] > 0).sum()),
                        "region_pixels": from_regions, "pseudo_pixels": from_pseudo,
                        "void_pixels": int(mask.size - from_regions - from_pseudo)})
    classes = {"classes": [{"name": n, "color": [int(v) for v in c]} for n, c in zip(run.class_names, run.colors)],
               "ignore_index": IGNORE_INDEX}
    atomic_write(os.path.join(out, "classes.yaml"),
                 yaml.safe_dump(classes, sort_keys=False, default_flow_style=None).encode())
    summary = {"run_dir": os.path.abspath(run.dir), "rounds": t_last, "labeling": run.cfg.labeling,
               "pseudo_labels_round": pseudo_round,
               "pseudo_label_accuracy": _finite_or_none(None if pseudo_info is None else pseudo_info.get("accuracy")),
               "images": records}
    atomic_write(os.path.join(out, "labels.json"), (json.dumps(summary, indent=1) + "\n").encode())
    return summary
