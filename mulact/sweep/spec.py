"""Sweep files: parsing and validation, before anything runs.

A sweep file (YAML) names a base preset, base options, seeds, a baseline and variants::

    name: labels                      # optional; default: the file's stem
    description: multi-class vs dominant labels, PixBal, equal clicks
    preset: demo                      # a mulact-train preset (optional: as mulact-train)
    base: {iterations: 120}           # mulact-train options common to every variant
    seeds: [0, 1, 2]
    baseline: dominant                # paired differences are taken against this variant
    variants:
      dominant: {labeling: dominant, loss: dominant, stage2: false}
      multi: {}

Option names are those of ``mulact-train --help`` (``-`` or ``_``). Every (variant, seed) is
resolved with :func:`mulact.config.resolve_config` here, so an unknown option, a bad value, a
duplicate variant or option name, a missing seed list or an unknown baseline is reported with
the file and the variant before a single run starts.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass, field
from importlib import resources

import yaml

from mulact import strict_yaml
from mulact.config import TrainConfig, resolve_config

__all__ = ["SweepFileError", "SweepSpec", "builtin_sweeps", "load_sweep", "parse_sweep", "SWEEP_CONTROLLED"]

# Set by the sweep for each run; a sweep file may not set them.
SWEEP_CONTROLLED = ("seed", "run_dir", "name")
_TOP_KEYS = ("name", "description", "preset", "base", "seeds", "baseline", "variants")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


class SweepFileError(ValueError):
    """A sweep file that cannot be run; the message names the file and what is wrong."""


@dataclass
class SweepSpec:
    """A validated sweep: ``configs[(variant, seed)]`` are the resolved ``TrainConfig`` dicts
    (without the run directory, which the runner sets)."""

    name: str
    source: str
    preset: str | None
    base: dict
    seeds: list[int]
    baseline: str
    variants: dict[str, dict]
    description: str = ""
    configs: dict = field(default_factory=dict, repr=False)

    def overrides(self, variant: str, seed: int) -> dict:
        """mulact-train options of one run (before the run directory is added)."""
        return {**self.base, **self.variants[variant], "seed": seed, "name": f"{self.name}-{variant}-seed{seed}"}

    def to_dict(self) -> dict:
        """The sweep as written to ``<sweep dir>/sweep.yaml``."""
        return {"name": self.name, "description": self.description, "preset": self.preset, "base": self.base,
                "seeds": list(self.seeds), "baseline": self.baseline, "variants": self.variants}


def builtin_sweeps() -> dict[str, str]:
    """``{name: path}`` of the sweep files shipped with mulact (``mulact/sweep/builtin``)."""
    root = resources.files("mulact.sweep") / "builtin"
    return {p.name[:-5]: str(p) for p in sorted(root.iterdir(), key=lambda p: p.name) if p.name.endswith(".yaml")}


def load_sweep(file_or_name: str) -> SweepSpec:
    """Parse and validate a sweep file, or a built-in sweep given by name."""
    path = file_or_name
    if not os.path.isfile(path):
        builtin = builtin_sweeps()
        if file_or_name not in builtin:
            raise SweepFileError(f"sweep: {file_or_name!r} is neither a file nor a built-in sweep "
                                 f"(built-in: {', '.join(builtin)})")
        path = builtin[file_or_name]
    with open(path) as fh:
        text = fh.read()
    return parse_sweep(text, source=path)


def parse_sweep(text: str, source: str = "<sweep>") -> SweepSpec:
    def fail(msg):
        raise SweepFileError(f"sweep file {source!r}: {msg}")

    try:
        data = strict_yaml.load(text)
    except yaml.YAMLError as err:
        fail(f"not valid YAML: {err}")
    if not isinstance(data, dict):
        fail("expected a mapping with keys " + ", ".join(_TOP_KEYS))
    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        fail(f"unknown key(s) {unknown}; expected some of {list(_TOP_KEYS)}")

    name = data.get("name") or os.path.splitext(os.path.basename(source))[0]
    if not isinstance(name, str) or not _NAME_RE.match(name):
        fail(f"name: expected letters, digits, '.', '_', '+' or '-', got {name!r}")
    preset = data.get("preset")
    if preset is not None and not isinstance(preset, str):
        fail(f"preset: expected a preset name, got {preset!r}")

    seeds = data.get("seeds")
    if seeds is None or seeds == []:
        fail("seeds: expected a non-empty list of integer seeds, e.g. seeds: [0, 1, 2]")
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                              for s in seeds):
        fail(f"seeds: expected a list of non-negative integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        fail(f"seeds: duplicate seed in {seeds}")

    base = _options(data.get("base"), "base", fail)
    variants_raw = data.get("variants")
    if not isinstance(variants_raw, dict) or not variants_raw:
        fail("variants: expected a mapping of variant name -> mulact-train options (at least one)")
    variants = {}
    for vname, opts in variants_raw.items():
        if not isinstance(vname, str) or not _NAME_RE.match(vname):
            fail(f"variants: name {vname!r} must be letters, digits, '.', '_', '+' or '-' (it names a directory)")
        variants[vname] = _options(opts, f"variant {vname!r}", fail)

    baseline = data.get("baseline", next(iter(variants)))
    if baseline not in variants:
        fail(f"baseline: {baseline!r} is not a variant; expected one of {list(variants)}")

    spec = SweepSpec(name=name, source=source, preset=preset, base=base, seeds=list(seeds), baseline=baseline,
                     variants=variants, description=str(data.get("description") or ""))
    by_config: dict[str, str] = {}
    for vname in variants:
        for seed in spec.seeds:
            try:
                cfg = resolve_config(preset, None, spec.overrides(vname, seed))
            except (ValueError, KeyError, TypeError) as err:
                fail(f"variant {vname!r} (seed {seed}): {err}")
            d = cfg.to_dict()
            spec.configs[(vname, seed)] = d
        key = repr(sorted((k, v) for k, v in d.items() if k not in SWEEP_CONTROLLED))
        if key in by_config:
            fail(f"variants {by_config[key]!r} and {vname!r} resolve to the same configuration")
        by_config[key] = vname
    return spec


def _options(raw, where: str, fail) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        fail(f"{where}: expected a mapping of mulact-train option: value, got {raw!r}")
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    out: dict = {}
    for key, value in raw.items():
        norm = str(key).replace("-", "_")
        if norm in SWEEP_CONTROLLED:
            fail(f"{where}: option {key!r} is set by the sweep for every run (seeds go in 'seeds')")
        if norm not in known:
            close = difflib.get_close_matches(norm, known, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            fail(f"{where}: unknown option {key!r}{hint}; see mulact-train --help")
        if norm in out:
            fail(f"{where}: option {norm!r} given twice ('-' and '_' spellings are the same option)")
        out[norm] = value
    return out
