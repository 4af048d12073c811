"""What runs of one sweep share, and how a fresh run directory is seeded with it.

Only work that the receiving run would compute *from exactly the same inputs with the same
code* is shared; the receiving run then treats it as its own output (``mulact-train`` skips a
step whose output exists). Two artifacts qualify:

**The oracle table** (``oracle.npz``). The loop builds it from the train split (dataset,
its location, superpixel method/size/location, demo generator options, ``max_train_images``)
and the boundary ``trim``, with integer ops that give identical results on every backend
(README, "Conventions"); it is loaded unchanged when present. Runs whose configurations agree
on every option *except* those listed in :data:`NOT_ORACLE_INPUTS` (training, model,
acquisition, stage-2 and run options, which the oracle never reads) get a copy of the first
such run's table. The dataset and superpixel maps themselves are already shared through
mulact's cache.

**Round 1: its selection and its stage-1 model** (``pool.npz`` truncated to round 1,
``selections/round_01.json``, ``round_01/stage1.pt``). Round 1 always selects at random from
the seed, the oracle, the budget and the click costs (the acquisition function and ν are not
read), and its stage-1 model is trained from those labels, the seed and the stage-1 options.
Runs that agree on everything except :data:`NOT_ROUND1_STAGE1_INPUTS` therefore compute the
same round 1 up to stage 1: the acquisition variants (all select round 1 at random) and the
stage-2 variants (stage-2 options are read only after stage 1) of the same seed.

Nothing later is shared. From round 2 on, the selection uses the previous round's *final*
model — the stage-2 model when stage 2 is on — so a stage-1-only run and a stage-2 run, or two
stage-2 variants, select different regions from round 2 and their stage-1 results differ.

Float reductions of the CPU kernels are reproducible at a fixed thread count (README): a
shared artifact is bitwise what the receiver would have computed when both run with the same
number of threads (as within one ``mulact-sweep`` invocation); with another thread count it
is still the output of the same computation, differing only in float summation order — the
same latitude a resumed ``mulact-train`` run has.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

from mulact.runstore import RunDir, atomic_write, publish_dir

__all__ = ["NOT_ORACLE_INPUTS", "NOT_ROUND1_STAGE1_INPUTS", "oracle_key", "round1_key",
           "oracle_donor_ready", "round1_donor_ready", "seed_run_dir"]

# Options never read while building the oracle table (see the module docstring). Any option
# not listed here — including options added to mulact later — is treated as an input, so a new
# option can only make sharing rarer, never wrong.
NOT_ORACLE_INPUTS = frozenset({
    "name", "run_dir", "seed", "device", "amp", "num_workers", "max_val_images", "crop_size", "scale_min",
    "scale_max", "hflip", "encoder", "encoder_weights", "decoder_channels", "temperature", "rounds", "budget",
    "acquisition", "labeling", "nu", "acquisition_batch_size", "loss", "lambda_ce", "lambda_mp", "lambda_pp",
    "iterations", "batch_size", "lr", "encoder_lr_mult", "weight_decay", "poly_power", "eval_interval",
    "checkpoint_interval", "eval_batch_size", "stage2", "stage2_iterations", "lr_stage2", "expand", "pseudo",
    "reference",
})

# Options not read by round 1 up to and including its stage-1 training: round 1 selects at
# random whatever the acquisition function; the number of rounds only bounds the loop; the
# stage-2 options are read after stage 1; the acquisition batch size only sizes pool scans
# (never run in round 1) and stage-2 pseudo-labelling.
NOT_ROUND1_STAGE1_INPUTS = frozenset({
    "name", "run_dir", "rounds", "acquisition", "nu", "acquisition_batch_size",
    "stage2", "stage2_iterations", "lr_stage2", "expand", "pseudo", "reference",
})


def _key(config: dict, excluded) -> str:
    return json.dumps({k: v for k, v in sorted(config.items()) if k not in excluded}, sort_keys=True, default=str)


def oracle_key(config: dict) -> str:
    return _key(config, NOT_ORACLE_INPUTS)


def round1_key(config: dict) -> str:
    return _key(config, NOT_ROUND1_STAGE1_INPUTS)


def _round1_files(run: RunDir) -> tuple[str, ...]:
    return run.oracle, run.pool, run.selection(1), run.stage(1, "stage1")


def oracle_donor_ready(run_dir: str) -> bool:
    return os.path.isfile(RunDir(run_dir).oracle)


def round1_donor_ready(run_dir: str) -> bool:
    """Round 1 is complete up to stage 1 (every file is written atomically by the loop)."""
    return all(os.path.isfile(p) for p in _round1_files(RunDir(run_dir)))


def _copy_verified(donor: RunDir, src: str, dst: str) -> None:
    """Copy ``src`` after checking it against its run's manifest (``donor``); the copy is
    written with :func:`mulact.runstore.atomic_write`, so the seeded run's manifest records it."""
    atomic_write(dst, donor.read_bytes(src))


def _round1_pool(donor: RunDir, dst: str) -> None:
    """Write the donor's pool as it stood after round 1 (later rounds are not shared)."""
    from mulact.al.pool import RegionPool

    pool = RegionPool.load(donor.pool, donor.manifest).until(1)
    if pool.num_rounds < 1:
        raise ValueError(f"pool: {donor.pool!r} holds no round")
    pool.save(dst)


def seed_run_dir(run_dir: str, oracle_from: str | None, round1_from: str | None) -> dict:
    """Create the fresh ``run_dir`` holding the shared files; returns what was shared.

    The files are assembled in a temporary directory that is renamed into place, so an
    interruption leaves either no run directory (it is seeded again) or a complete one.
    """
    if os.path.exists(run_dir):
        raise FileExistsError(f"run_dir: {run_dir!r} exists; only a fresh run directory is seeded")
    if round1_from is not None:
        oracle_from = round1_from  # the round-1 files must come with the oracle they were made with
    shared = {}
    parent = os.path.dirname(os.path.abspath(run_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".seeding-{os.path.basename(run_dir)}-")
    try:
        # The seeded run gets a manifest of its own (relative paths survive the rename): its
        # loop then verifies the shared files like any file it wrote, rather than adopting them.
        seeded = RunDir(tmp)
        with seeded.open():
            if oracle_from is not None:
                donor = RunDir(oracle_from)
                donor.open(readonly=True)  # verify only: never record or save there
                _copy_verified(donor, donor.oracle, seeded.oracle)
                shared["oracle"] = oracle_from
            if round1_from is not None:
                donor = RunDir(round1_from)
                donor.open(readonly=True)
                _copy_verified(donor, donor.stage(1, "stage1"), seeded.stage(1, "stage1"))
                _copy_verified(donor, donor.selection(1), seeded.selection(1))
                _round1_pool(donor, seeded.pool)
                shared["round1_stage1"] = round1_from
        publish_dir(tmp, run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return shared
