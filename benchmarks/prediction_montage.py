"""A small picture of a few `mulact-predict` results next to their ground truth, for a results page.

    python benchmarks/prediction_montage.py PRED_DIR DATASET_ROOT SPLIT --out montage.png [--images 4] [--width 240]

``PRED_DIR`` is a ``mulact-predict --out`` directory (``<stem>.png`` class ids), ``DATASET_ROOT``
a folder dataset (``classes.yaml``, ``images/<SPLIT>/``, ``masks/<SPLIT>/`` with single-channel
class ids; README, "Your own images"). One row per image, evenly spaced over the sorted
predictions: the image, the prediction and the ground truth in the class colours (void black),
each ``--width`` pixels wide; a legend of the classes below. Prints the pixel accuracy of the
shown images (void excluded).
"""
from __future__ import annotations

import argparse
import os
import sys

import cv2
import numpy as np
import yaml

from mulact.runstore import atomic_write


def _colorize(ids: np.ndarray, palette: np.ndarray) -> np.ndarray:
    out = np.zeros((*ids.shape, 3), np.uint8)
    known = ids < len(palette)
    out[known] = palette[ids[known]]
    return out


def _legend(names, palette, width: int) -> np.ndarray:
    rows, x, y, line = [], 4, 0, 18
    for name, color in zip(names, palette):
        tw = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)[0][0] + 24
        if x + tw > width:
            x, y = 4, y + line
        rows.append((x, y, name, color))
        x += tw
    pic = np.full((y + line + 4, width, 3), 255, np.uint8)
    for x, y, name, color in rows:
        cv2.rectangle(pic, (x, y + 4), (x + 12, y + 16), tuple(int(v) for v in color), -1)
        cv2.putText(pic, name, (x + 16, y + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return pic


def montage(pred_dir: str, root: str, split: str, n: int = 4, width: int = 240) -> tuple[np.ndarray, float]:
    """RGB picture and the pixel accuracy of the images shown."""
    with open(os.path.join(root, "classes.yaml")) as fh:
        spec = yaml.safe_load(fh)
    names = [c["name"] for c in spec["classes"]]
    palette = np.array([c["color"] for c in spec["classes"]], np.uint8)
    stems = sorted(f[:-4] for f in os.listdir(pred_dir) if f.endswith(".png") and not f.endswith("_overlay.png"))
    if not stems:
        raise SystemExit(f"prediction_montage: {pred_dir} holds no <stem>.png predictions")
    picks = [stems[k] for k in np.linspace(0, len(stems) - 1, min(n, len(stems))).round().astype(int)]
    rows, correct, counted = [], 0, 0
    for stem in picks:
        image = next((os.path.join(root, "images", split, stem + s) for s in (".png", ".jpg", ".jpeg")
                      if os.path.isfile(os.path.join(root, "images", split, stem + s))), None)
        if image is None:
            raise SystemExit(f"prediction_montage: no image {stem}.* under {os.path.join(root, 'images', split)}")
        rgb = cv2.cvtColor(cv2.imread(image, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        pred = cv2.imread(os.path.join(pred_dir, stem + ".png"), cv2.IMREAD_UNCHANGED)
        gt = cv2.imread(os.path.join(root, "masks", split, stem + ".png"), cv2.IMREAD_UNCHANGED)
        valid = gt < len(names)
        correct += int((pred[valid] == gt[valid]).sum())
        counted += int(valid.sum())
        h = int(round(rgb.shape[0] * width / rgb.shape[1]))
        tiles = [cv2.resize(rgb, (width, h), interpolation=cv2.INTER_AREA)]
        for ids in (pred, gt):
            tiles.append(cv2.resize(_colorize(ids, palette), (width, h), interpolation=cv2.INTER_NEAREST))
        rows.append(np.concatenate([np.concatenate([t, np.full((h, 2, 3), 255, np.uint8)], 1) for t in tiles], 1))
    pic = np.concatenate(rows, 0)
    head = np.full((18, pic.shape[1], 3), 255, np.uint8)
    for k, title in enumerate(("image", "prediction", "ground truth")):
        cv2.putText(head, title, (k * (width + 2) + 4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    pic = np.concatenate([head, pic, _legend(names, palette, pic.shape[1])], 0)
    return pic, correct / max(counted, 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pred_dir", metavar="PRED_DIR")
    p.add_argument("root", metavar="DATASET_ROOT")
    p.add_argument("split", metavar="SPLIT")
    p.add_argument("--out", required=True)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--width", type=int, default=240)
    args = p.parse_args(argv)
    pic, acc = montage(args.pred_dir, args.root, args.split, args.images, args.width)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(pic, cv2.COLOR_RGB2BGR))
    if not ok:
        raise SystemExit("prediction_montage: could not encode the PNG")
    atomic_write(args.out, buf.tobytes())
    print(f"prediction_montage: {args.out} ({pic.shape[1]}x{pic.shape[0]}), pixel accuracy of the shown images "
          f"{100 * acc:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
