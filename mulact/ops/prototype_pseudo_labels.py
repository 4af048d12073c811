"""Stage-2 pseudo labels from class prototypes (docs/design.md §2.6; paper §3.3, Eq. 11-13).

Per image:

1. **Prototypes.** For every labeled region ``r`` and every class ``c`` in its label set
   ``Y(r)`` (single-class regions included) the prototypical pixel is
   ``x*_{r,c} = argmax_{x in r} log_softmax(z(x))_c`` with ``z = logits / temperature``; ties go
   to the smallest flat index ``h * W + w`` (the semantics of ``region_class_argmax`` with
   ``min_classes=1``, including its evaluation ``log_softmax_c = (z_c - max) - log1p(sum of the
   other classes' exp(z - max))``, which keeps confident pixels apart at small temperatures). The prototype is the (upsampled) feature at ``x*_{r,c}``.
2. **Localization** (Eq. 11). Each pixel of a labeled region takes the class of its most
   cosine-similar prototype of that region (ties -> smaller class).
3. **Thresholds** (Eq. 12). ``alpha_{r,c}`` is the lower median of the similarities of the
   pixels of ``r`` localized to ``c``, and ``1.0`` when no pixel went to ``c``.
4. **Expansion** (Eq. 13). ``N(r)`` are the unlabeled regions with a pixel in the 3x3
   neighbourhood of a pixel of ``r`` (8-connectivity, per image, negative ids never connect).
   A pixel ``x`` of ``r' in N(r)`` is a candidate for ``(r, c)`` when
   ``cos(f(x), proto_{r,c}) > alpha_{r,c}``; it takes the class of its most similar candidate
   over all labeled neighbours of its region (equal similarity -> smaller class). Pixels
   without a candidate, pixels of unlabeled regions without labeled neighbours and pixels with
   a negative id get ``255``. Labeled regions are never expanded into.

Numerics shared by all backends:

- ``features`` are cast to float32 and bilinearly upsampled to the region resolution exactly
  like ``F.interpolate(features.float(), size=(H, W), mode="bilinear", align_corners=False)``.
  The reference does exactly that; the fused backends interpolate each pixel on the fly
  (PyTorch's source index ``src = (dst + 0.5) * in / out - 0.5`` clamped at 0, two taps per
  axis) and never materialise the ``(B, D, H, W)`` upsampled tensor.
- ``cos(u, p) = clamp(<u, p / max(|p|, eps)> / max(|u|, eps), -1, 1)`` with ``eps = 1e-12``
  (as ``F.normalize``): a zero feature vector has similarity 0 to everything. The clamp makes
  "threshold 1.0" mean "never expands" even when rounding pushes a dot product past 1.
- The reference computes similarities in float64 and rounds them to float32; the C++ and
  Triton backends compute them in float32. Thresholds therefore agree up to float32 rounding
  of the similarity; all decisions (argmax, ``>`` threshold) are taken on float32 values.

Backends (all deterministic; same labels up to float32 rounding of the similarities):

- ``reference``: pure torch, the test oracle, built from the other references: prototype
  pixels from ``region_class_argmax_reference(..., min_classes=1)`` and adjacency from
  ``region_adjacency_reference`` (kept as a dense bool ``(R, R)`` of labeled/unlabeled pairs).
- ``cpp``: ``csrc/prototype_pseudo_labels.cpp``, a few fused passes per image (prototype argmax
  and adjacency pairs in one pass over the region map; expansion with an exact pre-filter).
- ``triton``: ``kernels/prototype_pseudo_labels.py`` (atomic argmax + adjacency scan, tiled
  assignment - by default one tile per region and bilinear cell, whose four taps are loaded
  once - lower medians by ``torch.sort`` between launches).

NaN/Inf are checked in the features (all of them) and in the logits of the pixels of labeled
regions (the only logits read); region ids ``>= R`` raise. The C++ path keeps grow-only scratch
buffers per calling thread (a few bytes per low-resolution feature value and per pixel).

The op produces integer labels and has no gradient.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ._backend import LaunchTable, resolve_backend
from ._labels import device_guard
from ._validate import (
    check_classes,
    check_float,
    check_logits,
    check_region_count,
    check_region_ids,
    check_same_device,
    check_temperature,
    need_tensor,
    new_status,
    raise_on_status,
)
from .region_adjacency import region_adjacency_reference
from .region_class_argmax import region_class_argmax_reference

OP = "prototype_pseudo_labels"
IGNORE_INDEX = 255
EPS = 1e-12
# Rows of the (pixels x prototypes) similarity matrix the reference builds at once.
_REF_CHUNK = 16384


class PseudoLabelInfo(NamedTuple):
    """Side outputs of :func:`prototype_pseudo_labels` (``return_info=True``).

    thresholds: ``(B, R, C)`` float32, ``alpha_{r,c}`` of every prototype; ``1.0`` for a
        prototype that no pixel was localized to; ``NaN`` where there is no prototype
        (``c`` not in ``Y(r)``, or region ``r`` absent from the image).
    num_localized: ``(B,)`` int64, pixels labeled by localization (all pixels of the labeled
        regions present in the image).
    num_expanded: ``(B,)`` int64, pixels labeled by expansion (0 when ``expand=False``).
    prototype_index: ``(B, R, C)`` int64 flat index ``h * W + w`` of ``x*_{r,c}``, ``-1``
        where there is no prototype.
    """

    thresholds: torch.Tensor
    num_localized: torch.Tensor
    num_expanded: torch.Tensor
    prototype_index: torch.Tensor


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------
def _validate(features, logits, regions, region_labels, expand, temperature, check_features=True) -> float:
    """Shape/type/device checks; ``check_features=False`` leaves the NaN/Inf scan of the
    features to the backend (the C++ kernel does it while converting them)."""
    need_tensor(OP, "regions", regions)
    if regions.dtype not in (torch.int16, torch.int32, torch.int64, torch.uint8, torch.int8):
        raise TypeError(f"{OP}: `regions` must be an integer tensor of region ids, got {regions.dtype}")
    if regions.dim() != 3:
        raise ValueError(f"{OP}: `regions` must have shape (B, H, W), got {tuple(regions.shape)}")
    check_logits(OP, logits, regions)
    check_classes(OP, logits)
    need_tensor(OP, "region_labels", region_labels)
    if region_labels.dtype not in (torch.bool, torch.uint8):
        raise TypeError(f"{OP}: `region_labels` must be bool or uint8 multi-hot, got {region_labels.dtype}")
    b, c, h, w = logits.shape
    if h == 0 or w == 0:
        raise ValueError(f"{OP}: `logits` and `regions` need images of at least 1x1 pixel (the features are "
                         f"upsampled to them), got H={h}, W={w}")
    if region_labels.dim() != 3 or region_labels.shape[0] != b or region_labels.shape[2] != c:
        raise ValueError(f"{OP}: `region_labels` must have shape ({b}, R, {c}) (batch and classes of `logits`), "
                         f"got {tuple(region_labels.shape)}")
    check_region_count(OP, region_labels.shape[1], "region_labels.shape[1]")
    check_float(OP, "features", features, 4, "(B, D, h, w)")
    fb, fd, fh, fw = features.shape
    if fb != b or fd < 1 or not (1 <= fh <= h) or not (1 <= fw <= w):
        raise ValueError(f"{OP}: `features` must have shape ({b}, D, h, w) with D >= 1, 1 <= h <= {h} and "
                         f"1 <= w <= {w} (the resolution of `regions`), got {tuple(features.shape)}")
    check_same_device(OP, features=features, logits=logits, regions=regions, region_labels=region_labels)
    if not isinstance(expand, bool):
        raise TypeError(f"{OP}: `expand` must be a bool, got {type(expand).__name__}")
    temperature = check_temperature(OP, temperature, logits.dtype)
    if check_features and features.numel() and not bool(torch.isfinite(features).all()):
        raise ValueError(f"{OP}: `features` contains NaN or Inf")
    return temperature


# --------------------------------------------------------------------------------------
# reference (pure torch, vectorised per image)
# --------------------------------------------------------------------------------------
def _labeled_adjacency_reference(regions, labeled_b, b):
    """Bool ``(R, R)``: ``adj[u, l]`` when unlabeled region ``u`` touches labeled region ``l``
    (the 8-connected edges of :func:`region_adjacency_reference` with one labeled end)."""
    edges = region_adjacency_reference(regions[b: b + 1], labeled_b.shape[0])[0]
    u, v = edges.unbind(1)
    lu, lv = labeled_b[u], labeled_b[v]
    one = lu != lv
    adj = torch.zeros((labeled_b.shape[0],) * 2, dtype=torch.bool, device=regions.device)
    adj[torch.where(lu, v, u)[one], torch.where(lu, u, v)[one]] = True
    return adj


def _similarities_reference(fx, pn):
    """float32 cosine similarities of feature rows ``fx (N, D)`` to unit prototypes ``pn (D, K)``."""
    x = fx.double()
    nrm = x.norm(dim=1).clamp_min(EPS)
    return ((x @ pn) / nrm[:, None]).clamp(-1.0, 1.0).float()


def prototype_pseudo_labels_reference(features, logits, regions, region_labels, expand=True, *, temperature):
    """Pure-torch oracle of :func:`prototype_pseudo_labels`; returns ``(labels, PseudoLabelInfo)``.

    Materialises the upsampled features with ``F.interpolate`` and works per image on the
    ``(pixels, prototypes)`` similarity matrix, in row chunks.
    """
    temperature = _validate(features, logits, regions, region_labels, expand, temperature)
    bsz, c, h, w = logits.shape
    r_count = region_labels.shape[1]
    hw = h * w
    dev = logits.device
    check_region_ids(OP, regions, r_count)
    proto_index = region_class_argmax_reference(logits, regions, region_labels, temperature, min_classes=1)
    up = F.interpolate(features.float(), size=(h, w), mode="bilinear", align_corners=False)
    d = up.shape[1]
    out = torch.full((bsz, hw), IGNORE_INDEX, dtype=torch.int64, device=dev)
    thresholds = torch.full((bsz, r_count, c), float("nan"), dtype=torch.float32, device=dev)
    num_loc = torch.zeros(bsz, dtype=torch.int64, device=dev)
    num_exp = torch.zeros(bsz, dtype=torch.int64, device=dev)
    labeled = region_labels.bool().any(-1)
    for b in range(bsz):
        pidx = proto_index[b]
        kr, kc = torch.nonzero(pidx >= 0).unbind(1)  # prototypes ordered by (region, class)
        if kr.numel() == 0:
            continue
        f = up[b].reshape(d, hw)
        p = f[:, pidx[kr, kc]].double()
        pn = p / p.norm(dim=0).clamp_min(EPS)
        reg = regions[b].reshape(-1).long()
        regc = reg.clamp_min(0)

        # localization: argmax over the region's own prototypes; torch.argmax keeps the first
        # maximum, i.e. the smallest class since prototypes are sorted by (region, class)
        loc = torch.nonzero((reg >= 0) & labeled[b][regc]).squeeze(1)
        best_k, best_s = [], []
        for s0 in range(0, loc.numel(), _REF_CHUNK):
            pix = loc[s0: s0 + _REF_CHUNK]
            sim = _similarities_reference(f[:, pix].T, pn)
            sim = sim.masked_fill(kr[None, :] != reg[pix][:, None], float("-inf"))
            k = sim.argmax(1)
            best_k.append(k)
            best_s.append(sim.gather(1, k[:, None]).squeeze(1))
        best_k = torch.cat(best_k)
        best_s = torch.cat(best_s)
        out[b, loc] = kc[best_k]
        num_loc[b] = loc.numel()

        # thresholds: lower median of each prototype's similarities (sort by value, then stably
        # by prototype, so each prototype's values are a sorted contiguous run)
        kk = kr.numel()
        order = torch.argsort(best_s, stable=True)
        order = order[torch.argsort(best_k[order], stable=True)]
        vals = best_s[order]
        cnt = torch.bincount(best_k, minlength=kk)
        start = torch.cumsum(cnt, 0) - cnt
        alpha = torch.ones(kk, dtype=torch.float32, device=dev)
        has = cnt > 0
        alpha[has] = vals[(start + (cnt - 1) // 2)[has]]
        thresholds[b, kr, kc] = alpha

        if not expand:
            continue
        adj = _labeled_adjacency_reference(regions, labeled[b], b)
        adj_k = adj[:, kr]  # (R, K): prototype k belongs to a labeled neighbour of the region
        exp = torch.nonzero((reg >= 0) & ~labeled[b][regc] & adj_k.any(1)[regc]).squeeze(1)
        n_exp = 0
        for s0 in range(0, exp.numel(), _REF_CHUNK):
            pix = exp[s0: s0 + _REF_CHUNK]
            sim = _similarities_reference(f[:, pix].T, pn)
            cand = adj_k[reg[pix]] & (sim > alpha[None, :])
            sim = sim.masked_fill(~cand, float("-inf"))
            top = sim.max(1, keepdim=True).values
            cls = torch.where(cand & (sim == top), kc[None, :], c).min(1).values
            got = cand.any(1)
            out[b, pix[got]] = cls[got]
            n_exp += int(got.sum())
        num_exp[b] = n_exp
    info = PseudoLabelInfo(thresholds, num_loc, num_exp, proto_index)
    return out.reshape(bsz, h, w), info


def pseudo_labels_without_prototypes(logits, regions, region_labels, temperature):
    """Baseline "w/o prototypes" of the ablation (paper Fig. 7a, supplement Fig. 12b).

    Each pixel of a labeled region takes its most confident class among the region's label set
    ``Y(r)`` (argmax of ``logits / temperature`` restricted to ``Y(r)``; ties -> smaller class);
    every other pixel (unlabeled regions, negative ids) gets ``255``. A cheap masked argmax:
    plain torch on any device, no fused backend. Returns ``(B, H, W)`` int64.

    Example::

        >>> logits = torch.tensor([[[[2.0, 0.0]], [[1.0, 3.0]], [[5.0, 5.0]]]])  # (1, 3, 1, 2)
        >>> regions = torch.tensor([[[0, 1]]])
        >>> region_labels = torch.tensor([[[True, True, False], [False, False, False]]])
        >>> pseudo_labels_without_prototypes(logits, regions, region_labels, temperature=1.0)
        tensor([[[  0, 255]]])
    """
    op = "pseudo_labels_without_prototypes"
    need_tensor(op, "regions", regions)
    if regions.dtype not in (torch.int16, torch.int32, torch.int64, torch.uint8, torch.int8) or regions.dim() != 3:
        raise ValueError(f"{op}: `regions` must be an integer (B, H, W) tensor, got {regions.dtype} "
                         f"{tuple(regions.shape)}")
    check_logits(op, logits, regions)
    need_tensor(op, "region_labels", region_labels)
    bsz, c, h, w = logits.shape
    if region_labels.dtype not in (torch.bool, torch.uint8) or region_labels.dim() != 3 or \
            region_labels.shape[0] != bsz or region_labels.shape[2] != c:
        raise ValueError(f"{op}: `region_labels` must be a bool/uint8 ({bsz}, R, {c}) tensor, got "
                         f"{region_labels.dtype} {tuple(region_labels.shape)}")
    check_same_device(op, logits=logits, regions=regions, region_labels=region_labels)
    check_classes(op, logits)
    temperature = check_temperature(op, temperature)  # z is computed in float32 below
    r_count = region_labels.shape[1]
    check_region_ids(op, regions, r_count)
    reg = regions.long()
    regc = reg.clamp_min(0)
    labels = region_labels.bool()
    ys = labels[torch.arange(bsz, device=reg.device)[:, None, None], regc]  # (B, H, W, C)
    on = (reg >= 0) & ys.any(-1)
    z = (logits.float() / temperature).permute(0, 2, 3, 1)
    if not bool(torch.isfinite(z[on]).all()):
        raise ValueError(f"{op}: `logits` contains NaN or Inf")
    cls = z.masked_fill(~ys, float("-inf")).argmax(-1)  # first maximum -> smaller class
    return torch.where(on, cls, torch.full_like(cls, IGNORE_INDEX))


# --------------------------------------------------------------------------------------
# C++ backend
# --------------------------------------------------------------------------------------
def _forward_cpp(features, logits, regions, region_labels, expand, temperature):
    from ._cpp import code, ext, index_tensor, ptr
    from ._labels import labels_u8

    bsz, c, h, w = logits.shape
    r_count = region_labels.shape[1]
    feats = features.contiguous()
    lg = logits.contiguous()
    reg = index_tensor(regions)
    lab = labels_u8(region_labels)
    out = torch.empty((bsz, h, w), dtype=torch.int64)
    thresholds = torch.empty((bsz, r_count, c), dtype=torch.float32)
    proto_index = torch.empty((bsz, r_count, c), dtype=torch.int64)
    num_loc = torch.empty(bsz, dtype=torch.int64)
    num_exp = torch.empty(bsz, dtype=torch.int64)
    status = new_status(torch.device("cpu"))
    _, d, fh, fw = feats.shape
    ext().prototype_pseudo_labels_forward(
        ptr(feats), code(feats), ptr(lg), code(lg), ptr(reg), code(reg), ptr(lab),
        bsz, d, fh, fw, c, h, w, r_count, float(temperature), bool(expand),
        ptr(out), ptr(thresholds), ptr(proto_index), ptr(num_loc), ptr(num_exp), ptr(status))
    if int(status[0]) == 2:
        raise ValueError(f"{OP}: `features` contains NaN or Inf")
    raise_on_status(OP, status, r_count, regions=regions)
    return out, thresholds, num_loc, num_exp, proto_index


def _forward_triton(features, logits, regions, region_labels, expand, temperature):
    from mulact.kernels.prototype_pseudo_labels import prototype_pseudo_labels_triton

    r_count = region_labels.shape[1]

    def check_status(status):
        # the features' NaN/Inf scan is fused into the kernels' channels-last copy (status 2)
        if int(status[0]) == 2:
            raise ValueError(f"{OP}: `features` contains NaN or Inf")
        raise_on_status(OP, status, r_count, regions=regions)

    with device_guard(logits):
        return prototype_pseudo_labels_triton(features, logits, regions, region_labels, expand, temperature,
                                              new_status(logits.device), check_status)


_LAUNCH = LaunchTable(OP, cpp=_forward_cpp, triton=_forward_triton)


# Stage 2 is not a hot path and syncs anyway (its prototype count sizes tensors), so its
# status is read at once on every device (docs/design.md, "Status and NaN policy").
@torch.library.custom_op("mulact::prototype_pseudo_labels", mutates_args=(), device_types=("cpu", "cuda"))
def _op(features: torch.Tensor, logits: torch.Tensor, regions: torch.Tensor, region_labels: torch.Tensor,
        expand: bool, temperature: float,
        backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(labels, thresholds, num_localized, num_expanded, prototype_index)`` from the fused
    backend (docs/design.md, "Dispatch")."""
    launch = _LAUNCH.launcher(backend, logits)
    return launch(features, logits, regions, region_labels, expand, temperature)


