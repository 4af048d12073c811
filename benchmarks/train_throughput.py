"""Throughput of stage-1 training at the paper's shape: the step's variants and the data loader.

    python benchmarks/train_throughput.py                               # CUDA: both parts, 3 minutes at most
    python benchmarks/train_throughput.py --part loader --workers 0 1 2  # the loader on this CPU
    python benchmarks/train_throughput.py --tiny --out DIR               # tiny shapes on the CPU (tests)

**Step.** One stage-1 training iteration as ``mulact-train`` runs it (the ``cityscapes`` preset:
DeepLabV3+ ResNet-50, decoder 256, batch 4 of 769 crops, the paper's loss, AdamW, bf16 autocast on
CUDA), through :func:`mulact.engine.train.train_model` itself: the batch is copied from pinned
host memory every step, the loss's finiteness check and the loss read-out synchronise, as in a
run. Variants (``--options``):

- ``baseline``: the trainer as it is;
- ``channels_last``: model and input in channels-last memory format;
- ``fused_adamw``: ``AdamW(fused=True)`` with the trainer's parameter groups;
- ``cudnn_benchmark``: ``torch.backends.cudnn.benchmark`` (CUDA only; the crop shape is fixed);
- ``compile``: ``TrainSettings(compile=True)``, i.e. ``--compile`` (inductor);
- then the options that each gained at least ``MIN_GAIN`` together, and ``compile`` on top of
  them, while the budget lasts.

Every variant runs in its own process with a time cap (a slow compile cannot eat the budget),
from the same initial weights (seeded) on the same batch (rendered Cityscapes-size street
scenes, 32-px grid regions, the oracle's labels, the training transform; built once by the
parent). The ASPP's dropout is set to 0 in every variant: under ``torch.compile`` its masks
come from inductor's generator, so the variants' losses could not be compared otherwise (its
cost is one element-wise op on the stride-16 features). Before it is ranked, a variant is
checked against the baseline on the first step (``check_against``):

- the step's loss (bf16 on CUDA) within ``LOSS_TOLERANCE``;
- the step's whole gradient (relative L2 error) within ``GRAD_FLOOR_FACTOR`` times the baseline's
  own bf16 rounding effect (its bf16 gradient against its float32 gradient of the same step),
  between ``GRAD_TOLERANCE_MIN`` and ``GRAD_TOLERANCE_MAX``. At random initialisation the bf16
  gradient of this model is far from the float32 one (0.4 relative on a ResNet-18 at 129 px
  crops on the CPU: BatchNorm and the cosine head's normalisation cancel most of it), so in
  bf16 this only catches gross errors (a zero, negated or unrelated gradient is off by >= 1);
- for variants without ``compile``, when the step runs in bf16: the same step in float32
  (autocast and TF32 off), whose loss and gradient must match the baseline's float32 ones within
  ``FLOAT32_TOLERANCE`` — the strict check. A compiled variant would compile a second graph for
  it, so it has only the two checks above;
- for ``fused_adamw``, the parameters after the step against a foreach AdamW step on the same
  gradients (``OPTIMIZER_TOLERANCE``).

A variant that fails is reported and never ranked. Then ``--warmup`` steps and ``--iterations``
timed steps: per-step wall time (the step ends in a synchronising read of the loss), its median
and the images per second it consumes, and the GPU peak memory. The first step's time includes
the checks and compilation.

**Loader.** The training ``DataLoader`` of ``mulact-train`` (``CityscapesDataset`` over
generated 1024x2048 PNGs with cached superpixel maps, :class:`~mulact.al.data.AugmentedView`
with the pool's region labels, :class:`~mulact.data.transforms.TrainTransform`,
``collate_pad``, :class:`~mulact.engine.train.ResumableBatchSampler`) read for
``--loader-batches`` batches per ``--workers`` setting: the steady-state images per second (the
first batch of each worker, which includes its start, is not counted), and, in one process with
one thread, the cost of each part of an item. The rates are set beside what the GPU consumes:
the step's images per second from this run, else from the recorded rehearsal
(``--gpu-reference``, ``benchmarks/results/cityscapes_rehearsal_cuda.json``).

Results: ``train_throughput_<cpu|cuda>.json`` and ``.md`` in ``--out`` (default
``benchmarks/results``). On a bare GPU machine it needs what ``gpu_check.py`` needs (carried in
``benchmarks/.carry``).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import os
import platform
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OPTIONS = ("channels_last", "fused_adamw", "cudnn_benchmark", "compile")
CUDA_ONLY = {"cudnn_benchmark"}
# An option joins the combination when it alone is at least this much faster than the baseline.
MIN_GAIN = 0.03
# First-step agreement with the baseline (see the module docstring). The loss of the step in
# the run's precision; the gradient within GRAD_FLOOR_FACTOR times the baseline's bf16-vs-float32
# distance (two independent roundings of that size differ by up to twice it), clamped: float32
# runs differ only in summation order (the minimum applies), and above the maximum a bf16
# comparison could not tell a wrong gradient from rounding. The strict float32 check allows for
# other convolution algorithms (cudnn's benchmark picks Winograd or FFT kernels).
LOSS_TOLERANCE = {"bf16": 2e-2, "float32": 1e-4}
GRAD_FLOOR_FACTOR = 3.0
GRAD_TOLERANCE_MIN, GRAD_TOLERANCE_MAX = 1e-3, 0.9
FLOAT32_TOLERANCE = {"loss": 1e-3, "grad": 1e-2}
# fused AdamW against the foreach AdamW on the same gradients: relative error of the update
OPTIMIZER_TOLERANCE = 1e-3
SHAPES = {
    # the cityscapes preset (README, "Cityscapes-scale rehearsal")
    "full": dict(batch=4, crop=769, encoder="resnet50", decoder=256, height=1024, width=2048, region_size=32),
    # tests: the smallest model, BatchNorm over the ASPP pooling needs batch >= 2
    "tiny": dict(batch=2, crop=40, encoder="resnet18", decoder=16, height=64, width=128, region_size=8),
}
NUM_CLASSES = 19


def _prepare_imports() -> dict:
    """``mulact`` from the checkout and the carried packages, as ``gpu_check.py`` does."""
    gc = runpy.run_path(str(HERE / "gpu_check.py"), run_name="train_throughput_helpers")
    gc["_prepare_imports"]()
    return gc


def _config():
    from mulact.config import PRESETS, TrainConfig, apply_overrides

    return apply_overrides(TrainConfig(), PRESETS["cityscapes"], "preset 'cityscapes'")


def variant_name(options) -> str:
    return "+".join(o for o in OPTIONS if o in options) or "baseline"


def parse_variant(name: str) -> frozenset:
    if name == "baseline":
        return frozenset()
    parts = name.split("+")
    bad = [p for p in parts if p not in OPTIONS]
    if bad:
        raise ValueError(f"variant: unknown option(s) {bad}; expected 'baseline' or options of {OPTIONS} joined by '+'")
    return frozenset(parts)


# ------------------------------------------------------------------------------ the batch
def make_batch(shape: dict, device: str) -> dict:
    """One training batch of the pipeline: rendered street scenes at ``height x width``, grid
    regions of ``region_size`` px, the oracle's multi-hot labels of every region, the training
    transform's crops (seeded). CPU tensors."""
    import numpy as np
    import torch
    from cityscapes_rehearsal import make_image

    from mulact.data.superpixels import compute_superpixels
    from mulact.data.transforms import TrainTransform, normalize, to_float_image
    from mulact.ops import region_labels_from_mask
    from mulact.ops._backend import cpp_available

    cfg = _config()
    oracle_device = "cpu" if cpp_available() else device  # the pure-torch reference is slow at this size
    transform = TrainTransform(shape["crop"], (cfg.scale_min, cfg.scale_max), flip=cfg.hflip, ignore_index=255)
    items = []
    for b in range(shape["batch"]):
        img, label = make_image(b, shape["height"], shape["width"])
        regions = compute_superpixels(img, "grid", shape["region_size"])
        R = int(regions.max()) + 1
        reg = torch.from_numpy(regions.astype(np.int64))
        out = region_labels_from_mask(torch.from_numpy(label)[None].to(oracle_device), reg[None].to(oracle_device),
                                      R, NUM_CLASSES, ignore_index=255, trim=cfg.trim)
        x, _, reg_crop = transform(normalize(to_float_image(img)), torch.from_numpy(label.astype(np.int64)), reg,
                                   generator=torch.Generator().manual_seed(1000 + b))
        items.append((x, reg_crop, out.multi_hot[0].cpu(), R))
    Rmax = max(it[3] for it in items)
    labels = torch.zeros(len(items), Rmax, NUM_CLASSES + 1, dtype=torch.bool)
    for b, it in enumerate(items):
        labels[b, :it[3]] = it[2].bool()
    return {"image": torch.stack([it[0] for it in items]), "regions": torch.stack([it[1] for it in items]),
            "region_labels": labels}


