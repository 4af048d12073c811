"""Any images, any classes: the ``folder`` dataset (README, "Your own images").

Layout under ``root``::

    classes.yaml
    images/<split>/<stem>.png|.jpg|.jpeg     train required, val optional; sizes may differ
    masks/<split>/<stem>.png                 optional per split
    splits/<split>.txt                       optional: the stems of the split, one per line

``classes.yaml``::

    classes:                        # class index = position in the list
      - {name: background, color: [0, 0, 0]}
      - {name: road, color: [128, 64, 128]}
    ignore_index: 255               # mask value meaning void (single-channel masks)
    ignore_color: [255, 255, 255]   # optional: the void colour of RGB masks

A mask is either single-channel (greyscale or palette PNG) holding class indices, or RGB,
mapped through the class colours. Stems may contain sub-directories
(``images/train/a/b.png`` is the stem ``a/b``). Greyscale images are accepted and converted
to RGB (the grey value in every channel); images with an alpha channel lose it.

Usage::

    ds = FolderDataset("/data/crops", "train", region_size=32)
    ds.class_names, ds.class_colors, ds.has_labels
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .base import IGNORE_INDEX, DatasetNotFoundError, Sample, SegmentationDataset, require_dir

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CLASSES_FILE = "classes.yaml"


class ClassFileError(ValueError):
    """``classes.yaml`` is missing, unreadable or inconsistent (the message names the file)."""


@dataclass(frozen=True)
class ClassTable:
    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    ignore_index: int
    ignore_color: tuple[int, int, int] | None

    def color_lut(self) -> dict[int, int]:
        """``{0xRRGGBB: class index}``, the void colour mapped to ``ignore_index``."""
        lut = {(r << 16) | (g << 8) | b: k for k, (r, g, b) in enumerate(self.colors)}
        if self.ignore_color is not None:
            r, g, b = self.ignore_color
            lut[(r << 16) | (g << 8) | b] = self.ignore_index
        return lut


def _color(value, path: Path, what: str) -> tuple[int, int, int]:
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)):
        raise ClassFileError(f"{path}: {what} must be [R, G, B] with integers 0..255, got {value!r}")
    return tuple(int(v) for v in value)


def read_class_table(path: str | os.PathLike) -> ClassTable:
    """Parse and check ``classes.yaml`` (:class:`ClassFileError` naming the file and the entry)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ClassFileError(f"folder: expected the class file at {path} (classes: a list of {{name, color}}; "
                             "README, 'Your own images')")
    try:
        doc = yaml.safe_load(path.read_bytes())
    except (OSError, yaml.YAMLError) as exc:
        raise ClassFileError(f"{path}: not readable YAML ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("classes"), list) or not doc["classes"]:
        raise ClassFileError(f"{path}: expected a mapping with a non-empty list `classes` of {{name, color}}")
    unknown = sorted(set(doc) - {"classes", "ignore_index", "ignore_color"})
    if unknown:
        raise ClassFileError(f"{path}: unknown key(s) {unknown}; expected classes, ignore_index, ignore_color")
    names, colors = [], []
    for k, entry in enumerate(doc["classes"]):
        if not isinstance(entry, dict) or set(entry) != {"name", "color"}:
            raise ClassFileError(f"{path}: classes[{k}] must be {{name: ..., color: [R, G, B]}}, got {entry!r}")
        name = entry["name"]
        if not isinstance(name, str) or not name.strip():
            raise ClassFileError(f"{path}: classes[{k}].name must be a non-empty string, got {name!r}")
        if name in names:
            raise ClassFileError(f"{path}: class name {name!r} appears twice (classes[{names.index(name)}] and "
                                 f"classes[{k}])")
        color = _color(entry["color"], path, f"classes[{k}].color")
        if color in colors:
            raise ClassFileError(f"{path}: colour {list(color)} of classes[{k}] ({name!r}) is also the colour of "
                                 f"classes[{colors.index(color)}] ({names[colors.index(color)]!r})")
        names.append(name)
        colors.append(color)
    ignore_index = doc.get("ignore_index", 255)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int) or not 0 <= ignore_index <= 65535:
        raise ClassFileError(f"{path}: ignore_index must be an integer 0..65535, got {ignore_index!r}")
    if len(names) > IGNORE_INDEX:
        raise ClassFileError(f"{path}: {len(names)} classes; mulact handles at most {IGNORE_INDEX}")
    if ignore_index < len(names):
        raise ClassFileError(f"{path}: ignore_index {ignore_index} is the index of class {names[ignore_index]!r}; "
                             f"use a value >= {len(names)} (255 is usual)")
    ignore_color = None
    if doc.get("ignore_color") is not None:
        ignore_color = _color(doc["ignore_color"], path, "ignore_color")
        if ignore_color in colors:
            raise ClassFileError(f"{path}: ignore_color {list(ignore_color)} is the colour of class "
                                 f"{names[colors.index(ignore_color)]!r}")
    return ClassTable(tuple(names), tuple(colors), int(ignore_index), ignore_color)


