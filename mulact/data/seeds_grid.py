"""The block grid of OpenCV's SEEDS, and how to get the region count that was asked for.

``cv2.ximgproc.createSuperpixelSEEDS(W, H, C, n, L, ...)`` does not use ``n`` directly. It
derives a grid of ``n_h = int(sqrtf(n * H / W))`` rows and ``n_w = n_h * W // H`` columns,
drops levels while a bottom block would be narrower than one pixel, and makes the bottom
blocks ``s_w = ceil(W / n_w / 2**(L-1))`` by ``s_h`` pixels. The bottom level then has
``W // s_w`` blocks per row and every level above halves that count, rounding down. The
final regions are the top-level blocks: ``((W // s_w) >> (L-1)) * ((H // s_h) >> (L-1))``.
The ceiling of the block size followed by two floors is what loses regions when the sides
divide badly: 375x500 at ``n = 183`` gets 3x3-pixel bottom blocks, 166x125 of them, and
10x7 = 70 regions at the top.

:func:`opencv_seeds_grid` evaluates that arithmetic (in float32, as OpenCV does) for many
``n`` at once; tests compare it with ``getNumberOfSuperpixels()`` of the real object.
:func:`plan_seeds` chooses how to run SEEDS on an ``H x W`` image:

* If OpenCV's grid for the requested count is within :data:`COUNT_TOLERANCE` of it, SEEDS
  runs as it always did (same parameters, same map: Cityscapes 1024x2048 at 32 px and the
  demo's 128x256 at 16 px keep their maps byte for byte).
* Otherwise the image is resampled to a *working size* ``(r*b, c*b)`` whose sides divide into
  exactly ``r x c`` top-level blocks of ``b`` pixels; SEEDS runs there and its labels are
  mapped back to ``H x W`` by nearest-neighbour sampling. ``r x c`` is chosen among grids
  near ``H/s x W/s``: counts within 2.5 % of the request (or one region) count as equal, and
  among those the blocks closest to square on the image win, then the most levels, then the
  least resampling; a block may not be more than twice as long as wide. Over sides 64..2048
  and 16/32/64 px the working size is a median 1 % (90th percentile 5 %) off per side; strips
  only a block or two wide are stretched most (up to 39 %).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

COUNT_TOLERANCE = 0.10  # relative deviation of the region count accepted without resampling
MIN_SUPERPIXELS = 10  # OpenCV raises a smaller `num_superpixels` to this
CLOSE = COUNT_TOLERANCE / 4  # counts this close to the request (or one region off) are equally good
MAX_BLOCK_STRETCH = 2.0  # longest/shortest side of a region's block on the image


def opencv_seeds_grid(width: int, height: int, num_superpixels, num_levels: int) -> tuple[np.ndarray, np.ndarray]:
    """``(regions, levels)`` OpenCV's SEEDS would create for each ``num_superpixels``.

    Vectorised over ``num_superpixels``; ``regions == 0`` where OpenCV would fail (a grid
    with no row or column; OpenCV does not check this and must not be called then).
    """
    f32 = np.float32
    n = np.maximum(np.asarray(num_superpixels, dtype=np.int64), MIN_SUPERPIXELS)
    levels_max = max(int(num_levels), 2)
    n_h = np.sqrt((n.astype(f32) * f32(height)) / f32(width)).astype(np.int64)
    n_w = n_h * width // height
    valid = (n_h > 0) & (n_w > 0)
    nh = np.where(valid, n_h, 1).astype(f32)
    nw = np.where(valid, n_w, 1).astype(f32)
    levels = np.zeros(n.shape, np.int64)
    s_w = np.ones(n.shape, np.int64)
    s_h = np.ones(n.shape, np.int64)
    for lev in range(levels_max, 0, -1):
        wf = (f32(width) / nw) / f32(1 << (lev - 1))
        hf = (f32(height) / nh) / f32(1 << (lev - 1))
        take = valid & (levels == 0) & (wf >= 1) & (hf >= 1)
        levels[take] = lev
        s_w[take] = np.ceil(wf[take]).astype(np.int64)
        s_h[take] = np.ceil(hf[take]).astype(np.int64)
    shift = np.maximum(levels - 1, 0)
    regions = ((width // s_w) >> shift) * ((height // s_h) >> shift)
    return np.where(levels > 0, regions, 0), levels


@dataclass(frozen=True)
class SeedsPlan:
    """How to run SEEDS for one image size (see the module docstring)."""

    height: int  # working size (the image's own when ``resampled`` is False)
    width: int
    num_superpixels: int  # passed to createSuperpixelSEEDS
    num_levels: int
    regions: int  # top-level blocks OpenCV will create
    resampled: bool


def _grid_shape(height: int, width: int, requested: int) -> list[tuple[int, int]]:
    """Candidate ``(rows, cols)`` with ``rows * cols`` close to ``requested``, best first."""
    side = math.sqrt(height * width / requested)
    cands = set()
    for r in range(max(1, math.floor(height / side) - 1), math.ceil(height / side) + 2):
        for c in {math.floor(width / side), math.ceil(width / side), requested // r, -(-requested // r)}:
            if c >= 1:
                cands.add((r, c))
    for c in {max(1, math.floor(width / side)), math.ceil(width / side)}:
        for r in {requested // c, -(-requested // c)}:
            if r >= 1:
                cands.add((r, c))

    def stretch(rc):  # how far from square the blocks on the image would be
        r, c = rc
        return abs(math.log((width / c) / (height / r)))

    # an exact count bought with blocks much longer than wide is not worth it
    shaped = [rc for rc in cands if stretch(rc) <= math.log(MAX_BLOCK_STRETCH)] or list(cands)
    # among counts within CLOSE of the request the squarest blocks win, else the closest count
    def rank(rc):
        err = abs(rc[0] * rc[1] - requested)
        near = err <= max(CLOSE * requested, 1)
        return (not near, 0 if near else err, stretch(rc), err)
    return sorted(shaped, key=rank)[:6]


@functools.lru_cache(maxsize=4096)
def plan_seeds(height: int, width: int, requested: int, num_levels: int) -> SeedsPlan:
    """Parameters and working size that give ``requested`` SEEDS regions (module docstring)."""
    got, levels = opencv_seeds_grid(width, height, [requested], num_levels)
    if got[0] > 0 and abs(int(got[0]) - requested) <= COUNT_TOLERANCE * requested:
        return SeedsPlan(height, width, requested, num_levels, int(got[0]), False)
    best = None
    for rows, cols in _grid_shape(height, width, requested):
        side = math.sqrt(height * width / (rows * cols))
        for lev in range(max(int(num_levels), 2), 1, -1):
            q = 1 << (lev - 1)  # a top block holds q x q bottom blocks of at least one pixel
            for block in sorted({max(q, q * math.floor(side / q)), max(q, q * math.ceil(side / q))},
                                key=lambda b: abs(b - side)):
                h, w = rows * block, cols * block
                ns = np.arange(MIN_SUPERPIXELS, max(4 * rows * cols, 64) + 16)
                counts, lv = opencv_seeds_grid(w, h, ns, lev)
                ok = np.flatnonzero((counts > 0) & (lv == lev))
                if not ok.size:
                    continue
                # the exact grid when OpenCV can make it (it cannot go below about 2x2 blocks)
                i = ok[np.lexsort((np.abs(ns[ok] - rows * cols), np.abs(counts[ok] - rows * cols)))[0]]
                plan = SeedsPlan(h, w, int(ns[i]), lev, int(counts[i]), True)
                err = abs(plan.regions - requested)
                close = err <= max(CLOSE * requested, 1)  # then levels and less resampling matter more
                key = (not close, 0 if close else err, -lev, abs(math.log(h / height)) + abs(math.log(w / width)), err)
                if best is None or key < best[0]:
                    best = (key, plan)
                if plan.regions == rows * cols:
                    break
            if best is not None and best[1].num_levels == lev and best[1].regions == rows * cols:
                break
    if best is None:
        raise ValueError(f"superpixels: SEEDS cannot partition a {height}x{width} image into about {requested} "
                         "regions; use a smaller region_size or the 'grid' method")
    return best[1]