@_op.register_fake
def _(features, logits, regions, region_labels, expand, temperature, backend):
    bsz, c, h, w = logits.shape
    r_count = region_labels.shape[1]
    i64 = torch.int64
    return (logits.new_empty(bsz, h, w, dtype=i64), logits.new_empty(bsz, r_count, c, dtype=torch.float32),
            logits.new_empty(bsz, dtype=i64), logits.new_empty(bsz, dtype=i64),
            logits.new_empty(bsz, r_count, c, dtype=i64))


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------
@torch.no_grad()
def prototype_pseudo_labels(features, logits, regions, region_labels, expand=True, *, temperature,
                            backend=None, return_info=False):
    """Pixel-wise pseudo labels from class prototypes: localization + expansion (Eq. 11-13).

    Args:
        features: ``(B, D, h, w)`` float32/float16/bfloat16/float64 features of the stage-1
            model, ``h <= H`` and ``w <= W`` (e.g. stride 4); bilinearly upsampled to
            ``(H, W)`` (``align_corners=False``) on the fly, in float32.
        logits: ``(B, C, H, W)`` float logits at the region resolution; used only to pick the
            prototypical pixels (``log_softmax(logits / temperature)``). Only the logits of
            pixels of labeled regions are read, and NaN/Inf among them raises.
        regions: ``(B, H, W)`` integer region ids in ``[0, R)``; negative = no region.
        region_labels: ``(B, R, C)`` bool/uint8 multi-hot label sets ``Y(r)``; a region with no
            bit set is unlabeled. ``R = region_labels.shape[1]``.
        expand: run label expansion into adjacent unlabeled regions (Eq. 13).
        temperature: ``tau`` of ``z = logits / tau`` for the prototype choice.
        backend: ``"reference" | "cpp" | "triton"`` or None (see :func:`resolve_backend`).
        return_info: also return a :class:`PseudoLabelInfo`.

    Returns:
        ``(B, H, W)`` int64 labels in ``[0, C)``, ``255`` where no pseudo label; with
        ``return_info=True`` the tuple ``(labels, PseudoLabelInfo)``.

    The semantics (tie-breaking, median, adjacency, cosine eps, clamp) are in the module
    docstring; all backends give the same labels up to float32 rounding of the similarities.
    No gradient flows (integer output).

    Example::

        >>> # D=2 features, one image of 1x6 pixels: region 0 (labeled {0, 1}) and region 1
        >>> feats = torch.tensor([[[[1.0, 0.0, 0.9, 0.1, 1.0, 0.5]], [[0.0, 1.0, 0.1, 0.9, 0.05, 0.5]]]])
        >>> logits = torch.tensor([[[[3.0, 0, 0, 0, 0, 0]], [[0, 3.0, 0, 0, 0, 0]]]])  # x* = pixels 0, 1
        >>> regions = torch.tensor([[[0, 0, 0, 0, 1, 1]]])
        >>> region_labels = torch.tensor([[[True, True], [False, False]]])
        >>> labels, info = prototype_pseudo_labels(feats, logits, regions, region_labels, temperature=1.0,
        ...                                        return_info=True)
        >>> labels  # pixel 4 is close enough to prototype 0 (cos 0.9988 > alpha 0.9939); pixel 5 is not
        tensor([[[  0,   1,   0,   1,   0, 255]]])
        >>> info.num_localized, info.num_expanded
        (tensor([4]), tensor([1]))
    """
    need_tensor(OP, "logits", logits)
    which = resolve_backend(OP, logits.device, backend)
    # the NaN/Inf scan of the features is the backend's: the reference's own pass, the Triton
    # kernels' channels-last copy, the C++ kernel's conversion pass
    temperature = _validate(features, logits, regions, region_labels, expand, temperature, check_features=False)
    if regions.numel() == 0:
        bsz, c, h, w = logits.shape
        r_count = region_labels.shape[1]
        dev = logits.device
        out = torch.full((bsz, h, w), IGNORE_INDEX, dtype=torch.int64, device=dev)
        info = PseudoLabelInfo(torch.full((bsz, r_count, c), float("nan"), device=dev),
                               torch.zeros(bsz, dtype=torch.int64, device=dev),
                               torch.zeros(bsz, dtype=torch.int64, device=dev),
                               torch.full((bsz, r_count, c), -1, dtype=torch.int64, device=dev))
    elif which == "reference":
        out, info = prototype_pseudo_labels_reference(features, logits, regions, region_labels, expand,
                                                      temperature=temperature)
    else:
        out, *info = torch.ops.mulact.prototype_pseudo_labels(features, logits, regions, region_labels, bool(expand),
                                                              temperature, which)
        info = PseudoLabelInfo(*info)
    return (out, info) if return_info else out
