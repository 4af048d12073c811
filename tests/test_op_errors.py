"""An out-of-range region id is reported with its real value by every op on every backend,
also beyond the int32 range of the kernels' status slot (once clipped or wrapped)."""
import pytest
import torch

from mulact.ops import (
    partial_label_loss,
    prototype_pseudo_labels,
    prototypical_pixel_loss,
    pseudo_labels_without_prototypes,
    region_adjacency,
    region_class_argmax,
    region_labels_from_mask,
    region_reduce,
    region_scores,
    region_uncertainty_stats,
)

B, C, H, W, R = 1, 3, 4, 4, 3


def _ops(backend, reg):
    g = torch.Generator().manual_seed(0)
    lg = torch.randn(B, C, H, W, generator=g)
    lab = torch.zeros(B, R, C, dtype=torch.bool)
    lab[0, 0, 0] = lab[0, 1, [1, 2]] = True
    feats = torch.randn(B, 2, H, W, generator=g)
    gt = torch.zeros(B, H, W, dtype=torch.int64)
    return {
        "region_reduce": lambda: region_reduce(lg, reg, R, backend=backend),
        "region_class_argmax": lambda: region_class_argmax(lg, reg, lab, temperature=0.1, backend=backend),
        "partial_label_loss": lambda: partial_label_loss(lg, reg, lab, temperature=0.1, backend=backend),
        "region_uncertainty_stats": lambda: region_uncertainty_stats(lg, reg, R, temperature=1.0, backend=backend),
        "prototype_pseudo_labels": lambda: prototype_pseudo_labels(feats, lg, reg, lab, temperature=1.0, backend=backend),
        "region_adjacency": lambda: region_adjacency(reg, R, backend=backend),
        "region_labels_from_mask": lambda: region_labels_from_mask(gt, reg, R, C, backend=backend),
    }


@pytest.mark.parametrize("bad", [5, 2**31 + 7, 2**40 + 1])
def test_out_of_range_id_is_reported_with_its_value(backend, bad):
    reg = torch.zeros(B, H, W, dtype=torch.int64)
    reg[0, 1, 2] = bad
    reg[0, 2, 3] = 1
    for name, call in _ops(backend, reg).items():
        with pytest.raises(ValueError, match=f"holds id {bad} but num_regions={R}"):
            call()


def test_unallocatable_sizes_name_the_argument(backend):
    # counts within the limit (see below) whose outputs cannot be allocated
    reg = torch.zeros(B, H, W, dtype=torch.int64)
    gt = torch.zeros(B, H, W, dtype=torch.int64)
    with pytest.raises(ValueError, match=f"cannot allocate the outputs for `num_regions`=2147483647, "
                                         f"`num_classes`={2**50}"):
        region_labels_from_mask(gt, reg, 2**31 - 1, 2**50, ignore_index=-1, backend=backend)


