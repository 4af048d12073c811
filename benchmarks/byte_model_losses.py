"""Byte model of the stage-1 losses and the prototypical argmax (docs/design.md, "Byte model").

Prints the table rows of docs/design.md for the partial-label loss, ``region_class_argmax`` and
the prototypical pixel loss at the Cityscapes shapes, on the benchmarks' inputs
(``_partial_label_inputs.stage1_inputs``: float32 logits, int64 region ids, 20 % of the regions
labeled). Kernel traffic is counted from the kernels' code (which pixels' logits each pass
loads, what it stores); the torch parts (the ``(B, R, C, C)`` gather of the previous
prototypical design, ``region_pixel_counts``, the slot weights) are counted by running them
under a dispatch mode that adds up, per aten op, the bytes of its inputs and outputs (gathers
and ``index_put`` only the elements they touch). Tables of size ``(B, R, C)`` and below are
counted where torch moves them; the labels' gathers inside the kernels hit the cache and are
counted once. CPU only, about a minute: ``python benchmarks/byte_model_losses.py``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _partial_label_inputs import stage1_inputs  # noqa: E402

from mulact.ops import region_class_argmax  # noqa: E402
from mulact.ops._labels import region_pixel_counts  # noqa: E402
from mulact.ops.prototypical_pixel_loss import _loss_masked, slot_weights  # noqa: E402

SHAPES = [(1, 20, 1024, 2048, 2048), (4, 20, 769, 769, 2048)]  # (B, C, H, W, R)
BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12}
VIEWS = {"view", "_unsafe_view", "expand", "permute", "diagonal", "select", "slice", "unsqueeze", "squeeze", "t",
         "transpose", "alias", "detach", "reshape", "as_strided", "unbind", "split"}
WRITES_ONLY = {"zeros", "zeros_like", "new_zeros", "empty", "empty_like", "fill_", "zero_", "full", "new_empty",
               "scalar_tensor", "arange"}


def _nbytes(t) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


class CountBytes(TorchDispatchMode):
    """Adds up the bytes each aten op reads and writes (views move nothing)."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in VIEWS:
            return out
        ins = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        outs = [a for a in tree_flatten(out)[0] if isinstance(a, torch.Tensor)]
        if name in WRITES_ONLY:
            moved = sum(map(_nbytes, outs))
        elif name in ("index", "gather"):  # the source only where gathered
            moved = 2 * sum(map(_nbytes, outs)) + sum(map(_nbytes, ins[1:]))
        elif name in ("index_put", "index_put_", "_index_put_impl_"):  # read-modify-write of what it touches
            moved = 3 * _nbytes(ins[-1]) + sum(_nbytes(t) for t in ins[1:-1])
        else:
            moved = sum(map(_nbytes, ins)) + sum(map(_nbytes, outs))
        self.total += moved
        return out


def counted(fn) -> int:
    with CountBytes() as count:
        fn()
    return count.total


def rows_for(shape):
    batch, classes, height, width, num_regions = shape
    logits, regions, labels = stage1_inputs("cpu", batch, classes, height, width, num_regions)
    n = batch * height * width
    lg, rg, brc = 4 * classes * n, 8 * n, batch * num_regions * classes  # logits, region ids, (B, R, C)
    rid = regions.flatten(1)
    k = torch.where(rid >= 0, labels.sum(-1).gather(1, rid.clamp(min=0)), 0)
    f, f_multi = float((k > 0).float().mean()), float((k >= 2).float().mean())
    index = region_class_argmax(logits.detach(), regions, labels, 0.1, min_classes=2)
    pairs = int((index >= 0).sum())
    name = f"{batch}x{classes}x{height}x{width}"
    out = []
    # partial-label loss: recompute = fwd (ids + labeled logits) + bwd (ids + labeled logits + gradient);
    # gradient in forward = counts (ids) + fwd (ids + labeled logits + gradient) + bwd (4 scalars per program)
    must = f * lg + lg + rg + brc
    counts = counted(lambda: region_pixel_counts(regions, num_regions))
    out.append(("partial_label_loss fwd+bwd, pixel", name, must, lg + 2 * f * lg + 2 * rg + brc,
                lg + f * lg + 2 * rg + brc))
    out.append(("partial_label_loss fwd+bwd, region", name, must, lg + 2 * f * lg + 2 * rg + brc + 2 * counts,
                lg + f * lg + 2 * rg + brc))
    out.append(("partial_label_loss fwd+bwd, pixel, every pixel labeled", name, 2 * lg + rg + brc,
                3 * lg + 2 * rg + brc, 2 * lg + 2 * rg + brc))
    # argmax: ids + logits of multi-label regions + the packed int64 keys' fill (8 bytes a slot), then
    # their decoding: before a torch chain (!=, &, -, where: 58 bytes a slot), after one in-place kernel (16)
    argmax_before = rg + f_multi * lg + brc + 66 * brc
    argmax = rg + f_multi * lg + brc + 24 * brc
    out.append(("region_class_argmax, min_classes 2", name, rg + f_multi * lg + brc + 8 * brc, argmax_before, argmax))
    x = logits.detach().clone().requires_grad_(True)
    gather = counted(lambda: _loss_masked(x, index, 0.1, "pair").backward())
    weights = counted(lambda: slot_weights(index, "pair", torch.float32))
    sector = 32  # each chosen pixel's C logits lie H*W apart: one 32-byte sector per value
    fused = (2 * weights + 8 * brc + lg  # slot weights (fwd, bwd), per-slot losses + their sum, zeroed gradient
             + 16 * brc + sector * pairs * classes  # forward kernel: index, weight, logits rows, losses
             + 12 * brc + 2 * sector * pairs * classes)  # backward kernel: index, weight, rows read and written
    out.append(("prototypical_pixel_loss fwd+bwd", name, rg + f_multi * lg + brc + lg, argmax_before + gather,
                argmax + fused))
    facts = dict(labeled_pixels=round(f, 3), multi_label_pixels=round(f_multi, 3), pairs=pairs)
    return out, facts


def main():
    print("| op | shape | must move (MB) | current kernels move (MB), counted from the code | ratio | "
          "roofline time H100 (3.35 TB/s) / H200 (4.8 TB/s) |")
    print("|---|---|---:|---:|---:|---:|")
    for shape in SHAPES:
        rows, facts = rows_for(shape)
        for op, name, must, before, after in rows:
            for tag, moved in (("before", before), ("after", after)):
                t = " / ".join(f"{moved / bw * 1e6:.0f}" for bw in BANDWIDTH.values())
                print(f"| {op} ({tag}) | {name} | {must / 1e6:.1f} | {moved / 1e6:.1f} | {moved / must:.2f} | {t} µs |")
        print(f"<!-- {shape}: {facts} -->")


if __name__ == "__main__":
    main()
