"""The full-supervision reference of a run, and the paper's Table 1 figure measured against it.

The paper reports every active-learning curve against full supervision: "the clicks needed to
reach 95 % of the fully-supervised mIoU" (Table 1). In mulact the reference is a run of its
own, ``mulact-train --labeling full`` (README, "Full supervision"): round 1's stage-1 model,
initial weights, schedule, batch stream and augmentation, trained on every pixel of the train
split with plain cross-entropy (void ignored). Only the labels differ from a round's stage 1,
so "% of the reference" measures what the labels cost, not what training could do.

``--reference auto`` finds that run for the configuration at hand in
``$MULACT_CACHE/references/`` and trains it there the first time, so every run that shares the
reference's inputs — the variants of a sweep, for one seed — trains it once. Which options
are its inputs: every option except :data:`NOT_REFERENCE_INPUTS` (read only by the rounds)
and the runtime options a rerun may change; the seed is an input, so each seed has its own
reference (its initial weights and batch stream are those of the seed's round 1). The cache
key also holds :data:`TRAINING_REVISION`, so a reference trained by older code that trained
differently is not reused.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time

from mulact.config import TrainConfig
from mulact.runstore import LockedError, RunDir

__all__ = ["NOT_REFERENCE_INPUTS", "TRAINING_REVISION", "clicks_to_fraction", "reference_config", "reference_dir", "reference_key",
           "reference_of", "read_reference"]

# Options that only the AL rounds read; the reference's configuration holds their defaults.
# Any option not listed (including options added later) is an input: a new option can only
# make sharing rarer, never wrong.
NOT_REFERENCE_INPUTS = frozenset({
    "name", "run_dir", "rounds", "budget", "acquisition", "labeling", "nu", "oracle", "expected_classes_prior",
    "loss", "lambda_ce", "lambda_mp", "lambda_pp", "stage2", "stage2_iterations", "lr_stage2", "expand", "pseudo",
    "reference", "checkpoint_interval",
})


# What a reference run computes from its options: bump it with any change to mulact that alters
# the model a configuration trains (model, losses, schedule, augmentation, data pipeline), so
# that ``--reference auto`` trains a new reference instead of reusing one from older code.
TRAINING_REVISION = 1


def _runtime_options() -> set:
    from .session import RUNTIME_OPTIONS

    return set(RUNTIME_OPTIONS)


def reference_key(options: dict) -> dict:
    """The options of a configuration (a ``TrainConfig`` dict) that its reference depends on."""
    free = NOT_REFERENCE_INPUTS | _runtime_options()
    return {k: v for k, v in options.items() if k not in free}


def reference_dir(cfg: TrainConfig) -> str:
    """Where ``--reference auto`` keeps the reference of ``cfg``: one directory per set of inputs."""
    from mulact.data.cache import cache_dir

    key = json.dumps({"training_revision": TRAINING_REVISION, **reference_key(cfg.to_dict())}, sort_keys=True,
                     default=str)
    h = hashlib.sha256(key.encode()).hexdigest()[:12]
    return str(cache_dir() / "references" / f"{cfg.dataset}-seed{cfg.seed}-{h}")


def reference_config(cfg: TrainConfig) -> TrainConfig:
    """The ``--labeling full`` configuration whose run is the reference of ``cfg``."""
    defaults = TrainConfig()
    normal = {k: getattr(defaults, k) for k in NOT_REFERENCE_INPUTS}
    normal.update(labeling="full", rounds=1, stage2=False, reference="off", oracle="simulated",
                  name=f"reference-{cfg.dataset}-seed{cfg.seed}", run_dir=reference_dir(cfg))
    return dataclasses.replace(cfg, **normal)


def read_reference(root: str, what: str = "--reference") -> dict:
    """The reference held by the finished ``--labeling full`` run in ``root``."""
    run = RunDir.existing(root, what=what)
    try:
        saved = run.read_config()
        if saved.get("labeling") != "full":
            raise ValueError(f"{what}: {root!r} holds a --labeling {saved.get('labeling')} run; expected the "
                             f"directory of a --labeling full run")
        rounds = run.recorded_rounds()
    finally:
        run.close()
    if not rounds:
        raise ValueError(f"{what}: the --labeling full run in {root!r} has not finished; run "
                         f"mulact-train --config {os.path.join(root, 'config.yaml')} first")
    m = rounds[0]
    return {"miou": m["miou"], "run_dir": run.root, "seconds": m.get("stage1_seconds"),
            "iterations": saved.get("iterations"), "percent_full_cost": m.get("percent_full_cost"),
            "miou_measured": m.get("miou_measured", True)}


def _check_same_inputs(cfg: TrainConfig, root: str) -> None:
    run = RunDir.existing(root, what="--reference")
    try:
        saved = run.read_config()
    finally:
        run.close()
    mine = reference_key(cfg.to_dict())
    defaults = TrainConfig().to_dict()
    diff = sorted(k for k in mine if saved.get(k, defaults[k]) != mine[k])
    if diff:
        detail = ", ".join(f"{k}: {saved.get(k, defaults[k])!r} here, {mine[k]!r} in this run" for k in diff[:5])
        raise ValueError(f"--reference {root!r}: that run was trained under other options than this run's "
                         f"stage 1 ({detail}); it is not this run's reference")


def reference_of(cfg: TrainConfig, echo=print, poll_s: float = 10.0) -> dict | None:
    """The reference of ``cfg`` (None for ``--reference off``): trained first under ``auto``
    when it is not there yet. Another process training the same reference holds its run
    directory's lock; this one then waits for it (a message every ``poll_s`` seconds)."""
    if cfg.reference == "off":
        return None
    if cfg.reference != "auto":
        _check_same_inputs(cfg, cfg.reference)
        return read_reference(cfg.reference)
    from .loop import run_experiment

    ref = reference_config(cfg)
    root = ref.run_dir
    try:
        return read_reference(root, what="reference")
    except (FileNotFoundError, ValueError):
        pass  # not trained (or not finished) yet
    echo(f"reference: training the full-supervision reference of this configuration in {root}")
    while True:
        try:
            run_experiment(ref, echo=lambda *a, **k: echo("reference:", *a, **k))
            break
        except LockedError as err:
            echo(f"reference: {err}; waiting for it")
            time.sleep(poll_s)
    return read_reference(root, what="reference")


