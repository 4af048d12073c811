"""prototype_pseudo_labels: mulact vs the vectorised reference vs the per-region loop.

The per-region loop is what a user would write from the paper (Eq. 11-13): per labeled
region, prototypes by argmax, cosine to the prototypes, ``torch.median`` per prototype, and a
binary dilation of the region mask to find the adjacent unlabeled regions to expand into.

    pytest benchmarks/bench_prototype_pseudo_labels.py --benchmark-only

CPU: one 256x512 image, ~512 superpixels, ~40 labeled, D=256 features at stride 4, C=19.
CUDA (when present): one 1024x2048 image, ~2048 superpixels, ~70 labeled, D=256 at stride 4.
All providers must give the same labels before anything is timed.
"""
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _measure import gb_per_s
from scipy import ndimage
from scipy.spatial import cKDTree

from mulact.ops import last_backend, prototype_pseudo_labels, prototype_pseudo_labels_reference

EPS = 1e-12
IGNORE = 255

SHAPES = {
    "cpu": dict(H=256, W=512, R=512, labeled=40, C=19, D=256, stride=4),
    "cuda": dict(H=1024, W=2048, R=2048, labeled=70, C=19, D=256, stride=4),
}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
ROUNDS = {"loop": 3, "reference": 3, "mulact": 10}