# ------------------------------------------------------------------------------ one variant (child)
def _optimizer_factory(fused: bool, probe):
    """The trainer's ``make_optimizer`` (or the same parameter groups in a fused AdamW), with
    ``probe`` attached to the optimizer it makes."""
    import torch

    from mulact.engine import train

    base = train.make_optimizer

    def make(model, lr, encoder_lr_mult, weight_decay):
        opt = base(model, lr, encoder_lr_mult, weight_decay)
        if fused:
            groups = [{"params": g["params"], "lr": g["lr"]} for g in opt.param_groups]
            opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=True)
        probe.attach(opt)
        return opt

    return make


class FirstStepProbe:
    """Optimizer hooks that, at the first ``step()``, save the flattened gradient and, for the
    fused optimizer, compare its update with a foreach AdamW's on the same gradients."""

    def __init__(self, grad_file: str, check_fused: bool):
        self.grad_file, self.check_fused = grad_file, check_fused
        self.calls, self.optimizer_rel_err = 0, None

    def attach(self, opt) -> None:
        opt.register_step_pre_hook(self.pre)
        opt.register_step_post_hook(self.post)

    @staticmethod
    def _params(opt):
        return [p for g in opt.param_groups for p in g["params"]]

    def pre(self, opt, args, kwargs):
        import torch

        self.calls += 1
        if self.calls != 1:
            return
        params = self._params(opt)
        grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().float().reshape(-1) for p in params]
        torch.save(torch.cat(grads).cpu(), self.grad_file)
        if not self.check_fused:
            return
        self.before = [p.detach().clone() for p in params]
        clones = []
        for p in params:
            c = p.detach().clone().requires_grad_(True)
            c.grad = None if p.grad is None else p.grad.detach().clone()
            clones.append(c)
        groups, k = [], 0
        for g in opt.param_groups:
            groups.append({"params": clones[k:k + len(g["params"])], "lr": g["lr"]})
            k += len(g["params"])
        g0 = opt.param_groups[0]
        torch.optim.AdamW(groups, betas=g0["betas"], eps=g0["eps"], weight_decay=g0["weight_decay"],
                          foreach=clones[0].is_cuda, fused=False).step()
        self.reference = [c.detach() for c in clones]

    def post(self, opt, args, kwargs):
        import torch

        if self.calls != 1 or not self.check_fused:
            return
        params = self._params(opt)
        diff = torch.sqrt(sum(((p.detach() - r) ** 2).sum() for p, r in zip(params, self.reference)))
        update = torch.sqrt(sum(((r - b) ** 2).sum() for r, b in zip(self.reference, self.before)))
        self.optimizer_rel_err = float(diff / update.clamp_min(1e-30))
        del self.before, self.reference


