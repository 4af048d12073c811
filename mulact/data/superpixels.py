"""Superpixel maps: SEEDS, SLIC and a regular grid, plus a lossless on-disk cache.

Public API::

    compute_superpixels(image_rgb, method="seeds", region_size=32, **params) -> np.ndarray
    relabel_contiguous(labels) -> (np.ndarray, int)
    SuperpixelCache(root, method="seeds", region_size=32, **params)
        .path(name) / .load(name) / .get(name, image_loader) / .save(name, labels)

Every map is an ``int32`` array of shape ``(H, W)`` with ids ``0..R-1`` covering every pixel
(no gaps, no negative ids). ``region_size`` is the nominal side of one region in pixels; the
requested number of regions is ``round(H * W / region_size**2)`` (2048 for a 1024x2048
Cityscapes image at ``region_size=32``, the paper's setting).

Decisions (SPEC is silent):

* **Disconnected labels are not split.** SEEDS' pixel-level refinement and SLIC can leave a
  label as several detached fragments. Splitting them would add many tiny regions that each
  cost a click, and the AL pipeline treats a region as a set of pixels anyway (the oracle,
  losses and adjacency never assume connectivity). Ids are only made contiguous
  (:func:`relabel_contiguous`, order of first appearance in sorted id order).
* **SEEDS input**: the RGB image is converted to HSV and each channel is histogram-equalised
  (``cv2.equalizeHist``) before SEEDS runs, with ``num_levels=5, prior=3, histogram_bins=10,
  double_step=True`` and 10 iterations (the paper's settings, README "Presets"). OpenCV's SEEDS is deterministic.
  **Region count**: OpenCV's block grid loses regions when the image sides divide badly
  (375x500 at 32 px: 70 of 183); such sizes run at a nearby working size that divides into
  the requested grid (:mod:`mulact.data.seeds_grid`), so the count is within 10 % of the
  request for requests of at least 10 regions (OpenCV's own minimum). Sizes that already
  worked keep their maps byte for byte.
* **SLIC** runs through ``skimage.segmentation.slic`` on the RGB image (``compactness=10``,
  ``start_label=0``, ``enforce_connectivity=True``), deterministic for a given input. Its
  connectivity step drops regions depending on the image; ``n_segments`` is re-scaled and
  SLIC re-run until the count is within 10 % (at most :data:`SLIC_ATTEMPTS` runs; small
  requests, below ~50 regions, can stay further off because SLIC's seed grid moves in whole
  rows and columns).
* **Count rule version**: the manifest's ``count_rule`` records the steering above; a cache
  made before it is refused if any of its maps would now come out differently (all SLIC
  caches; SEEDS caches holding maps of a resampled size), never mixed.
* **Grid** ("patch" baseline): ``ceil(H/s) x ceil(W/s)`` blocks of ``s = region_size`` px
  (the last row/column of blocks may be smaller).
* **Cache format**: one 16-bit PNG per image (``cv2.imwrite`` of a ``uint16`` array; lossless),
  so a map must have fewer than 65536 regions (:class:`ValueError` otherwise; use a larger
  ``region_size``). A ``manifest.json`` in the cache directory records the method and the
  parameters; ``region_counts.json`` (written by ``mulact-superpixels``) the region count of
  every map, so pool-sized loops over ``num_regions`` need not decode every PNG (a map
  rewritten after it is decoded instead). A cache whose manifest disagrees with the requested parameters is *refused*
  (:class:`CacheMismatchError` naming both parameter sets) rather than silently overwritten:
  maps may have been used for a labelled AL pool already. Use another directory or delete it.
  All writes go through :func:`mulact.runstore.atomic_write` (temporary file, fsync, rename).
* **Integrity**: ``hashes.log`` records the SHA-256 of every map when it is written (one
  ``<sha256>  <name>`` line appended per write, so concurrent writers never rewrite each
  other's records; the last line of a name wins). Every read checks the map against it: a
  truncated, overwritten or swapped map (e.g. another image's) is recomputed with a warning
  naming the file. A cache made before ``hashes.log`` existed (its manifest has no
  ``"hashes"`` entry) is trusted as it is and its maps are recorded on first read.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from mulact.runstore import DamagedFileError, atomic_write, digest, writing

from .seeds_grid import COUNT_TOLERANCE, plan_seeds

METHODS = ("seeds", "slic", "grid")
MAX_REGIONS = 65535 + 1  # ids 0..65535 fit a uint16 PNG
SEEDS_DEFAULTS = {"num_levels": 5, "prior": 3, "histogram_bins": 10, "double_step": True, "iterations": 10}
SLIC_DEFAULTS = {"compactness": 10.0, "sigma": 0.0, "max_num_iter": 10}
MANIFEST = "manifest.json"
COUNTS = "region_counts.json"
HASHES = "hashes.log"
log = logging.getLogger("mulact.data")
FORMAT_VERSION = 1
SLIC_ATTEMPTS = 6
# Version of the rule that steers region counts to the request (SEEDS working size, SLIC
# re-runs); a cache without it predates the rule (see SuperpixelCache._check_count_rule).
COUNT_RULE = 1
REGION_SIZE_WARN = 0.25  # mulact-superpixels / mulact-train warn beyond this deviation of the region side


class CacheMismatchError(RuntimeError):
    """A superpixel cache directory holds maps computed with other parameters."""


def num_regions_for(height: int, width: int, region_size: int) -> int:
    """Requested region count for an image: ``round(H*W / region_size**2)``, at least 1."""
    return max(1, int(round(height * width / float(region_size * region_size))))


def relabel_contiguous(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Map arbitrary integer ids to ``0..R-1`` (sorted order of the original ids).

    Returns ``(int32 map, R)``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"relabel_contiguous: `labels` must be 2-D (H, W), got shape {labels.shape}")
    uniq, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape).astype(np.int32), int(uniq.size)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"superpixels: `image` must be an (H, W, 3) uint8 RGB array, got shape {image.shape} "
                         f"dtype {image.dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"superpixels: `image` is empty: shape {image.shape}")
    return np.ascontiguousarray(image)


def _check_region_size(region_size) -> int:
    if isinstance(region_size, bool) or not isinstance(region_size, (int, np.integer)) or region_size < 1:
        raise ValueError(f"superpixels: `region_size` must be a positive int (pixels), got {region_size!r}")
    return int(region_size)


def grid_superpixels(height: int, width: int, region_size: int) -> np.ndarray:
    """Regular ``region_size`` x ``region_size`` blocks, row-major ids."""
    region_size = _check_region_size(region_size)
    cols = math.ceil(width / region_size)
    ys = np.arange(height) // region_size
    xs = np.arange(width) // region_size
    return (ys[:, None] * cols + xs[None, :]).astype(np.int32)


def seeds_superpixels(image: np.ndarray, region_size: int = 32, *, num_levels: int = 5, prior: int = 3,
                      histogram_bins: int = 10, double_step: bool = True, iterations: int = 10) -> np.ndarray:
    """OpenCV SEEDS on the histogram-equalised HSV image (RGB uint8 input).

    Runs at a working size chosen by :func:`mulact.data.seeds_grid.plan_seeds` when the
    image's own size would give a region count more than 10 % off the request.
    """
    image = _check_image(image)
    h, w = image.shape[:2]
    n = num_regions_for(h, w, _check_region_size(region_size))
    plan = plan_seeds(h, w, n, num_levels)
    work = image
    if plan.resampled:
        shrink = plan.height * plan.width < h * w
        work = cv2.resize(image, (plan.width, plan.height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    hsv = cv2.cvtColor(work, cv2.COLOR_RGB2HSV)
    hsv = cv2.merge([cv2.equalizeHist(c) for c in cv2.split(hsv)])
    seeds = cv2.ximgproc.createSuperpixelSEEDS(plan.width, plan.height, 3, plan.num_superpixels, plan.num_levels,
                                               prior, histogram_bins, double_step)
    if seeds.getNumberOfSuperpixels() != plan.regions:
        raise RuntimeError(f"superpixels: OpenCV {cv2.__version__} made a SEEDS grid of {seeds.getNumberOfSuperpixels()} "
                           f"regions where {plan.regions} were predicted for {plan}; its grid rule changed")
    seeds.iterate(hsv, iterations)
    labels = seeds.getLabels()
    if plan.resampled:
        labels = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
    return relabel_contiguous(labels)[0]


def slic_superpixels(image: np.ndarray, region_size: int = 32, *, compactness: float = 10.0, sigma: float = 0.0,
                     max_num_iter: int = 10) -> np.ndarray:
    """scikit-image SLIC on the RGB image, with the count steered to the request.

    SLIC's connectivity step merges fragments smaller than half a region into their
    neighbours, so it returns fewer regions than ``n_segments`` (how many fewer depends on
    the image: 70-90 % on photographs). When the result is more than 10 % off, ``n_segments``
    is scaled by requested/delivered and SLIC runs again (at most :data:`SLIC_ATTEMPTS` runs);
    the closest map wins. A first run within 10 % is kept as it is.
    """
    from skimage.segmentation import slic

    image = _check_image(image)
    h, w = image.shape[:2]
    n = num_regions_for(h, w, _check_region_size(region_size))
    best, tried, segments = None, set(), n
    for _ in range(SLIC_ATTEMPTS):
        tried.add(segments)
        labels, got = relabel_contiguous(
            slic(image, n_segments=segments, compactness=compactness, sigma=sigma, max_num_iter=max_num_iter,
                 start_label=0, enforce_connectivity=True, channel_axis=-1))
        if best is None or abs(got - n) < abs(best[1] - n):
            best = (labels, got)
        if abs(got - n) <= COUNT_TOLERANCE * n:
            break
        step = 1 if got < n else -1
        segments = max(1, round(segments * n / max(got, 1)))
        while segments in tried:  # skimage's seed grid moves in steps: nudge until it changes
            segments += step
        if segments < 1:
            break
    return best[0]


def default_params(method: str) -> dict:
    if method == "seeds":
        return dict(SEEDS_DEFAULTS)
    if method == "slic":
        return dict(SLIC_DEFAULTS)
    if method == "grid":
        return {}
    raise ValueError(f"superpixels: `method` must be one of {', '.join(METHODS)}, got {method!r}")


def compute_superpixels(image: np.ndarray, method: str = "seeds", region_size: int = 32, **params) -> np.ndarray:
    """Superpixel map of an RGB uint8 image: ``int32 (H, W)``, contiguous ids ``0..R-1``.

    ``params`` override the method's defaults (:data:`SEEDS_DEFAULTS`, :data:`SLIC_DEFAULTS`).

    Example::

        >>> img = np.zeros((64, 128, 3), np.uint8)
        >>> sp = compute_superpixels(img, "grid", region_size=32)
        >>> sp.shape, int(sp.max()) + 1
        ((64, 128), 8)
    """
    full = default_params(method)
    unknown = set(params) - set(full)
    if unknown:
        raise ValueError(f"superpixels: unknown parameter(s) {sorted(unknown)} for method {method!r}; "
                         f"expected some of {sorted(full)}")
    full.update(params)
    if method == "grid":
        image = _check_image(image)
        return grid_superpixels(image.shape[0], image.shape[1], region_size)
    if method == "seeds":
        return seeds_superpixels(image, region_size, **full)
    return slic_superpixels(image, region_size, **full)


# ---------------------------------------------------------------------------------------- cache

def _atomic_write_bytes(path: Path, data: bytes) -> str:
    return atomic_write(path, data, record=False)


def encode_png16(labels: np.ndarray) -> bytes:
    """Lossless 16-bit PNG bytes of a contiguous map; raises if R >= 65536."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"superpixels: map must be 2-D, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= MAX_REGIONS):
        raise ValueError(f"superpixels: a 16-bit PNG holds region ids 0..65535, got ids in "
                         f"[{labels.min()}, {labels.max()}]; use a larger region_size")
    ok, buf = cv2.imencode(".png", labels.astype(np.uint16))
    if not ok:
        raise RuntimeError("superpixels: cv2.imencode failed for a 16-bit PNG")
    return buf.tobytes()


