"""Experiment configuration for ``mulact-train``: one dataclass, presets, files, one converter.

Precedence (later wins): dataclass defaults < preset < ``--config FILE`` (YAML or JSON) <
command-line flags. Without ``--preset`` the preset named like the dataset applies (``demo``
when nothing is given, so ``mulact-train`` alone runs the CPU demo). The resolved
configuration is written to the run directory (``config.yaml``) so a run can be inspected and
resumed with the same command; ``mulact-train --print-config`` prints it without running.

Every value -- a flag's text, a file's YAML/JSON value, a preset's Python value -- goes through
one converter, :func:`convert`, and every option's range is checked by
:meth:`TrainConfig.validate` before any work starts. ``null`` is the one spelling of "no value"
(``--encoder-weights null``, ``encoder_weights: null``); ``none`` is accepted as a synonym.
Why this is argparse and not jsonargparse or tyro: README, "Configuration".

Adding an option: a field with ``help`` metadata, plus ``choices``, ``min`` (inclusive) or
``gt`` (exclusive) bounds where they apply; float options must always be finite.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import tempfile
import typing
from dataclasses import dataclass, field, fields

from mulact.data import DATASETS
from mulact.data.superpixels import METHODS as SUPERPIXEL_METHODS
from mulact.ops.acquisition import ACQUISITION_METHODS, ACQUISITIONS

__all__ = ["TrainConfig", "PRESETS", "NULL", "convert", "apply_overrides", "load_config_file",
           "resolve_config", "format_value", "to_yaml"]

LABELINGS = ("multi", "dominant", "full")
ORACLES = ("simulated", "human")
LOSSES = ("mulact", "dominant", "infimum", "rc")
PSEUDO_LABELINGS = ("prototype", "confident")
NULL = "null"  # the documented spelling of None on the command line and in config files


def opt(default, help: str, **rules):
    """A :class:`TrainConfig` field: ``help`` for ``--help``; ``choices``/``min``/``gt`` for validation."""
    return field(default=default, metadata={"help": help, **rules})


@dataclass
class TrainConfig:
    """Every option of an AL experiment. ``help`` metadata feeds ``mulact-train --help``."""

    # -- run -----------------------------------------------------------------------------
    name: str = opt("demo", "run name; the run directory defaults to runs/<name>")
    run_dir: str | None = opt(None, "directory holding config, selections, checkpoints, metrics (null: runs/<name>)")
    seed: int = opt(0, "seed of selections, model initialisation and data order", min=0)
    device: str = opt("auto", "'auto' (cuda if available), 'cpu' or 'cuda[:i]'")
    amp: bool = opt(True, "bfloat16 autocast of encoder/decoder on CUDA, and on CPUs with native bfloat16 (AMX/AVX512-BF16; MULACT_CPU_AMP=0 keeps float32)")
    num_workers: int = opt(0, "DataLoader worker processes", min=0)
    dist_timeout: float = opt(1800.0, "under torchrun: seconds a collective waits for the other ranks before the run stops with an error naming it (a dead or stalled rank)", gt=0)
    # -- data ----------------------------------------------------------------------------
    dataset: str = opt("demo", "dataset to run on; also selects the preset when --preset is not given", choices=DATASETS)
    data_root: str | None = opt(None, "dataset root (Cityscapes: holds leftImg8bit/ and gtFine/; VOC: VOCdevkit/VOC2012 or its parent; folder: the directory holding classes.yaml, README 'Your own images'); demo: where the generated demo set is kept (null: $MULACT_CACHE or ~/.cache/mulact)")
    superpixel_dir: str | None = opt(None, "where superpixel maps are read/cached (null: the dataset's own cache location)")
    superpixel_method: str = opt("seeds", "superpixel algorithm", choices=SUPERPIXEL_METHODS)
    region_size: int = opt(32, "superpixel size in pixels (32: ~32x32 regions, ~2048 per Cityscapes image)", min=2)
    demo_train_images: int = opt(200, "demo dataset: number of generated training images", min=1)
    demo_val_images: int = opt(50, "demo dataset: number of generated validation images", min=1)
    demo_height: int = opt(128, "demo dataset: image height", min=16)
    demo_width: int = opt(256, "demo dataset: image width", min=16)
    max_train_images: int | None = opt(None, "use only the first N training images (null: all)", min=1)
    max_val_images: int | None = opt(None, "evaluate on the first N validation images only (null: all)", min=1)
    crop_size: int = opt(769, "square training crop after random scaling; larger than an image even at --scale-max: padded with ignored pixels, with a warning", min=16)
    scale_min: float = opt(0.5, "random scale lower bound", gt=0)
    scale_max: float = opt(2.0, "random scale upper bound (>= scale_min)", gt=0)
    hflip: bool = opt(True, "random horizontal flips")
    trim: int = opt(5, "oracle boundary trim (dilation kernel) in pixels, Appendix B; 0: no trim", min=0)
    # -- model ---------------------------------------------------------------------------
    encoder: str = opt("resnet50", "smp encoder name (resnet50/resnet101 for the paper; resnet18, mobilenet_v2 for small runs; tu-<timm model>)")
    encoder_weights: str | None = opt(None, "null (random init), 'imagenet' (Hugging Face download or cache; see README, 'Encoder weights') or a path to a local encoder state_dict (.pt/.pth/.safetensors)")
    decoder_channels: int = opt(256, "DeepLabV3+ decoder/ASPP width (feature dim of the cosine head)", min=1)
    temperature: float = opt(0.1, "softmax temperature τ applied to the cosine logits everywhere", gt=0)
    # -- active learning -----------------------------------------------------------------
    rounds: int = opt(5, "number of AL rounds (round 1 selects at random)", min=1)
    budget: int = opt(100_000, "clicks per round", min=1)
    acquisition: str = opt("pixbal", "acquisition function of rounds 2+ (round 1 selects at random): "
                           + "; ".join(f"{k}: {a.summary}" for k, a in ACQUISITIONS.items()), choices=ACQUISITION_METHODS)
    labeling: str = opt("multi", "'multi' (multi-class query, cost = classes in region), 'dominant' (cost 1) or 'full' (no rounds: the full-supervision reference, one model trained on every pixel of the train split with stage 1's model, schedule and augmentation; README, 'Full supervision')", choices=LABELINGS)
    nu: float = opt(6.0, "PixBal class-balance strength ν (Eq. 4); 0: no balancing", min=0)
    acquisition_batch_size: int = opt(4, "images per forward pass when scoring the pool", min=1)
    oracle: str = opt("simulated", "who answers the queries: 'simulated' (ground-truth masks) or 'human' (the run stops after each acquisition until the answers exist; label with mulact-label RUN_DIR, then rerun)", choices=ORACLES)
    reference: str = opt("off", "full-supervision reference of the run's mIoU: 'off', 'auto' (the --labeling full run of this configuration, trained once and kept in $MULACT_CACHE/references/) or the directory of a --labeling full run; metrics then give each round's mIoU as a percentage of it and the clicks to reach 95 percent of it (README, 'Full supervision')")
    expected_classes_prior: float = opt(1.5, "human oracle: expected classes per multi-class query in round 1, before any answer is known (the budget cut takes regions until the expected clicks reach --budget)", gt=0)
    # -- stage 1 -------------------------------------------------------------------------
    loss: str = opt("mulact", "stage-1 loss: mulact = λ_CE·L_CE + λ_MP·L_MP + λ_PP·L_PP; dominant = CE with each region's dominant label (needs labeling dominant); infimum/rc = partial-label baselines (Appendix C.2)", choices=LOSSES)
    lambda_ce: float = opt(16.0, "λ_CE (Eq. 10)", min=0)
    lambda_mp: float = opt(8.0, "λ_MP (Eq. 10); 0 = ablation 'w/o MP'", min=0)
    lambda_pp: float = opt(1.0, "weight of L_PP (1 in the paper); 0 = ablation 'w/o PP'", min=0)
    iterations: int = opt(80_000, "stage-1 iterations per round", min=1)
    batch_size: int = opt(4, "training batch size (>= 2: BatchNorm over ASPP's pooled features)", min=2)
    lr: float = opt(2e-3, "stage-1 learning rate of decoder+head; the encoder uses lr × encoder_lr_mult", gt=0)
    encoder_lr_mult: float = opt(0.1, "encoder learning rate relative to the head's (paper: 10x lower); 0: frozen encoder", min=0)
    weight_decay: float = opt(1e-5, "AdamW weight decay", min=0)
    poly_power: float = opt(0.9, "poly learning-rate schedule power", min=0)
    eval_interval: int = opt(5000, "validate every N iterations and keep the best checkpoint (0: only at the end)", min=0)
    checkpoint_interval: int = opt(1000, "save a resumable training checkpoint every N iterations", min=1)
    compile: bool = opt(False, "torch.compile the training step's model (compile time is part of the stage's time); off by default: on the 2-core CPU demo it took 131 s to compile and no step got faster (README, 'Compiling the training step')")
    eval_batch_size: int = opt(1, "validation batch size (full-resolution images)", min=1)
    # -- stage 2 -------------------------------------------------------------------------
    stage2: bool = opt(False, "after stage 1, train on prototype pseudo labels (§3.3) and report both mIoUs")
    stage2_iterations: int | None = opt(None, "stage-2 iterations (null: same as stage 1)", min=1)
    lr_stage2: float = opt(4e-3, "stage-2 learning rate of decoder+head", gt=0)
    expand: bool = opt(True, "stage 2: label expansion into adjacent unlabeled regions (Eq. 13)")
    pseudo: str = opt("prototype", "stage-2 intra-region labelling: 'prototype' (Eq. 11) or 'confident' (w/o prototypes baseline)", choices=PSEUDO_LABELINGS)

    def resolved_run_dir(self) -> str:
        return self.run_dir or os.path.join("runs", self.name)

    def validate(self) -> None:
        """Check every value (types, ranges, paths, the encoder name) without doing any work.

        Raises :class:`ValueError` with one line naming the option, the value and what is allowed.
        """
        for f in fields(self):
            _check_field(f, convert(f.name, getattr(self, f.name)))
        if self.temperature < _TAU_MIN:
            raise ValueError(f"--temperature {self.temperature}: expected >= {_TAU_MIN:.6g}, so that 1/temperature "
                             "is finite in float32 (the ops' accumulation dtype)")
        if self.scale_min > self.scale_max:
            raise ValueError(f"--scale-min {self.scale_min}: expected <= --scale-max {self.scale_max}")
        if self.loss == "dominant" and self.labeling != "dominant":
            raise ValueError("--loss dominant: needs --labeling dominant (single-class region labels)")
        if self.labeling == "full" and self.oracle != "simulated":
            raise ValueError(f"--labeling full: trains on the train split's masks; it needs --oracle simulated, "
                             f"got --oracle {self.oracle}")
        if self.labeling == "full" and self.reference != "off":
            raise ValueError(f"--reference {self.reference}: a --labeling full run is itself the reference; "
                             "use --reference off")
        if self.reference not in ("off", "auto") and not os.path.isdir(self.reference):
            raise ValueError(f"--reference {self.reference!r}: expected 'off', 'auto' or the directory of a "
                             "--labeling full run")
        if not self.name.strip():
            raise ValueError(f"--name {self.name!r}: expected a non-empty name")
        if self.device != "auto":
            _check_device(self.device)
        if self.dataset != "demo" and not self.data_root:
            raise ValueError(f"--data-root null: required for dataset {self.dataset!r} (pass --data-root PATH)")
        if self.data_root and os.path.exists(self.data_root) and not os.path.isdir(self.data_root):
            raise ValueError(f"--data-root {self.data_root}: is a file; expected a directory")
        if self.dataset == "demo" and self.data_root:
            _check_writable_dir("--data-root", self.data_root)
        if self.superpixel_dir:
            _check_writable_dir("--superpixel-dir", self.superpixel_dir)
        _check_writable_dir("--run-dir" if self.run_dir else "--name", self.resolved_run_dir())
        _check_encoder(self.encoder, self.encoder_weights)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Paper settings (paper §4.1, Appendix B). Cityscapes evaluates on the full-resolution
# 1024×2048 validation images; the paper's 769 crops are kept (the model pads to a multiple
# of the output stride internally).
_PAPER = dict(
    encoder="resnet50", encoder_weights="imagenet", decoder_channels=256, rounds=5, acquisition="pixbal",
    labeling="multi", scale_min=0.5, scale_max=2.0, weight_decay=1e-5, region_size=32, superpixel_method="seeds",
    eval_interval=5000, checkpoint_interval=1000, stage2=True, num_workers=4, eval_batch_size=1,
)
PRESETS: dict[str, dict] = {
    "cityscapes": dict(
        _PAPER, name="cityscapes", dataset="cityscapes", budget=100_000, nu=6.0, iterations=80_000, batch_size=4,
        crop_size=769, lr=2e-3, lr_stage2=4e-3, acquisition_batch_size=4,
    ),
    "voc": dict(
        _PAPER, name="voc", dataset="voc", budget=10_000, nu=12.0, iterations=30_000, batch_size=12,
        crop_size=513, lr=1e-3, lr_stage2=1e-3, acquisition_batch_size=8,
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
    # The CPU evidence regime for a small folder dataset (README, "The claims, measured"): the
    # demo's model and schedule with 480 iterations of 8 crops of 96 px per round, 2000 clicks
    # per round, stage 1 only, 8-px regions (the paper's 32 px on images of ~90x120, e.g. CamVid
    # at quarter size). Measured on CamVid (5 seeds): full supervision 38.1 mIoU, round 1 26-28.
    "cpu-small": dict(
        name="cpu-small", encoder="resnet18", encoder_weights=None,
        decoder_channels=64, rounds=4, budget=2000, acquisition="pixbal", labeling="multi",
        nu=6.0, iterations=480, batch_size=8, crop_size=96, scale_min=0.75, scale_max=1.5,
        lr=4e-3, lr_stage2=4e-3, weight_decay=1e-5, region_size=8, superpixel_method="seeds",
        eval_interval=0, checkpoint_interval=50, stage2=False, num_workers=0,
        acquisition_batch_size=8, eval_batch_size=8,
    ),
}


# -- the converter ---------------------------------------------------------------------------
_FIELDS = {f.name: f for f in fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_type(name: str) -> tuple[type, bool]:
    """``int | None`` → ``(int, True)``; ``bool`` → ``(bool, False)``."""
    tp = _HINTS[name]
    args = typing.get_args(tp)
    if args and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return tp, False


def convert(name: str, value):
    """The one converter: ``value`` (flag text, YAML/JSON value or Python value) → the type of
    option ``name``. Raises :class:`ValueError` naming the option, the value and the type."""
    if name not in _FIELDS:
        raise ValueError(f"unknown option {name!r}; see mulact-train --help")
    tp, optional = field_type(name)
    if optional and (value is None or (isinstance(value, str) and value.strip().lower() in (NULL, "none"))):
        return None
    kinds = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if tp not in kinds:
        raise TypeError(f"option {name}: type {tp} is not supported by mulact.config.convert")
    what = kinds[tp]
    if optional:
        what += f" or {NULL}"
    bad = ValueError(f"{flag(name)} {format_value(value)}: expected {what}")
    if value is None:
        raise bad
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        try:
            number = float(value)  # "2e3" and 2000.0 are integers too
        except (TypeError, ValueError):
            raise bad from None
        if not number.is_integer():
            raise bad
        return int(number)
    if tp is float:
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad from None
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise bad


def format_value(value) -> str:
    """A value as the config file (and the command line) spells it: ``null``, ``true``, ``0.001``."""
    if value is None:
        return NULL
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _check_field(f: dataclasses.Field, value) -> None:
    if value is None:
        return
    rules = f.metadata
    if "choices" in rules and value not in rules["choices"]:
        raise ValueError(f"{flag(f.name)} {format_value(value)}: expected one of {', '.join(rules['choices'])}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{flag(f.name)} {format_value(value)}: expected a finite number")
    if "min" in rules and value < rules["min"]:
        raise ValueError(f"{flag(f.name)} {format_value(value)}: expected a value >= {rules['min']}")
    if "gt" in rules and not value > rules["gt"]:
        raise ValueError(f"{flag(f.name)} {format_value(value)}: expected a value > {rules['gt']}")


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device}: expected auto, cpu, cuda or cuda:<index>") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device}: expected auto, cpu, cuda or cuda:<index>")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine (use auto or cpu)")


def _check_writable_dir(option: str, path: str) -> None:
    """``path`` is a writable directory, or can be created as one."""
    probe = os.path.abspath(path)
    if os.path.exists(probe) and not os.path.isdir(probe):
        raise ValueError(f"{option} {path}: exists and is not a directory")
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"{option} {path}: cannot be created, {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: {probe} is not writable")
    if probe != os.path.abspath(path):
        # os.access says yes for root even where no directory can be made (/proc, /sys, read-only
        # mounts): make and remove one to be sure
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".mulact-probe-", dir=probe))
        except OSError as err:
            raise ValueError(f"{option} {path}: cannot create a directory in {probe} ({err.strerror})") from None


def _check_encoder(encoder: str, weights: str | None) -> None:
    """The encoder exists in smp (or timm for ``tu-``) and ``weights`` fit it; nothing is built."""
    if encoder.startswith("tu-"):
        import timm

        if not timm.is_model(encoder[3:].split(".")[0]):
            raise ValueError(f"--encoder {encoder}: {encoder[3:]!r} is not a timm model (see timm.list_models())")
    else:
        from segmentation_models_pytorch.encoders import encoders

        if encoder not in encoders:
            near = difflib.get_close_matches(encoder, list(encoders), n=3)
            hint = f"did you mean {', '.join(near)}? " if near else ""
            raise ValueError(f"--encoder {encoder}: not an smp encoder; {hint}"
                             "see segmentation_models_pytorch.encoders.get_encoder_names()")
        if weights == "imagenet" and "imagenet" not in encoders[encoder]["pretrained_settings"]:
            have = ", ".join(encoders[encoder]["pretrained_settings"]) or "none"
            raise ValueError(f"--encoder-weights imagenet: smp has no ImageNet weights for {encoder} "
                             f"(it has: {have}); pass a local state_dict path or null")
    if weights not in (None, "imagenet") and not os.path.isfile(weights):
        raise ValueError(f"--encoder-weights {weights}: no such file; expected null, imagenet "
                         "or the path of an encoder state_dict")


# -- sources: presets, files, flags ----------------------------------------------------------
def apply_overrides(cfg: TrainConfig, overrides: dict, source: str | None = None) -> TrainConfig:
    """``cfg`` with ``overrides`` (option name, ``-`` or ``_``, → value) converted and applied;
    errors start with ``source`` (a file, a preset) when given."""
    values = {str(k).replace("-", "_"): v for k, v in overrides.items()}
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        where = f"{source}: " if source else ""
        raise ValueError(f"{where}unknown option(s) {', '.join(unknown)}; see mulact-train --help")
    try:
        return dataclasses.replace(cfg, **{k: convert(k, v) for k, v in values.items()})
    except ValueError as err:
        raise ValueError(f"{source}: {err}" if source else str(err)) from None


_TAU_MIN = 1.0 / 3.4028234663852886e38  # 1 / float32 max: mulact.ops refuses smaller temperatures


def _unique_keys(pairs: list) -> dict:
    """JSON object hook: a key given twice is an error (as in YAML config files)."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise KeyError(f"duplicate key {key!r}")
        out[key] = value
    return out


