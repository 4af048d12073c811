"""Opening a run: the device, the data, the run directory (lock, manifest) and the check that a
rerun asks for the same run. Everything the round loop needs is handed out from here as
explicit arguments (:class:`Session`); nothing downstream sees the configuration check or the
lock.

Under ``torchrun`` (:mod:`mulact.distributed`) every rank opens the session: rank 0 prepares the
dataset first (it may generate the demo set), holds the directory lock and writes; the other
ranks verify what they read against rank 0's manifest.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from mulact import distributed as dist
from mulact.config import TrainConfig
from mulact.runstore import DamagedFileError, RunDir, RunStateError, atomic_write, digest, remove_temp_files

__all__ = ["CONTINUATION_OPTIONS", "RUNTIME_OPTIONS", "RunData", "Session", "open_session"]

log = logging.getLogger(__name__)

# Options that may differ between the original command and a rerun of the same run.
# ``reference`` changes what the metrics are measured against, never a round's result.
RUNTIME_OPTIONS = {"device", "num_workers", "run_dir", "eval_batch_size", "acquisition_batch_size", "dist_timeout",
                   "reference"}
# Options a rerun may change to keep labeling (README, "Keep labeling"): more rounds, another
# budget for the rounds not selected yet. Finished rounds keep their selections and models;
# fewer rounds than the run has selected are refused (PoolRecords.load).
CONTINUATION_OPTIONS = {"rounds", "budget"}


@dataclass
class RunData:
    """The splits of a run: ``train`` (the pool's images ``indices``), ``val`` and its loader.
    ``val_measured``: there are validation images with masks (a folder dataset's validation
    split and its masks are optional; without them the run trains and asks, but mIoU is not
    measured and ``val_loader`` is None when there are no validation images)."""

    train: object
    val_loader: torch.utils.data.DataLoader | None
    indices: np.ndarray
    num_classes: int
    class_names: list
    transform: object
    ignore_index: int
    val_measured: bool = True


@dataclass
class Session:
    cfg: TrainConfig
    run: RunDir
    device: torch.device
    data: RunData
    echo: object
    lock: object = field(default=None, repr=False)

    def warn_damaged(self, err: DamagedFileError, action: str) -> None:
        """Report a damaged file that is recomputed (``action`` says how)."""
        msg = f"{err}; {action}"
        log.warning(msg)
        self.echo(f"warning: {msg}")

    def report_region_size(self, pixels: np.ndarray) -> None:
        """The mean delivered superpixel size of the train split (``pixels``: pixels per region
        of the oracle's region table), with a warning when it is far from ``region_size``."""
        from mulact.data.superpixels import region_size_check

        if not dist.is_main():
            return

        side, warn = region_size_check(int(pixels.sum()), int((pixels > 0).sum()), self.cfg.region_size,
                                       "the train split")
        self.echo(f"train: mean delivered region size {side:.1f} px (requested {self.cfg.region_size})")
        if warn:
            log.warning(warn)
            self.echo(f"warning: {warn}")

    def close(self) -> None:
        """Stop recording writes and release the run directory."""
        self.run.close()
        if self.lock is not None:
            self.lock.release()


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but CUDA is not available")
    return dev


def load_run_data(cfg: TrainConfig) -> RunData:
    from mulact.data import TrainTransform
    from mulact.data.checks import check_datasets
    from mulact.engine.train import collate_pad
    from mulact.runstore import worker_init_fn

    from .data import build_split
    from .oracle import without_ground_truth

    train = build_split(cfg, "train")
    val = build_split(cfg, "val")
    n = len(train) if cfg.max_train_images is None else min(len(train), cfg.max_train_images)
    transform = TrainTransform(cfg.crop_size, (cfg.scale_min, cfg.scale_max), flip=cfg.hflip,
                               ignore_index=train.ignore_index)
    val_measured = val is not None and bool(getattr(val, "has_labels", True))
    n_val = 0 if val is None else len(val) if cfg.max_val_images is None else min(len(val), cfg.max_val_images)
    # every file this run reads, before any superpixel or training step (README, "Your own images")
    check_datasets([(train, range(n), cfg.oracle != "human")] + ([(val, range(n_val), True)] if val is not None else []),
                   progress=dist.is_main())
    val_loader = None
    if val is not None:
        if cfg.max_val_images is not None:
            val = torch.utils.data.Subset(val, range(n_val))
        val_loader = torch.utils.data.DataLoader(
            val, batch_size=cfg.eval_batch_size, shuffle=False, num_workers=cfg.num_workers,
            collate_fn=collate_pad, worker_init_fn=worker_init_fn() if cfg.num_workers else None)
    names = list(train.class_names)
    if cfg.oracle == "human":
        train = without_ground_truth(train)  # the loop must never read train ground truth
    return RunData(train, val_loader, np.arange(n), train.num_classes, names, transform, train.ignore_index,
                   val_measured)


def open_session(cfg: TrainConfig, echo=print) -> Session:
    """Join the job (under torchrun), load the data, lock and open the run directory and
    check that it holds this run. ``cfg`` is validated by whoever built it
    (:func:`mulact.config.resolve_config`)."""
    if cfg.oracle == "human" and dist.env_world_size() > 1:
        raise ValueError("oracle: 'human' runs in one process; start it without torchrun "
                         "(the rounds wait for people, not for GPUs)")
    # One process: the device as asked. Under torchrun: join the group, cuda:<LOCAL_RANK> or CPU.
    device = _resolve_device(cfg.device) if dist.env_world_size() == 1 else dist.init(cfg.device, cfg.dist_timeout)
    echo = echo if dist.is_main() else (lambda *a, **k: None)
    dist.local_batch_size(cfg.batch_size)
    # before the run directory exists (a missing dataset leaves nothing behind); rank 0 first
    data = load_run_data(cfg) if dist.is_main() else None
    dist.barrier("dataset preparation")
    if data is None:
        data = load_run_data(cfg)
    if data.val_loader is None:
        echo("val: no validation images: the run trains and asks, but mIoU is not measured")
    elif not data.val_measured:
        echo(f"val: {len(data.val_loader.dataset)} images without masks: the run trains and asks, "
             f"but mIoU is not measured")
    run = RunDir(cfg.resolved_run_dir())
    # one process per run directory: rank 0 of a job holds the lock and writes; flock frees it on death
    lock = None
    if dist.is_main():
        os.makedirs(run.root, exist_ok=True)
        lock = run.lock()
        if lock is not None:
            lock.acquire()
            remove_temp_files(run.root)
    dist.barrier("run directory")
    session = Session(cfg, run, device, data, echo, lock)
    try:
        run.open(readonly=not dist.is_main())
        check_config(session)
    except BaseException:
        session.close()
        raise
    return session


def check_config(session: Session) -> None:
    """Refuse a run directory that holds another run; (re)write ``config.yaml``."""
    import yaml

    cfg, run = session.cfg, session.run
    path = run.config
    current = cfg.to_dict()
    # what must match on a rerun, recorded apart from config.yaml so a damaged copy can be rebuilt
    key = _config_key(current, RUNTIME_OPTIONS | CONTINUATION_OPTIONS)
    store = run.manifest
    recorded_key = store.meta.get("config_key")
    # a key recorded before options could change between invocations covers every option
    same_run = recorded_key in (key, _config_key(current, RUNTIME_OPTIONS))
    if run.exists(path):
        try:
            saved, err = run.read_config(), None
        except DamagedFileError as exc:
            saved, err = None, exc
        if saved is None:
            if recorded_key is not None and not same_run:
                raise RunStateError(f"{err}; and this command's configuration differs from the one recorded for "
                                    f"the run in {store.path}. Rerun with the run's original options, or "
                                    f"use another --name/--run-dir to start a new run")
            session.warn_damaged(err, "rewriting it from this command's configuration"
                                 + (", which matches the run's recorded one" if recorded_key else ""))
        else:
            # an option added after the run started counts as its default (e.g. `oracle`)
            defaults = TrainConfig().to_dict()
            diff = sorted(k for k in current if k not in RUNTIME_OPTIONS and saved.get(k, defaults[k]) != current[k])
            changed = {k: saved.get(k, defaults[k]) for k in diff if k in CONTINUATION_OPTIONS}
            if len(changed) < len(diff):
                detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in diff[:6])
                raise ValueError(f"run_dir: {run.root!r} holds a run with a different configuration "
                                 f"({detail}); use another --name/--run-dir to start a new run")
            if changed:
                _check_continuation(run, cfg, changed)
    if recorded_key != key:
        store.set_meta(config_key=key)
    text = yaml.safe_dump(current, sort_keys=False)
    dist.barrier("configuration check")  # every rank read the saved file before rank 0 rewrites it
    if dist.is_main():
        atomic_write(path, text.encode())


def _config_key(options: dict, free) -> str:
    return digest(json.dumps({k: v for k, v in options.items() if k not in free}, sort_keys=True, default=str).encode())


def _check_continuation(run: RunDir, cfg: TrainConfig, changed: dict) -> None:
    """Refuse a change of ``rounds``/``budget`` (``changed``: option -> recorded value) that
    would touch a selected round: fewer rounds than selected, or a new budget with no round
    left to spend it. Runs before anything is rewritten, so a refusal changes nothing."""
    from .pool import RegionPool

    selected = 0
    if run.exists(run.pool):
        try:
            selected = RegionPool.load(run.pool, run.manifest).num_rounds
        except DamagedFileError:
            return  # the loop stops on the damaged pool with its own message
    if cfg.rounds < selected:
        raise ValueError(f"--rounds {cfg.rounds}: the run in {run.root} has already selected {selected} rounds; "
                         f"pass --rounds {selected} or more to continue it")
    if "budget" in changed and selected >= cfg.rounds:
        raise ValueError(f"--budget {cfg.budget}: every round of the run in {run.root} is selected (with budget "
                         f"{changed['budget']}); a new budget applies to the rounds still to come: raise "
                         f"--rounds as well")
