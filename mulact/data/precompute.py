"""``mulact-superpixels``: precompute and cache the superpixel maps of a dataset split.

::

    mulact-superpixels --dataset cityscapes --root /data/cityscapes --split train --split val \\
        --method seeds --region-size 32 --workers 8
    mulact-superpixels --dataset demo                        # the built-in demo dataset

Maps are computed in parallel worker processes (``concurrent.futures.ProcessPoolExecutor``)
with a progress bar and written atomically (temporary file + ``os.replace``) into the same
cache the datasets read (default :func:`~mulact.data.cache.default_superpixel_dir`, or
``--out DIR/<split>``). The command is resumable: maps already in the cache are skipped, so
killing it and starting it again finishes the job. At the end ``region_counts.json`` records
every map's region count (see :meth:`SuperpixelCache.num_regions`). A cache directory whose ``manifest.json``
records other parameters is refused (exit status 2 and a message naming both parameter sets);
pass another ``--out`` or delete the directory. A missing or malformed dataset directory is
reported with the path and the layout expected there (exit status 2).

One instance per cache directory: a second ``mulact-superpixels`` on the same output directory
is refused at once (exit status 2, naming the PID and host of the one running); the lock of a
killed instance is taken over by the next start, which also removes the temporary files the
killed one left. Workers die with the parent (``kill -9`` of the command leaves no worker).
Existing maps are checked against ``hashes.log`` and recomputed when damaged.
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from tqdm import tqdm

from mulact.runstore import DirLock, LockedError, die_with_parent, remove_temp_files

from . import DATASETS, build_dataset
from .base import DatasetNotFoundError, read_rgb
from .checks import DataCheckError, check_datasets
from .superpixels import METHODS, CacheMismatchError, SuperpixelCache

# Peak memory of one worker process (measured at 1024x2048 and 512x1024, 2026-11-30): the
# interpreter with mulact and torch loaded, plus what the method allocates per pixel. OpenCV's
# SEEDS keeps its per-level histograms: 2.63 GiB extra for a 2-Mpixel Cityscapes image, linear in
# the pixel count. skimage's SLIC works on float64 Lab copies (~100 B/pixel).
WORKER_BASE_BYTES = 0.7 * 2**30
BYTES_PER_PIXEL = {"seeds": 1350, "slic": 100, "grid": 8}


def available_memory() -> int | None:
    """``MemAvailable`` of /proc/meminfo in bytes (None where unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def default_workers(pixels: int, method: str, cpus: int, memory: int | None) -> tuple[int, str]:
    """Worker count for maps of ``pixels`` pixels: one per core, fewer when that many would not
    fit in 80 % of ``memory`` (SEEDS at Cityscapes size needs ~3.3 GiB per worker: 16 at once
    would take 53 GiB). Returns ``(workers, why)``."""
    cpus = max(1, cpus)
    if memory is None:
        return cpus, f"{cpus} cores (available memory unknown)"
    per_worker = WORKER_BASE_BYTES + BYTES_PER_PIXEL.get(method, BYTES_PER_PIXEL["seeds"]) * pixels
    fit = max(1, int(0.8 * memory // per_worker))
    if fit < cpus:
        return fit, (f"{fit} of {cpus} cores: {method} needs ~{per_worker / 2**30:.1f} GiB per worker and "
                     f"{memory / 2**30:.1f} GiB are available")
    return cpus, f"{cpus} cores"


def _work(job: tuple[str, str, str, int, dict, str]) -> tuple[str, int]:
    image_path, cache_root, method, region_size, params, name = job
    cache = SuperpixelCache(cache_root, method, region_size, **params)
    labels = cache.compute(read_rgb(Path(image_path)))
    cache.save(name, labels)
    return name, int(labels.max()) + 1


def _parse_param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--param expects KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _remove_stale_temps(root: Path) -> None:
    if root.is_dir():
        for tmp in root.rglob(".*.tmp"):  # the temporary files of older mulact versions
            if not tmp.name.startswith(".tmp-"):
                tmp.unlink(missing_ok=True)
        # a training run may be writing a map here right now (it does not take the lock)
        remove_temp_files(root, wait_for_writers=True)


def precompute_split(ds, workers: int | None = None, progress: bool = True) -> tuple[int, int]:
    """Compute the missing or damaged maps of one dataset; return ``(computed, skipped)``.

    ``workers=None``: one per core, capped by memory (:func:`default_workers`).

    Holds the cache directory's lock (:class:`mulact.runstore.DirLock`) throughout;
    :class:`mulact.runstore.LockedError` if another live process holds it.
    """
    with DirLock(ds.superpixels.root, "superpixel directory"):
        return _precompute_locked(ds, workers, progress)


def _precompute_locked(ds, workers: int | None, progress: bool) -> tuple[int, int]:
    cache = ds.superpixels
    cache.write_manifest()
    _remove_stale_temps(cache.root)
    todo = [s for s in ds.samples if not cache.check(s.name)]
    skipped = len(ds.samples) - len(todo)
    jobs = [(str(s.image), str(cache.root), cache.method, cache.region_size, cache.params, s.name) for s in todo]
    if workers is None:
        pixels = 0
        if todo:
            from PIL import Image

            with Image.open(todo[0].image) as im:  # the header only
                pixels = im.size[0] * im.size[1]
        workers, why = default_workers(pixels, cache.method, os.cpu_count() or 1, available_memory())
        if todo and progress:
            print(f"superpixels {ds.split}: {workers} worker process(es): {why}", file=sys.stderr)
    bar = tqdm(total=len(ds.samples), initial=skipped, desc=f"superpixels {ds.split}", unit="img", disable=not progress)
    counts: dict[str, int] = {}
    try:
        if workers <= 1:
            for job in jobs:
                name, r = _work(job)
                counts[name] = r
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent,
                                     initargs=(os.getpid(),)) as pool:
                pending = set()
                it = iter(jobs)
                # bounded submission keeps memory flat on large splits
                for job in it:
                    pending.add(pool.submit(_work, job))
                    if len(pending) >= 4 * workers:
                        break
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        name, r = fut.result()
                        counts[name] = r
                        bar.update(1)
                        nxt = next(it, None)
                        if nxt is not None:
                            pending.add(pool.submit(_work, nxt))
    finally:
        bar.close()
        # record what was computed, even after an error or Ctrl-C, so a rerun decodes less
        if counts:
            cache.write_counts(counts)
    missing = [s.name for s in ds.samples if s.name not in counts]
    if missing:  # maps from earlier runs: fills in the counts a killed run could not record
        cache.write_counts({name: cache.num_regions(name) for name in missing})
    return len(todo), skipped


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mulact-superpixels", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, default="demo")
    p.add_argument("--root", default=None, help="dataset directory (demo: cache root, default $MULACT_CACHE/demo)")
    p.add_argument("--split", action="append", default=None, help="split to process (repeatable; default train and val)")
    p.add_argument("--method", choices=METHODS, default="seeds")
    p.add_argument("--region-size", type=int, default=32, help="nominal region side in pixels (16/32/64)")
    p.add_argument("--param", action="append", type=_parse_param, default=[], metavar="KEY=VALUE",
                   help="override a method parameter, e.g. iterations=4 or compactness=20")
    p.add_argument("--out", default=None, help="cache root; maps go to OUT/<split>/ (default: the datasets' cache)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (1: in-process; default: one per core, fewer when their memory would not "
                        "fit: SEEDS needs ~3.3 GiB per worker at 1024x2048)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.dataset != "demo" and args.root is None:
        print(f"mulact-superpixels: error: --root is required for --dataset {args.dataset}", file=sys.stderr)
        return 2
    if args.workers is not None and args.workers < 1:
        print(f"mulact-superpixels: error: --workers {args.workers}: expected at least 1", file=sys.stderr)
        return 2
    splits = args.split or ["train", "val"]
    params = dict(args.param)
    datasets = []
    try:
        for split in splits:
            # a folder dataset's masks are optional (README, "Your own images")
            kwargs = {"superpixels": args.method, "region_size": args.region_size, "superpixel_params": params,
                      "require_labels": args.dataset != "folder"}
            if args.out is not None:
                kwargs["superpixel_dir"] = Path(args.out) / split
            datasets.append(build_dataset(args.dataset, args.root, split, **kwargs))
        # every image first, so a damaged one is reported before hours of maps (all at once)
        check_datasets([(ds, None, False) for ds in datasets], progress=not args.no_progress)
    except (DatasetNotFoundError, CacheMismatchError, DataCheckError, ValueError) as exc:
        print(f"mulact-superpixels: error: {exc}", file=sys.stderr)
        return 2
    for split, ds in zip(splits, datasets):
        try:
            computed, skipped = precompute_split(ds, args.workers, progress=not args.no_progress)
        except (DatasetNotFoundError, CacheMismatchError, LockedError) as exc:
            print(f"mulact-superpixels: error: {exc}", file=sys.stderr)
            return 2
        print(f"{split}: {computed} computed, {skipped} already cached -> {ds.superpixels.root}")
        side, warn = ds.superpixels.region_size_report(ds.names())
        print(f"{split}: mean delivered region size {side:.1f} px (requested {args.region_size})")
        if warn:
            print(f"mulact-superpixels: warning: {warn}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
