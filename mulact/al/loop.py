"""The active-learning experiment (README, "Active learning: `mulact-train`"): acquisition → oracle → stage 1 → (stage 2) →
evaluation, round after round, resumable at every step.

Run directory layout (``cfg.resolved_run_dir()``)::

    config.yaml              resolved configuration (a rerun must match it)
    oracle.npz               oracle answers for every train region (OracleTable; simulated oracle)
    regions.npz              region table from the superpixel maps (human oracle, no ground truth)
    queries/round_XX.json    human oracle: the round's queries, waiting for answers
    answers/round_XX/        human oracle: one file per answer (mulact-label, mulact.al.answers)
    pool.npz                 labeled regions, labels, costs, rounds, selections (RegionPool)
    selections/round_XX.json the round's queries in selection order (image, region, classes, cost, score)
    round_XX/stage1_last.pt  resumable training checkpoint (removed once the stage is done)
    round_XX/stage1_best.pt  best validation checkpoint (when eval_interval > 0)
    round_XX/stage1.pt       final stage-1 weights + training summary
    round_XX/pseudo/         stage-2 pseudo labels (int16 .npy per labeled image)
    round_XX/stage2*.pt      the same for stage 2
    metrics.json, metrics.csv, miou_vs_clicks.png

Every file is written atomically; a step is skipped on rerun when its output exists, so a
killed run restarted with the same command continues where it stopped and — training being
deterministic for a seed (:mod:`mulact.engine.train`) — makes the same selections.

Labels come through an :class:`~mulact.al.oracle.Oracle` (``cfg.oracle``): the simulated one
answers from the ground truth at once; the human one stops the run (:class:`AnswersPending`)
after writing a round's queries, and a rerun picks the answers up (README "Label your own data").

Integrity (:mod:`mulact.runstore`): ``manifest.json`` records the SHA-256 of every file above
when it is written, and every read checks it. A damaged file that can be derived again
(oracle, selection records, checkpoints, pseudo labels, metrics) is recomputed with a warning
naming it; a damaged pool stops the run with an error naming the file and what to do. The
directory is locked (``.lock``) while a process works in it. See the README's *Resume*.

Under ``torchrun`` (:mod:`mulact.distributed`) every rank runs this same loop: the per-image
passes (superpixels + oracle, the pool scan, pseudo labels, evaluation) are sharded
(:mod:`mulact.al.sharding`), training is data-parallel, the selection is made once on rank 0
and broadcast, and only rank 0 writes files; the others wait at barriers.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from mulact import distributed as dist
from mulact.config import TrainConfig
from mulact.engine.evaluate import evaluate_dataset
from mulact.engine.losses import stage1_loss
from mulact.engine.precision import describe as describe_precision
from mulact.engine.train import ResumableBatchSampler, TrainSettings, collate_pad, derive_seed, train_model
from mulact.model import build_model
from mulact.ops.acquisition import measure_for
from mulact.runstore import (
    DamagedFileError,
    DirLock,
    Manifest,
    RunStateError,
    atomic_write,
    remove_temp_files,
    worker_init_fn,
)

from .acquisition import acquire, score_pool
from .data import AugmentedView
from .oracle import AnswersPending, Oracle, make_oracle, without_ground_truth
from .pool import OracleTable, RegionPool, atomic_torch_save, atomic_write_json, load_json, load_torch
from .sharding import build_oracle_sharded, scan_pool_sharded

log = logging.getLogger(__name__)

__all__ = ["AnswersPending", "Experiment", "run_experiment"]

# Options that may differ between the original command and a rerun of the same run.
RUNTIME_OPTIONS = {"device", "num_workers", "run_dir", "eval_batch_size", "acquisition_batch_size", "dist_timeout"}


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but CUDA is not available")
    return dev


class Experiment:
    """One AL run; :meth:`run` executes (or resumes) every round."""

    def __init__(self, cfg: TrainConfig, echo=print):
        cfg.validate()
        self.cfg = cfg
        self.dir = cfg.resolved_run_dir()
        if cfg.oracle == "human" and dist.env_world_size() > 1:
            raise ValueError("oracle: 'human' runs in one process; start it without torchrun "
                             "(the rounds wait for people, not for GPUs)")
        # One process: the device as asked. Under torchrun: join the group, cuda:<LOCAL_RANK> or CPU.
        self.device = _resolve_device(cfg.device) if dist.env_world_size() == 1 else dist.init(cfg.device, cfg.dist_timeout)
        self.echo = echo if dist.is_main() else (lambda *a, **k: None)
        dist.local_batch_size(cfg.batch_size)
        # before the run directory exists (a missing dataset leaves nothing behind); rank 0
        # first: it may generate the demo data set
        if dist.is_main():
            self._build_data()
        dist.barrier("dataset preparation")
        if not dist.is_main():
            self._build_data()
        if cfg.oracle == "human":
            self.train = without_ground_truth(self.train)  # the loop must never read train ground truth
        # one process per run directory: rank 0 of a job holds the lock and writes; flock frees
        # it on death. The other ranks verify what they read against rank 0's manifest.
        self.lock = None
        if dist.is_main():
            os.makedirs(self.dir, exist_ok=True)
            self.lock = DirLock.for_job(self.dir, "run directory")
            if self.lock is not None:
                self.lock.acquire()
                remove_temp_files(self.dir)
        dist.barrier("run directory")
        try:
            self.store = Manifest(self.dir, readonly=not dist.is_main())
            self._check_config()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop recording writes and release the run directory."""
        if getattr(self, "store", None) is not None:
            self.store.close()
        if self.lock is not None:
            self.lock.release()

    def _damaged(self, err: DamagedFileError, action: str) -> None:
        msg = f"{err}; {action}"
        log.warning(msg)
        self.echo(f"warning: {msg}")

    # -- setup ------------------------------------------------------------------------------
    def _check_config(self) -> None:
        import json

        import yaml

        from mulact.runstore import digest

        path = os.path.join(self.dir, "config.yaml")
        current = self.cfg.to_dict()
        # what must match on a rerun, recorded apart from config.yaml so a damaged copy can be rebuilt
        key = digest(json.dumps({k: v for k, v in current.items() if k not in RUNTIME_OPTIONS},
                                sort_keys=True, default=str).encode())
        recorded_key = self.store.meta.get("config_key")
        if os.path.isfile(path) or self.store.recorded(path):
            try:
                saved = yaml.safe_load(self.store.read_bytes(path)) or {}
                if not isinstance(saved, dict):
                    raise DamagedFileError(path, "is not a mapping of options")
            except yaml.YAMLError as exc:
                saved = None
                err = DamagedFileError(path, f"is not readable YAML ({exc})")
            except DamagedFileError as exc:
                saved, err = None, exc
            if saved is None:
                if recorded_key is not None and recorded_key != key:
                    raise RunStateError(f"{err}; and this command's configuration differs from the one recorded for "
                                        f"the run in {self.store.path}. Rerun with the run's original options, or "
                                        f"use another --name/--run-dir to start a new run")
                self._damaged(err, "rewriting it from this command's configuration"
                              + (", which matches the run's recorded one" if recorded_key else ""))
            else:
                # an option added after the run started counts as its default (e.g. `oracle`)
                defaults = TrainConfig().to_dict()
                diff = sorted(k for k in current
                              if k not in RUNTIME_OPTIONS and saved.get(k, defaults[k]) != current[k])
                if diff:
                    detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in diff[:6])
                    raise ValueError(f"run_dir: {self.dir!r} holds a run with a different configuration "
                                     f"({detail}); use another --name/--run-dir to start a new run")
        if recorded_key != key:
            self.store.set_meta(config_key=key)
        text = yaml.safe_dump(current, sort_keys=False)
        dist.barrier("configuration check")  # every rank read the saved file before rank 0 rewrites it
        if dist.is_main():
            atomic_write(path, lambda fh: fh.write(text.encode()))

    def _build_data(self) -> None:
        from mulact.data import TrainTransform

        from .data import build_split

        cfg = self.cfg
        self.train = build_split(cfg, "train")
        self.val = build_split(cfg, "val")
        n = len(self.train) if cfg.max_train_images is None else min(len(self.train), cfg.max_train_images)
        self.train_indices = np.arange(n)
        self.num_classes = self.train.num_classes
        self.class_names = list(self.train.class_names)
        self.transform = TrainTransform(cfg.crop_size, (cfg.scale_min, cfg.scale_max), flip=cfg.hflip,
                                        ignore_index=self.train.ignore_index)
        val = self.val
        self.val_measured = val is not None and bool(getattr(val, "has_labels", True))
        if val is None:
            self.echo("val: no validation images: the run trains and asks, but mIoU is not measured")
        elif not self.val_measured:
            self.echo(f"val: {len(val)} images without masks: the run trains and asks, but mIoU is not measured")
        if val is not None and cfg.max_val_images is not None:
            val = torch.utils.data.Subset(val, range(min(len(val), cfg.max_val_images)))
        # every file this run reads, before any superpixel or training step (README, "Your own images")
        from mulact.data.checks import check_datasets

        check_datasets([(self.train, self.train_indices, cfg.oracle != "human")]
                       + ([(self.val, range(len(val)), True)] if val is not None else []), progress=dist.is_main())
        self.val_loader = None if val is None else torch.utils.data.DataLoader(
            val, batch_size=cfg.eval_batch_size, shuffle=False, num_workers=cfg.num_workers,
            collate_fn=collate_pad, worker_init_fn=worker_init_fn() if cfg.num_workers else None)

    def _oracle(self) -> OracleTable:
        path = os.path.join(self.dir, "oracle.npz")
        oracle = None
        if dist.is_main() and (os.path.isfile(path) or self.store.recorded(path)):
            try:
                oracle = OracleTable.load(path, self.store)
            except DamagedFileError as err:
                # simulated answers are a function of the dataset and its superpixels
                self._damaged(err, "recomputing the oracle answers from the ground truth")
        # rank 0 decides (it verified the file); the other ranks follow, so the collective
        # recomputation below runs on every rank or on none
        if dist.broadcast_object(oracle is not None, what="oracle lookup"):
            return oracle if dist.is_main() else OracleTable.load(path, self.store)
        self.echo(f"computing superpixels and oracle labels for {len(self.train_indices)} training images")
        oracle = build_oracle_sharded(self.train, self.train_indices, trim=self.cfg.trim)
        if dist.is_main():
            oracle.save(path)
        dist.barrier("oracle saved")
        return oracle

    # -- helpers ----------------------------------------------------------------------------
    def round_dir(self, t: int) -> str:
        return os.path.join(self.dir, f"round_{t:02d}")

    def new_model(self):
        c = self.cfg
        return build_model(self.num_classes, c.encoder, c.encoder_weights, c.decoder_channels,
                           seed=derive_seed(c.seed, 0xB0D)).to(self.device)

    def final_weights(self, t: int) -> str:
        rd = self.round_dir(t)
        s2 = os.path.join(rd, "stage2.pt")
        return s2 if self.cfg.stage2 else os.path.join(rd, "stage1.pt")

    def load_model(self, path: str):
        model = self.new_model()
        model.load_state_dict(load_torch(path, self.store, map_location=self.device)["model"])
        return model

    def round_model(self, t: int, pool: RegionPool):
        """The final model of round ``t``, retrained first if its weights are missing or damaged."""
        p = pool.until(t)
        self.stage1(t, p)
        if self.cfg.stage2:
            self.stage2(t, p)
        return self.load_model(self.final_weights(t))

    def evaluate(self, model, desc="evaluate") -> dict:
        if not self.val_measured:  # a folder dataset without validation masks or images
            return {"miou": None, "iou": [None] * self.num_classes, "miou_measured": False}
        return evaluate_dataset(model, self.val_loader.dataset, self.num_classes, self.device,
                                batch_size=self.cfg.eval_batch_size, num_workers=self.cfg.num_workers,
                                ignore_index=self.train.ignore_index, amp=self.cfg.amp, desc=desc)

    def _loader(self, view, indices, iterations, seed, start, extra_keys):
        sampler = ResumableBatchSampler(indices, self.cfg.batch_size, iterations, seed, start)
        return torch.utils.data.DataLoader(
            view, batch_sampler=sampler, num_workers=self.cfg.num_workers,
            collate_fn=lambda items: collate_pad(items, extra_keys), pin_memory=self.device.type == "cuda",
            worker_init_fn=worker_init_fn() if self.cfg.num_workers else None)

    def _stage_files(self, t: int, stage: str) -> list[str]:
        rd = self.round_dir(t)
        return [os.path.join(rd, f"{stage}{s}.pt") for s in ("", "_last", "_best")]

    def _verified_stage(self, t: int, stage: str):
        """Summary of a finished stage, or None; damaged checkpoints are dropped (with a
        warning) so the stage is trained again — deterministically, to the same weights."""
        final, last, best = self._stage_files(t, stage)
        if os.path.isfile(final) or self.store.recorded(final):
            try:
                return load_torch(final, self.store, what=f"{stage} checkpoint")["summary"]
            except (DamagedFileError, KeyError, TypeError) as err:
                if not isinstance(err, DamagedFileError):
                    err = DamagedFileError(final, f"holds no training summary ({err})")
                self._damaged(err, f"training round {t} {stage} again")
                for f in (final, last, best):
                    self.store.forget(f)
                return None
        for f in (last, best):
            if os.path.isfile(f) or self.store.recorded(f):
                try:
                    self.store.verify(f)
                except DamagedFileError as err:
                    self._damaged(err, f"restarting round {t} {stage} from its first iteration")
                    self.store.forget(last)
                    self.store.forget(best)
                    break
        return None

    def _train(self, stage: str, t: int, view, indices, iterations, lr, step_loss, extra_keys) -> dict:
        c = self.cfg
        rd = self.round_dir(t)
        final = os.path.join(rd, f"{stage}.pt")
        done = dist.broadcast_object(self._verified_stage(t, stage) if dist.is_main() else None,
                                     what=f"round {t} {stage}: lookup")
        if done is not None:
            return done
        model = self.new_model()
        seed = derive_seed(c.seed, t, 1 if stage == "stage1" else 2)
        settings = TrainSettings(
            iterations=iterations, lr=lr, encoder_lr_mult=c.encoder_lr_mult, weight_decay=c.weight_decay,
            poly_power=c.poly_power, seed=seed, device=str(self.device), amp=c.amp,
            checkpoint_interval=c.checkpoint_interval, eval_interval=c.eval_interval,
            desc=f"round {t} {stage}", compile=c.compile)
        eval_fn = ((lambda m: self.evaluate(m, desc=f"round {t} {stage} val")["miou"])
                   if c.eval_interval > 0 and self.val_measured else None)
        last = os.path.join(rd, f"{stage}_last.pt")
        t0 = time.time()
        summary = train_model(model, lambda start: self._loader(view, indices, iterations, seed, start, extra_keys),
                              step_loss, settings, last, eval_fn=eval_fn,
                              best_path=os.path.join(rd, f"{stage}_best.pt"))
        summary["seconds"] = time.time() - t0
        if dist.is_main():
            atomic_torch_save(final, {"model": model.state_dict(), "summary": summary})
            self.store.forget(last)
        dist.barrier(f"round {t} {stage}: saved")
        return summary

    # -- steps ------------------------------------------------------------------------------
    def select(self, t: int, pool: RegionPool, oracle: Oracle) -> bool:
        """Acquisition for round ``t`` and its answers; returns False when nothing is left to
        select. Raises :class:`AnswersPending` while a human oracle has not answered."""
        c = self.cfg
        method = "random" if t == 1 else c.acquisition
        t0 = time.time()
        pending = oracle.pending(t)
        if pending is None:
            if not pool.unlabeled_mask().any():
                return False  # nothing to scan: every method stops here, before needing pool statistics
            chosen, scores = self._acquire(t, method, pool, oracle)
            if len(chosen) == 0:
                return False
        else:
            chosen = pending[0]
            scores = np.full(int(pool.offsets[-1]), math.nan)
            scores[chosen] = pending[1]
        bits, cost = oracle.answer(t, chosen, scores, c.labeling)
        pool.add_round(chosen, bits, cost, scores=None if scores is None else scores[chosen])
        if dist.is_main():
            pool.save(os.path.join(self.dir, "pool.npz"))
            self._write_selection(t, pool)
        dist.barrier(f"round {t}: selection saved")
        log.info("round %d: %s selected %d regions (%d clicks) in %.1fs", t, method, len(chosen),
                 pool.clicks(t), time.time() - t0)
        return True

    def _acquire(self, t: int, method: str, pool: RegionPool, oracle: Oracle):
        c = self.cfg
        stats = None
        if method != "random":
            model = self.round_model(t - 1, pool)
            stats = scan_pool_sharded(model, self.train, pool, pool.images_with_unlabeled(),
                                      measure=measure_for(method), temperature=c.temperature, device=self.device,
                                      batch_size=c.acquisition_batch_size, amp=c.amp, num_workers=c.num_workers)
            del model
        chosen = scores = None
        if dist.is_main():  # the selection is made once; the other ranks receive it
            scores, banned = score_pool(method, pool, stats, nu=c.nu, seed=c.seed, round_index=t)
            costs = oracle.planned_costs(pool, c.labeling)
            chosen = acquire(pool, scores, banned, costs, c.budget)
        del stats
        return dist.broadcast_object(chosen, what=f"round {t}: selection"), scores

    def _write_selection(self, t, pool) -> None:
        names = self.train.names()
        rec = pool.selection_record(t, names=names, scores=pool.scores[t - 1])
        rec["acquisition"] = "random" if t == 1 else self.cfg.acquisition
        rec["labeling"] = self.cfg.labeling
        atomic_write_json(os.path.join(self.dir, "selections", f"round_{t:02d}.json"), rec)

    def stage1(self, t: int, pool: RegionPool) -> dict:
        c = self.cfg
        R = int(np.diff(pool.offsets).max())

        def labels_of(i):
            return pool.region_labels(i, R)

        view = AugmentedView(self.train, self.transform, region_labels_fn=labels_of)

        def step(model, batch, progress):
            logits = model(batch["image"].to(self.device, non_blocking=True))
            return stage1_loss(c, logits, batch["regions"].to(self.device),
                               batch["region_labels"].to(self.device), progress)

        return self._train("stage1", t, view, pool.labeled_images(), c.iterations, c.lr, step, ("region_labels",))

    def stage2(self, t: int, pool: RegionPool) -> dict:
        from .stage2 import generate_pseudo_labels, pseudo_label_path, pseudo_summary, stage2_step

        c = self.cfg
        rd = self.round_dir(t)
        images = pool.labeled_images()
        pseudo_dir = os.path.join(rd, "pseudo")
        info = None
        if dist.is_main():
            try:
                info = pseudo_summary(pseudo_dir, images, self.store)
            except DamagedFileError as err:
                self._damaged(err, f"generating the pseudo labels of round {t} again")
                self.store.forget(os.path.join(pseudo_dir, "summary.json"))
        # generation is collective: every rank follows rank 0's verdict
        info = dist.broadcast_object(info, what=f"round {t} pseudo labels: lookup")
        if info is None:
            model = self.load_model(os.path.join(rd, "stage1.pt"))
            info = generate_pseudo_labels(
                model, self.train, pool, images, pseudo_dir, device=self.device, pseudo=c.pseudo, expand=c.expand,
                temperature=c.temperature, batch_size=c.acquisition_batch_size, num_workers=c.num_workers,
                amp=c.amp, desc=f"round {t} pseudo labels")
            del model

        def label_of(i):  # verified by generate_pseudo_labels just before training
            return torch.from_numpy(np.load(pseudo_label_path(pseudo_dir, i)).astype(np.int64))

        view = AugmentedView(self.train, self.transform, label_fn=label_of)
        iters = c.stage2_iterations or c.iterations
        summary = self._train("stage2", t, view, images, iters, c.lr_stage2,
                              lambda m, b, p: stage2_step(m, b, device=self.device, temperature=c.temperature), ())
        summary["pseudo"] = info
        return summary

    def _report_region_size(self, oracle: Oracle) -> None:
        from mulact.data.superpixels import region_size_check

        side, warn = region_size_check(int(oracle.pixels.sum()), int((oracle.pixels > 0).sum()),
                                       self.cfg.region_size, "the train split")
        self.echo(f"train: mean delivered region size {side:.1f} px (requested {self.cfg.region_size})")
        if warn:
            log.warning(warn)
            self.echo(f"warning: {warn}")

    # -- the experiment ---------------------------------------------------------------------
    def run(self) -> list[dict]:
        c = self.cfg
        t_start = time.time()
        oracle = make_oracle(c.oracle, self)
        self._report_region_size(oracle)
        self.echo(describe_precision(c.amp, self.device))
        pool = self._load_pool(oracle)
        full_cost = oracle.full_annotation_cost()
        # rank 0 decides what is finished (a damaged metrics file means: evaluate again)
        metrics = dist.broadcast_object(self.load_metrics() if dist.is_main() else None, what="metrics lookup")
        done_rounds = {m["round"] for m in metrics}
        skipped = []
        for t in range(1, c.rounds + 1):
            if pool.num_rounds < t:
                if not self.select(t, pool, oracle):
                    self.echo(f"round {t}: the pool is exhausted (every selectable region is labeled); stopping")
                    break
            elif dist.is_main():
                self._check_selection(t, pool)
            if t in done_rounds:
                skipped.append(t)
                continue
            pt = pool.until(t)  # a round trains on the labels of rounds 1..t only
            s1 = self.stage1(t, pt)
            model = self.load_model(os.path.join(self.round_dir(t), "stage1.pt"))
            ev1 = self.evaluate(model, desc=f"round {t} stage1 eval")
            del model
            rec = self._round_record(t, pool, full_cost, ev1, s1)
            rec.update(oracle.round_metrics(t))
            if c.stage2:
                s2 = self.stage2(t, pt)
                model = self.load_model(os.path.join(self.round_dir(t), "stage2.pt"))
                ev2 = self.evaluate(model, desc=f"round {t} stage2 eval")
                del model
                rec.update(stage2_miou=ev2["miou"], stage2_iou=ev2["iou"], miou=ev2["miou"], iou=ev2["iou"],
                           pseudo_label_accuracy=s2["pseudo"]["accuracy"],
                           pseudo_localized_pixels=s2["pseudo"]["localized"],
                           pseudo_expanded_pixels=s2["pseudo"]["expanded"],
                           stage2_seconds=s2.get("seconds"))
            metrics.append(rec)
            if dist.is_main():
                self.save_metrics(metrics)
            dist.barrier(f"round {t}: metrics saved")
            self.echo(f"round {t}: mIoU {_pct(rec['miou'])}  clicks {rec['clicks']} "
                      f"(cumulative {rec['cumulative_clicks']}, {rec['percent_full_cost']:.2f}% of full)")
        self._check_finished(skipped, pool, metrics)
        self.echo(self.summary_table(metrics))
        self.echo(f"run directory: {self.dir}   ({time.time() - t_start:.0f}s this invocation)")
        return metrics

    def _check_finished(self, rounds, pool: RegionPool, metrics) -> None:
        """Verify the outputs of the rounds this invocation did not redo (their weights, pseudo
        labels, metrics files) and recompute the damaged ones, so a rerun leaves a whole run."""
        for t in rounds:
            self.stage1(t, pool.until(t))
            if self.cfg.stage2:
                self.stage2(t, pool.until(t))
        if not metrics or not dist.is_main():
            return
        for name in ("metrics.csv", "miou_vs_clicks.png"):
            try:
                self.store.verify(os.path.join(self.dir, name))
            except DamagedFileError as err:
                self._damaged(err, "writing it again")
                self.save_metrics(metrics)
                break

    def _load_pool(self, oracle: Oracle) -> RegionPool:
        path = os.path.join(self.dir, "pool.npz")
        if not (os.path.isfile(path) or self.store.recorded(path)):
            return RegionPool(oracle.offsets, self.num_classes, valid=oracle.pixels > 0)
        try:
            pool = RegionPool.load(path, self.store)
        except DamagedFileError as err:
            sha = self.store.entries.get(self.store.rel(path), {}).get("sha256")
            raise RunStateError(
                f"{err}. The pool holds the labels of every round so far and cannot be recomputed, so the "
                f"run stops here. Restore {os.path.basename(path)} from a backup"
                + (f" (the file written had SHA-256 {sha})" if sha else "")
                + ", or start a new run with another --name/--run-dir.") from None
        if not np.array_equal(pool.offsets, oracle.offsets):
            raise RunStateError(f"{path}: the pool's regions do not match the oracle's (other superpixels or "
                                f"images?); start a new run with another --name/--run-dir")
        return pool

    def _check_selection(self, t: int, pool: RegionPool) -> None:
        """Rewrite a missing or damaged selection record of round ``t`` from the pool."""
        path = os.path.join(self.dir, "selections", f"round_{t:02d}.json")
        try:
            rec = load_json(path, self.store, what="selection record")
            if rec.get("round") != t:
                raise DamagedFileError(path, f"records round {rec.get('round')!r}, not round {t}")
            return
        except DamagedFileError as err:
            if os.path.isfile(path) or self.store.recorded(path):
                self._damaged(err, "rewriting it from pool.npz")
        except AttributeError:
            self._damaged(DamagedFileError(path, "is not a selection record"), "rewriting it from pool.npz")
        self._write_selection(t, pool)

    def _round_record(self, t, pool, full_cost, ev, s1) -> dict:
        cum = int(pool.cost[(pool.round > 0) & (pool.round <= t)].sum())
        return {
            "round": t,
            "acquisition": "random" if t == 1 else self.cfg.acquisition,
            "clicks": pool.clicks(t),
            "cumulative_clicks": cum,
            "percent_full_cost": math.nan if full_cost is None else 100.0 * cum / max(full_cost, 1),
            "full_annotation_cost": full_cost,
            "labeled_regions": int(((pool.round > 0) & (pool.round <= t)).sum()),
            "labeled_images": len(np.unique(pool.image_of(np.flatnonzero((pool.round > 0) & (pool.round <= t))))),
            "miou": ev["miou"],
            "iou": ev["iou"],
            "stage1_miou": ev["miou"],
            "stage1_iou": ev["iou"],
            "miou_measured": ev.get("miou_measured", True),
            "stage1_seconds": s1.get("seconds"),
            "stage1_final_loss": s1.get("last_loss"),
        }

    # -- outputs ----------------------------------------------------------------------------
    def load_metrics(self) -> list[dict]:
        import json

        path = os.path.join(self.dir, "metrics.json")
        if not (os.path.isfile(path) or self.store.recorded(path)):
            return []
        try:
            rounds = load_json(path, self.store, what="metrics file")["rounds"]
            if not all(isinstance(m, dict) and "round" in m for m in rounds):
                raise TypeError("a round without a number")
            return rounds
        except (DamagedFileError, KeyError, TypeError) as err:
            if not isinstance(err, DamagedFileError):
                err = DamagedFileError(path, f"is not a metrics file ({err})")
            self._damaged(err, "evaluating the finished rounds again")
            return []

    def save_metrics(self, metrics: list[dict]) -> None:
        atomic_write_json(os.path.join(self.dir, "metrics.json"),
                          {"class_names": self.class_names, "rounds": metrics})
        buf = io.StringIO()
        cols = ["round", "acquisition", "clicks", "cumulative_clicks", "percent_full_cost", "labeled_regions",
                "labeled_images", "miou", "stage1_miou", "stage2_miou", "pseudo_label_accuracy"]
        cols += [k for k in ("planned_clicks", "annotation_seconds", "seconds_per_query", "seconds_per_click")
                 if any(k in m for m in metrics)]
        w = csv.writer(buf)
        w.writerow(cols + [f"iou_{n}" for n in self.class_names])
        for m in metrics:
            w.writerow([m.get(k, "") for k in cols] + list(m["iou"]))
        atomic_write(os.path.join(self.dir, "metrics.csv"), lambda fh: fh.write(buf.getvalue().encode()))
        self.plot(metrics)

    def plot(self, metrics: list[dict]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
        x = [m["cumulative_clicks"] for m in metrics]
        def pct(v):
            return math.nan if v is None else 100 * v
        ax.plot(x, [pct(m["stage1_miou"]) for m in metrics], "o-", label="stage 1")
        if any("stage2_miou" in m for m in metrics):
            ax.plot(x, [pct(m.get("stage2_miou", math.nan)) for m in metrics], "s-", label="stage 2")
        if not all(m.get("miou_measured", True) for m in metrics):
            ax.text(0.5, 0.5, "mIoU not measured\n(no validation masks)", transform=ax.transAxes, ha="center")
        ax.set_xlabel("clicks (cumulative)")
        ax.set_ylabel("mIoU (%)")
        ax.set_title(f"{self.cfg.name}: {self.cfg.acquisition}, {self.cfg.labeling}-class labels")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        atomic_write(os.path.join(self.dir, "miou_vs_clicks.png"), lambda fh: fh.write(buf.getvalue()))

    def summary_table(self, metrics: list[dict]) -> str:
        head = f"{'round':>5} {'clicks':>8} {'cumulative':>10} {'% full':>7} {'regions':>8} {'mIoU':>7}"
        if self.cfg.stage2:
            head += f" {'stage1':>7} {'stage2':>7}"
        lines = [head, "-" * len(head)]
        for m in metrics:
            line = (f"{m['round']:>5} {m['clicks']:>8} {m['cumulative_clicks']:>10} {m['percent_full_cost']:>7.2f} "
                    f"{m['labeled_regions']:>8} {_pct(m['miou']):>7}")
            if self.cfg.stage2:
                line += f" {_pct(m['stage1_miou']):>7} {_pct(m.get('stage2_miou', math.nan)):>7}"
            lines.append(line)
        return "\n".join(lines)


def _pct(value) -> str:
    """An mIoU in percent, or "n/a" where it was not measured (no validation masks)."""
    return "n/a" if value is None else f"{100 * value:.2f}"


def run_experiment(cfg: TrainConfig, echo=print) -> list[dict]:
    exp = Experiment(cfg, echo=echo)
    try:
        return exp.run()
    finally:
        exp.close()
