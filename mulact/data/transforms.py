"""Joint transforms that keep image, ground truth and superpixel map aligned.

::

    t = TrainTransform(crop_size=(96, 192), scale_range=(0.5, 2.0), flip=True)
    image, label, regions = t(image, label, regions, generator=torch.Generator().manual_seed(0))
    image = normalize(to_float_image(rgb_uint8))           # what the datasets do first

Inputs are torch tensors: ``image`` float32 ``(3, H, W)`` already normalised with the ImageNet
mean/std (so padding with 0 is padding with the mean colour), ``label`` int64 ``(H, W)``
(255 = void) and ``regions`` int64 ``(H, W)`` (-1 = no region). Steps of
:class:`TrainTransform`, each drawing from the given ``torch.Generator`` (or torch's global
RNG when ``generator`` is None, e.g. inside DataLoader workers) so runs are reproducible:

1. random scale ``s ~ U(scale_range)``: the new size is ``round(H*s) x round(W*s)``; the image
   is resized bilinearly (``align_corners=False``), ids and labels with ``nearest-exact``
   (half-pixel centres, the same geometry as the bilinear resize);
2. pad to at least the crop size on the bottom/right (image 0, label ``ignore_index``,
   regions -1), then a uniformly random crop of ``crop_size``. A crop larger than an image even
   at the largest scale is allowed (VOC's 513 crops pad the small images too) but logs one
   warning per transform: such crops are mostly ignored padding;
3. horizontal flip with probability 0.5.

:class:`EvalTransform` returns its inputs unchanged (the datasets normalise already).
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

# Label value of void pixels in every dataset, and so in the oracle's input and in the
# loss and metric targets (SegmentationDataset.ignore_index).
IGNORE_INDEX = 255

log = logging.getLogger("mulact.data")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_float_image(rgb: np.ndarray) -> torch.Tensor:
    """RGB uint8 ``(H, W, 3)`` -> float32 ``(3, H, W)`` in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)


def normalize(image: torch.Tensor) -> torch.Tensor:
    """ImageNet mean/std normalisation of a ``(3, H, W)`` float image in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image - mean) / std


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize` (for visualisation)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return image * std + mean


def _uniform(generator: torch.Generator | None, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _randint(generator: torch.Generator | None, high: int) -> int:
    """Uniform integer in ``[0, high]`` (inclusive)."""
    return int(torch.randint(0, high + 1, (), generator=generator))


def _check(image, label, regions):
    if image.dim() != 3 or image.shape[0] != 3 or not image.is_floating_point():
        raise ValueError(f"transforms: `image` must be a float (3, H, W) tensor, got {image.dtype} {tuple(image.shape)}")
    if tuple(label.shape) != tuple(image.shape[1:]):
        raise ValueError(f"transforms: `label` has shape {tuple(label.shape)}, expected {tuple(image.shape[1:])}")
    if tuple(regions.shape) != tuple(image.shape[1:]):
        raise ValueError(f"transforms: `regions` has shape {tuple(regions.shape)}, expected {tuple(image.shape[1:])}")


def rescale(image, label, regions, scale: float):
    """Resize all three maps by ``scale`` (bilinear image, nearest-exact ids)."""
    h, w = image.shape[1:]
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    if (nh, nw) == (h, w):
        return image, label, regions
    image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    # nearest on a float copy is exact for ids < 2**24; int64 ids go through float64
    ids = torch.stack([label.to(torch.float64), regions.to(torch.float64)])[None]
    ids = F.interpolate(ids, size=(nh, nw), mode="nearest-exact")[0]
    return image, ids[0].to(label.dtype), ids[1].to(regions.dtype)


def pad_to(image, label, regions, height: int, width: int, ignore_index: int = IGNORE_INDEX):
    """Pad bottom/right to at least ``height x width`` (image 0, label ignore, regions -1)."""
    h, w = image.shape[1:]
    ph, pw = max(height - h, 0), max(width - w, 0)
    if ph == 0 and pw == 0:
        return image, label, regions
    image = F.pad(image, (0, pw, 0, ph), value=0.0)
    label = F.pad(label, (0, pw, 0, ph), value=ignore_index)
    regions = F.pad(regions, (0, pw, 0, ph), value=-1)
    return image, label, regions


class TrainTransform:
    """Random scale, pad + random crop, horizontal flip (see module docstring)."""

    def __init__(self, crop_size: int | tuple[int, int], scale_range: tuple[float, float] = (0.5, 2.0),
                 flip: bool = True, ignore_index: int = IGNORE_INDEX):
        if isinstance(crop_size, int):
            crop_size = (crop_size, crop_size)
        if len(crop_size) != 2 or min(crop_size) < 1:
            raise ValueError(f"TrainTransform: `crop_size` must be a positive int or (height, width), got {crop_size!r}")
        lo, hi = scale_range
        if not (0 < lo <= hi):
            raise ValueError(f"TrainTransform: `scale_range` must satisfy 0 < low <= high, got {scale_range!r}")
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.scale_range = (float(lo), float(hi))
        self.flip = flip
        self.ignore_index = ignore_index
        self._warned = False

    def __repr__(self) -> str:
        return (f"TrainTransform(crop_size={self.crop_size}, scale_range={self.scale_range}, flip={self.flip}, "
                f"ignore_index={self.ignore_index})")

    def _warn_if_padding(self, height: int, width: int) -> None:
        ch, cw = self.crop_size
        top = self.scale_range[1]
        sh, sw = round(height * top), round(width * top)
        if sh < ch or sw < cw:
            self._warned = True
            log.warning("crop %dx%d is larger than a %dx%d training image even at the largest scale %g (%dx%d): "
                        "the crops are partly ignored padding; lower --crop-size or raise --scale-max if that is "
                        "not intended", ch, cw, height, width, top, sh, sw)

    def __call__(self, image: torch.Tensor, label: torch.Tensor, regions: torch.Tensor,
                 generator: torch.Generator | None = None):
        _check(image, label, regions)
        if not self._warned:
            self._warn_if_padding(*image.shape[1:])
        scale = _uniform(generator, *self.scale_range)
        image, label, regions = rescale(image, label, regions, scale)
        ch, cw = self.crop_size
        image, label, regions = pad_to(image, label, regions, ch, cw, self.ignore_index)
        h, w = image.shape[1:]
        y0, x0 = _randint(generator, h - ch), _randint(generator, w - cw)
        image = image[:, y0:y0 + ch, x0:x0 + cw]
        label = label[y0:y0 + ch, x0:x0 + cw]
        regions = regions[y0:y0 + ch, x0:x0 + cw]
        if self.flip and _uniform(generator, 0.0, 1.0) < 0.5:
            image, label, regions = image.flip(-1), label.flip(-1), regions.flip(-1)
        return image.contiguous(), label.contiguous(), regions.contiguous()


class EvalTransform:
    """Identity on already-normalised tensors (evaluation runs at full resolution)."""

    def __repr__(self) -> str:
        return "EvalTransform()"

    def __call__(self, image, label, regions, generator: torch.Generator | None = None):
        _check(image, label, regions)
        return image, label, regions
