"""``mulact-train``: run (or resume) an active-learning experiment.

    mulact-train                                   # CPU demo on the built-in synthetic dataset
    mulact-train --dataset cityscapes --data-root /data/cityscapes    # paper protocol (GPU)
    mulact-train --preset voc --data-root /data/VOCdevkit --rounds 3
    mulact-train --config my.yaml --budget 2000    # file values, then flag overrides
    mulact-train --preset cityscapes --print-config > my.yaml         # resolved config, no run

Rerunning the same command resumes the run in its run directory.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from mulact.config import (
    NULL,
    PRESETS,
    TrainConfig,
    field_type,
    flag,
    format_value,
    implied_preset,
    load_config_file,
    resolve_config,
    to_yaml,
)

__all__ = ["build_parser", "main"]

_OWN = ("preset", "config", "print_config", "verbose")


def _base_values(argv: list[str] | None) -> tuple[TrainConfig, str]:
    """What the preset (and config file) of this command line give, for ``--help``."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for name in ("--preset", "--config", "--dataset"):
        pre.add_argument(name)
    known, _ = pre.parse_known_args(argv)
    try:
        file_values = load_config_file(known.config) if known.config else {}
        over = {"dataset": known.dataset} if known.dataset else {}
        preset = implied_preset(known.preset, file_values, over)
        cfg = resolve_config(preset, known.config, over, validate=False)
    except ValueError:
        return TrainConfig(), "built-in defaults"
    origin = f"preset {preset}" if preset else "built-in defaults"
    return cfg, origin + (f" + {known.config}" if known.config else "")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; ``argv`` only selects the preset whose values ``--help`` shows."""
    base, origin = _base_values(argv)
    p = argparse.ArgumentParser(
        prog="mulact-train",
        # the full list of ~60 options would bury every error message under it
        usage="%(prog)s [--preset NAME] [--config FILE] [--print-config] [-v] [OPTION VALUE ...]",
        allow_abbrev=False,
        description=("Region-based active learning for semantic segmentation with multi-class label "
                     "queries (Hwang et al., NeurIPS 2023). Without options: a multi-round demo on a "
                     "built-in synthetic dataset that finishes in minutes on a laptop CPU."),
        epilog=("Precedence: preset < --config file < flags. Without --preset, the preset named like "
                "--dataset applies (demo by default). 'null' sets an option to no value "
                "(e.g. --encoder-weights null). Rerun the same command to resume an interrupted run."),
    )
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="paper settings: cityscapes, voc, or the CPU demo (default: named like --dataset)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="YAML or JSON file of option: value pairs (names as in this help, '-' or '_')")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved configuration in the --config format and exit without running")
    p.add_argument("-v", "--verbose", action="store_true", help="log debugging details")
    group = p.add_argument_group(f"experiment options ([value]: from {origin})")
    for f in dataclasses.fields(TrainConfig):
        tp, optional = field_type(f.name)
        help_text = f"{f.metadata.get('help', '')} [{format_value(getattr(base, f.name))}]"
        if tp is bool:
            group.add_argument(flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
            continue
        if "choices" in f.metadata:
            metavar = "{" + ",".join(f.metadata["choices"]) + "}"
        else:
            metavar = {int: "INT", float: "FLOAT"}.get(tp, "STR") + (f"|{NULL}" if optional else "")
        # Values stay text here: mulact.config.convert turns flags, file and preset values
        # into typed values the same way.
        group.add_argument(flag(f.name), dest=f.name, default=argparse.SUPPRESS, metavar=metavar,
                           help=help_text)
    return p


def main(argv: list[str] | None = None) -> int:
    # OpenMP threads that spin while waiting make CPU training 5-10x slower as soon as another
    # process competes for the cores (shared laptops, CI); passive waiting costs little when the
    # machine is idle. Must be set before torch loads libgomp; an explicit setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    overrides = {k: v for k, v in vars(args).items() if k not in _OWN}
    try:
        cfg = resolve_config(args.preset, args.config, overrides)
    except ValueError as err:
        parser.error(str(err))
    if args.print_config:
        sys.stdout.write(to_yaml(cfg))
        return 0
    from mulact.weights import WeightsUnavailableError, prepare_encoder_weights

    try:
        # Before any data work: a download that cannot happen should not wait for the oracle.
        prepare_encoder_weights(cfg.encoder, cfg.encoder_weights)
    except WeightsUnavailableError as err:
        print(f"mulact-train: error: {err}", file=sys.stderr)
        return 2
    from mulact import distributed
    from mulact.al.loop import AnswersPending, run_experiment
    from mulact.data import DatasetNotFoundError

    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 talks
    if main_rank:
        world = distributed.env_world_size()
        what = ("full supervision (every pixel of the train split)" if cfg.labeling == "full" else
                f"{cfg.rounds} rounds x {cfg.budget} clicks, {cfg.acquisition}, {cfg.labeling}-class labels")
        print(f"mulact-train: {cfg.name} ({cfg.dataset}, {what}, encoder {cfg.encoder}) -> {cfg.resolved_run_dir()}"
              + (f" [{world} processes]" if world > 1 else ""))
    try:
        run_experiment(cfg, echo=print if main_rank else (lambda *a, **k: None))
    except AnswersPending as err:
        # Not a failure: the run waits for people. A distinct status lets scripts tell the two apart.
        print(f"mulact-train: {err}", file=sys.stderr)
        return 3
    except DatasetNotFoundError as err:
        print(f"mulact-train: error: dataset not found: {err}\n{_layout_hint(cfg.dataset)}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        if args.verbose:
            raise
        print(f"mulact-train: error: {err}\n(rerun with -v for the traceback)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nmulact-train: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()
    return 0


def _layout_hint(dataset: str) -> str:
    if dataset == "cityscapes":
        return ("expected layout under --data-root:\n"
                "  leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png\n"
                "  gtFine/{train,val}/<city>/<stem>_gtFine_labelIds.png")
    if dataset == "voc":
        return ("expected layout under --data-root (VOCdevkit/VOC2012 or its parent):\n"
                "  JPEGImages/<id>.jpg  SegmentationClass/<id>.png  ImageSets/Segmentation/{train,val}.txt")
    if dataset == "folder":
        return ("expected layout under --data-root (README, 'Your own images'):\n"
                "  classes.yaml  images/{train,val}/<stem>.png|.jpg  masks/{train,val}/<stem>.png (optional)")
    return "the demo dataset is generated automatically; check --data-root"


if __name__ == "__main__":
    sys.exit(main())