def _float32_reference(model, net, cfg, image, regions, labels, progress, path: str) -> float:
    """The first step's loss and gradient in float32, without autocast and TF32 (saved flattened
    in the optimizer's parameter order, as :class:`FirstStepProbe` saves the step's)."""
    import torch

    from mulact.engine.losses import stage1_loss

    params = list(model.encoder_parameters()) + list(model.head_parameters())
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.autocast(device_type=image.device.type, enabled=False):
            loss, _ = stage1_loss(cfg, net(image), regions, labels, progress)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    flat = [(g if g is not None else torch.zeros_like(p)).detach().float().reshape(-1) for g, p in zip(grads, params)]
    torch.save(torch.cat(flat).cpu(), path)
    return float(loss.detach())


def child(variant: str, shape: dict, batch_file: str, grad_file: str, device: str, warmup: int, iterations: int,
          reference_file: str | None = None) -> dict:
    import torch

    from mulact.engine import train
    from mulact.engine.losses import stage1_loss
    from mulact.engine.precision import autocast_enabled
    from mulact.model import build_model

    options = parse_variant(variant)
    dev = torch.device(device)
    cfg = _config()
    if not autocast_enabled(cfg.amp, dev):
        reference_file = None  # the step itself is the float32 step
    batch = torch.load(batch_file, weights_only=True)
    if dev.type == "cuda":
        batch = {k: v.pin_memory() for k, v in batch.items()}  # the trainer's DataLoader pins on CUDA
    if "cudnn_benchmark" in options:
        torch.backends.cudnn.benchmark = True
    model = build_model(NUM_CLASSES, shape["encoder"], None, shape["decoder"], seed=0)
    for m in model.modules():  # see the module docstring: comparable losses across variants
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    memory_format = torch.channels_last if "channels_last" in options else torch.contiguous_format
    model = model.to(dev, memory_format=memory_format)
    total = 1 + warmup + iterations + 1  # the check step, warm-up, timed, and a last step holding the checkpoint
    stamps, first = [], {}

    def loader_fn(start):
        for _ in range(start, total):
            stamps.append(time.perf_counter())
            yield batch

    def step_loss(net, b, progress):  # mulact.al.trainer.Trainer.stage1's step
        image = b["image"].to(dev, non_blocking=True)
        if "channels_last" in options:
            image = image.contiguous(memory_format=torch.channels_last)
        if not first and reference_file:  # the check step, not timed
            first["float32_loss"] = _float32_reference(model, net, cfg, image, b["regions"].to(dev),
                                                       b["region_labels"].to(dev), progress, reference_file)
        logits = net(image)
        loss, parts = stage1_loss(cfg, logits, b["regions"].to(dev), b["region_labels"].to(dev), progress)
        if "loss" not in first:
            first["loss"] = float(loss.detach())
        return loss, parts

    settings = train.TrainSettings(iterations=total, lr=cfg.lr, encoder_lr_mult=cfg.encoder_lr_mult,
                                   weight_decay=cfg.weight_decay, poly_power=cfg.poly_power, seed=0, device=device,
                                   amp=cfg.amp, checkpoint_interval=10 ** 9, desc=variant, compile="compile" in options)
    probe = FirstStepProbe(grad_file, check_fused="fused_adamw" in options)
    # train_model builds its optimizer with this module-level function: the variant's, probed
    train.make_optimizer = _optimizer_factory("fused_adamw" in options, probe)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        summary = train.train_model(model, loader_fn, step_loss, settings, os.path.join(tmp, "last.pt"))
    if probe.calls == 0:
        raise RuntimeError("the probe saw no optimizer step: train_model no longer builds its optimizer with "
                           "make_optimizer")
    # stamps[k] is when step k asked for its batch, i.e. when step k-1 had finished
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    timed = steps[1 + warmup:1 + warmup + iterations]
    med = statistics.median(timed)
    return {"variant": variant, "status": "ok", "precision": "bf16" if autocast_enabled(cfg.amp, dev) else "float32",
            "first_loss": first["loss"], "float32_first_loss": first.get("float32_loss"),
            "last_loss": summary["last_loss"], "compiled": summary["compiled"],
            "optimizer_rel_err": probe.optimizer_rel_err,
            "first_step_s": round(steps[0], 3), "median_ms": round(med * 1e3, 3), "min_ms": round(min(timed) * 1e3, 3),
            "mean_ms": round(statistics.fmean(timed) * 1e3, 3), "timed_steps": len(timed),
            "images_per_s": round(shape["batch"] / med, 2),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if dev.type == "cuda" else None}


