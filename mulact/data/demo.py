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
interrupted generation never leaves a half-written dataset behind (the partial directory of a
killed generation is removed by the next call, under the generation lock ``.<key>.lock``).

Integrity: ``files.sha256`` (``sha256sum -c`` format) records every file when it is generated;
:func:`ensure_demo_dataset` checks them (once per process) and regenerates any missing or
damaged image from its seed, with a warning naming the file.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from mulact.runstore import atomic_write, digest, publish_dir

from .cache import cache_dir

log = logging.getLogger("mulact.data")
HASHES = "files.sha256"
_verified: set = set()

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


def _encode_png(array: np.ndarray, what: str) -> bytes:
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise OSError(f"demo dataset: could not encode {what}")
    return buf.tobytes()


def _scene_files(seed: int, split: str, i: int, height: int, width: int) -> dict[str, bytes]:
    """``{relative path: PNG bytes}`` of image ``i`` of ``split`` and its ground truth."""
    rng = np.random.default_rng([seed, _SPLIT_SALT[split], i])
    img, lab = render_scene(rng, height, width)
    stem = f"{CITY}_{i:06d}_000019"
    img_rel = f"leftImg8bit/{split}/{CITY}/{stem}_leftImg8bit.png"
    gt_rel = f"gtFine/{split}/{CITY}/{stem}_gtFine_labelIds.png"
    return {img_rel: _encode_png(cv2.cvtColor(img, cv2.COLOR_RGB2BGR), img_rel), gt_rel: _encode_png(lab, gt_rel)}


def generate_demo(out: str | os.PathLike, seed: int = 0, num_train: int = 200, num_val: int = 50,
                  height: int = 128, width: int = 256, progress: bool = True) -> Path:
    """Write the demo dataset into ``out`` (which must not exist yet); return it."""
    out = Path(out)
    counts = {"train": num_train, "val": num_val}
    total = num_train + num_val
    hashes = {}
    with tqdm(total=total, desc="demo dataset", disable=not progress, unit="img") as bar:
        for split, n in counts.items():
            for sub in ("leftImg8bit", "gtFine"):
                (out / sub / split / CITY).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                for rel, data in _scene_files(seed, split, i, height, width).items():
                    (out / rel).write_bytes(data)  # the whole directory is renamed into place at the end
                    hashes[rel] = digest(data)
                bar.update(1)
    _write_hashes(out, hashes)
    return out


def _write_hashes(out: Path, hashes: dict[str, str]) -> None:
    atomic_write(out / HASHES, "".join(f"{h}  {rel}\n" for rel, h in sorted(hashes.items())).encode(), record=False)


def _read_hashes(out: Path) -> dict[str, str] | None:
    try:
        text = (out / HASHES).read_text()
    except (OSError, UnicodeDecodeError):
        return None
    table = {}
    for line in text.splitlines():
        h, sep, rel = line.partition("  ")
        if not sep or len(h) != 64:
            return None
        table[rel] = h
    return table


def _repair(target: Path, seed: int, height: int, width: int, counts: dict) -> None:
    """Check every file against ``files.sha256``; regenerate the damaged images."""
    hashes = _read_hashes(target)
    expected = {}
    for split, n in counts.items():
        for i in range(n):
            stem = f"{CITY}_{i:06d}_000019"
            for rel in (f"leftImg8bit/{split}/{CITY}/{stem}_leftImg8bit.png",
                        f"gtFine/{split}/{CITY}/{stem}_gtFine_labelIds.png"):
                expected[rel] = (split, i)
    if hashes is None or set(hashes) != set(expected):
        if (target / HASHES).exists():
            log.warning("demo dataset %s: %s is damaged; checking every file by regenerating it", target, HASHES)
        hashes = {}
    bad = set()
    for rel, key in expected.items():
        want = hashes.get(rel)
        try:
            ok = want is not None and digest((target / rel).read_bytes()) == want
        except OSError:
            ok = False
        if not ok:
            bad.add(key)
    changed = False
    for split, i in sorted(bad):
        for rel, data in _scene_files(seed, split, i, height, width).items():
            path = target / rel
            try:
                same = digest(path.read_bytes()) == digest(data)
            except OSError:
                same = False
            if not same:
                log.warning("demo dataset: %s is missing or damaged; regenerating it", path)
                atomic_write(path, data, record=False)
            hashes[rel] = digest(data)
            changed = True
    if changed:
        _write_hashes(target, hashes)


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
    if str(target) in _verified and target.is_dir():
        return target
    base.mkdir(parents=True, exist_ok=True)
    # one generator per dataset at a time; the others wait and then only check its result
    fd = os.open(base / f".{target.name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for stale in base.glob(f".{target.name}.*"):  # partial generations of killed processes
            if stale.is_dir():
                log.info("demo dataset: removing the partial generation %s", stale)
                shutil.rmtree(stale, ignore_errors=True)
        if target.is_dir():
            _repair(target, seed, height, width, {"train": num_train, "val": num_val})
        else:
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=base))
            try:
                generate_demo(tmp, seed, num_train, num_val, height, width, progress=progress)
                publish_dir(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    finally:
        os.close(fd)
    _verified.add(str(target))
    return target
