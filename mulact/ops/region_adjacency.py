"""Region adjacency graph of superpixel maps (docs/design.md §2.7).

``region_adjacency(regions, num_regions)`` returns, per image, the sorted unique pairs
``(u, v)``, ``u < v``, of region ids that touch under 8-connectivity (a pixel of ``v`` lies in
the 3x3 neighbourhood of a pixel of ``u``). Negative ids (padding) are ignored. Helpers turn an
edge list into a symmetric CSR (:func:`adjacency_csr`) or Python neighbour lists
(:func:`neighbor_lists`).

Caching: the adjacency of a *cached superpixel map file* is memoised per process by
:meth:`mulact.data.superpixels.SuperpixelCache.adjacency` (keyed by the PNG's path,
modification time and size, so a recomputed map is never served a stale graph); it is
cheap enough (a few ms per Cityscapes map in C++) not to be written to disk.

Backends: ``reference`` (vectorised torch: shifted comparisons + ``torch.unique``), ``cpp``
(one pass per image, per-thread key lists merged in a fixed order), ``triton`` (a kernel
emits one key per pixel and direction, ``torch.unique`` on the device deduplicates).
"""
from __future__ import annotations

import torch

from . import _validate as V
from ._backend import LaunchTable, resolve_backend
from ._cpp import code, ext, index_tensor, ptr

OP = "region_adjacency"

# right, down, down-right, down-left: with their opposites these cover the 8 neighbours
_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))


def _keys_to_edges(keys: torch.Tensor, num_regions: int) -> torch.Tensor:
    keys = torch.unique(keys)  # sorted
    return torch.stack([keys // num_regions, keys % num_regions], dim=1)


def region_adjacency_reference(regions: torch.Tensor, num_regions: int) -> list[torch.Tensor]:
    """Pure-torch formulation (test oracle and benchmark baseline)."""
    V.check_regions(OP, regions, num_regions)
    V.check_region_ids(OP, regions, num_regions)
    r = regions.to(torch.int64)
    _, h, w = r.shape
    out = []
    for img in r:
        keys = []
        for dy, dx in _OFFSETS:
            if dx >= 0:
                a, b = img[: h - dy, : w - dx], img[dy:, dx:]
            else:
                a, b = img[: h - dy, -dx:], img[dy:, : w + dx]
            m = (a != b) & (a >= 0) & (b >= 0)
            u, v = torch.minimum(a[m], b[m]), torch.maximum(a[m], b[m])
            keys.append(u * num_regions + v)
        out.append(_keys_to_edges(torch.cat(keys), num_regions))
    return out


def _cpp(regions: torch.Tensor, num_regions: int) -> list[torch.Tensor]:
    b, h, w = regions.shape
    reg = index_tensor(regions)
    status = V.new_status(regions.device)
    arrays = ext().region_adjacency_forward(ptr(reg), code(reg), b, h, w, num_regions, ptr(status))
    if int(status[1]) >= 0:
        V.check_region_ids(OP, regions, num_regions)
    return [torch.from_numpy(a) for a in arrays]


def _triton(regions: torch.Tensor, num_regions: int) -> list[torch.Tensor]:
    from mulact.kernels.region_adjacency import adjacency_keys

    status = V.new_status(regions.device)
    keys = adjacency_keys(regions, num_regions, status)  # (B, 4*H*W) int64, -1 = no pair
    if int(status[1]) >= 0:
        V.check_region_ids(OP, regions, num_regions)
    return [_keys_to_edges(k[k >= 0], num_regions) for k in keys]


_LAUNCH = LaunchTable(OP, cpp=_cpp, triton=_triton)


def region_adjacency(regions: torch.Tensor, num_regions: int, *, backend: str | None = None) -> list[torch.Tensor]:
    """8-connected region adjacency per image.

    Args:
        regions: ``(B, H, W)`` integer ids in ``[0, num_regions)``; negative = no region.
        num_regions: R (an id ``>= R`` raises ``ValueError``).
        backend: ``"reference" | "cpp" | "triton"`` or None (see ``resolve_backend``).

    Returns:
        ``B`` tensors ``(E_b, 2)`` int64 on the input's device, rows ``(u, v)`` with ``u < v``,
        sorted lexicographically, no duplicates.

    Example::

        >>> regions = torch.tensor([[[0, 0, 1], [2, 2, 1]]])
        >>> region_adjacency(regions, 3)[0].tolist()
        [[0, 1], [0, 2], [1, 2]]
    """
    V.check_regions(OP, regions, num_regions)
    which = resolve_backend(OP, regions.device, backend)
    if which == "reference":
        return region_adjacency_reference(regions, num_regions)
    return list(torch.ops.mulact.region_adjacency(regions, num_regions, which))


@torch.library.custom_op("mulact::region_adjacency", mutates_args=(), device_types=("cpu", "cuda"))
def _op(regions: torch.Tensor, num_regions: int, backend: str) -> list[torch.Tensor]:
    """Edge lists of the fused backend (docs/design.md, "Dispatch"). The number of edges depends
    on the data, so a CUDA call syncs (``torch.unique``) and the status is read at once."""
    return _LAUNCH.launcher(backend, regions)(regions, num_regions)


@_op.register_fake
def _(regions, num_regions, backend):
    ctx = torch.library.get_ctx()
    return [regions.new_empty(ctx.new_dynamic_size(), 2, dtype=torch.int64) for _ in range(regions.shape[0])]


def adjacency_csr(edges: torch.Tensor, num_regions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric CSR ``(indptr (R+1,), indices (2E,))`` of an edge list; neighbours sorted."""
    if edges.dim() != 2 or edges.shape[1] != 2:
        raise ValueError(f"adjacency_csr: `edges` must have shape (E, 2), got {tuple(edges.shape)}")
    e = edges.to(torch.int64)
    src = torch.cat([e[:, 0], e[:, 1]])
    dst = torch.cat([e[:, 1], e[:, 0]])
    order = torch.argsort(src * max(num_regions, 1) + dst)
    src, dst = src[order], dst[order]
    counts = torch.bincount(src, minlength=num_regions)
    indptr = torch.zeros(num_regions + 1, dtype=torch.int64, device=e.device)
    indptr[1:] = torch.cumsum(counts, 0)
    return indptr, dst


def neighbor_lists(edges: torch.Tensor, num_regions: int) -> list[list[int]]:
    """``out[r]`` = sorted neighbours of region r (from an ``(E, 2)`` edge list)."""
    indptr, indices = adjacency_csr(edges.cpu(), num_regions)
    ip, ix = indptr.tolist(), indices.tolist()
    return [ix[ip[r]: ip[r + 1]] for r in range(num_regions)]
