"""uint8 multi-hot labels are read as booleans (nonzero = class set) by every op on every
backend: 0/1, 0/2 and 0/255 give exactly what bool labels give."""
import pytest
import torch

from mulact.ops import (
    partial_label_loss,
    prototype_pseudo_labels,
    prototypical_pixel_loss,
    pseudo_labels_without_prototypes,
    region_class_argmax,
)


def _inputs():
    g = torch.Generator().manual_seed(7)
    B, C, H, W, R = 2, 4, 6, 5, 5
    logits = torch.randn(B, C, H, W, generator=g, dtype=torch.float32)
    feats = torch.randn(B, 3, H, W, generator=g)
    regions = torch.randint(0, R, (B, H, W), generator=g)
    labels = torch.zeros(B, R, C, dtype=torch.bool)
    labels[0, 0, 1] = True                      # single-class region (L_CE)
    labels[0, 1, [0, 2]] = True                 # multi-class region (L_MP / prototypes)
    labels[1, 2, [1, 2, 3]] = True
    labels[1, 3, 0] = True
    return logits, feats, regions, labels


def _ops(backend):
    def run(logits, feats, regions, labels):
        lg = logits.clone().requires_grad_(True)
        ce, mp_ = partial_label_loss(lg, regions, labels, temperature=0.1, backend=backend)
        (ce + mp_).backward()
        lg2 = logits.clone().requires_grad_(True)
        mp = prototypical_pixel_loss(lg2, regions, labels, temperature=0.1, backend=backend)
        mp.backward()
        return {
            "partial_label_ce": ce.detach(), "partial_label_mp": mp_.detach(), "partial_label_grad": lg.grad,
            "prototypical_pixel_loss": mp.detach(), "prototypical_grad": lg2.grad,
            "region_class_argmax": region_class_argmax(logits, regions, labels, temperature=0.1, backend=backend),
            "prototype_pseudo_labels": prototype_pseudo_labels(feats, logits, regions, labels, temperature=1.0, backend=backend),
            "pseudo_labels_without_prototypes": pseudo_labels_without_prototypes(logits, regions, labels, temperature=1.0),
        }
    return run


@pytest.mark.parametrize("value", [1, 2, 255])
def test_uint8_labels_read_as_bool(backend, value):
    logits, feats, regions, labels = _inputs()
    run = _ops(backend)
    want = run(logits, feats, regions, labels)
    got = run(logits, feats, regions, labels.to(torch.uint8) * value)
    assert want["partial_label_ce"] > 0 and want["partial_label_mp"] > 0
    for k in want:
        assert torch.equal(want[k], got[k]), f"{k} with uint8 labels 0/{value} on {backend}"
