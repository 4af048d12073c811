"""Cityscapes-scale rehearsal: the cost of every pipeline stage per 1024x2048 image.

    python benchmarks/cityscapes_rehearsal.py                       # CPU, 2 images, 2 iterations
    python benchmarks/cityscapes_rehearsal.py --device cuda --images 8 --iterations 20

Synthetic street scenes from the demo generator (:func:`mulact.data.demo.render_scene`)
rendered at Cityscapes resolution, mapped to the 19 Cityscapes train ids, then, with the
``cityscapes`` preset's settings (DeepLabV3+ ResNet-50, decoder 256, SEEDS 32 px, crop 769,
batch 4, tau 0.1), each stage is timed on its own:

- ``seeds``: SEEDS superpixels of one image (:func:`mulact.data.superpixels.compute_superpixels`);
- ``oracle``: the oracle's trimmed multi-hot labels of all its regions (``region_labels_from_mask``);
- ``acquisition``: forward pass at full resolution + ``region_uncertainty_stats`` + PixBal scores;
- ``train_iteration``: one stage-1 step on a batch of 4 random-scaled 769 crops (forward, the
  paper loss, backward, AdamW step); per *iteration*, not per image;
- ``pseudo_labels``: forward with features + ``prototype_pseudo_labels`` (localization and
  expansion) for an image with 10 % of its regions labeled;
- ``evaluation``: forward pass + argmax + confusion matrix.

Per stage it records the median wall time and the peak memory: the process's resident-set
high-water mark during that stage (Linux ``/proc/self/clear_refs`` resets it before each
stage) on CPU, ``torch.cuda.max_memory_allocated`` on CUDA. The model is randomly initialised
(weights do not change the cost). Results go to ``benchmarks/results/cityscapes_rehearsal_<device>.json``
and ``.md``; ``--projection`` adds the projected wall time of the paper's full protocol built
from these numbers (see :func:`project`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))

# The paper's protocol on Cityscapes (Hwang et al. 2023, §4.1 / Appendix B).
PROTOCOL = dict(rounds=5, iterations=80_000, stages=2, pool_images=2975, val_images=500, batch_size=4)


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process (all threads). On a machine shared with other
    jobs, wall time grows with the load while CPU time much less, so CPU seconds / threads is
    the better estimate of the wall time on idle cores."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rss_reset() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False elsewhere."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _rss_peak_bytes() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Stage:
    """Times repeated calls of one stage and tracks its peak memory."""

    def __init__(self, name: str, device: torch.device):
        self.name, self.device, self.times, self.cpu, self.peak = name, device, [], [], 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            _rss_reset()
        self._c0 = _cpu_seconds()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._t0)
        self.cpu.append(_cpu_seconds() - self._c0)
        peak = torch.cuda.max_memory_allocated() if self.device.type == "cuda" else _rss_peak_bytes()
        self.peak = max(self.peak, peak)
        print(f"  {self.name}: {self.times[-1]:.2f} s wall, {self.cpu[-1]:.2f} s CPU (peak {peak / 2**30:.2f} GiB)",
              flush=True)
        return False

    def record(self, unit: str) -> dict:
        return {"median_s": statistics.median(self.times), "min_s": min(self.times), "runs": len(self.times),
                "times_s": [round(t, 4) for t in self.times], "unit": unit,
                "median_cpu_s": statistics.median(self.cpu),
                "peak_memory_gib": round(self.peak / 2**30, 3),
                "memory_kind": "cuda max_memory_allocated" if self.device.type == "cuda" else "process peak RSS"}


def make_image(seed: int, height: int, width: int):
    from mulact.data.cityscapes import ID_TO_TRAIN_ID
    from mulact.data.demo import render_scene

    img, label_ids = render_scene(np.random.default_rng([seed, 13]), height, width)
    return img, ID_TO_TRAIN_ID[label_ids]


def run(args) -> dict:
    from mulact.config import PRESETS, TrainConfig, apply_overrides
    from mulact.data.superpixels import compute_superpixels
    from mulact.data.transforms import TrainTransform, normalize, to_float_image
    from mulact.engine.evaluate import confusion_matrix
    from mulact.engine.losses import stage1_loss
    from mulact.engine.train import make_optimizer
    from mulact.model import build_model
    from mulact.ops import (
        class_prior,
        prototype_pseudo_labels,
        region_labels_from_mask,
        region_scores,
        region_uncertainty_stats,
    )

    device = torch.device(args.device)
    oracle_device = torch.device(args.oracle_device)
    cfg = apply_overrides(TrainConfig(), PRESETS["cityscapes"], "preset 'cityscapes'")
    if args.crop_size is not None:
        cfg.crop_size = args.crop_size
    C, tau = 19, cfg.temperature
    H, W = args.height, args.width
    stages = {k: Stage(k, device) for k in
              ("render", "seeds", "oracle", "acquisition", "train_iteration", "pseudo_labels", "evaluation")}
    images = []
    print(f"rehearsal at {H}x{W} on {device}: {args.images} images, {args.iterations} training iterations", flush=True)
    for i in range(args.images):
        with stages["render"]:
            img, label = make_image(i, H, W)
        with stages["seeds"]:
            regions = compute_superpixels(img, args.superpixels, cfg.region_size)
        R = int(regions.max()) + 1
        with stages["oracle"]:
            out = region_labels_from_mask(torch.from_numpy(label)[None].to(oracle_device),
                                          torch.from_numpy(regions.astype(np.int64))[None].to(oracle_device),
                                          R, C, ignore_index=255, trim=cfg.trim)
        images.append((img, label, regions, R, out.multi_hot[0].cpu()))
    region_counts = [im[3] for im in images]

    model = build_model(C, cfg.encoder, None, cfg.decoder_channels, seed=0).to(device)
    use_amp = device.type == "cuda" and cfg.amp

    def forward(x, **kw):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            return model(x, **kw)

    model.eval()
    with torch.no_grad():
        for img, label, regions, R, multi_hot in images:
            x = normalize(to_float_image(img))[None].to(device)
            reg = torch.from_numpy(regions.astype(np.int64))[None].to(device)
            with stages["acquisition"]:
                logits = forward(x)
                st = region_uncertainty_stats(logits, reg, R, temperature=tau, measure="bvsb")
                prior = class_prior(st.prob_sum, st.num_pixels)
                region_scores("pixbal", st.u_sum, st.count, prior=prior, nu=cfg.nu).cpu()
            del logits, st
            with stages["evaluation"]:
                pred = forward(x)[:, :C].argmax(1)
                confusion_matrix(pred, torch.from_numpy(label)[None].to(device), C)
            del pred
            # 10 % of the regions labeled with the oracle's answers (the rest unlabeled)
            labeled = torch.zeros(R, dtype=torch.bool)
            labeled[torch.randperm(R, generator=torch.Generator().manual_seed(R))[: R // 10]] = True
            region_labels = (multi_hot.bool() & labeled[:, None])[None].to(device)
            with stages["pseudo_labels"]:
                logits, feats = forward(x, return_features=True)
                prototype_pseudo_labels(feats, logits, reg, region_labels, expand=True, temperature=tau).cpu()
            del logits, feats, x, reg

    # one stage-1 iteration = batch 4 of 769 crops after random scaling 0.5-2.0 and flips
    model.train()
    opt = make_optimizer(model, cfg.lr, cfg.encoder_lr_mult, cfg.weight_decay)
    transform = TrainTransform(cfg.crop_size, (cfg.scale_min, cfg.scale_max), flip=cfg.hflip, ignore_index=255)
    Rmax = max(region_counts)
    for k in range(args.iterations):
        batch_x, batch_r, batch_l = [], [], []
        for b in range(cfg.batch_size):
            img, label, regions, R, multi_hot = images[(k * cfg.batch_size + b) % len(images)]
            gen = torch.Generator().manual_seed(1000 * k + b)
            x, _, reg = transform(normalize(to_float_image(img)), torch.from_numpy(label.astype(np.int64)),
                                  torch.from_numpy(regions.astype(np.int64)), generator=gen)
            lab = torch.zeros(Rmax, C + 1, dtype=torch.bool)
            lab[:R] = multi_hot.bool()
            batch_x.append(x), batch_r.append(reg), batch_l.append(lab)
        x, reg, lab = torch.stack(batch_x).to(device), torch.stack(batch_r).to(device), torch.stack(batch_l).to(device)
        with stages["train_iteration"]:
            logits = forward(x)
            loss, _ = stage1_loss(cfg, logits, reg, lab, k / max(args.iterations, 1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        del logits, loss

    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "note": args.note,
        "image_size": [H, W],
        "superpixels": args.superpixels,
        "oracle_device": str(oracle_device),
        "regions_per_image": region_counts,
        "model": f"DeepLabV3+ {cfg.encoder}, decoder {cfg.decoder_channels}, {C + 1} outputs",
        "amp_bf16": use_amp,
        "batch_size": cfg.batch_size,
        "crop_size": cfg.crop_size,
        "stages": {
            "render (synthetic data, not a pipeline stage)": stages["render"].record("per image"),
            "seeds": stages["seeds"].record(f"per image ({args.superpixels})"),
            "oracle": stages["oracle"].record("per image"),
            "acquisition": stages["acquisition"].record("per image"),
            "train_iteration": stages["train_iteration"].record("per iteration (batch 4)"),
            "pseudo_labels": stages["pseudo_labels"].record("per image"),
            "evaluation": stages["evaluation"].record("per image"),
        },
        "overall_peak_rss_gib": round(_rss_max_lifetime() / 2**30, 3),
    }
    return result


def _rss_max_lifetime() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def project(per: dict[str, float], gpus: int = 1, scaling: float = 1.0, p=PROTOCOL) -> dict:
    """Projected seconds of the full protocol from per-step seconds.

    ``per``: seconds of ``seeds``, ``oracle``, ``acquisition``, ``pseudo_labels``,
    ``evaluation`` per image and ``train_iteration`` per iteration of the global batch on one
    device. With ``gpus`` devices, training is ``train_iteration / (gpus * scaling)`` (each
    rank runs batch/gpus; ``scaling`` is the assumed data-parallel efficiency) and the
    per-image stages divide by ``gpus`` (they are sharded). Rounds: one SEEDS + oracle pass
    over the pool and SEEDS over the validation split (once), acquisition over the pool in
    rounds 2.. (round 1 is random), stage 1 and stage 2 training, pseudo labels for the
    labeled images (bounded by the pool; counted at the full pool), two evaluations per round.
    """
    n_pool, n_val, rounds = p["pool_images"], p["val_images"], p["rounds"]
    out = {
        "superpixels_and_oracle": (n_pool * (per["seeds"] + per["oracle"]) + n_val * per["seeds"]) / gpus,
        "acquisition": (rounds - 1) * n_pool * per["acquisition"] / gpus,
        "training": rounds * p["stages"] * p["iterations"] * per["train_iteration"] / (gpus * scaling),
        "pseudo_labels": rounds * n_pool * per["pseudo_labels"] / gpus,
        "evaluation": rounds * p["stages"] * n_val * per["evaluation"] / gpus,
    }
    out["total"] = sum(out.values())
    return out


# Per-step seconds on one data-centre GPU (A100/H100 class, bf16 autocast) used only when no
# GPU rehearsal result is given: ESTIMATES from before any GPU run, bounded by the paper's
# report of about 65 h for the whole protocol on one GPU (<= 0.29 s per training iteration).
# A measured result (``--project-gpu cityscapes_rehearsal_cuda.json``) replaces them.
GPU_ESTIMATES = {"train_iteration": 0.25, "acquisition": 0.05, "pseudo_labels": 0.08, "evaluation": 0.05}
# Data-parallel efficiency assumed for N GPUs of one node (DDP + SyncBatchNorm, NVLink).
DDP_EFFICIENCY = 0.85


def projection_table(res: dict, host_cores: int = 16, gpu_res: dict | None = None) -> str:
    """Markdown table of the projected protocol wall time on 1 CPU machine, 1 GPU and N GPUs.

    CPU: the measured per-step wall times of ``res`` (take them on a quiet machine). GPU: the
    medians of a CUDA rehearsal ``gpu_res`` when given, else :data:`GPU_ESTIMATES`; SEEDS and
    the oracle (measured CPU seconds of ``res``, single-threaded) stay on the host CPU, spread
    over ``host_cores`` processes (``mulact-superpixels`` or the ranks). Training runs on at
    most ``batch_size`` ranks (one image per GPU for the paper's batch 4); N GPUs are always a
    projection (:data:`DDP_EFFICIENCY`).
    """
    st = res["stages"]
    threads = res["cpu_threads"]
    cpu = {k: st[k]["median_s"] for k in ("seeds", "oracle", "acquisition", "train_iteration",
                                            "pseudo_labels", "evaluation")}
    rows = []

    def add(label, per, gpus=1, train_ranks=1, sp_procs=1):
        p = dict(per)
        sp = project({**p, "train_iteration": 0.0, "acquisition": 0.0, "pseudo_labels": 0.0, "evaluation": 0.0},
                     gpus=sp_procs)["superpixels_and_oracle"]
        rest = project(p, gpus=gpus)
        train = PROTOCOL["rounds"] * PROTOCOL["stages"] * PROTOCOL["iterations"] * p["train_iteration"] / (
            train_ranks * (DDP_EFFICIENCY if train_ranks > 1 else 1.0))
        other = rest["acquisition"] + rest["pseudo_labels"] + rest["evaluation"]
        total = sp + train + other
        rows.append(f"| {label} | {sp / 3600:.1f} | {train / 3600:,.1f} | {other / 3600:.1f} | **{total / 3600:,.1f}** "
                    f"({total / 86400:,.1f} days) |")

    add(f"1 CPU machine ({threads} cores, measured here)", cpu)
    if gpu_res is not None:
        per_gpu = {k: gpu_res["stages"][k]["median_s"] for k in GPU_ESTIMATES}
        name = f"1 GPU ({gpu_res['device_name']}, measured)"
    else:
        per_gpu, name = dict(GPU_ESTIMATES), "1 GPU (estimated)"
    gpu = {"seeds": st["seeds"]["median_cpu_s"], "oracle": st["oracle"]["median_cpu_s"], **per_gpu}
    add(f"{name}, SEEDS on {host_cores} host cores", gpu, sp_procs=host_cores)
    for n in (4, 8):
        b = PROTOCOL["batch_size"]
        add(f"{n} GPUs, 1 node (projected), training on {min(n, b)} ranks (batch {b})", gpu, gpus=n,
            train_ranks=min(n, b), sp_procs=max(host_cores, n))
    b8 = dict(gpu, train_iteration=2 * gpu["train_iteration"])  # an iteration now holds 8 images
    add("8 GPUs with --batch-size 8 (2x the paper's batch: not the paper's protocol)", b8, gpus=8,
        train_ranks=8, sp_procs=16)
    head = ["| setting | superpixels + oracle (h) | training (h) | acquisition + pseudo labels + evaluation (h) | total (h) |",
            "|---|---:|---:|---:|---:|"]
    return "\n".join(head + rows)


def to_markdown(res: dict) -> str:
    lines = [f"# Cityscapes-scale rehearsal, {res['device']} ({res['device_name']})", "",
             f"{res['date']}; torch {res['torch']}, {res['cpu_threads']} CPU threads; {res['note']}", "",
             f"{res['image_size'][0]}x{res['image_size'][1]} synthetic images, regions per image: "
             f"{res['regions_per_image']} ({res.get('superpixels', 'seeds')}); {res['model']}; bf16 autocast: "
             f"{res['amp_bf16']}; oracle on {res.get('oracle_device', 'cpu')}", "",
             "| stage | unit | median wall | min wall | median CPU time | runs | peak memory |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, s in res["stages"].items():
        lines.append(f"| {name} | {s['unit']} | {s['median_s']:.3f} s | {s['min_s']:.3f} s | "
                     f"{s['median_cpu_s']:.3f} s | {s['runs']} | {s['peak_memory_gib']:.2f} GiB ({s['memory_kind']}) |")
    lines += ["", f"Process peak RSS over the whole run: {res['overall_peak_rss_gib']:.2f} GiB", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=2, help="images timed per per-image stage")
    p.add_argument("--iterations", type=int, default=2, help="training iterations timed")
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--superpixels", default="seeds", choices=["seeds", "slic", "grid"],
                   help="superpixel method of the `seeds` stage (the pipeline's is SEEDS; `grid` keeps R = 2048 "
                        "where opencv-contrib's ximgproc is missing, e.g. on a bare GPU machine)")
    p.add_argument("--oracle-device", default="cpu",
                   help="device of the oracle's region_labels_from_mask (the pipeline runs it on the CPU)")
    p.add_argument("--crop-size", type=int, default=None, help="training crop (default: the preset's 769)")
    p.add_argument("--note", default="", help="conditions of the run (load, machine) recorded with the result")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--project", metavar="JSON", help="print the protocol projection from a CPU result file and exit")
    p.add_argument("--project-gpu", metavar="JSON",
                   help="with --project: the GPU per-step times from a CUDA result file instead of the estimates")
    args = p.parse_args(argv)
    if args.project:
        with open(args.project) as fh:
            cpu = json.load(fh)
        gpu = None
        if args.project_gpu:
            with open(args.project_gpu) as fh:
                gpu = json.load(fh)
        print(projection_table(cpu, gpu_res=gpu))
        return 0
    if args.images < 1 or args.iterations < 1:
        p.error("--images and --iterations must be >= 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available")
    res = run(args)
    os.makedirs(args.out, exist_ok=True)
    tag = torch.device(args.device).type
    base = os.path.join(args.out, f"cityscapes_rehearsal_{tag}")
    with open(base + ".json", "w") as fh:
        json.dump(res, fh, indent=1)
    with open(base + ".md", "w") as fh:
        fh.write(to_markdown(res))
    print(to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
