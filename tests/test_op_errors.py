"""An out-of-range region id is reported with its real value by every op on every backend,
also beyond the int32 range of the kernels' status slot (once clipped or wrapped)."""
import pytest
import torch

from mulact.ops import (
    partial_label_loss,
    prototype_pseudo_labels,
    region_adjacency,
    region_class_argmax,
    region_labels_from_mask,
    region_reduce,
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


@pytest.mark.parametrize("R", [2**40, 2**62])
def test_unallocatable_sizes_name_the_argument(backend, R):
    reg = torch.zeros(B, H, W, dtype=torch.int64)
    lg = torch.randn(B, C, H, W)
    gt = torch.zeros(B, H, W, dtype=torch.int64)
    for call in (lambda: region_reduce(lg, reg, R, backend=backend),
                 lambda: region_uncertainty_stats(lg, reg, R, temperature=1.0, backend=backend),
                 lambda: region_labels_from_mask(gt, reg, R, C, backend=backend)):
        with pytest.raises(ValueError, match=f"cannot allocate the outputs for `num_regions`={R}"):
            call()