class FolderDataset(SegmentationDataset):
    """Images and optional masks of one split of a folder dataset (module docstring).

    A split without ``masks/<split>/`` has no labels (``has_labels`` False): every pixel reads
    as void. ``require_labels=True`` then raises, naming what is missing.
    """

    name = "folder"

    def __init__(self, root, split: str, **kwargs):
        table = read_class_table(Path(root).expanduser() / CLASSES_FILE)
        self.classes = table
        self.class_names = table.names
        self.class_colors = table.colors
        # the file's void value becomes mulact's own (255) when masks are read
        self._lut = {k: (IGNORE_INDEX if v == table.ignore_index else v) for k, v in table.color_lut().items()}
        super().__init__(root, split, **kwargs)

    @property
    def has_labels(self) -> bool:
        """Every image of the split has a mask."""
        return all(s.label is not None for s in self.samples)

    def find_samples(self) -> list[Sample]:
        img_dir = require_dir(self.root / "images" / self.split, self.name,
                              f"the images of split {self.split!r} (images/{self.split}/<stem>.png|.jpg|.jpeg)")
        found: dict[str, Path] = {}
        for p in sorted(img_dir.rglob("*")):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                stem = p.relative_to(img_dir).with_suffix("").as_posix()
                if stem in found:
                    raise DatasetNotFoundError(f"{self.name}: two images of split {self.split!r} share the stem "
                                               f"{stem!r}: {found[stem]} and {p}")
                found[stem] = p
        list_file = self.root / "splits" / f"{self.split}.txt"
        if list_file.is_file():
            stems = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
            missing = [s for s in stems if s not in found]
            if missing:
                raise DatasetNotFoundError(f"{self.name}: {list_file} lists {len(missing)} stem(s) with no image in "
                                           f"{img_dir}, e.g. {missing[0]!r}")
        else:
            stems = sorted(found)
        mask_dir = self.root / "masks" / self.split
        if self.require_labels and not mask_dir.is_dir():
            raise DatasetNotFoundError(
                f"{self.name}: split {self.split!r} has no masks (expected masks/{self.split}/<stem>.png under "
                f"{self.root}); the simulated oracle needs them: label the images yourself with --oracle human")
        samples = []
        for stem in stems:
            mask = mask_dir / f"{stem}.png"
            if not mask.is_file():
                if self.require_labels or mask_dir.is_dir():
                    raise DatasetNotFoundError(f"{self.name}: image {found[stem]} has no mask; expected {mask}")
                mask = None
            samples.append(Sample(stem, found[stem], mask))
        return samples

    def read_label_file(self, path: Path) -> np.ndarray:
        try:
            with Image.open(path) as im:
                im.load()
                mode = im.mode
                if mode in ("P", "L", "I;16", "I"):
                    return np.asarray(im).astype(np.int64)
                if mode not in ("RGB", "RGBA"):
                    raise ValueError(f"{self.name}: mask {path} has PNG mode {mode}; expected class indices "
                                     "(greyscale or palette) or RGB class colours")
                rgb = np.asarray(im.convert("RGB"))
        except (OSError, SyntaxError) as exc:  # PIL: truncated or not an image
            raise OSError(f"could not read label image {path} ({exc})") from None
        code = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
        values, inverse = np.unique(code, return_inverse=True)
        mapped = np.array([self._lut.get(int(v), -1) for v in values], dtype=np.int64)
        if (mapped < 0).any():
            bad = [f"[{v >> 16}, {(v >> 8) & 255}, {v & 255}]" for v in values[mapped < 0][:5]]
            raise ValueError(f"{self.name}: mask {path} has colour(s) {', '.join(bad)} that are neither a class "
                             f"colour nor ignore_color in {self.root / CLASSES_FILE}")
        return mapped[inverse.reshape(code.shape)]

    def convert_label(self, raw: np.ndarray) -> np.ndarray:
        lab = raw.astype(np.int64)
        void = lab == self.classes.ignore_index
        bad = ((lab < 0) | (lab >= len(self.class_names))) & ~void
        if bad.any():
            raise ValueError(f"{self.name}: mask values {sorted(np.unique(lab[bad]).tolist())[:8]} are neither classes "
                             f"0..{len(self.class_names) - 1} nor ignore_index {self.classes.ignore_index}")
        lab[void] = IGNORE_INDEX
        return lab

    def load_label(self, i: int) -> np.ndarray:
        s = self.samples[self._index(i)]
        if s.label is None:
            return super().load_label(i)
        try:
            return self.convert_label(self.read_label_file(s.label))
        except ValueError as exc:
            msg = str(exc)
            raise ValueError(msg if str(s.label) in msg else f"{msg} (mask {s.label})") from None
