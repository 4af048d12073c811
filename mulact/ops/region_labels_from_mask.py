"""Oracle region labels from a ground-truth mask (docs/design.md §2.7, supplement "Label generation").

``region_labels_from_mask(gt, regions, num_regions, num_classes, ignore_index=255, trim=5)``
simulates an annotator who answers a query for region r:

* **multi-class label**: the classes present among the *trimmed* pixels of r. The trim band
  is the set of region-boundary pixels on both sides of every boundary (exactly
  ``skimage.segmentation.find_boundaries(regions, mode="thick")``: a pixel whose 4-neighbours
  include another id; image borders are not boundaries; a negative id counts as one more
  label, so pixels next to padding are boundary pixels) dilated with a ``trim x trim``
  square. The trimmed region is the region minus the band, or the whole region when that
  leaves nothing. ``ignore_index`` among those pixels sets the extra **undefined** bit
  (index ``num_classes``); an all-ignore region is ``{undefined}``.
* **dominant label**: the most frequent class over the *whole* region (undefined counted as
  class ``num_classes``; ties -> the smaller class; ``-1`` for a region with no pixel).

Even ``trim`` follows scipy/skimage's centring of an even footprint: a boundary pixel at
offset 0 marks offsets ``-(trim // 2) .. (trim - 1) // 2`` (e.g. ``trim=4``: -2..1), i.e.
``skimage.morphology.dilation(boundary, footprint_rectangle((trim, trim)))``. ``trim=1`` is the
boundary itself and ``trim=0`` disables trimming.

Backends: ``reference`` (vectorised torch, any device), ``cpp`` (``mulact._C``, one fused
multi-threaded pass per image after the band), ``triton`` (two kernels: boundary, then band +
per-region class histograms with integer atomics; the tiny per-region finalisation runs in
torch on the device). All backends return identical integers.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import _validate as V
from ._backend import LaunchTable, resolve_backend
from ._cpp import code, ext, index_tensor, ptr

OP = "region_labels_from_mask"


class RegionLabels(NamedTuple):
    """Oracle answers for every region of a batch.

    multi_hot     (B, R, C+1) bool   multi-class label; index C = undefined
    dominant      (B, R)      int64  dominant class in [0, C] (C = undefined), -1 if empty
    class_counts  (B, R, C+1) int64  pixel count per class over the whole region
    cost          (B, R)      int64  click cost of a multi-class query (= bits set)
    """

    multi_hot: torch.Tensor
    dominant: torch.Tensor
    class_counts: torch.Tensor
    cost: torch.Tensor

    @property
    def dominant_cost(self) -> torch.Tensor:
        """Click cost of a dominant-class query: 1 per non-empty region, 0 for empty ones."""
        return (self.dominant >= 0).to(torch.int64)

    def dominant_one_hot(self) -> torch.Tensor:
        """``(B, R, C+1)`` bool one-hot of :attr:`dominant` (all False for empty regions)."""
        b, r, c1 = self.class_counts.shape
        out = torch.zeros(b, r, c1, dtype=torch.bool, device=self.dominant.device)
        has = self.dominant >= 0
        out.scatter_(2, self.dominant.clamp(min=0).unsqueeze(-1), has.unsqueeze(-1))
        return out


# ------------------------------------------------------------------------------ validation

def _check(gt, regions, num_regions, num_classes, ignore_index, trim) -> None:
    V.check_regions(OP, regions, num_regions)
    if not isinstance(gt, torch.Tensor):
        raise TypeError(f"{OP}: `gt` must be a torch.Tensor, got {type(gt).__name__}")
    if gt.dtype not in V.INT_DTYPES:
        raise TypeError(f"{OP}: `gt` must be an integer tensor of class ids, got {gt.dtype}")
    if tuple(gt.shape) != tuple(regions.shape):
        raise ValueError(f"{OP}: `gt` has shape {tuple(gt.shape)} but `regions` has {tuple(regions.shape)}; "
                         "they must match (B, H, W)")
    V.check_same_device(OP, gt=gt, regions=regions)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{OP}: `num_classes` must be a positive int, got {num_classes!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"{OP}: `ignore_index` must be an int, got {type(ignore_index).__name__}")
    if 0 <= ignore_index < num_classes:
        raise ValueError(f"{OP}: `ignore_index`={ignore_index} collides with a class id (num_classes={num_classes})")
    if isinstance(trim, bool) or not isinstance(trim, int) or trim < 0:
        raise ValueError(f"{OP}: `trim` must be a non-negative int (square side in pixels), got {trim!r}")


def _bad_gt_error(value: int, num_classes: int, ignore_index: int) -> ValueError:
    return ValueError(f"{OP}: `gt` holds value {value}, which is neither a class id in [0, {num_classes}) nor "
                      f"ignore_index={ignore_index}")


def _class_index(gt: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """gt -> class slot in [0, C] (C = undefined); raises on foreign values."""
    g = gt.to(torch.int64)
    is_ign = g == ignore_index
    bad = ~is_ign & ((g < 0) | (g >= num_classes))
    if bool(bad.any()):
        raise _bad_gt_error(int(g[bad][0]), num_classes, ignore_index)
    return torch.where(is_ign, torch.full_like(g, num_classes), g)


def _finalize(whole: torch.Tensor, trimmed: torch.Tensor) -> RegionLabels:
    """Counts (B, R, C+1) of the whole and the trimmed regions -> RegionLabels."""
    use_trim = trimmed.sum(-1, keepdim=True) > 0
    multi_hot = torch.where(use_trim, trimmed, whole) > 0
    total = whole.sum(-1)
    dominant = torch.where(total > 0, whole.argmax(-1), torch.full_like(total, -1))  # argmax: first maximum
    cost = multi_hot.sum(-1, dtype=torch.int64)
    return RegionLabels(multi_hot, dominant, whole, cost)


# ------------------------------------------------------------------------------- reference

def boundary_band_reference(regions: torch.Tensor, trim: int) -> torch.Tensor:
    """``(B, H, W)`` bool trim band: thick boundaries dilated by a ``trim x trim`` square."""
    r = regions.to(torch.int64)
    bnd = torch.zeros_like(r, dtype=torch.bool)
    # 4-neighbour differences; a border pixel's missing neighbour is itself (skimage's reflect)
    dv = r[:, 1:, :] != r[:, :-1, :]
    dh = r[:, :, 1:] != r[:, :, :-1]
    bnd[:, 1:, :] |= dv
    bnd[:, :-1, :] |= dv
    bnd[:, :, 1:] |= dh
    bnd[:, :, :-1] |= dh
    if trim == 0 or r.numel() == 0:
        return torch.zeros_like(bnd)
    lo, hi = (trim - 1) // 2, trim // 2  # band(y) = any boundary in [y - lo, y + hi]
    x = F.pad(bnd[:, None].to(torch.float32), (lo, hi, lo, hi), value=0.0)
    return F.max_pool2d(x, kernel_size=trim, stride=1)[:, 0] > 0


def region_labels_from_mask_reference(gt, regions, num_regions: int, num_classes: int, ignore_index: int = 255,
                                      trim: int = 5) -> RegionLabels:
    """Pure-torch formulation (test oracle and benchmark baseline)."""
    _check(gt, regions, num_regions, num_classes, ignore_index, trim)
    V.check_region_ids(OP, regions, num_regions)
    b = regions.shape[0]
    c1 = num_classes + 1
    cls = _class_index(gt, num_classes, ignore_index)
    band = boundary_band_reference(regions, trim)
    ids = regions.to(torch.int64)
    valid = ids >= 0
    key = (torch.arange(b, device=ids.device).view(b, 1, 1) * num_regions + ids.clamp(min=0)) * c1 + cls
    whole = torch.zeros(b * num_regions * c1, dtype=torch.int64, device=ids.device)
    trimmed = torch.zeros_like(whole)
    whole.index_add_(0, key[valid], torch.ones_like(key[valid]))
    keep = valid & ~band
    trimmed.index_add_(0, key[keep], torch.ones_like(key[keep]))
    return _finalize(whole.view(b, num_regions, c1), trimmed.view(b, num_regions, c1))


def region_labels_from_mask_naive(gt, regions, num_regions: int, num_classes: int, ignore_index: int = 255,
                                  trim: int = 5) -> RegionLabels:
    """Per-image, per-region formulation with scikit-image (what research code typically does).

    ``find_boundaries(mode="thick")`` + ``morphology.dilation`` with a ``trim x trim``
    rectangle, then a Python loop over the regions (cropped with
    ``scipy.ndimage.find_objects``). Independent of the vectorised reference: the second test
    oracle and the benchmark's user baseline. CPU only, slow.
    """
    import numpy as np
    from scipy import ndimage
    from skimage.morphology import dilation, footprint_rectangle
    from skimage.segmentation import find_boundaries

    _check(gt, regions, num_regions, num_classes, ignore_index, trim)
    V.check_region_ids(OP, regions, num_regions)
    b = regions.shape[0]
    c1 = num_classes + 1
    whole = np.zeros((b, num_regions, c1), np.int64)
    multi_hot = np.zeros((b, num_regions, c1), bool)
    for i in range(b):
        reg = regions[i].cpu().numpy().astype(np.int64)
        g = gt[i].cpu().numpy().astype(np.int64)
        bad = (g != ignore_index) & ((g < 0) | (g >= num_classes))
        if bad.any():
            raise _bad_gt_error(int(g[bad][0]), num_classes, ignore_index)
        cls = np.where(g == ignore_index, num_classes, g)
        thick = find_boundaries(reg + 1, mode="thick")  # shifted: padding (-1) becomes label 0
        band = dilation(thick, footprint_rectangle((trim, trim))) if trim > 0 else np.zeros_like(thick)
        # find_objects wants labels >= 1; padding (0 after the shift) is skipped
        for r, box in enumerate(ndimage.find_objects(np.where(reg >= 0, reg + 1, 0), max_label=num_regions)):
            if box is None:
                continue
            m = reg[box] == r
            c = cls[box][m]
            whole[i, r] = np.bincount(c, minlength=c1)
            kept = c[~band[box][m]]
            present = np.unique(kept if kept.size else c)
            multi_hot[i, r, present] = True
    dominant = np.where(whole.sum(-1) > 0, whole.argmax(-1), -1)  # np.argmax: first maximum
    dev = regions.device
    return RegionLabels(torch.from_numpy(multi_hot).to(dev), torch.from_numpy(dominant).to(dev),
                        torch.from_numpy(whole).to(dev), torch.from_numpy(multi_hot.sum(-1).astype(np.int64)).to(dev))


# ------------------------------------------------------------------------------------- C++

def _cpp(gt, regions, num_regions, num_classes, ignore_index, trim) -> RegionLabels:
    b, h, w = regions.shape
    c1 = num_classes + 1
    reg = index_tensor(regions)
    g = index_tensor(gt)
    whole = torch.empty(b, num_regions, c1, dtype=torch.int64)
    trimmed = torch.empty_like(whole)
    multi_hot = torch.empty(b, num_regions, c1, dtype=torch.bool)
    dominant = torch.empty(b, num_regions, dtype=torch.int64)
    cost = torch.empty(b, num_regions, dtype=torch.int64)
    status = V.new_status(regions.device)
    bad_gt, has_bad_gt = ext().region_labels_from_mask_forward(
        ptr(reg), code(reg), ptr(g), code(g), b, h, w, num_regions, num_classes, ignore_index, trim,
        ptr(whole), ptr(trimmed), ptr(multi_hot), ptr(dominant), ptr(cost), ptr(status))
    if int(status[1]) >= 0:
        V.check_region_ids(OP, regions, num_regions)
    if has_bad_gt:
        raise _bad_gt_error(bad_gt, num_classes, ignore_index)
    return RegionLabels(multi_hot, dominant, whole, cost)


# ---------------------------------------------------------------------------------- Triton

def _triton(gt, regions, num_regions, num_classes, ignore_index, trim) -> RegionLabels:
    from mulact.kernels.region_labels_from_mask import region_class_counts

    status = V.new_status(regions.device)
    bad_gt = torch.full((1,), -1, dtype=torch.int64, device=regions.device)
    whole, trimmed = region_class_counts(regions, gt, num_regions, num_classes, ignore_index, trim, status, bad_gt)
    if int(status[1]) >= 0:
        V.check_region_ids(OP, regions, num_regions)
    if int(bad_gt[0]) >= 0:
        # the kernel only flags that some foreign value exists; name one of them
        _class_index(gt, num_classes, ignore_index)
    return _finalize(whole, trimmed)


_LAUNCH = LaunchTable(OP, cpp=_cpp, triton=_triton)


# ---------------------------------------------------------------------------------- public

@V.names_sizes("num_regions", "num_classes")
def region_labels_from_mask(gt: torch.Tensor, regions: torch.Tensor, num_regions: int, num_classes: int,
                            ignore_index: int = 255, trim: int = 5, *, backend: str | None = None) -> RegionLabels:
    """Oracle multi-class and dominant labels of every region (docs/design.md §2.7).

    Args:
        gt: ``(B, H, W)`` integer train ids in ``[0, num_classes)`` or ``ignore_index``; any
            other value raises ``ValueError``.
        regions: ``(B, H, W)`` integer region ids in ``[0, num_regions)``; negative = no region.
        num_regions: R. num_classes: C (without the undefined class).
        ignore_index: gt value of void pixels (-> undefined class, index C).
        trim: side of the square that dilates the thick region boundaries (paper: 5).
        backend: ``"reference" | "cpp" | "triton"`` or None (see ``resolve_backend``).

    Returns:
        :class:`RegionLabels` ``(multi_hot (B,R,C+1) bool, dominant (B,R) int64,
        class_counts (B,R,C+1) int64, cost (B,R) int64)``; ``.dominant_cost`` is the cost of a
        dominant query (1 per non-empty region). Empty regions have no bit set, cost 0 and
        dominant -1.

    Example::

        >>> gt = torch.tensor([[[0, 0, 1, 1]]]); regions = torch.tensor([[[0, 0, 0, 1]]])
        >>> out = region_labels_from_mask(gt, regions, 2, num_classes=2, trim=0)
        >>> out.multi_hot[0].int().tolist(), out.dominant[0].tolist()
        ([[1, 1, 0], [0, 1, 0]], [0, 1])
    """
    _check(gt, regions, num_regions, num_classes, ignore_index, trim)
    which = resolve_backend(OP, regions.device, backend)
    if which == "reference":
        return region_labels_from_mask_reference(gt, regions, num_regions, num_classes, ignore_index, trim)
    return RegionLabels(*torch.ops.mulact.region_labels_from_mask(gt, regions, num_regions, num_classes, ignore_index,
                                                                  trim, which))


@torch.library.custom_op("mulact::region_labels_from_mask", mutates_args=(), device_types=("cpu", "cuda"))
def _op(gt: torch.Tensor, regions: torch.Tensor, num_regions: int, num_classes: int, ignore_index: int, trim: int,
        backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(multi_hot, dominant, class_counts, cost)`` from the fused backend (docs/design.md,
    "Dispatch"). The oracle runs once per dataset, off the training path: its checks read the
    status at once on every device, so that a bad mask names the offending value."""
    launch = _LAUNCH.launcher(backend, regions)
    return tuple(launch(gt, regions, num_regions, num_classes, ignore_index, trim))


@_op.register_fake
def _(gt, regions, num_regions, num_classes, ignore_index, trim, backend):
    b = regions.shape[0]
    c1 = num_classes + 1
    i64 = torch.int64
    return (regions.new_empty(b, num_regions, c1, dtype=torch.bool), regions.new_empty(b, num_regions, dtype=i64),
            regions.new_empty(b, num_regions, c1, dtype=i64), regions.new_empty(b, num_regions, dtype=i64))


def dominant_labels(gt: torch.Tensor, regions: torch.Tensor, num_regions: int, num_classes: int,
                    ignore_index: int = 255, *, backend: str | None = None) -> torch.Tensor:
    """One-hot ``(B, R, C+1)`` bool dominant-class labels (the "Dom" baseline's oracle).

    The dominant class is the most frequent one over the whole region (undefined = index C
    counted as a class; ties -> smaller); empty regions get no bit. Query cost is 1 per region.
    """
    out = region_labels_from_mask(gt, regions, num_regions, num_classes, ignore_index, trim=0, backend=backend)
    return out.dominant_one_hot()