# ------------------------------------------------------------------------------ ranking (parent)
def run_variant(variant: str, args, batch_file: str, tmp: str, timeout: float) -> dict:
    grad_file = os.path.join(tmp, f"{variant}.grad.pt")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--batch-file", batch_file,
           "--grad-file", grad_file, "--device", args.device, "--warmup", str(args.warmup),
           "--iterations", str(args.iterations)] + (["--tiny"] if args.tiny else [])
    # the float32 check step: the baseline's is the reference, a compiled variant has none
    reference_file = os.path.join(tmp, f"{variant}.float32_grad.pt")
    if "compile" not in parse_variant(variant):
        cmd += ["--reference-file", reference_file]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"variant": variant, "status": f"timed out after {timeout:.0f} s", "seconds": round(timeout, 1)}
    seconds = round(time.monotonic() - start, 1)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"variant": variant, "status": f"exit {proc.returncode}: {proc.stderr[-800:]}", "seconds": seconds}
    res = json.loads(lines[-1])
    res["seconds"] = seconds
    res["grad_file"] = grad_file
    if res.get("float32_first_loss") is not None:
        res["float32_grad_file"] = reference_file
    return res


def relative_error(a, b) -> float:
    import torch

    return float(torch.linalg.vector_norm(a.double() - b.double()) / torch.linalg.vector_norm(b.double()).clamp_min(1e-30))


def rounding_floor(base: dict) -> float:
    """Relative L2 distance of the baseline's first-step gradient from its float32 gradient
    (0 for a float32 run); computed once into ``base["bf16_grad_floor"]``."""
    import torch

    if "bf16_grad_floor" not in base:
        floor = 0.0
        if base.get("float32_grad_file"):
            floor = relative_error(torch.load(base["grad_file"], weights_only=True),
                                   torch.load(base["float32_grad_file"], weights_only=True))
        base["bf16_grad_floor"] = float(f"{floor:.3g}")
    return base["bf16_grad_floor"]


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def check_against(res: dict, base: dict) -> dict:
    """``res`` with its first-step errors against the baseline ``base`` and ``check`` set to
    ``"ok"`` or the reasons it failed (a failed variant is never ranked)."""
    import torch

    if res.get("status") != "ok":
        return res
    load = functools.partial(torch.load, weights_only=True)
    loss_tol = LOSS_TOLERANCE[res["precision"]]
    grad_tol = min(max(GRAD_FLOOR_FACTOR * rounding_floor(base), GRAD_TOLERANCE_MIN), GRAD_TOLERANCE_MAX)
    loss_err = _rel(res["first_loss"], base["first_loss"])
    grad_err = relative_error(load(res["grad_file"]), load(base["grad_file"]))
    res.update(loss_rel_err=float(f"{loss_err:.3g}"), grad_rel_err=float(f"{grad_err:.3g}"),
               grad_tolerance=float(f"{grad_tol:.3g}"))
    problems = []
    if res["precision"] != base["precision"]:
        problems.append(f"precision {res['precision']} != baseline's {base['precision']}")
    if not loss_err <= loss_tol:
        problems.append(f"first loss off by {loss_err:.3g} (tolerance {loss_tol:g})")
    if not grad_err <= grad_tol:
        problems.append(f"gradient off by {grad_err:.3g} (tolerance {grad_tol:.3g})")
    if res.get("float32_grad_file") and base.get("float32_grad_file"):
        f32_loss = _rel(res["float32_first_loss"], base["float32_first_loss"])
        f32_grad = relative_error(load(res["float32_grad_file"]), load(base["float32_grad_file"]))
        res.update(float32_loss_rel_err=float(f"{f32_loss:.3g}"), float32_grad_rel_err=float(f"{f32_grad:.3g}"))
        if not f32_loss <= FLOAT32_TOLERANCE["loss"]:
            problems.append(f"float32 loss off by {f32_loss:.3g} (tolerance {FLOAT32_TOLERANCE['loss']:g})")
        if not f32_grad <= FLOAT32_TOLERANCE["grad"]:
            problems.append(f"float32 gradient off by {f32_grad:.3g} (tolerance {FLOAT32_TOLERANCE['grad']:g})")
    opt_err = res.get("optimizer_rel_err")
    if opt_err is not None and not opt_err <= OPTIMIZER_TOLERANCE:
        problems.append(f"fused AdamW update off by {opt_err:.3g} (tolerance {OPTIMIZER_TOLERANCE:g})")
    res["check"] = "ok" if not problems else "failed: " + "; ".join(problems)
    return res


