"""Test data and naive (loop) oracles for the stage-1 losses and the prototypical-pixel argmax.

The naive formulations loop over images and regions with boolean masks and use
``-log sum_{c in Y} softmax(z)_c`` directly, so they share no code with the library.
"""
import torch


def make_case(batch, classes, height, width, num_regions, seed=0, dtype=torch.float32, device="cpu",
              label_sizes=(0, 1, 2, 3), absent=1, negative=True):
    """Random logits, region map and multi-hot labels.

    Region ids are drawn in ``[0, num_regions - absent)`` so the last ``absent`` regions are
    labeled but have no pixel in the crop; a few pixels get id -1 when ``negative``. Each
    region gets ``k`` labeled classes with ``k`` drawn from ``label_sizes``.
    """
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, height, width, generator=g, dtype=torch.float64) * 2
    present = max(num_regions - absent, 1)
    regions = torch.randint(0, present, (batch, height, width), generator=g)
    if negative:
        drop = torch.rand(batch, height, width, generator=g) < 0.1
        regions = torch.where(drop, torch.full_like(regions, -1), regions)
    labels = torch.zeros(batch, num_regions, classes, dtype=torch.bool)
    sizes = torch.tensor(label_sizes)
    for b in range(batch):
        for r in range(num_regions):
            k = int(sizes[torch.randint(0, len(sizes), (1,), generator=g)])
            k = min(k, classes)
            if k:
                labels[b, r, torch.randperm(classes, generator=g)[:k]] = True
    return logits.to(dtype).to(device), regions.to(device), labels.to(device)


def naive_partial_label_loss(logits, regions, labels, temperature, normalize):
    """(L_CE, L_MP) by looping over regions; differentiable, float64."""
    z = logits.double() / temperature
    terms = {1: [], 2: []}  # list of per-pixel loss vectors, one per region
    for b in range(z.shape[0]):
        for r in range(labels.shape[1]):
            mask = regions[b] == r
            y = labels[b, r].bool()
            k = int(y.sum())
            if k == 0 or not bool(mask.any()):
                continue
            p = torch.softmax(z[b][:, mask], dim=0)  # (C, n)
            ell = -torch.log(p[y].sum(0))
            terms[1 if k == 1 else 2].append(ell)
    out = []
    for t in (1, 2):
        if not terms[t]:
            out.append(z.sum() * 0)
        elif normalize == "pixel":
            out.append(torch.cat(terms[t]).mean())
        else:
            out.append(torch.stack([e.mean() for e in terms[t]]).mean())
    return out[0], out[1]


def naive_region_class_argmax(logits, regions, labels, temperature, min_classes):
    """(B, R, C) flat indices by looping over regions and classes (first maximum wins)."""
    batch, classes, height, width = logits.shape
    out = torch.full((batch, labels.shape[1], classes), -1, dtype=torch.int64)
    lsm = torch.log_softmax(logits.double() / temperature, dim=1).reshape(batch, classes, -1)
    for b in range(batch):
        flat = regions[b].reshape(-1)
        for r in range(labels.shape[1]):
            y = labels[b, r].bool()
            if int(y.sum()) < min_classes:
                continue
            pix = (flat == r).nonzero().flatten().tolist()
            for c in y.nonzero().flatten().tolist():
                best, best_i = None, -1
                for i in pix:  # ascending: a later equal value never replaces the first
                    v = float(lsm[b, c, i])
                    if best is None or v > best:
                        best, best_i = v, i
                out[b, r, c] = best_i
    return out


def naive_prototypical_pixel_loss(logits, regions, labels, temperature, normalize):
    """L_PP by looping; differentiable in ``logits`` (float64)."""
    index = naive_region_class_argmax(logits.detach(), regions, labels, temperature, 2)
    z = logits.double().flatten(2) / temperature
    per_region = []
    for b in range(index.shape[0]):
        for r in range(index.shape[1]):
            losses = [-torch.log_softmax(z[b, :, int(index[b, r, c])], 0)[c]
                      for c in range(index.shape[2]) if index[b, r, c] >= 0]
            if losses:
                per_region.append(torch.stack(losses))
    if not per_region:
        return z.sum() * 0
    if normalize == "pair":
        return torch.cat(per_region).mean()
    return torch.stack([v.mean() for v in per_region]).mean()


def saved_tensor_sizes(fn):
    """Run ``fn`` and return the list of (numel, data_ptr) of every tensor autograd saved."""
    saved = []

    def pack(t):
        saved.append((t.numel(), t.data_ptr()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved


def small_triton_blocks(monkeypatch, block_p=16):
    """Force tiny Triton pixel blocks so the tiny test images span several programs (the
    cross-program partial sums and atomics are then exercised, not just one program)."""
    try:
        import mulact.kernels.partial_label_loss as pll
        import mulact.kernels.region_class_argmax as rca
    except ImportError:  # no triton here: the triton-backend tests fail on their own
        return

    original = pll.block_sizes

    def blocks(num_classes, hw):
        block_c, _ = original(num_classes, hw)
        return block_c, block_p

    monkeypatch.setattr(pll, "block_sizes", blocks)
    monkeypatch.setattr(rca, "block_sizes", blocks)
