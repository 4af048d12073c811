"""Built-in demo dataset: small procedurally generated street scenes in the Cityscapes layout.

::

    root = ensure_demo_dataset()                 # generated once, then reused
    ds = CityscapesDataset(root, "train")        # the same loader as a real Cityscapes run
    # or: build_dataset("demo", None, "train")

Scenes (default 128x256 px; 200 train / 50 val) hold sky, buildings with windows, vegetation,
terrain, sidewalk, road with lane markings, poles with traffic signs, cars and persons, plus
void pixels (an ego-vehicle strip, "static" clutter). Ground truth is written as Cityscapes
*labelIds* (``gtFine/<split>/<city>/*_gtFine_labelIds.png``) so the loader converts them to
trainIds exactly as for the real data; the classes the demo never draws (wall, fence, ...) are
simply absent. Colours and textures differ per class but overlap (per-image colour jitter,
Gaussian noise, overcast skies, grey buildings next to grey roads) so a small CNN has to use
context and texture, not a per-pixel colour lookup.

Determinism: every image is drawn from its own ``numpy.random.Generator`` seeded with
``(seed, split, index)``, and PNGs are encoded by OpenCV with fixed settings, so the same
parameters give byte-identical files. The dataset lives in
``<cache>/demo/<seed>-<train>x<val>-<H>x<W>/`` where ``<cache>`` is ``$MULACT_CACHE`` or
``~/.cache/mulact``; it is built in a temporary sibling directory and renamed into place, so an
interrupted generation never leaves a half-written dataset behind.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .cache import cache_dir

# Cityscapes labelIds used by the generator.
UNLABELED, EGO, STATIC = 0, 1, 4
ROAD, SIDEWALK, BUILDING, POLE, SIGN, VEGETATION, TERRAIN, SKY, PERSON, CAR = 7, 8, 11, 17, 20, 21, 22, 23, 24, 26

CITY = "demo"
_SPLIT_SALT = {"train": 1, "val": 2}


def _smooth_noise(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    field = rng.standard_normal((h, w)).astype(np.float32)
    k = int(2 * round(3 * sigma) + 1)
    field = cv2.GaussianBlur(field, (k, k), sigma, borderType=cv2.BORDER_REFLECT)
    return field / (field.std() + 1e-6)


class _Canvas:
    def __init__(self, h: int, w: int):
        self.h, self.w = h, w
        self.img = np.zeros((h, w, 3), np.float32)
        self.lab = np.full((h, w), UNLABELED, np.uint8)
        self.yy, self.xx = np.mgrid[0:h, 0:w]

    def paint(self, mask: np.ndarray, label: int | None, color) -> None:
        color = np.asarray(color, np.float32)
        self.img[mask] = color if color.ndim == 1 else color[mask]
        if label is not None:
            self.lab[mask] = label

    def rect(self, y0, y1, x0, x1) -> np.ndarray:
        y0, y1 = max(int(y0), 0), min(int(y1), self.h)
        x0, x1 = max(int(x0), 0), min(int(x1), self.w)
        m = np.zeros((self.h, self.w), bool)
        if y1 > y0 and x1 > x0:
            m[y0:y1, x0:x1] = True
        return m

    def ellipse(self, cy, cx, ry, rx) -> np.ndarray:
        return ((self.yy - cy) / max(ry, 0.5)) ** 2 + ((self.xx - cx) / max(rx, 0.5)) ** 2 <= 1.0


def _jitter(rng, base, amount):
    return np.clip(np.asarray(base, np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


def render_scene(rng: np.random.Generator, height: int = 128, width: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(RGB uint8 (H, W, 3), Cityscapes labelIds uint8 (H, W))``."""
    h, w = height, width
    c = _Canvas(h, w)
    s = h / 128.0  # object sizes scale with the image height
    horizon = int(h * rng.uniform(0.38, 0.52))

    # sky: blue gradient, or a grey overcast sky that competes with buildings and road
    overcast = rng.random() < 0.3
    top = _jitter(rng, (150, 150, 155) if overcast else (70, 130, 210), 25)
    bottom = _jitter(rng, (190, 190, 195) if overcast else (170, 200, 235), 20)
    t = (c.yy / max(horizon, 1))[..., None].clip(0, 1)
    c.paint(np.ones((h, w), bool), SKY, top * (1 - t) + bottom * t)

    # buildings: a row of blocks with window grids
    x = -int(rng.integers(0, 20 * s))
    palette = [(120, 120, 125), (160, 140, 110), (140, 80, 60), (190, 180, 160), (95, 100, 110)]
    while x < w:
        bw = int(rng.integers(int(25 * s), int(70 * s)))
        btop = int(horizon - rng.uniform(0.15, 0.9) * horizon)
        m = c.rect(btop, horizon + int(6 * s), x, x + bw)
        base = _jitter(rng, palette[int(rng.integers(len(palette)))], 20)
        c.paint(m, BUILDING, base)
        win_dy, win_dx = int(rng.integers(6, 11) * s) + 1, int(rng.integers(6, 11) * s) + 1
        win = m & ((c.yy - btop) % win_dy < win_dy // 2) & ((c.xx - x) % win_dx < win_dx // 2) & (c.yy > btop + 2)
        c.paint(win, None, base * rng.uniform(0.35, 0.6))
        x += bw + int(rng.integers(0, int(8 * s) + 1))

    # trees behind the street: trunk + noisy crown
    for _ in range(int(rng.integers(1, 5))):
        cx, cy = rng.uniform(0, w), horizon - rng.uniform(5, 30) * s
        ry, rx = rng.uniform(10, 28) * s, rng.uniform(10, 30) * s
        c.paint(c.rect(cy, horizon + 4 * s, cx - 2 * s, cx + 2 * s), VEGETATION, _jitter(rng, (70, 55, 40), 15))
        c.paint(c.ellipse(cy, cx, ry, rx), VEGETATION, _jitter(rng, (60, 120, 50), 25))

    # ground plane: terrain at the sides, sidewalks, road trapezoid towards a vanishing point
    vx = w * rng.uniform(0.35, 0.65)
    below = c.yy >= horizon
    depth = ((c.yy - horizon) / max(h - horizon, 1)).clip(0, 1)
    road_half = (0.03 + rng.uniform(0.35, 0.5) * depth) * w
    walk_half = road_half + (0.02 + rng.uniform(0.12, 0.25) * depth) * w
    c.paint(below, TERRAIN, _jitter(rng, (140, 150, 80), 25))
    c.paint(below & (np.abs(c.xx - vx) <= walk_half), SIDEWALK, _jitter(rng, (165, 140, 150), 20))
    road = below & (np.abs(c.xx - vx) <= road_half)
    c.paint(road, ROAD, _jitter(rng, (95, 90, 100), 15))
    lane = road & (np.abs(c.xx - vx) <= 0.006 * w + 0.01 * w * depth) & (((c.yy - horizon) // max(int(6 * s), 1)) % 2 == 0)
    c.paint(lane, ROAD, _jitter(rng, (225, 225, 215), 15))

    # poles with traffic signs on the sidewalk
    for _ in range(int(rng.integers(0, 4))):
        side = 1 if rng.random() < 0.5 else -1
        yb = rng.uniform(horizon + 0.3 * (h - horizon), h)
        d = (yb - horizon) / max(h - horizon, 1)
        px = vx + side * ((0.03 + 0.42 * d) * w + rng.uniform(0.01, 0.08) * w * d)
        ph = (25 + 60 * d) * s
        pw = max(1.0, 2.5 * d * s)
        c.paint(c.rect(yb - ph, yb, px - pw, px + pw), POLE, _jitter(rng, (110, 110, 115), 20))
        if rng.random() < 0.7:
            r = (3 + 6 * d) * s
            color = [(230, 200, 40), (40, 80, 200), (210, 40, 40)][int(rng.integers(3))]
            c.paint(c.ellipse(yb - ph, px, r, r), SIGN, _jitter(rng, color, 25))

    # cars on the road, far to near so nearer ones occlude
    cars = sorted(rng.uniform(horizon + 4 * s, h + 10 * s, int(rng.integers(1, 5))))
    for yb in cars:
        d = np.clip((yb - horizon) / max(h - horizon, 1), 0.05, 1.2)
        cw, ch = (30 + 70 * d) * s, (14 + 32 * d) * s
        cx = vx + rng.uniform(-0.35, 0.35) * d * w
        body = _jitter(rng, rng.uniform(30, 230, 3), 0)
        c.paint(c.rect(yb - ch * 0.6, yb - ch * 0.1, cx - cw / 2, cx + cw / 2), CAR, body)
        c.paint(c.rect(yb - ch, yb - ch * 0.55, cx - cw * 0.35, cx + cw * 0.35), CAR, body * 0.9)
        c.paint(c.rect(yb - ch * 0.95, yb - ch * 0.62, cx - cw * 0.3, cx + cw * 0.3), CAR, _jitter(rng, (40, 50, 60), 10))
        for wx in (cx - cw * 0.3, cx + cw * 0.3):
            c.paint(c.ellipse(yb - ch * 0.12, wx, ch * 0.13, ch * 0.13), CAR, (20, 20, 20))

    # persons on the sidewalks
    for _ in range(int(rng.integers(0, 5))):
        yb = rng.uniform(horizon + 0.2 * (h - horizon), h)
        d = (yb - horizon) / max(h - horizon, 1)
        side = 1 if rng.random() < 0.5 else -1
        px = vx + side * ((0.03 + 0.45 * d) * w + rng.uniform(0, 0.1) * w * d)
        ph = (12 + 45 * d) * s
        pw = ph * 0.18
        c.paint(c.rect(yb - ph * 0.45, yb, px - pw * 0.8, px + pw * 0.8), PERSON, _jitter(rng, (50, 50, 70), 20))
        c.paint(c.ellipse(yb - ph * 0.62, px, ph * 0.2, pw), PERSON, _jitter(rng, rng.uniform(40, 220, 3), 0))
        c.paint(c.ellipse(yb - ph * 0.9, px, ph * 0.1, pw * 0.6), PERSON, _jitter(rng, (210, 170, 140), 20))

    # void: static clutter and sometimes the ego vehicle's bonnet
    for _ in range(int(rng.integers(0, 3))):
        cy, cx = rng.uniform(horizon, h), rng.uniform(0, w)
        m = c.rect(cy, cy + rng.uniform(3, 10) * s, cx, cx + rng.uniform(3, 12) * s)
        c.paint(m, STATIC, _jitter(rng, rng.uniform(40, 220, 3), 0))
    if rng.random() < 0.5:
        bonnet = c.yy >= h - (0.06 + 0.04 * np.cos((c.xx - w / 2) / w * np.pi)) * h
        c.paint(bonnet, EGO, _jitter(rng, (30, 30, 35), 10))

    # texture: class-dependent structured noise, then global noise and exposure jitter
    lab = c.lab
    rough = {VEGETATION: 40.0, TERRAIN: 22.0, SIDEWALK: 12.0, BUILDING: 8.0, ROAD: 8.0, SKY: 4.0}
    fine = rng.standard_normal((h, w)).astype(np.float32)
    blotch = _smooth_noise(rng, h, w, 2.0 * s)
    amp = np.zeros((h, w), np.float32)
    for k, a in rough.items():
        amp[lab == k] = a
    c.img += (amp * (0.6 * fine + 0.8 * blotch))[..., None]
    tiles = (lab == SIDEWALK) & ((((c.xx - vx) % max(int(8 * s), 2)) == 0) | ((c.yy % max(int(5 * s), 2)) == 0))
    c.img[tiles] *= 0.8
    c.img += rng.normal(0.0, 9.0, (h, w, 3)).astype(np.float32)
    c.img = c.img * rng.uniform(0.8, 1.15) + rng.uniform(-15, 15)
    img = np.clip(cv2.GaussianBlur(c.img, (3, 3), 0.6), 0, 255).round().astype(np.uint8)
    return img, lab


def demo_key(seed: int, num_train: int, num_val: int, height: int, width: int) -> str:
    return f"{seed}-{num_train}x{num_val}-{height}x{width}"


def _write_png(path: Path, array: np.ndarray) -> None:
    if not cv2.imwrite(str(path), array, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise OSError(f"demo dataset: could not write {path}")


def generate_demo(out: str | os.PathLike, seed: int = 0, num_train: int = 200, num_val: int = 50,
                  height: int = 128, width: int = 256, progress: bool = True) -> Path:
    """Write the demo dataset into ``out`` (which must not exist yet); return it."""
    out = Path(out)
    counts = {"train": num_train, "val": num_val}
    total = num_train + num_val
    with tqdm(total=total, desc="demo dataset", disable=not progress, unit="img") as bar:
        for split, n in counts.items():
            img_dir = out / "leftImg8bit" / split / CITY
            gt_dir = out / "gtFine" / split / CITY
            img_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                rng = np.random.default_rng([seed, _SPLIT_SALT[split], i])
                img, lab = render_scene(rng, height, width)
                stem = f"{CITY}_{i:06d}_000019"
                _write_png(img_dir / f"{stem}_leftImg8bit.png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
                _write_png(gt_dir / f"{stem}_gtFine_labelIds.png", lab)
                bar.update(1)
    return out


def ensure_demo_dataset(root: str | os.PathLike | None = None, *, seed: int = 0, num_train: int = 200,
                        num_val: int = 50, height: int = 128, width: int = 256, progress: bool = True) -> Path:
    """Path of the demo dataset (Cityscapes layout), generating it on first use.

    ``root`` defaults to ``<cache>/demo`` (``$MULACT_CACHE`` or ``~/.cache/mulact``); the data
    goes to ``root/<seed>-<train>x<val>-<H>x<W>``. Generation happens in a temporary directory
    next to the target which is then renamed, so concurrent or interrupted calls are safe.
    """
    for name, v in (("num_train", num_train), ("num_val", num_val), ("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name.startswith("num") else 8):
            raise ValueError(f"ensure_demo_dataset: `{name}` must be an int >= {0 if name.startswith('num') else 8}, "
                             f"got {v!r}")
    base = Path(root) if root is not None else cache_dir() / "demo"
    target = base / demo_key(seed, num_train, num_val, height, width)
    if target.is_dir():
        return target
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=base))
    try:
        generate_demo(tmp, seed, num_train, num_val, height, width, progress=progress)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # lost a race only if someone else finished first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
