"""Where mulact keeps generated data: ``$MULACT_CACHE`` or ``~/.cache/mulact``.

``<cache>/demo/...`` holds the demo dataset (:mod:`mulact.data.demo`),
``<cache>/superpixels/<dataset>-<hash>/<method>-<size>/<split>/`` the default superpixel
caches (:func:`default_superpixel_dir`), so read-only dataset directories work unchanged.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of mulact's caches: ``$MULACT_CACHE`` or ``~/.cache/mulact``."""
    env = os.environ.get("MULACT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mulact"


def default_superpixel_dir(dataset_root: str | os.PathLike, split: str, method: str, region_size: int) -> Path:
    """Default cache directory of the superpixel maps of one dataset split.

    Keyed by the dataset directory's name plus a hash of its absolute path, so two datasets
    with the same folder name never share maps.
    """
    root = Path(dataset_root).expanduser().resolve()
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:10]
    return cache_dir() / "superpixels" / f"{root.name}-{digest}" / f"{method}-{region_size}" / split