def read_png16(path: str | os.PathLike) -> np.ndarray:
    """Read a cached map as ``int32 (H, W)``; raises ``ValueError`` if unreadable."""
    with open(path, "rb") as fh:
        return decode_png16(fh.read(), path)


def decode_png16(data: bytes, path) -> np.ndarray:
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if arr is None or arr.ndim != 2 or arr.dtype != np.uint16:
        raise ValueError(f"superpixels: {path} is not a single-channel 16-bit PNG superpixel map")
    return arr.astype(np.int32)


def validate_map(labels: np.ndarray, shape: tuple[int, int] | None = None) -> int:
    """Check a map is contiguous ``0..R-1`` (and of ``shape``); return R."""
    if labels.ndim != 2 or (shape is not None and tuple(labels.shape) != tuple(shape)):
        raise ValueError(f"superpixels: map has shape {labels.shape}, expected {shape}")
    present = np.unique(labels)
    if present.size == 0 or present[0] != 0 or present[-1] != present.size - 1:
        raise ValueError("superpixels: map ids are not contiguous 0..R-1")
    return int(present.size)


class SuperpixelCache:
    """A directory of cached maps ``<root>/<name>.png`` with a ``manifest.json``.

    ``name`` is a relative path without extension (e.g. ``"aachen/aachen_000000_000019"``).
    The manifest is written on the first save; opening a cache whose manifest records other
    parameters raises :class:`CacheMismatchError`.
    """

    def __init__(self, root: str | os.PathLike, method: str = "seeds", region_size: int = 32, **params):
        full = default_params(method)
        unknown = set(params) - set(full)
        if unknown:
            raise ValueError(f"superpixels: unknown parameter(s) {sorted(unknown)} for method {method!r}")
        full.update(params)
        self.root = Path(root)
        self.method = method
        self.region_size = _check_region_size(region_size)
        self.params = full
        self._manifest_checked = False
        self._legacy = False
        self._hash_state = (None, {})
        self.check_manifest()

    @property
    def manifest(self) -> dict:
        return {"format": FORMAT_VERSION, "method": self.method, "region_size": self.region_size,
                "params": self.params, "dtype": "uint16-png", "max_regions": MAX_REGIONS, "hashes": HASHES,
                "count_rule": COUNT_RULE}

    def check_manifest(self) -> None:
        """Raise :class:`CacheMismatchError` if the directory holds maps of other parameters."""
        path = self.root / MANIFEST
        if not path.exists():
            return
        try:
            found = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CacheMismatchError(f"superpixel cache {self.root}: unreadable {MANIFEST} ({exc}); "
                                     "delete the directory to recompute") from exc
        want = json.loads(json.dumps(self.manifest))  # normalise tuples/ints like the stored file
        keys = ("format", "method", "region_size", "params")
        if any(found.get(k) != want[k] for k in keys):
            raise CacheMismatchError(
                f"superpixel cache {self.root} was computed with "
                f"{ {k: found.get(k) for k in keys} } but { {k: want[k] for k in keys} } was requested; "
                "use another cache directory or delete this one to recompute")
        if "count_rule" not in found and self.method != "grid":
            self._check_count_rule(found)
        self._manifest_checked = True
        self._legacy = "hashes" not in found

    def map_size(self, name: str) -> tuple[int, int]:
        """``(H, W)`` of the cached map ``name`` from its PNG header (no decoding)."""
        return _png_size(self.path(name))

    def region_size_report(self, names) -> tuple[float, str | None]:
        """Mean delivered region side over the cached maps ``names`` (:func:`region_size_check`)."""
        pixels = regions = 0
        for name in names:
            h, w = self.map_size(name)
            pixels += h * w
            regions += self.num_regions(name)
        return region_size_check(pixels, regions, self.region_size, str(self.root))

    def _check_count_rule(self, found: dict) -> None:
        """Refuse a cache made before region counts were steered if any of its maps would differ now.

        SEEDS maps change only at image sizes that need a working size
        (:func:`~mulact.data.seeds_grid.plan_seeds`); SLIC maps of any size may change.
        """
        stale = []
        for png in sorted(self.root.rglob("*.png")):
            if self.method == "slic":
                stale.append(png)
                break
            try:
                h, w = _png_size(png)
            except ValueError:
                continue  # damaged: the hash check recomputes it
            if plan_seeds(h, w, num_regions_for(h, w, self.region_size), int(self.params["num_levels"])).resampled:
                stale.append(png)
                break
        if stale:
            raise CacheMismatchError(
                f"superpixel cache {self.root} was computed before mulact steered {self.method} region counts to "
                f"the request (maps such as {stale[0]} would now have a different region count); delete the "
                "directory to recompute, or use another cache directory")
        try:
            _atomic_write_bytes(self.root / MANIFEST,
                                (json.dumps({**found, "count_rule": COUNT_RULE}, indent=2, sort_keys=True) + "\n").encode())
        except OSError:
            pass  # a read-only cache: checked again on the next open

    def write_manifest(self) -> None:
        path = self.root / MANIFEST
        if path.exists():
            self.check_manifest()
            return
        _atomic_write_bytes(path, (json.dumps(self.manifest, indent=2, sort_keys=True) + "\n").encode())

    def path(self, name: str) -> Path:
        return self.root / f"{name}.png"

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def _counts(self) -> tuple[dict, int]:
        path = self.root / COUNTS
        try:
            st = path.stat()
        except FileNotFoundError:
            return {}, -1
        cached = getattr(self, "_counts_cache", None)
        if cached is None or cached[1] != st.st_mtime_ns:
            try:
                counts = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                counts = {}
            cached = (counts, st.st_mtime_ns)
            self._counts_cache = cached
        return cached

    def num_regions(self, name: str) -> int:
        """Region count of the cached map ``name`` without decoding it when possible.

        Uses ``region_counts.json`` (written by ``mulact-superpixels``) for maps not modified
        after it; otherwise decodes the PNG. ``FileNotFoundError`` if the map is absent.
        """
        counts, counts_mtime = self._counts()
        st = self.path(name).stat()
        if name in counts and st.st_mtime_ns <= counts_mtime:
            return int(counts[name])
        return int(self.load(name).max()) + 1

    def write_counts(self, counts: dict[str, int]) -> None:
        """Atomically record ``{name: R}`` for :meth:`num_regions` (merged with the current file)."""
        merged = dict(self._counts()[0])
        merged.update({k: int(v) for k, v in counts.items()})
        _atomic_write_bytes(self.root / COUNTS, json.dumps(merged, sort_keys=True).encode())

    # -- integrity ------------------------------------------------------------------------
    def _hashes(self) -> dict[str, str]:
        """``{name: sha256}`` from ``hashes.log``, re-read only when the log changed."""
        path = self.root / HASHES
        try:
            st = path.stat()
        except FileNotFoundError:
            return {}
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._hash_state[0] != key:
            table = {}
            with open(path, "rb") as fh:
                for line in fh.read().decode("utf-8", "replace").splitlines():
                    h, sep, name = line.partition("  ")
                    if sep and len(h) == 64:  # a torn last line of a killed writer is skipped
                        table[name] = h
            self._hash_state = (key, table)
        return self._hash_state[1]

    def _record(self, name: str, h: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # one short O_APPEND write per record: atomic between concurrent writers on a local disk
        fd = os.open(self.root / HASHES, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, f"{h}  {name}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def load(self, name: str) -> np.ndarray:
        """The cached map (``int32 (H, W)``), verified against ``hashes.log``.

        ``FileNotFoundError`` if absent; :class:`~mulact.runstore.DamagedFileError` (naming the
        file) if it is not the map recorded for ``name`` or cannot be decoded.
        """
        path = self.path(name)
        with open(path, "rb") as fh:
            data = fh.read()
        h = digest(data)
        want = self._hashes().get(name)
        if want is None:
            if not self._legacy:
                raise DamagedFileError(str(path), f"is not recorded in {self.root / HASHES}")
            try:
                self._record(name, h)  # a cache from before hashes.log: trusted as it is
            except OSError:
                pass  # a read-only cache: trusted without a record
        elif want != h:
            raise DamagedFileError(str(path), "is not the map recorded for this image (truncated, overwritten, "
                                              "or replaced by another image's map)")
        try:
            return decode_png16(data, path)
        except ValueError as exc:
            raise DamagedFileError(str(path), str(exc)) from None

    def check(self, name: str) -> bool:
        """True if the map of ``name`` exists and is the recorded one (warns if damaged)."""
        try:
            self.load(name)
            return True
        except FileNotFoundError:
            return False
        except DamagedFileError as exc:
            log.warning("%s; recomputing it", exc)
            return False

    def save(self, name: str, labels: np.ndarray) -> None:
        self.write_manifest()
        with writing(self.root):
            atomic_write(self.path(name), encode_png16(labels), record=False,
                         before_rename=lambda h: self._record(name, h))

    def compute(self, image: np.ndarray) -> np.ndarray:
        return compute_superpixels(image, self.method, self.region_size, **self.params)

    def get(self, name: str, image_loader: Callable[[], np.ndarray]) -> np.ndarray:
        """Load the cached map, or compute it from ``image_loader()`` (RGB uint8) and cache it."""
        try:
            return self.load(name)
        except FileNotFoundError:
            pass
        except DamagedFileError as exc:
            log.warning("%s; recomputing it", exc)
        labels = self.compute(image_loader())
        self.save(name, labels)
        return labels

    def adjacency(self, name: str):
        """8-connected region adjacency ``(E, 2)`` int64 of the cached map ``name``.

        Memoised per process by the map's content hash, so a recomputed map gets a fresh
        graph; the map is verified like :meth:`load` (same errors); see
        :func:`mulact.ops.region_adjacency`.
        """
        labels = self.load(name)
        return _adjacency_of_map(self._hashes()[name], labels)


def region_size_check(pixels: int, regions: int, region_size: int, where: str) -> tuple[float, str | None]:
    """Mean delivered region side ``sqrt(pixels / regions)`` and a warning when it is more than
    :data:`REGION_SIZE_WARN` off ``region_size`` (None otherwise)."""
    side = math.sqrt(pixels / regions) if regions else math.nan
    warn = None
    if regions and abs(side / region_size - 1) > REGION_SIZE_WARN:
        warn = (f"superpixels of {where} average {side:.1f} px per side but region_size {region_size} was requested "
                f"({100 * (side / region_size - 1):+.0f} %)")
    return side, warn


def _png_size(path) -> tuple[int, int]:
    with open(path, "rb") as fh:
        head = fh.read(24)
    if len(head) < 24 or head[12:16] != b"IHDR":
        raise ValueError(f"superpixels: {path} is not a PNG file")
    return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")


_ADJACENCY: dict = {}


def _adjacency_of_map(h: str, labels: np.ndarray):
    import torch

    from mulact.ops import region_adjacency

    if h not in _ADJACENCY:
        if len(_ADJACENCY) >= 8192:
            _ADJACENCY.pop(next(iter(_ADJACENCY)))
        _ADJACENCY[h] = region_adjacency(torch.from_numpy(labels)[None], int(labels.max()) + 1)[0]
    return _ADJACENCY[h]
