"""Reading the sweep's own files (``sweep.yaml``, ``shared.json``); they are written with
:func:`mulact.runstore.atomic_write` like every file mulact reads back."""
from __future__ import annotations

import json
import os

__all__ = ["read_json"]


def read_json(path: str, default=None):
    """The JSON in ``path``, or ``default`` ({} when not given) when there is no such file."""
    if not os.path.isfile(path):
        return {} if default is None else default
    with open(path) as fh:
        return json.load(fh)
