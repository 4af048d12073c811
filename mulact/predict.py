"""``mulact-predict``: segment new images with a run's model; export the model and the labels.

    mulact-predict RUN_DIR IMAGES... --out DIR [--round T] [--device auto|cpu|cuda]
    mulact-predict RUN_DIR --export-labels DIR [--round T]
    mulact-predict RUN_DIR --export-model FILE [--round T]

``IMAGES`` are image files, directories (every png/jpg/jpeg/bmp/tif/webp file below them) or
glob patterns (``'photos/**/*.jpg'``; quoted, so that the shell leaves them to mulact). Per
image, ``DIR`` gets ``<name>.png`` (single-channel, the class index of every pixel) and
``<name>_overlay.png`` (the image under the class colours, with a legend of the classes
found). ``<name>`` is the file name without its suffix; for a directory, its path below that
directory. Like the run's evaluation, the prediction is the most likely of the dataset's
classes (the *undefined* output is left out).

The model is the final model of the run's last finished round (the one ``metrics.json``
records last: stage 2 when the run has it, else stage 1), or of round ``--round``. The run's
files are read through its manifest (:mod:`mulact.runstore`), so a damaged checkpoint is an
error naming the file, never a wrong prediction; nothing is written into the run directory,
and a run that ``mulact-train`` is extending may be read at the same time.
See the README, "Your own images".
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import sys

import numpy as np
import torch

from mulact.runstore import DamagedFileError, RunDir, RunStateError, atomic_write

__all__ = ["IMAGE_SUFFIXES", "RunFiles", "gather_images", "main", "overlay", "predict_images"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    return tuple(int(color[k:k + 2], 16) for k in (1, 3, 5))


def run_class_colors(cfg, class_names) -> list[tuple[int, int, int]]:
    """RGB colour per class: the dataset's own (the colours of its label images)."""
    from mulact.label.colors import class_colors

    return [hex_to_rgb(c) for c in class_colors(cfg.dataset, class_names, cfg.data_root)]


class RunFiles:
    """What predicting and exporting read from a run directory (``rundir``, a
    :class:`~mulact.runstore.RunDir` opened read-only), verified against its manifest."""

    def __init__(self, run_dir: str | os.PathLike):
        self.dir = os.fspath(run_dir)
        self.rundir = RunDir.existing(self.dir, what="RUN_DIR")
        self.cfg = self.rundir.read_train_config()
        metrics = self.rundir.read_metrics()
        self.rounds = sorted(int(m["round"]) for m in metrics["rounds"])
        self.class_names = list(metrics.get("class_names") or [])
        self.colors = run_class_colors(self.cfg, self.class_names) if self.class_names else []

    @property
    def stage(self) -> str:
        return "stage2" if self.cfg.stage2 else "stage1"

    def final_round(self, round_index: int | None = None) -> int:
        """``round_index`` if that round is finished, else (None) the last finished round."""
        if not self.rounds:
            raise RunStateError(f"RUN_DIR: {self.dir!r} has no finished model yet (metrics.json records no "
                                f"finished round); let mulact-train finish round 1 (rerun it to resume)")
        if round_index is None:
            return self.rounds[-1]
        if round_index not in self.rounds:
            raise ValueError(f"--round {round_index}: not a finished round of {self.dir!r} "
                             f"(finished: {', '.join(map(str, self.rounds))})")
        return int(round_index)

    def load_model(self, round_index: int | None = None, device="cpu"):
        """``(model, round)``: the final model of a finished round, on ``device``, in eval mode."""
        from mulact.model import build_model

        t = self.final_round(round_index)
        path = self.rundir.stage(t, self.stage)
        if not self.rundir.exists(path):
            raise RunStateError(f"{path}: the weights of finished round {t} are missing; rerun the run's "
                                f"mulact-train command to train them again")
        state = self.rundir.read_torch(path, what=f"{self.stage} checkpoint", map_location="cpu")
        c = self.cfg
        # encoder weights: none, the checkpoint holds them all (and no download may happen here)
        model = build_model(len(self.class_names), c.encoder, None, c.decoder_channels)
        try:
            model.load_state_dict(state["model"])
        except (KeyError, TypeError, RuntimeError) as exc:
            raise DamagedFileError(path, f"does not hold this run's model ({type(exc).__name__}: "
                                         f"{str(exc).splitlines()[0]})") from None
        return model.to(device).eval(), t


# -- inputs -----------------------------------------------------------------------------------

def _is_image_name(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES)


def _stem(path: str) -> str:
    return os.path.splitext(path)[0]