def load_config_file(path: str) -> dict:
    """Option → value mapping of a YAML or JSON file (``.json``: JSON, anything else: YAML)."""
    if os.path.isdir(path):
        raise ValueError(f"--config {path}: is a directory; expected a YAML or JSON file")
    if not os.path.isfile(path):
        raise ValueError(f"--config {path}: no such file")
    with open(path) as fh:
        text = fh.read()
    if path.endswith(".json"):
        try:
            data = json.loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as err:
            raise ValueError(f"--config {path}: invalid JSON ({err})") from None
        except KeyError as err:
            raise ValueError(f"--config {path}: {err.args[0]}") from None
    else:
        import yaml

        from mulact import strict_yaml

        try:
            data = strict_yaml.load(text)
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
            problem = getattr(err, "problem", None) or type(err).__name__
            raise ValueError(f"--config {path}: invalid YAML{at}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a mapping of option: value, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def implied_preset(preset: str | None, file_values: dict, overrides: dict) -> str | None:
    """The preset that applies: the one asked for, else the one named like the dataset."""
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"--preset {preset}: expected one of {', '.join(PRESETS)}")
        return preset
    dataset = overrides.get("dataset") or file_values.get("dataset") or "demo"
    return dataset if dataset in PRESETS else None


def resolve_config(preset: str | None = None, config_file: str | None = None,
                   overrides: dict | None = None, validate: bool = True) -> TrainConfig:
    """Defaults < ``preset`` < ``config_file`` < ``overrides``, converted and (by default) validated.

    ``preset`` None: the preset named like the dataset, if any. ``overrides`` maps option names
    (``-`` or ``_``) to values of any source (flag text, YAML value, Python value); a value of
    None sets the option to null, it does not mean "not given". Raises :class:`ValueError` with
    one line naming the source, the option, the value and what is allowed.
    """
    overrides = {str(k).replace("-", "_"): v for k, v in (overrides or {}).items()}
    file_values = load_config_file(config_file) if config_file is not None else {}
    cfg = TrainConfig()
    preset = implied_preset(preset, file_values, overrides)
    if preset is not None:
        cfg = apply_overrides(cfg, PRESETS[preset], f"preset {preset}")
    if config_file is not None:
        cfg = apply_overrides(cfg, file_values, f"--config {config_file}")
    cfg = apply_overrides(cfg, overrides)
    if validate:
        cfg.validate()
    return cfg


def to_yaml(cfg: TrainConfig) -> str:
    """``cfg`` in the format ``--config`` reads (field order, ``null`` for None)."""
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)
