"""Damaged data found before any work, with every bad file named at once.

:func:`check_dataset` reads every image (and, where the run reads them, every label) of the
images a run will use, in one pass: the file decodes completely (a truncated, empty or
random-bytes file is refused, also where OpenCV would hand back a half-grey image), the label
converts to classes or void (a value that is no class is refused, naming the value), and the
label has the size of its image. All problems are collected and raised together as
:class:`DataCheckError`, one line per file. Greyscale images are accepted: the loaders
convert them to RGB.

Files that passed are remembered in ``<cache>/datachecks/<dataset>-<hash>.json`` by path,
size and modification time (written with :func:`mulact.runstore.atomic_write`), so a rerun
reads only new or changed files. A progress bar appears from :data:`PROGRESS_FROM` files on.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from mulact.runstore import atomic_write

from .cache import cache_dir

CHECK_VERSION = 1  # bump when a check is added, so remembered passes are checked again
PROGRESS_FROM = 50
MAX_LISTED = 50


class DataCheckError(ValueError):
    """Some files of a dataset are unusable; ``problems`` is ``[(path, reason), ...]``."""

    def __init__(self, dataset: str, problems: list[tuple[str, str]]):
        self.problems = problems
        lines = [f"  {p}: {why}" for p, why in problems[:MAX_LISTED]]
        if len(problems) > MAX_LISTED:
            lines.append(f"  ... and {len(problems) - MAX_LISTED} more")
        super().__init__(f"{dataset}: {len(problems)} unusable file(s), nothing was computed; fix or remove "
                         "them and run again:\n" + "\n".join(lines))


def _decode(path: Path) -> tuple[int, int]:
    """``(H, W)`` of an image file decoded in full; ``OSError`` if it does not decode."""
    if path.stat().st_size == 0:
        raise OSError("empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            im.load()  # decodes every pixel: a truncated file raises here
            return im.size[1], im.size[0]
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        why = str(exc).replace(f" '{path}'", "").replace(f" {path}", "")  # the report names the file already
        raise OSError(f"not a readable image ({why})") from None


def _stamp(path: Path | None):
    if path is None:
        return None
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _check_one(ds, i: int, with_labels: bool) -> list[tuple[str, str]]:
    s = ds.samples[i]
    problems = []
    try:
        size = _decode(s.image)
    except OSError as exc:
        return [(str(s.image), str(exc))]
    if not with_labels or s.label is None:
        return problems
    try:
        _decode(s.label)
        label = ds.load_label(i)
    except (OSError, ValueError) as exc:
        msg = str(exc).replace(f" ({s.label})", "").replace(f" {s.label}", "")
        return [(str(s.label), msg)]
    if tuple(label.shape) != size:
        problems.append((str(s.label), f"label is {label.shape[0]}x{label.shape[1]} (HxW) but its image {s.image} "
                                       f"is {size[0]}x{size[1]}"))
    return problems


def _memo_path(ds) -> Path:
    root = str(Path(ds.root).expanduser().resolve())
    key = hashlib.sha1(root.encode()).hexdigest()[:10]
    return cache_dir() / "datachecks" / f"{ds.name}-{Path(root).name}-{key}.json"


def _load_memo(path: Path) -> dict:
    try:
        memo = json.loads(path.read_text())
        return memo["files"] if memo.get("version") == CHECK_VERSION else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # absent or damaged: everything is checked again


def check_dataset(ds, indices=None, *, labels: bool = True, progress: bool = True, workers: int | None = None) -> int:
    """Check the images ``indices`` (default: all) of ``ds`` and, with ``labels``, their labels.

    Returns the number of images read this time (0 when all were remembered as good);
    raises :class:`DataCheckError` listing every bad file.
    """
    return check_datasets([(ds, indices, labels)], progress=progress, workers=workers)


def check_datasets(items, *, progress: bool = True, workers: int | None = None) -> int:
    """:func:`check_dataset` over several ``(dataset, indices or None, labels)`` at once: the
    error lists the bad files of all of them."""
    problems: list[tuple[str, str]] = []
    names, read = [], 0
    for ds, indices, labels in items:
        found, n = _check(ds, indices, labels, progress, workers or min(8, os.cpu_count() or 1))
        problems += found
        read += n
        if found:
            names.append(f"{ds.name} {ds.split}")
    if problems:
        raise DataCheckError(", ".join(names), problems)
    return read


def _check(ds, indices, labels: bool, progress: bool, workers: int) -> tuple[list[tuple[str, str]], int]:
    indices = range(len(ds)) if indices is None else [int(i) for i in indices]
    memo_path = _memo_path(ds)
    memo = _load_memo(memo_path)
    todo, keys, problems = [], {}, []
    for i in indices:
        s = ds.samples[i]
        key = f"{s.image}|{s.label if labels else ''}"
        try:
            stamp = [_stamp(s.image), _stamp(s.label if labels else None)]
        except OSError as exc:  # vanished since the dataset was listed
            problems.append((str(s.image), f"cannot be read ({exc.strerror or exc})"))
            continue
        keys[i] = (key, stamp)
        if memo.get(key) != stamp:
            todo.append(i)
    if not todo:
        return problems, 0
    bar = tqdm(total=len(todo), desc=f"checking {ds.name} {ds.split}", unit="img",
               disable=not progress or len(todo) < PROGRESS_FROM, leave=False)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # the decoders release the GIL
        for i, found in zip(todo, pool.map(lambda j: _check_one(ds, j, labels), todo)):
            if found:
                problems.extend(found)
            else:
                key, stamp = keys[i]
                memo[key] = stamp
            bar.update(1)
    bar.close()
    try:
        atomic_write(memo_path, json.dumps({"version": CHECK_VERSION, "files": memo}).encode(), record=False)
    except OSError:
        pass  # an unwritable cache only costs the next run another pass
    return problems, len(todo)