def winners(results: list[dict], base: dict) -> list[str]:
    """Single options that passed the check and gained at least ``MIN_GAIN`` over the baseline."""
    out = []
    for r in results:
        opts = parse_variant(r["variant"])
        if len(opts) == 1 and r.get("check") == "ok" and r["median_ms"] <= (1 - MIN_GAIN) * base["median_ms"]:
            out.extend(opts)
    return [o for o in OPTIONS if o in out]


def section_step(args, report: dict, save) -> None:
    import torch

    shape = SHAPES["tiny" if args.tiny else "full"]
    options = [o for o in args.options if args.device == "cuda" or o not in CUDA_ONLY]
    skipped_cuda = [o for o in args.options if o not in options]
    end = args.deadline - args.loader_reserve
    section = report["step"] = {"shape": shape, "device_type": torch.device(args.device).type,
                                "variants": [], "not_started": [],
                                "not_applicable": [f"{o} (CUDA only)" for o in skipped_cuda]}
    with tempfile.TemporaryDirectory() as tmp:
        batch_file = os.path.join(tmp, "batch.pt")
        torch.save(make_batch(shape, args.device), batch_file)

        def attempt(variant: str) -> dict | None:
            left = end - time.monotonic()
            compiled = "compile" in parse_variant(variant)
            cap = args.compile_timeout if compiled else args.variant_timeout
            if left < (args.min_compile_s if compiled else 10):
                section["not_started"].append(variant)
                return None
            res = run_variant(variant, args, batch_file, tmp, timeout=min(cap, left))
            print(f"{variant}: {res['status'][:200]} ({res.get('seconds')} s)"
                  + (f", {res['median_ms']} ms per step" if res.get("median_ms") else ""), flush=True)
            return res

        base = attempt("baseline")
        if base is None or base.get("status") != "ok":
            section["variants"].append(base or {"variant": "baseline", "status": "not started (time budget)"})
            section["status"] = "failed: the baseline did not run"
            return
        base.update(check="ok (the reference)", loss_rel_err=0.0, grad_rel_err=0.0)
        rounding_floor(base)
        results = [base]
        def run(variant):  # time, check against the baseline, record at once (a capped run may end here)
            res = attempt(variant)
            if res is not None:
                results.append(check_against(res, base))
                section["variants"] = results
                save()

        for o in options:
            if o != "compile":
                run(o)
        won = winners(results, base)
        plan = []
        if len(won) >= 2:
            plan.append(variant_name(won))
        if "compile" in options:
            plan.append(variant_name(set(won) | {"compile"}))
            if won:
                plan.append("compile")
        for variant in plan:
            run(variant)
        for r in results:
            r.pop("grad_file", None)
            r.pop("float32_grad_file", None)
            if r.get("median_ms"):
                r["speedup_vs_baseline"] = round(base["median_ms"] / r["median_ms"], 3)
        ranked = [r for r in results if r.get("check", "").startswith("ok") and r.get("median_ms")]
        best = min(ranked, key=lambda r: r["median_ms"])
        section.update(status="ok", variants=results, single_option_winners=won, best=best["variant"],
                       best_median_ms=best["median_ms"], best_images_per_s=best["images_per_s"])


# ------------------------------------------------------------------------------ the loader
def _region_labels(pool, num_regions, i):
    return pool.region_labels(i, num_regions)