# ---------------------------------------------------------------------------------------------
# issue 21: arguments refused with a message naming them, on every op and backend
# ---------------------------------------------------------------------------------------------
def _inputs(c=C, h=H, w=W, r=R, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(1)
    lg = torch.randn(B, c, h, w, generator=g, dtype=dtype).to(device)
    reg = torch.randint(0, r, (B, h, w), generator=g).to(device)
    lab = torch.zeros(B, r, c, dtype=torch.bool)
    if c:
        lab[0, 0, 0] = True
        lab[0, 1, :] = True
    feats = torch.randn(B, 2, max(h, 1), max(w, 1), generator=g).to(device)
    return lg, reg, lab.to(device), feats


def _temperature_ops(backend, lg, reg, lab, feats, tau):
    """Every op that takes a temperature."""
    calls = {
        "partial_label_loss": lambda: partial_label_loss(lg, reg, lab, tau, backend=backend),
        "prototypical_pixel_loss": lambda: prototypical_pixel_loss(lg, reg, lab, tau, backend=backend),
        "region_class_argmax": lambda: region_class_argmax(lg, reg, lab, tau, backend=backend),
        "region_uncertainty_stats": lambda: region_uncertainty_stats(lg, reg, lab.shape[1], tau, backend=backend),
        "prototype_pseudo_labels": lambda: prototype_pseudo_labels(feats, lg, reg, lab, temperature=tau,
                                                                   backend=backend),
    }
    if backend == "reference":  # plain torch, no backend argument
        calls["pseudo_labels_without_prototypes"] = lambda: pseudo_labels_without_prototypes(lg, reg, lab, tau)
    return calls


def test_temperature_whose_reciprocal_overflows_is_refused_with_the_range(backend):
    lg, reg, lab, feats = _inputs()
    for name, call in _temperature_ops(backend, lg, reg, lab, feats, 1e-39).items():
        with pytest.raises(ValueError, match=r"`temperature`=1e-39 is out of range for float32 logits: it must be in "
                                             r"\[2.93874e-39, 3.40282e\+38\]"):
            call()


def test_temperature_range_follows_the_accumulation_dtype(backend):
    # float64 logits accumulate in float64, where 1/1e-39 is finite: accepted, finite results
    lg, reg, lab, feats = _inputs(dtype=torch.float64)
    for name, call in _temperature_ops(backend, lg, reg, lab, feats, 1e-39).items():
        if name in ("prototype_pseudo_labels", "pseudo_labels_without_prototypes"):
            continue  # these compute z in float32 whatever the logits (see their docstrings)
        out = call()
        for t in (out if isinstance(out, tuple) else (out,)):
            assert torch.isfinite(t.double()).all(), name


def test_no_class_is_refused(backend):
    lg, reg, lab, feats = _inputs(c=0)
    calls = _temperature_ops(backend, lg, reg, lab, feats, 1.0)
    for name, call in calls.items():
        with pytest.raises(ValueError, match=f"{name}: `logits` needs at least one class, got shape \\(1, 0, 4, 4\\)"):
            call()


def test_prototype_pseudo_labels_on_empty_images_says_so(backend):
    lg, reg, lab, feats = _inputs(h=0)
    with pytest.raises(ValueError, match="need images of at least 1x1 pixel .*, got H=0, W=4"):
        prototype_pseudo_labels(feats, lg, reg, lab, temperature=1.0, backend=backend)


def _count_ops(backend, count):
    lg, reg, lab, feats = _inputs()
    gt = torch.zeros(B, H, W, dtype=torch.int64)
    many = torch.zeros(B, 1, C, dtype=torch.bool).expand(B, count, C) if count < 2**40 else None
    calls = {
        "region_reduce": lambda: region_reduce(lg, reg, count, backend=backend),
        "region_uncertainty_stats": lambda: region_uncertainty_stats(lg, reg, count, 1.0, backend=backend),
        "region_adjacency": lambda: region_adjacency(reg, count, backend=backend),
        "region_labels_from_mask": lambda: region_labels_from_mask(gt, reg, count, C, backend=backend),
    }
    if many is not None:  # R = region_labels.shape[1]: a zero-stride view of 2**31 regions costs nothing
        calls.update({
            "partial_label_loss": lambda: partial_label_loss(lg, reg, many, 1.0, backend=backend),
            "prototypical_pixel_loss": lambda: prototypical_pixel_loss(lg, reg, many, 1.0, backend=backend),
            "region_class_argmax": lambda: region_class_argmax(lg, reg, many, 1.0, backend=backend),
            "prototype_pseudo_labels": lambda: prototype_pseudo_labels(feats, lg, reg, many, temperature=1.0,
                                                                       backend=backend),
        })
    return calls


@pytest.mark.parametrize("count", [2**31, 2**62, 2**63 - 1, 2**63])
def test_region_counts_the_kernels_cannot_index_are_refused_with_the_limit(backend, count):
    for name, call in _count_ops(backend, count).items():
        with pytest.raises(ValueError, match=f"{name}: `(num_regions|region_labels.shape\\[1\\])`={count} exceeds "
                                             "2147483647 \\(2\\*\\*31 - 1\\), the most regions"):
            call()


def test_region_adjacency_at_the_limit_is_exact(backend):
    # the largest accepted count: pair keys u * R + v still fit int64, so the edges are the true ones
    reg = torch.tensor([[[0, 1], [2**31 - 2, 5]]])
    edges = region_adjacency(reg, 2**31 - 1, backend=backend)[0].tolist()
    assert edges == [[0, 1], [0, 5], [0, 2**31 - 2], [1, 5], [1, 2**31 - 2], [5, 2**31 - 2]]


def _all_ops(lg, reg, lab, feats, gt, **kw):
    return {
        "region_reduce": lambda: region_reduce(lg, reg, R, **kw),
        "region_uncertainty_stats": lambda: region_uncertainty_stats(lg, reg, R, 1.0, **kw),
        "region_adjacency": lambda: region_adjacency(reg, R, **kw),
        "region_labels_from_mask": lambda: region_labels_from_mask(gt, reg, R, C, **kw),
        "partial_label_loss": lambda: partial_label_loss(lg, reg, lab, 1.0, **kw),
        "prototypical_pixel_loss": lambda: prototypical_pixel_loss(lg, reg, lab, 1.0, **kw),
        "region_class_argmax": lambda: region_class_argmax(lg, reg, lab, 1.0, **kw),
        "prototype_pseudo_labels": lambda: prototype_pseudo_labels(feats, lg, reg, lab, temperature=1.0, **kw),
    }


@pytest.mark.parametrize("bad", [3, 1.0, b"cpp"])
def test_backend_that_is_not_a_name_is_refused(bad):
    lg, reg, lab, feats = _inputs()
    gt = torch.zeros(B, H, W, dtype=torch.int64)
    for name, call in _all_ops(lg, reg, lab, feats, gt, backend=bad).items():
        with pytest.raises(TypeError, match=f"{name}: `backend` must be one of 'reference', 'cpp', 'triton' or None, "
                                            f"got {bad!r}".replace("(", "\\(").replace(")", "\\)")):
            call()


def test_meta_tensors_are_refused_naming_the_reason():
    lg, reg, lab, feats = (t.to("meta") for t in _inputs())
    gt = torch.zeros(B, H, W, dtype=torch.int64, device="meta")
    for name, call in _all_ops(lg, reg, lab, feats, gt).items():
        with pytest.raises(RuntimeError, match=f"{name}: backend 'reference' \\(auto\\) cannot run: meta tensors "
                                               "hold no data"):
            call()


@pytest.mark.parametrize("prior, words", [
    (torch.zeros(3), "got sum 0 and min 0"),
    (torch.tensor([0.5, 0.5, 0.5]), "got sum 1.5"),
    (torch.tensor([1.5, -0.5, 0.0]), "min -0.5"),
    (torch.tensor([float("nan"), 0.5, 0.5]), "got sum nan"),
])
def test_pixbal_prior_must_be_a_distribution(prior, words):
    u = torch.rand(2, 4, 3)
    count = torch.randint(1, 5, (2, 4, 3))
    with pytest.raises(ValueError, match=f"`prior` must be a probability vector .*{words}"):
        region_scores("pixbal", u, count, prior=prior)
    region_scores("pixbal", u, count, prior=torch.tensor([0.2, 0.3, 0.5]))