@functools.lru_cache(maxsize=None)
def make_case(device, seed=0):
    s = SHAPES[device]
    g = torch.Generator().manual_seed(seed)
    h, w, r = s["H"], s["W"], s["R"]
    # superpixel-like regions: Voronoi cells of a jittered grid
    ny = max(1, int(round((r * h / w) ** 0.5)))
    nx = max(1, r // ny)
    gy, gx = np.meshgrid((np.arange(ny) + 0.5) * h / ny, (np.arange(nx) + 0.5) * w / nx, indexing="ij")
    rng = np.random.default_rng(seed)
    seeds = np.stack([gy.ravel(), gx.ravel()], 1) + rng.uniform(-0.3, 0.3, (ny * nx, 2)) * [h / ny, w / nx]
    yy, xx = np.mgrid[:h, :w]
    _, ids = cKDTree(seeds).query(np.stack([yy.ravel(), xx.ravel()], 1))
    n_reg = ny * nx
    regions = torch.from_numpy(ids.reshape(1, h, w).astype(np.int64))
    labels = torch.zeros(1, n_reg, s["C"], dtype=torch.bool)
    chosen = torch.randperm(n_reg, generator=g)[: s["labeled"]]
    for q in chosen.tolist():
        k = int(torch.randint(1, 5, (1,), generator=g))
        labels[0, q, torch.randperm(s["C"], generator=g)[:k]] = True
    fh, fw = h // s["stride"], w // s["stride"]
    # smooth-ish features so that the thresholds let some expansion through
    feats = torch.randn(1, s["D"], fh // 4, fw // 4, generator=g)
    feats = F.interpolate(feats, size=(fh, fw), mode="bilinear", align_corners=False)
    feats = feats + 0.3 * torch.randn(1, s["D"], fh, fw, generator=g)
    logits = 2 * torch.randn(1, s["C"], h, w, generator=g)
    return tuple(t.to(device) for t in (feats, logits, regions, labels))


def per_region_loop(features, logits, regions, region_labels, expand=True, temperature=1.0):
    """The straightforward formulation: Python loop over labeled regions (and their neighbours)."""
    bsz, c, h, w = logits.shape
    up = F.interpolate(features.float(), size=(h, w), mode="bilinear", align_corners=False)
    d = up.shape[1]
    out = torch.full((bsz, h * w), IGNORE, dtype=torch.int64, device=logits.device)
    for b in range(bsz):
        f = up[b].reshape(d, h * w)
        norms = f.norm(dim=0).clamp_min(EPS)
        lsm = torch.log_softmax(logits[b].float() / temperature, 0).reshape(c, h * w)
        reg = regions[b]
        reg_flat = reg.reshape(-1)
        labeled = region_labels[b].any(1)
        best_s = torch.full((h * w,), float("-inf"), device=logits.device)
        best_c = torch.full((h * w,), IGNORE, dtype=torch.int64, device=logits.device)
        for r in torch.nonzero(labeled).squeeze(1).tolist():
            mask = reg == r
            idx = torch.nonzero(mask.reshape(-1)).squeeze(1)
            if idx.numel() == 0:
                continue
            ys = torch.nonzero(region_labels[b, r]).squeeze(1)
            x_star = idx[lsm[ys][:, idx].argmax(1)]
            p = f[:, x_star]
            p = p / p.norm(dim=0).clamp_min(EPS)
            sim = ((f[:, idx].T @ p) / norms[idx, None]).clamp(-1, 1)
            who = sim.argmax(1)
            out[b, idx] = ys[who]
            alpha = torch.ones(len(ys), device=logits.device)
            for j in range(len(ys)):
                mine = sim[who == j, j]
                if mine.numel():
                    alpha[j] = torch.median(mine)
            if not expand:
                continue
            ring = ndimage.binary_dilation(mask.cpu().numpy(), structure=np.ones((3, 3), bool))
            ring = torch.from_numpy(ring).to(reg.device) & ~mask
            nbrs = reg[ring].unique()
            for q in nbrs[(nbrs >= 0)].tolist():
                if labeled[q]:
                    continue
                qidx = torch.nonzero(reg_flat == q).squeeze(1)
                sq = ((f[:, qidx].T @ p) / norms[qidx, None]).clamp(-1, 1)
                cand = sq > alpha[None, :]
                sq = sq.masked_fill(~cand, float("-inf"))
                top, j = sq.max(1)  # first maximum: smaller class within this region
                cls = torch.where(cand.any(1), ys[j], IGNORE)
                better = (top > best_s[qidx]) | ((top == best_s[qidx]) & (cls < best_c[qidx]))
                better &= cls != IGNORE
                best_s[qidx] = torch.where(better, top, best_s[qidx])
                best_c[qidx] = torch.where(better, cls, best_c[qidx])
        unl = (reg_flat >= 0) & ~labeled[reg_flat.clamp_min(0)]
        out[b] = torch.where(unl & (best_c != IGNORE), best_c, out[b])
    return out.reshape(bsz, h, w)


PROVIDERS = {
    "loop": per_region_loop,
    "reference": lambda *a: prototype_pseudo_labels_reference(*a, temperature=1.0)[0],
    "mulact": lambda *a: prototype_pseudo_labels(*a, temperature=1.0),
}


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


@functools.lru_cache(maxsize=None)
def expected(device):
    return prototype_pseudo_labels_reference(*make_case(device), temperature=1.0)


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("device", DEVICES)
def test_prototype_pseudo_labels(benchmark, device, provider):
    args = make_case(device)
    fn = PROVIDERS[provider]
    want, info = expected(device)
    got = fn(*args)
    _sync(device)
    assert torch.equal(got, want), f"{provider} disagrees with the reference on {int((got != want).sum())} pixels"
    assert int(info.num_expanded.sum()) > 0, "the benchmark case must exercise expansion"

    def call():
        fn(*args)
        _sync(device)

    feats, logits, regions, labels = args
    # bytes a fused pass must touch: low-res features, region map, labels, the logits of the
    # labeled pixels, and the int64 output
    labeled_pix = int(info.num_localized.sum())
    nbytes = (feats.numel() * feats.element_size() + regions.numel() * regions.element_size()
              + labels.numel() + labeled_pix * logits.shape[1] * logits.element_size() + want.numel() * 8)
    benchmark.group = f"prototype_pseudo_labels[{device}]"
    benchmark.extra_info.update(
        shape="x".join(map(str, logits.shape)), D=feats.shape[1], stride=logits.shape[2] // feats.shape[2],
        regions=int(regions.max()) + 1, labeled=int(labels.any(-1).sum()), localized=labeled_pix,
        expanded=int(info.num_expanded.sum()), bytes=nbytes,
        backend=last_backend("prototype_pseudo_labels") if provider == "mulact" else provider)
    benchmark.pedantic(call, rounds=ROUNDS[provider], iterations=1, warmup_rounds=1 if provider == "mulact" else 0)
    benchmark.extra_info["GB/s"] = gb_per_s(benchmark, nbytes)