def loader_dataset(shape: dict, root: Path, num_images: int, superpixels: str):
    """The training view of ``mulact-train``'s stage 1 over generated Cityscapes-size images,
    its superpixels cached and 10 % of its regions labeled by the oracle (not timed)."""
    import numpy as np

    from mulact.al.data import AugmentedView, build_oracle
    from mulact.al.pool import RegionPool
    from mulact.data import CityscapesDataset, ensure_demo_dataset
    from mulact.data.transforms import TrainTransform

    cfg = _config()
    path = ensure_demo_dataset(root / "demo", seed=0, num_train=num_images, num_val=1, height=shape["height"],
                               width=shape["width"], progress=False)
    ds = CityscapesDataset(path, "train", superpixels=superpixels, region_size=shape["region_size"],
                           superpixel_dir=root / "superpixels")
    oracle = build_oracle(ds, np.arange(len(ds)), trim=cfg.trim)
    pool = RegionPool(oracle.offsets, ds.num_classes)
    rng = np.random.default_rng(0)
    candidates = np.flatnonzero(oracle.bits != 0)
    flat = np.sort(rng.choice(candidates, size=max(1, len(candidates) // 10), replace=False))
    costs = np.array([bin(int(b)).count("1") for b in oracle.bits[flat]], dtype=np.int64)
    pool.add_round(flat, oracle.bits[flat], costs)
    num_regions = int(np.diff(oracle.offsets).max())
    transform = TrainTransform(shape["crop"], (cfg.scale_min, cfg.scale_max), flip=cfg.hflip,
                               ignore_index=ds.ignore_index)
    return ds, AugmentedView(ds, transform, region_labels_fn=functools.partial(_region_labels, pool, num_regions))


def item_breakdown(ds, view, items: int) -> tuple[dict, dict]:
    """Median wall and CPU seconds (this thread's, which a loaded machine inflates much less) per
    part of one training item, in this process on one thread (a worker's view)."""
    import numpy as np
    import torch

    from mulact.data.transforms import normalize, to_float_image
    from mulact.engine.train import collate_pad

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each DataLoader worker runs with
    wall, cpu = {}, {}

    def timed(name, fn, *a, per=1):
        w, c = time.perf_counter(), time.thread_time()
        out = fn(*a)
        wall.setdefault(name, []).append((time.perf_counter() - w) / per)
        cpu.setdefault(name, []).append((time.thread_time() - c) / per)
        return out

    try:
        for k in range(items):
            i = k % len(ds)
            rgb = timed("decode image", ds.load_image, i)
            label = timed("decode label", lambda: torch.from_numpy(ds.load_label(i)))
            regions = timed("decode regions", lambda: torch.from_numpy(ds.load_regions(i).astype(np.int64)))
            image = timed("to float + normalize", lambda: normalize(to_float_image(rgb)))
            gen = torch.Generator().manual_seed(k)
            image, label, regions = timed("transform (scale, crop, flip)", view.transform, image, label, regions, gen)
            labels = timed("region labels", view.region_labels_fn, i)
            item = {"image": image, "label": label, "regions": regions, "index": i, "region_labels": labels}
            timed("collate (per item)", collate_pad, [item] * 4, ("region_labels",), per=4)
    finally:
        torch.set_num_threads(threads)
    out = []
    for table in (wall, cpu):
        med = {k: round(statistics.median(v), 4) for k, v in table.items()}
        med["total"] = round(sum(med.values()), 4)
        out.append(med)
    return out[0], out[1]


def loader_rate(view, batch_size: int, workers: int, batches: int, pin: bool) -> dict:
    import numpy as np
    import torch

    from mulact.engine.train import ResumableBatchSampler, collate_pad
    from mulact.runstore import worker_init_fn

    sampler = ResumableBatchSampler(np.arange(len(view)), batch_size, batches, seed=0, rank=0, world_size=1)
    loader = torch.utils.data.DataLoader(
        view, batch_sampler=sampler, num_workers=workers,
        collate_fn=functools.partial(collate_pad, extra_keys=("region_labels",)), pin_memory=pin,
        worker_init_fn=worker_init_fn() if workers else None)
    start = time.perf_counter()
    stamps = []
    for batch in loader:
        stamps.append(time.perf_counter())
        assert batch["image"].shape[0] == batch_size
    # each worker's first batch includes its start-up: count from the batch after them
    skip = max(workers, 1)
    if len(stamps) <= skip:
        raise ValueError(f"--loader-batches: need more than {skip} batches with {workers} workers, got {len(stamps)}")
    steady = (len(stamps) - skip) * batch_size / (stamps[-1] - stamps[skip - 1])
    return {"workers": workers, "batches": len(stamps), "first_batch_s": round(stamps[0] - start, 2),
            "images_per_s": round(steady, 2), "counted_batches": len(stamps) - skip}


def section_loader(args, report: dict, save) -> None:
    import cv2
    import torch

    shape = SHAPES["tiny" if args.tiny else "full"]
    method = args.loader_superpixels
    if method == "auto":
        # SEEDS needs opencv-contrib, which a bare GPU image may lack (as in gpu_check.py), and takes
        # ~9 s per image to precompute, more than a GPU run's budget affords: the grid keeps the
        # region count there (its maps decode a little faster: 5 % of an item's cost with SEEDS's).
        method = "seeds" if hasattr(cv2, "ximgproc") and args.device == "cpu" else "grid"
    section = report["loader"] = {"superpixels": method, "batch": shape["batch"], "crop": shape["crop"],
                                  "image_size": [shape["height"], shape["width"]], "rates": [],
                                  "host_cpus": os.cpu_count(), "torch_threads_main": torch.get_num_threads()}
    try:
        load = os.getloadavg()
        section["load_average_at_start"] = [round(v, 2) for v in load]
    except OSError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ds, view = loader_dataset(shape, Path(tmp), args.loader_images, method)
        section["setup_s"] = round(time.perf_counter() - t0, 1)
        section["item_seconds_one_thread"], section["item_cpu_seconds_one_thread"] = item_breakdown(
            ds, view, args.loader_items)
        save()
        for w in args.workers:
            if time.monotonic() > args.deadline:
                section.setdefault("not_started", []).append(f"{w} workers (time budget)")
                continue
            res = loader_rate(view, shape["batch"], w, max(args.loader_batches, 3 * w), pin=args.device == "cuda")
            section["rates"].append(res)
            print(f"loader, {w} workers: {res['images_per_s']} images/s", flush=True)
            save()
    section["status"] = "ok"


def gpu_consumption(report: dict, reference: Path | None) -> dict | None:
    """Images per second the training step consumes: this run's, else the recorded rehearsal's."""
    step = report.get("step", {})
    if step.get("status") == "ok" and step.get("device_type") == "cuda":
        base = step["variants"][0]
        return {"source": "this run", "batch": step["shape"]["batch"], "baseline_ms": base["median_ms"], "baseline_images_per_s": base["images_per_s"],
                "best": step["best"], "best_ms": step["best_median_ms"], "best_images_per_s": step["best_images_per_s"]}
    if reference is not None and reference.is_file():
        rec = json.loads(reference.read_text())
        it = rec["stages"]["train_iteration"]
        return {"source": f"{reference.name} ({rec.get('device_name')}, {rec.get('date')})",
                "batch": rec["batch_size"], "baseline_ms": round(it["median_s"] * 1e3, 2),
                "baseline_images_per_s": round(rec["batch_size"] / it["median_s"], 2)}
    return None


# ------------------------------------------------------------------------------ report
def render(report: dict) -> str:
    lines = [f"# Training throughput: the step's variants and the data loader ({report['device_name']})", "",
             f"{report['date']}; torch {report['torch']}; {report['note']}", ""]
    step = report.get("step")
    if step:
        s = step["shape"]
        lines += ["## Training step", "",
                  f"DeepLabV3+ {s['encoder']} (decoder {s['decoder']}), batch {s['batch']} of {s['crop']}x{s['crop']} "
                  f"crops, the paper's loss, AdamW, through `train_model` (batch copied from pinned memory, the "
                  f"trainer's synchronisations); {step.get('status', 'incomplete')}. Per-step wall time over the timed "
                  f"steps after {report['warmup']} warm-up steps; first step includes compilation. Check: first-step "
                  f"loss (tolerance {LOSS_TOLERANCE}) and gradient against the baseline's (tolerance "
                  f"{GRAD_FLOOR_FACTOR:g} x the baseline's bf16-vs-float32 gradient distance "
                  f"{(step['variants'] or [{}])[0].get('bf16_grad_floor')}, within [{GRAD_TOLERANCE_MIN:g}, "
                  f"{GRAD_TOLERANCE_MAX:g}]); eager variants of a bf16 run also in float32 (f32 errors, tolerances "
                  f"{FLOAT32_TOLERANCE}); fused AdamW's "
                  f"update against foreach AdamW's (tolerance {OPTIMIZER_TOLERANCE:g}).", "",
                  "| variant | median ms | min ms | images/s | speed-up | first step s | peak GiB | loss err | grad err "
                  "| grad tol | f32 loss err | f32 grad err | AdamW err | check |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in step["variants"]:
            if r.get("status") != "ok":
                lines.append(f"| {r['variant']} | {r['status'][:160]} |" + " |" * 12)
                continue
            opt_err = "" if r.get("optimizer_rel_err") is None else f"{r['optimizer_rel_err']:.2g}"
            lines.append(f"| {r['variant']} | {r['median_ms']} | {r['min_ms']} | {r['images_per_s']} | "
                         f"{r.get('speedup_vs_baseline', '')} | {r['first_step_s']} | {r.get('peak_memory_gib') or ''} | "
                         f"{r.get('loss_rel_err', '')} | {r.get('grad_rel_err', '')} | {r.get('grad_tolerance', '')} | "
                         f"{r.get('float32_loss_rel_err', '')} | {r.get('float32_grad_rel_err', '')} | "
                         f"{opt_err} | {r.get('check', '')} |")
        if step.get("best"):
            lines += ["", f"Best: **{step['best']}**, {step['best_median_ms']} ms per step "
                          f"({step['best_images_per_s']} images/s); single options that gained >= {MIN_GAIN:.0%}: "
                          f"{', '.join(step['single_option_winners']) or 'none'}."]
        for key, what in (("not_started", "not started (time budget)"), ("not_applicable", "not applicable here")):
            if step.get(key):
                lines.append(f"{what.capitalize()}: {', '.join(step[key])}.")
        lines.append("")
    loader = report.get("loader")
    if loader:
        lines += ["## Data loader", "",
                  f"The training DataLoader of stage 1 on {loader['image_size'][0]}x{loader['image_size'][1]} generated "
                  f"PNGs ({loader['superpixels']} superpixels, cached), batch {loader['batch']} of {loader['crop']} crops; "
                  f"{loader['host_cpus']} host CPUs, load average at start {loader.get('load_average_at_start')}. "
                  "Steady-state rate: each worker's first batch (its start-up) is not counted.", "",
                  "| workers | images/s | batches counted | first batch s |", "|---:|---:|---:|---:|"]
        for r in loader["rates"]:
            lines.append(f"| {r['workers']} | {r['images_per_s']} | {r['counted_batches']} | {r['first_batch_s']} |")
        if loader.get("not_started"):
            lines += ["", f"Not started: {', '.join(loader['not_started'])}."]
        parts = loader.get("item_seconds_one_thread", {})
        cpu = loader.get("item_cpu_seconds_one_thread", {})
        if parts:
            lines += ["", "One item on one thread (a worker's view), median seconds:", "",
                      "| part | wall s | CPU s |", "|---|---:|---:|"] + [
                f"| {k} | {v} | {cpu.get(k, '')} |" for k, v in parts.items()]
        gpu = report.get("gpu_consumes")
        if gpu:
            best = max((r["images_per_s"] for r in loader["rates"]), default=None)
            lines += ["", f"The GPU step consumes {gpu['baseline_images_per_s']} images/s ({gpu['baseline_ms']} ms per "
                          f"batch of {gpu['batch']}; {gpu['source']})"
                      + (f", {gpu['best_images_per_s']} with {gpu['best']}" if gpu.get("best") else "") + "."]
            if best:
                per_item = cpu.get("total") or parts.get("total", 0)
                lines.append(f"Best loader rate here: {best} images/s = {best / gpu['baseline_images_per_s']:.2f} of it; "
                             f"at {per_item} CPU s per item, feeding it takes about "
                             f"{gpu['baseline_images_per_s'] * per_item:.1f} busy worker cores of this machine.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cuda (default where available) or cpu")
    p.add_argument("--tiny", action="store_true", help="tiny shapes and a ResNet-18 (exercises the script on the CPU)")
    p.add_argument("--part", nargs="+", default=["step", "loader"], choices=["step", "loader"])
    p.add_argument("--budget", type=float, default=180.0, help="seconds for everything; no variant starts after it")
    p.add_argument("--loader-reserve", type=float, default=40.0, help="seconds of the budget the step leaves to the loader")
    p.add_argument("--options", nargs="*", default=list(OPTIONS), choices=OPTIONS, help="single options timed")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iterations", type=int, default=20, help="timed steps per variant")
    p.add_argument("--variant-timeout", type=float, default=60.0, help="seconds an eager variant's process may take")
    p.add_argument("--compile-timeout", type=float, default=150.0, help="seconds a compiled variant's process may take")
    p.add_argument("--min-compile-s", type=float, default=45.0, help="a compiled variant starts only with this much budget left")
    p.add_argument("--workers", type=int, nargs="+", default=None, help="DataLoader workers (default: 0 4 8 16 on CUDA, 0 1 2 here)")
    p.add_argument("--loader-images", type=int, default=8, help="generated images the loader cycles through")
    p.add_argument("--loader-batches", type=int, default=6,
                   help="batches read per workers setting (at least 3 per worker: each worker's first is not counted)")
    p.add_argument("--loader-items", type=int, default=4, help="items of the one-thread breakdown")
    p.add_argument("--loader-superpixels", default="auto", choices=["auto", "seeds", "grid", "slic"],
                   help="superpixels of the loader's images (auto: SEEDS on the CPU where opencv-contrib has it, "
                        "else the 32-px grid)")
    p.add_argument("--gpu-reference", type=Path, default=HERE / "results" / "cityscapes_rehearsal_cuda.json",
                   help="the recorded rehearsal whose training step stands for the GPU when this run has none")
    p.add_argument("--note", default="", help="conditions of the run (load, machine) recorded with the result")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--child", metavar="VARIANT", help=argparse.SUPPRESS)
    p.add_argument("--batch-file", help=argparse.SUPPRESS)
    p.add_argument("--grad-file", help=argparse.SUPPRESS)
    p.add_argument("--reference-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # the dataset's progress bars, here and in the children
    _prepare_imports()
    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available")
    if args.warmup < 0 or args.iterations < 1:
        p.error("--warmup must be >= 0 and --iterations >= 1")
    shape = SHAPES["tiny" if args.tiny else "full"]
    if args.child:
        print(json.dumps(child(args.child, shape, args.batch_file, args.grad_file, args.device, args.warmup,
                               args.iterations, args.reference_file)))
        return None
    if args.workers is None:
        args.workers = [0, 4, 8, 16] if args.device == "cuda" else [0, 1, 2]
    if min(args.workers) < 0:
        p.error("--workers: expected counts >= 0")
    if "loader" not in args.part:
        args.loader_reserve = 0.0
    cuda = args.device.startswith("cuda")
    report = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": args.device,
              "device_name": torch.cuda.get_device_name() if cuda else (platform.processor() or platform.machine()),
              "torch": torch.__version__, "note": args.note, "warmup": args.warmup, "iterations": args.iterations}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"train_throughput_{'cuda' if cuda else 'cpu'}"

    def save():
        report["gpu_consumes"] = gpu_consumption(report, args.gpu_reference)
        stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
        stem.with_suffix(".md").write_text(render(report))

    started = time.monotonic()
    args.deadline = started + args.budget
    for part, run in (("step", section_step), ("loader", section_loader)):
        if part not in args.part:
            continue
        try:
            run(args, report, save)
        except Exception as exc:  # record the reason, keep the other part
            import traceback

            report.setdefault(part, {})["status"] = f"failed: {type(exc).__name__}: {exc}"
            report[part]["traceback"] = traceback.format_exc()[-3000:]
        save()
    report["seconds"] = round(time.monotonic() - started, 1)
    save()
    print(render(report))
    return report


if __name__ == "__main__":
    main()