def clicks_to_fraction(rounds: list[dict], reference_miou, fraction: float = 0.95) -> dict:
    """The paper's Table 1 figure: the clicks a run needs to reach ``fraction`` of the reference.

    ``rounds`` are a run's records (``round``, ``cumulative_clicks``, ``percent_full_cost``,
    ``miou``) in order. The first round whose mIoU reaches the target gives the answer; past
    round 1 it is interpolated linearly between that round and the one before (in clicks and
    in % of the full cost). Reached in round 1 the answer is round 1's clicks, an upper bound
    (``"bound": "at most"``), since nothing was measured below. ``reached`` False when no
    round reaches it (or mIoU was not measured).
    """
    if reference_miou is None or not math.isfinite(reference_miou):
        return {"fraction": fraction, "target_miou": None, "reached": False, "reason": "no reference mIoU"}
    target = fraction * reference_miou
    out = {"fraction": fraction, "target_miou": target, "reached": False}
    prev = None
    for m in rounds:
        miou = m.get("miou")
        if miou is None:
            return {**out, "reason": "mIoU not measured"}
        if miou >= target:
            if prev is None:
                return {**out, "reached": True, "round": m["round"], "bound": "at most",
                        "clicks": float(m["cumulative_clicks"]), "percent_full_cost": m.get("percent_full_cost")}
            w = (target - prev["miou"]) / (miou - prev["miou"])

            def lerp(a, b):
                return None if a is None or b is None else a + w * (b - a)

            return {**out, "reached": True, "round": m["round"], "bound": "interpolated",
                    "clicks": lerp(float(prev["cumulative_clicks"]), float(m["cumulative_clicks"])),
                    "percent_full_cost": lerp(prev.get("percent_full_cost"), m.get("percent_full_cost"))}
        prev = m
    return out
