"""``mulact-train``: run (or resume) an active-learning experiment.

    mulact-train                                   # CPU demo on the built-in synthetic dataset
    mulact-train --dataset cityscapes --data-root /data/cityscapes    # paper protocol (GPU)
    mulact-train --preset voc --data-root /data/VOCdevkit --rounds 3
    mulact-train --config my.yaml --budget 2000    # file values, then flag overrides

Rerunning the same command resumes the run in its run directory.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import typing

from mulact.config import PRESETS, TrainConfig, _base_type, resolve_config

__all__ = ["build_parser", "main"]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mulact-train",
        description=("Region-based active learning for semantic segmentation with multi-class label "
                     "queries (Hwang et al., NeurIPS 2023). Without options: a multi-round demo on a "
                     "built-in synthetic dataset that finishes in minutes on a laptop CPU."),
        epilog=("Precedence: preset < --config file < flags. Without --preset, the preset named like "
                "--dataset applies (demo by default). Rerun the same command to resume an interrupted run."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="paper settings: cityscapes, voc, or the CPU demo")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="YAML or JSON file of option: value pairs (names as in this help, '-' or '_')")
    p.add_argument("-v", "--verbose", action="store_true", help="log debugging details")
    hints = typing.get_type_hints(TrainConfig)
    group = p.add_argument_group("experiment options (default: preset value)")
    for f in dataclasses.fields(TrainConfig):
        tp, optional = _base_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        if tp is bool:
            group.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                               default=None, help=help_text)
        else:
            metavar = {int: "INT", float: "FLOAT"}.get(tp, "STR")
            group.add_argument(_flag(f.name), dest=f.name, default=None, metavar=metavar,
                               type=_typed(f.name, tp, optional), help=help_text)
    return p


def _typed(name, tp, optional):
    def convert(text: str):
        if optional and text.lower() in ("none", "null"):
            return None
        try:
            return tp(text) if tp is not int else int(float(text)) if "e" in text.lower() else int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {tp.__name__}, got {text!r}") from None

    convert.__name__ = tp.__name__
    return convert


def main(argv: list[str] | None = None) -> int:
    # OpenMP threads that spin while waiting make CPU training 5-10x slower as soon as another
    # process competes for the cores (shared laptops, CI); passive waiting costs little when the
    # machine is idle. Must be set before torch loads libgomp; an explicit setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("preset", "config", "verbose") and v is not None}
    try:
        cfg = resolve_config(args.preset, args.config, overrides)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    from mulact.al.loop import AnswersPending, run_experiment
    from mulact.data import DatasetNotFoundError

    from mulact import distributed

    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 talks
    if main_rank:
        world = distributed.env_world_size()
        print(f"mulact-train: {cfg.name} ({cfg.dataset}, {cfg.rounds} rounds x {cfg.budget} clicks, "
              f"{cfg.acquisition}, {cfg.labeling}-class labels, encoder {cfg.encoder}) -> {cfg.resolved_run_dir()}"
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
    return "the demo dataset is generated automatically; check --data-root"


if __name__ == "__main__":
    sys.exit(main())
