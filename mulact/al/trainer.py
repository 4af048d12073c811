"""Training and evaluation of one round's models: stage 1 on the region labels (paper §3.2),
stage 2 on prototype pseudo labels (§3.3), each resumable and verified.

A finished stage is ``round_XX/stageN.pt`` (weights + training summary); a damaged one is
dropped with a warning and trained again — deterministically, to the same weights
(:mod:`mulact.engine.train`). Under ``torchrun`` every rank trains (data-parallel); rank 0
decides what is finished and writes the files, the others follow its verdict.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from mulact import distributed as dist
from mulact.config import TrainConfig
from mulact.engine.evaluate import evaluate_dataset
from mulact.engine.losses import stage1_loss
from mulact.engine.train import ResumableBatchSampler, TrainSettings, collate_pad, derive_seed, train_model
from mulact.model import build_model
from mulact.runstore import DamagedFileError, RunDir, worker_init_fn

from .data import AugmentedView
from .pool import RegionPool
from .session import RunData

__all__ = ["Trainer"]


class Trainer:
    """Trains and evaluates the models of a run in ``run`` on ``data`` (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, run: RunDir, data: RunData, device: torch.device, warn_damaged):
        self.cfg = cfg
        self.run = run
        self.data = data
        self.device = device
        self.warn_damaged = warn_damaged

    # -- models -----------------------------------------------------------------------------
    def new_model(self):
        c = self.cfg
        return build_model(self.data.num_classes, c.encoder, c.encoder_weights, c.decoder_channels,
                           seed=derive_seed(c.seed, 0xB0D)).to(self.device)

    def load_model(self, t: int, stage: str):
        """Round ``t``'s trained ``stage`` model (verified)."""
        model = self.new_model()
        state = self.run.read_torch(self.run.stage(t, stage), map_location=self.device)
        model.load_state_dict(state["model"])
        return model

    def final_stage(self) -> str:
        return "stage2" if self.cfg.stage2 else "stage1"

    def round_model(self, t: int, pool: RegionPool):
        """The final model of round ``t``, retrained first if its weights are missing or damaged."""
        self.train_round(t, pool)
        return self.load_model(t, self.final_stage())

    def train_round(self, t: int, pool: RegionPool) -> tuple[dict, dict | None]:
        """Stage 1 (and stage 2) of round ``t`` on the labels of rounds 1..t; their summaries."""
        p = pool.until(t)
        s1 = self.stage1(t, p)
        s2 = self.stage2(t, p) if self.cfg.stage2 else None
        return s1, s2

    def evaluate(self, model, desc="evaluate") -> dict:
        """mIoU and per-class IoU on the validation split; ``miou`` None (and ``miou_measured``
        False) when its images have no masks."""
        c = self.cfg
        if not self.data.val_measured:
            return {"miou": None, "iou": [None] * self.data.num_classes, "miou_measured": False}
        return evaluate_dataset(model, self.data.val_loader.dataset, self.data.num_classes, self.device,
                                batch_size=c.eval_batch_size, num_workers=c.num_workers,
                                ignore_index=self.data.ignore_index, amp=c.amp, desc=desc)

    def evaluate_stage(self, t: int, stage: str) -> dict:
        if not self.data.val_measured:
            return self.evaluate(None)
        model = self.load_model(t, stage)
        try:
            return self.evaluate(model, desc=f"round {t} {stage} eval")
        finally:
            del model

    # -- the model for other tools ------------------------------------------------------------
    def write_smp_model(self, t: int) -> None:
        """``model_smp.pt``: round ``t``'s final model for segmentation-models-pytorch alone
        (:mod:`mulact.export`); rank 0 writes."""
        from mulact.export import write_run_smp_model
        from mulact.predict import run_class_colors

        if not dist.is_main():
            return
        model = self.load_model(t, self.final_stage())
        write_run_smp_model(self.run, model, class_names=self.data.class_names,
                            colors=run_class_colors(self.cfg, self.data.class_names),
                            temperature=self.cfg.temperature, round_index=t, stage=self.final_stage())

    def check_smp_model(self, t: int) -> None:
        """Write ``model_smp.pt`` again unless it verifies and holds round ``t``'s model (a run
        from before the file existed, a damaged file, a run stopped between the metrics and it)."""
        if not dist.is_main():
            return
        run = self.run
        if run.exists(run.smp_model):
            try:
                held = run.read_torch(run.smp_model, what="model file")
                if isinstance(held, dict) and held.get("round") == t and held.get("stage") == self.final_stage():
                    return
            except DamagedFileError as err:
                self.warn_damaged(err, "writing it again")
        self.write_smp_model(t)

    # -- the two stages -----------------------------------------------------------------------
    def stage1(self, t: int, pool: RegionPool) -> dict:
        c = self.cfg
        R = int(np.diff(pool.offsets).max())

        def labels_of(i):
            return pool.region_labels(i, R)

        view = AugmentedView(self.data.train, self.data.transform, region_labels_fn=labels_of)

        def step(model, batch, progress):
            logits = model(batch["image"].to(self.device, non_blocking=True))
            return stage1_loss(c, logits, batch["regions"].to(self.device),
                               batch["region_labels"].to(self.device), progress)

        return self._train("stage1", t, view, pool.labeled_images(), c.iterations, c.lr, step, ("region_labels",))

    def full_supervision(self) -> dict:
        """``--labeling full``: round 1's stage 1 — the same initial weights, schedule, batch
        stream and augmentation — trained on every pixel of the train split with plain
        cross-entropy (void ignored), as ``round_01/stage1.pt``."""
        from .stage2 import stage2_step

        c = self.cfg
        view = AugmentedView(self.data.train, self.data.transform)  # no label_fn: the ground-truth masks
        return self._train("stage1", 1, view, self.data.indices, c.iterations, c.lr,
                           lambda m, b, p: stage2_step(m, b, device=self.device, temperature=c.temperature), ())

    def stage2(self, t: int, pool: RegionPool) -> dict:
        from .stage2 import generate_pseudo_labels, pseudo_summary, stage2_step

        c = self.cfg
        run = self.run
        images = pool.labeled_images()
        info = None
        if dist.is_main():
            try:
                info = pseudo_summary(run, t, images)
            except DamagedFileError as err:
                self.warn_damaged(err, f"generating the pseudo labels of round {t} again")
                run.forget(run.pseudo_summary(t))
        # generation is collective: every rank follows rank 0's verdict
        info = dist.broadcast_object(info, what=f"round {t} pseudo labels: lookup")
        if info is None:
            model = self.load_model(t, "stage1")
            info = generate_pseudo_labels(
                model, self.data.train, pool, images, run, t, device=self.device, pseudo=c.pseudo, expand=c.expand,
                temperature=c.temperature, batch_size=c.acquisition_batch_size, num_workers=c.num_workers,
                amp=c.amp, desc=f"round {t} pseudo labels")
            del model

        def label_of(i):  # verified by generate_pseudo_labels just before training
            return torch.from_numpy(np.load(run.pseudo_label(t, i)).astype(np.int64))

        view = AugmentedView(self.data.train, self.data.transform, label_fn=label_of)
        iters = c.stage2_iterations or c.iterations
        summary = self._train("stage2", t, view, images, iters, c.lr_stage2,
                              lambda m, b, p: stage2_step(m, b, device=self.device, temperature=c.temperature), ())
        summary["pseudo"] = info
        return summary

    # -- resumable training -----------------------------------------------------------------
    def _loader(self, view, indices, iterations, seed, start, extra_keys):
        sampler = ResumableBatchSampler(indices, self.cfg.batch_size, iterations, seed, start)
        return torch.utils.data.DataLoader(
            view, batch_sampler=sampler, num_workers=self.cfg.num_workers,
            collate_fn=lambda items: collate_pad(items, extra_keys), pin_memory=self.device.type == "cuda",
            worker_init_fn=worker_init_fn() if self.cfg.num_workers else None)

    def _verified_stage(self, t: int, stage: str):
        """Summary of a finished stage, or None; damaged checkpoints are dropped (with a
        warning) so the stage is trained again — deterministically, to the same weights."""
        run = self.run
        final, last, best = (run.stage(t, stage, k) for k in ("final", "last", "best"))
        if run.exists(final):
            try:
                return run.read_torch(final, what=f"{stage} checkpoint")["summary"]
            except (DamagedFileError, KeyError, TypeError) as err:
                if not isinstance(err, DamagedFileError):
                    err = DamagedFileError(final, f"holds no training summary ({err})")
                self.warn_damaged(err, f"training round {t} {stage} again")
                for f in (final, last, best):
                    run.forget(f)
                return None
        for f in (last, best):
            if run.exists(f):
                try:
                    run.manifest.verify(f)
                except DamagedFileError as err:
                    self.warn_damaged(err, f"restarting round {t} {stage} from its first iteration")
                    run.forget(last)
                    run.forget(best)
                    break
        return None

    def _train(self, stage: str, t: int, view, indices, iterations, lr, step_loss, extra_keys) -> dict:
        c = self.cfg
        run = self.run
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
                   if c.eval_interval > 0 and self.data.val_measured else None)
        last = run.stage(t, stage, "last")
        t0 = time.time()
        summary = train_model(model, lambda start: self._loader(view, indices, iterations, seed, start, extra_keys),
                              step_loss, settings, last, eval_fn=eval_fn, best_path=run.stage(t, stage, "best"))
        summary["seconds"] = time.time() - t0
        if dist.is_main():
            run.write_torch(run.stage(t, stage), {"model": model.state_dict(), "summary": summary})
            run.forget(last)
        dist.barrier(f"round {t} {stage}: saved")
        return summary
