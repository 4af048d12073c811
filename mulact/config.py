"""Experiment configuration for ``mulact-train``: one dataclass, presets, file loading.

Precedence (later wins): dataclass defaults < preset < ``--config FILE`` (YAML or JSON) <
command-line flags. Without ``--preset`` the preset named like the dataset applies
(``demo`` when nothing is given, so ``mulact-train`` alone runs the CPU demo). The resolved configuration is written to the run directory
(``config.yaml``) so a run can be inspected and resumed with the same command.
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field, fields

__all__ = ["TrainConfig", "PRESETS", "apply_overrides", "load_config_file", "resolve_config"]

ACQUISITIONS = ("random", "bvsb", "classbal", "pixbal", "margin", "entropy")
LABELINGS = ("multi", "dominant")
LOSSES = ("mulact", "dominant", "infimum", "rc")
DATASETS = ("demo", "cityscapes", "voc")


@dataclass
class TrainConfig:
    """Every option of an AL experiment. ``help`` metadata feeds ``mulact-train --help``."""

    # -- run -----------------------------------------------------------------------------
    name: str = field(default="demo", metadata={"help": "run name; the run directory defaults to runs/<name>"})
    run_dir: str | None = field(default=None, metadata={"help": "directory holding config, selections, checkpoints, metrics (default runs/<name>)"})
    seed: int = field(default=0, metadata={"help": "seed of selections, model initialisation and data order"})
    device: str = field(default="auto", metadata={"help": "'auto' (cuda if available), 'cpu' or 'cuda[:i]'"})
    amp: bool = field(default=True, metadata={"help": "bfloat16 autocast for encoder/decoder on CUDA (ignored on CPU)"})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes"})
    dist_timeout: float = field(default=1800.0, metadata={"help": "under torchrun: seconds a collective waits for the other ranks before the run stops with an error (a dead or stalled rank)"})
    # -- data ----------------------------------------------------------------------------
    dataset: str = field(default="demo", metadata={"help": f"one of {DATASETS}"})
    data_root: str | None = field(default=None, metadata={"help": "dataset root (Cityscapes: holds leftImg8bit/ and gtFine/; VOC: VOCdevkit/VOC2012 or its parent); demo: where the generated demo set is kept (default: $MULACT_CACHE or ~/.cache/mulact)"})
    superpixel_dir: str | None = field(default=None, metadata={"help": "where superpixel maps are read/cached (default: dataset's own cache location)"})
    superpixel_method: str = field(default="seeds", metadata={"help": "'seeds' or 'slic'"})
    region_size: int = field(default=32, metadata={"help": "superpixel size in pixels (32: ~32x32 regions, ~2048 per Cityscapes image)"})
    demo_train_images: int = field(default=200, metadata={"help": "demo dataset: number of generated training images (128x256)"})
    demo_val_images: int = field(default=50, metadata={"help": "demo dataset: number of generated validation images"})
    demo_height: int = field(default=128, metadata={"help": "demo dataset: image height"})
    demo_width: int = field(default=256, metadata={"help": "demo dataset: image width"})
    max_train_images: int | None = field(default=None, metadata={"help": "use only the first N training images (debugging)"})
    max_val_images: int | None = field(default=None, metadata={"help": "evaluate on the first N validation images only (debugging)"})
    crop_size: int = field(default=769, metadata={"help": "square training crop after random scaling"})
    scale_min: float = field(default=0.5, metadata={"help": "random scale lower bound"})
    scale_max: float = field(default=2.0, metadata={"help": "random scale upper bound"})
    hflip: bool = field(default=True, metadata={"help": "random horizontal flips"})
    trim: int = field(default=5, metadata={"help": "oracle boundary trim (dilation kernel) in pixels, Appendix B"})
    # -- model ---------------------------------------------------------------------------
    encoder: str = field(default="resnet50", metadata={"help": "smp encoder name (resnet50/resnet101 for the paper; resnet18, mobilenet_v2 for small runs)"})
    encoder_weights: str | None = field(default=None, metadata={"help": "None (random init), 'imagenet' (smp download, needs network) or a path to a local encoder state_dict"})
    decoder_channels: int = field(default=256, metadata={"help": "DeepLabV3+ decoder/ASPP width (feature dim of the cosine head)"})
    temperature: float = field(default=0.1, metadata={"help": "softmax temperature τ applied to the cosine logits everywhere"})
    # -- active learning -----------------------------------------------------------------
    rounds: int = field(default=5, metadata={"help": "number of AL rounds (round 1 selects at random)"})
    budget: int = field(default=100_000, metadata={"help": "clicks per round"})
    acquisition: str = field(default="pixbal", metadata={"help": f"one of {ACQUISITIONS}"})
    labeling: str = field(default="multi", metadata={"help": "'multi' (multi-class query, cost = classes in region) or 'dominant' (cost 1)"})
    nu: float = field(default=6.0, metadata={"help": "PixBal class-balance strength ν (Eq. 4)"})
    acquisition_batch_size: int = field(default=4, metadata={"help": "images per forward pass when scoring the pool"})
    oracle: str = field(default="simulated", metadata={"help": "who answers the queries: 'simulated' (ground-truth masks) or 'human' (the run stops after each acquisition until the answers exist; label with mulact-label RUN_DIR, then rerun)"})
    expected_classes_prior: float = field(default=1.5, metadata={"help": "human oracle: expected classes per multi-class query in round 1, before any answer is known (the budget cut takes regions until the expected clicks reach --budget)"})
    # -- stage 1 -------------------------------------------------------------------------
    loss: str = field(default="mulact", metadata={"help": f"stage-1 loss, one of {LOSSES}: mulact = λ_CE·L_CE + λ_MP·L_MP + λ_PP·L_PP; dominant = CE with each region's dominant label; infimum/rc = partial-label baselines (Appendix C.2)"})
    lambda_ce: float = field(default=16.0, metadata={"help": "λ_CE (Eq. 10)"})
    lambda_mp: float = field(default=8.0, metadata={"help": "λ_MP (Eq. 10); 0 = ablation 'w/o MP'"})
    lambda_pp: float = field(default=1.0, metadata={"help": "weight of L_PP (1 in the paper); 0 = ablation 'w/o PP'"})
    iterations: int = field(default=80_000, metadata={"help": "stage-1 iterations per round"})
    batch_size: int = field(default=4, metadata={"help": "training batch size"})
    lr: float = field(default=2e-3, metadata={"help": "stage-1 learning rate of decoder+head; the encoder uses lr × encoder_lr_mult"})
    encoder_lr_mult: float = field(default=0.1, metadata={"help": "encoder learning rate relative to the head's (paper: 10x lower)"})
    weight_decay: float = field(default=1e-5, metadata={"help": "AdamW weight decay"})
    poly_power: float = field(default=0.9, metadata={"help": "poly learning-rate schedule power"})
    eval_interval: int = field(default=5000, metadata={"help": "validate every N iterations and keep the best checkpoint (0: only at the end)"})
    checkpoint_interval: int = field(default=1000, metadata={"help": "save a resumable training checkpoint every N iterations"})
    eval_batch_size: int = field(default=1, metadata={"help": "validation batch size (full-resolution images)"})
    # -- stage 2 -------------------------------------------------------------------------
    stage2: bool = field(default=False, metadata={"help": "after stage 1, train on prototype pseudo labels (§3.3) and report both mIoUs"})
    stage2_iterations: int | None = field(default=None, metadata={"help": "stage-2 iterations (default: same as stage 1)"})
    lr_stage2: float = field(default=4e-3, metadata={"help": "stage-2 learning rate of decoder+head"})
    expand: bool = field(default=True, metadata={"help": "stage 2: label expansion into adjacent unlabeled regions (Eq. 13)"})
    pseudo: str = field(default="prototype", metadata={"help": "stage-2 intra-region labelling: 'prototype' (Eq. 11) or 'confident' (w/o prototypes baseline)"})

    def resolved_run_dir(self) -> str:
        return self.run_dir or os.path.join("runs", self.name)

    def validate(self) -> None:
        def one_of(name, choices):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}: expected one of {choices}, got {getattr(self, name)!r}")

        one_of("dataset", DATASETS)
        one_of("acquisition", ACQUISITIONS)
        one_of("labeling", LABELINGS)
        one_of("loss", LOSSES)
        one_of("pseudo", ("prototype", "confident"))
        one_of("superpixel_method", ("seeds", "slic"))
        for name in ("rounds", "budget", "iterations", "batch_size", "acquisition_batch_size",
                     "eval_batch_size", "region_size", "crop_size", "demo_train_images", "demo_val_images",
                     "demo_height", "demo_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if self.batch_size < 2:
            # BatchNorm in ASPP's image-pooling branch needs >1 sample per batch in training.
            raise ValueError("batch_size: expected >= 2 (BatchNorm over pooled ASPP features)")
        if self.temperature <= 0:
            raise ValueError(f"temperature: expected > 0, got {self.temperature}")
        if not 0 < self.scale_min <= self.scale_max:
            raise ValueError(f"scale_min/scale_max: expected 0 < min <= max, got {self.scale_min}, {self.scale_max}")
        if self.dataset != "demo" and not self.data_root:
            raise ValueError(f"data_root: required for dataset {self.dataset!r} (pass --data-root PATH)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Paper settings (SPEC §4, paper §4.1, Appendix B). Cityscapes evaluates on the full-resolution
# 1024×2048 validation images; the paper's 769 crops are kept (the model pads to a multiple
# of the output stride internally).
PRESETS: dict[str, dict] = {
    "cityscapes": dict(
        name="cityscapes", dataset="cityscapes", encoder="resnet50", encoder_weights="imagenet",
        decoder_channels=256, rounds=5, budget=100_000, acquisition="pixbal", labeling="multi",
        nu=6.0, iterations=80_000, batch_size=4, crop_size=769, scale_min=0.5, scale_max=2.0,
        lr=2e-3, lr_stage2=4e-3, weight_decay=1e-5, region_size=32, superpixel_method="seeds",
        eval_interval=5000, checkpoint_interval=1000, stage2=True, num_workers=4,
        acquisition_batch_size=4, eval_batch_size=1,
    ),
    "voc": dict(
        name="voc", dataset="voc", encoder="resnet50", encoder_weights="imagenet",
        decoder_channels=256, rounds=5, budget=10_000, acquisition="pixbal", labeling="multi",
        nu=12.0, iterations=30_000, batch_size=12, crop_size=513, scale_min=0.5, scale_max=2.0,
        lr=1e-3, lr_stage2=1e-3, weight_decay=1e-5, region_size=32, superpixel_method="seeds",
        eval_interval=5000, checkpoint_interval=1000, stage2=True, num_workers=4,
        acquisition_batch_size=8, eval_batch_size=1,
    ),
    # Laptop-CPU demo on the built-in synthetic dataset: tiny encoder, few iterations. Stage 2 is
    # on, as in the paper: the whole run takes ~6 minutes on 2 idle cores (~3 without it), and
    # the stage-2 model is steadier from round to round than stage 1 at 120 iterations.
    "demo": dict(
        name="demo", dataset="demo", encoder="resnet18", encoder_weights=None,
        decoder_channels=64, rounds=4, budget=1000, acquisition="pixbal", labeling="multi",
        nu=6.0, iterations=120, batch_size=4, crop_size=128, scale_min=0.75, scale_max=1.5,
        lr=4e-3, lr_stage2=4e-3, weight_decay=1e-5, region_size=16, superpixel_method="seeds",
        eval_interval=0, checkpoint_interval=50, stage2=True, num_workers=0,
        acquisition_batch_size=8, eval_batch_size=8,
    ),
}


def _field_types() -> dict[str, typing.Any]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in fields(TrainConfig)}


def _base_type(tp):
    """``int | None`` → (int, True); ``bool`` → (bool, False)."""
    args = typing.get_args(tp)
    if args and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return inner[0], True
    return tp, False


def coerce(name: str, value):
    """Convert ``value`` (from a file or the command line) to the type of field ``name``."""
    types = _field_types()
    if name not in types:
        raise KeyError(name)
    tp, optional = _base_type(types[name])
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if not optional:
            raise ValueError(f"{name}: may not be None")
        return None
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}: expected a boolean, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        try:
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected an integer, got {value!r}") from None
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected a number, got {value!r}") from None
    return str(value)


def apply_overrides(cfg: TrainConfig, overrides: dict, source: str) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"{source}: unknown option(s) {unknown}; see mulact-train --help")
    return dataclasses.replace(cfg, **{k: coerce(k, v) for k, v in overrides.items()})


def load_config_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config: no such file {path!r}")
    with open(path) as fh:
        text = fh.read()
    if path.endswith(".json"):
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config: {path!r} must hold a mapping of option: value")
    # Accept both spellings used on the command line and in Python.
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def resolve_config(preset: str | None = None, config_file: str | None = None,
                   overrides: dict | None = None) -> TrainConfig:
    cfg = TrainConfig()
    file_values = load_config_file(config_file) if config_file is not None else {}
    if preset is None:
        # The dataset implies its preset: `--dataset cityscapes` runs the paper's protocol.
        preset = (overrides or {}).get("dataset") or file_values.get("dataset") or "demo"
        preset = preset if preset in PRESETS else None
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
        cfg = apply_overrides(cfg, PRESETS[preset], f"preset {preset!r}")
    if config_file is not None:
        cfg = apply_overrides(cfg, file_values, f"config {config_file!r}")
    if overrides:
        cfg = apply_overrides(cfg, overrides, "command line")
    cfg.validate()
    return cfg