def gather_images(specs) -> list[tuple[str, str]]:
    """``(path, output name)`` of every image named by ``specs`` (files, directories, globs).

    Raises :class:`ValueError` naming the argument that names nothing, or two inputs that
    would write the same output name.
    """
    found: list[tuple[str, str]] = []
    for spec in specs:
        if os.path.isdir(spec):
            files = []
            for dirpath, dirs, names in os.walk(spec):
                dirs.sort()
                files += [os.path.join(dirpath, n) for n in sorted(names) if _is_image_name(n)]
            if not files:
                raise ValueError(f"IMAGES: directory {spec!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            found += [(f, _stem(os.path.relpath(f, spec))) for f in files]
        elif os.path.isfile(spec):
            found.append((spec, _stem(os.path.basename(spec))))
        elif glob.has_magic(spec):
            files = []
            for m in sorted(glob.glob(spec, recursive=True)):
                if os.path.isdir(m):
                    files += [(f, n) for f, n in gather_images([m])]
                elif _is_image_name(m):
                    files.append((m, _stem(os.path.basename(m))))
            if not files:
                raise ValueError(f"IMAGES: no image file matches {spec!r}")
            found += files
        else:
            raise ValueError(f"IMAGES: {spec!r} does not exist")
    out, by_name, seen = [], {}, set()
    for path, name in found:
        real = os.path.realpath(path)
        if real in seen:
            continue  # the same file named twice (a file and its directory)
        seen.add(real)
        if name in by_name:
            raise ValueError(f"IMAGES: {by_name[name]!r} and {path!r} would both be written as {name!r}; "
                             f"predict them in separate calls (or separate --out directories)")
        by_name[name] = path
        out.append((path, name))
    return out


def read_image(path: str) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)``; :class:`OSError` naming the file when it is not a readable image."""
    import cv2

    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise OSError(f"{path}: cannot be read ({exc.strerror})") from None
    if data.size == 0:
        raise OSError(f"{path}: is empty (0 bytes)")
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f"{path}: is not an image OpenCV can decode (png, jpg, bmp, tif, webp), or it is truncated")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


# -- outputs ----------------------------------------------------------------------------------

def overlay(rgb: np.ndarray, pred: np.ndarray, colors, class_names, alpha: float = 0.5) -> np.ndarray:
    """RGB picture: the image under the class colours, class borders drawn, and below it a
    legend of the classes present (largest share first)."""
    import cv2

    palette = np.asarray(colors, dtype=np.float32)
    blend = rgb.astype(np.float32) * (1 - alpha) + palette[pred] * alpha
    border = np.zeros(pred.shape, bool)
    border[:, 1:] |= pred[:, 1:] != pred[:, :-1]
    border[1:, :] |= pred[1:, :] != pred[:-1, :]
    blend[border] = 255.0
    pic = blend.clip(0, 255).astype(np.uint8)
    h, w = pred.shape
    counts = np.bincount(pred.ravel(), minlength=len(colors))
    present = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
    scale = max(0.35, min(1.0, w / 1200))
    thick = max(1, int(round(scale * 1.5)))
    line_h = int(26 * scale) + 6
    entries, x, y, rows = [], 6, 0, 1
    for c in present:
        text = f"{class_names[c]} {100.0 * counts[c] / pred.size:.0f}%"
        tw = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale * 0.6, thick)[0][0] + line_h + 12
        if x + tw > w and x > 6:
            x, y, rows = 6, y + line_h, rows + 1
        entries.append((x, y, c, text))
        x += tw
    legend = np.full((rows * line_h + 4, w, 3), 255, np.uint8)
    for x, y, c, text in entries:
        sw = line_h - 8
        cv2.rectangle(legend, (x, y + 4), (x + sw, y + 4 + sw), tuple(int(v) for v in colors[c]), -1)
        cv2.rectangle(legend, (x, y + 4), (x + sw, y + 4 + sw), (0, 0, 0), 1)
        cv2.putText(legend, text, (x + sw + 5, y + 4 + sw - 2), cv2.FONT_HERSHEY_SIMPLEX, scale * 0.6, (0, 0, 0),
                    thick, cv2.LINE_AA)
    return np.concatenate([pic, legend], axis=0)


def _png(array: np.ndarray, rgb: bool) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if rgb else array)
    if not ok:
        raise RuntimeError("could not encode a PNG")
    return buf.tobytes()


@torch.no_grad()
def predict_array(model, rgb: np.ndarray, device, amp: bool = False) -> np.ndarray:
    """Class index ``(H, W)`` uint8 of one RGB uint8 image."""
    from mulact.data.transforms import normalize, to_float_image
    from mulact.engine.precision import autocast

    x = normalize(to_float_image(rgb))[None].to(device)
    with autocast(amp, device):
        logits = model(x)
    return logits[0, :model.num_classes].argmax(0).to(torch.uint8).cpu().numpy()


@dataclasses.dataclass
class PredictReport:
    round: int
    written: list[str]
    failed: list[str]  # one line per image that could not be read


def predict_images(run: RunFiles, images, out: str, *, round_index: int | None = None, device="cpu",
                   alpha: float = 0.5, progress: bool = True) -> PredictReport:
    """Segment ``images`` (``(path, name)`` pairs, see :func:`gather_images`) into ``out``.

    Every readable image is written; the ones that cannot be read are listed in the report
    (the command line exits with an error naming them).
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    model, t = run.load_model(round_index, device)
    written, failed = [], []
    for path, name in tqdm(images, desc=f"predict (round {t})", unit="image", disable=not progress,
                           dynamic_ncols=True):
        try:
            rgb = read_image(path)
        except OSError as exc:
            failed.append(str(exc))
            continue
        pred = predict_array(model, rgb, device, amp=run.cfg.amp)
        target = os.path.join(out, f"{name}.png")
        atomic_write(target, _png(pred, rgb=False))
        atomic_write(os.path.join(out, f"{name}_overlay.png"),
                     _png(overlay(rgb, pred, run.colors, run.class_names, alpha), rgb=True))
        written.append(target)
    return PredictReport(t, written, failed)


# -- command line -----------------------------------------------------------------------------

def _resolve_device(name: str) -> torch.device:
    from mulact.config import _check_device

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _check_device(name)  # the error names --device and what it accepts
    return torch.device(name)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mulact-predict",
        usage=("%(prog)s RUN_DIR IMAGES... --out DIR [options]\n"
               "       %(prog)s RUN_DIR --export-labels DIR [--round T]\n"
               "       %(prog)s RUN_DIR --export-model FILE [--round T]"),
        description=("Segment images with the model of a mulact-train run: per image, a class-index PNG and a "
                     "colour overlay. Or export the run's labels as masks, or its model as a "
                     "segmentation-models-pytorch file (README, 'Your own images')."))
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory mulact-train wrote")
    p.add_argument("images", metavar="IMAGES", nargs="*",
                   help="image files, directories (searched recursively) or quoted glob patterns")
    p.add_argument("--out", metavar="DIR", help="where to write <name>.png and <name>_overlay.png")
    p.add_argument("--round", type=int, default=None, metavar="T",
                   help="use round T's model (default: the last finished round); with --export-labels: "
                        "the labels of rounds 1..T")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:<index>")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the class colours in the overlay (0..1)")
    p.add_argument("--export-labels", metavar="DIR", default=None,
                   help="write the labels the run collected as masks (classes.yaml, masks/, labels.json)")
    p.add_argument("--export-model", metavar="FILE", default=None,
                   help="write the model as a segmentation-models-pytorch file (like RUN_DIR/model_smp.pt)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _run(args) -> str:
    exports = [a for a in ("export_labels", "export_model") if getattr(args, a)]
    if len(exports) > 1:
        raise ValueError("--export-labels, --export-model: give one of them per call")
    if exports and (args.images or args.out):
        raise ValueError(f"--{exports[0].replace('_', '-')}: takes no IMAGES and no --out")
    if not exports:
        if not args.images:
            raise ValueError("IMAGES: give at least one image file, directory or glob pattern "
                             "(or --export-labels DIR / --export-model FILE)")
        if not args.out:
            raise ValueError("--out: required: the directory to write the predictions to")
        if not 0.0 <= args.alpha <= 1.0:
            raise ValueError(f"--alpha {args.alpha}: expected a number in [0, 1]")
    if args.round is not None and args.round < 1:
        raise ValueError(f"--round {args.round}: expected a round number >= 1")
    run = RunFiles(args.run_dir)
    if args.export_labels:
        from mulact.export import export_labels

        summary = export_labels(run, args.export_labels, round_index=args.round, progress=not args.no_progress)
        pseudo = (f", pseudo labels of round {summary['pseudo_labels_round']}"
                  if summary["pseudo_labels_round"] is not None else "")
        return (f"mulact-predict: wrote the masks of {len(summary['images'])} images (labels of rounds "
                f"1..{summary['rounds']}{pseudo}) to {args.export_labels}")
    if args.export_model:
        from mulact.export import write_smp_model

        model, t = run.load_model(args.round, "cpu")
        write_smp_model(args.export_model, model, class_names=run.class_names, colors=run.colors,
                        temperature=run.cfg.temperature, round_index=t, stage=run.stage)
        return f"mulact-predict: wrote the model of round {t} ({run.stage}) to {args.export_model}"
    device = _resolve_device(args.device)
    images = gather_images(args.images)
    report = predict_images(run, images, args.out, round_index=args.round, device=device, alpha=args.alpha,
                            progress=not args.no_progress)
    if report.failed:
        raise OSError(f"{len(report.failed)} of {len(images)} images could not be read (the other "
                      f"{len(report.written)} were written to {args.out}):\n  " + "\n  ".join(report.failed))
    return f"mulact-predict: segmented {len(report.written)} images with round {report.round}'s model into {args.out}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    try:
        print(_run(args))
    except (ValueError, OSError, RunStateError) as err:
        print(f"mulact-predict: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
