import math

import numpy as np
import pytest
import torch

from mulact.engine.evaluate import confusion_matrix, evaluate, iou_from_confusion


def _numpy_miou(preds, gts, C, ignore=255):
    """Independent formulation: per-class set counting over the whole dataset."""
    ious = []
    for c in range(C):
        tp = fp = fn = 0
        for p, g in zip(preds, gts):
            keep = g != ignore
            p, g = p[keep], g[keep]
            tp += np.sum((p == c) & (g == c))
            fp += np.sum((p == c) & (g != c))
            fn += np.sum((p != c) & (g == c))
        ious.append(np.nan if tp + fp + fn == 0 else tp / (tp + fp + fn))
    return np.nanmean(ious), ious


def test_confusion_and_miou_match_numpy():
    rng = np.random.default_rng(0)
    C = 6
    preds = [rng.integers(0, C - 1, size=(7, 11)) for _ in range(3)]  # class 5 never predicted
    gts = [rng.integers(0, C - 2, size=(7, 11)) for _ in range(3)]    # class 4, 5 never in gt
    for g in gts:
        g[rng.random(g.shape) < 0.2] = 255
    conf = sum(confusion_matrix(torch.from_numpy(p), torch.from_numpy(g), C) for p, g in zip(preds, gts))
    miou, iou = iou_from_confusion(conf)
    ref_miou, ref_iou = _numpy_miou(preds, gts, C)
    assert math.isnan(iou[5]) and math.isnan(ref_iou[5])
    assert iou[4] == 0.0  # predicted but absent from gt: IoU 0, not NaN
    np.testing.assert_allclose(iou[:5], ref_iou[:5], rtol=1e-12)
    assert miou == pytest.approx(ref_miou, rel=1e-12)


def test_confusion_rejects_bad_labels():
    with pytest.raises(ValueError, match="target"):
        confusion_matrix(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 7), 3)
    with pytest.raises(ValueError, match="pred"):
        confusion_matrix(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long), 3)


class _FixedModel(torch.nn.Module):
    """Returns given logits; the undefined channel (last) is the largest everywhere."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.logits[: x.shape[0]]


def test_evaluate_drops_undefined_channel_and_ignores_void():
    C = 3
    logits = torch.zeros(2, C + 1, 4, 4)
    logits[:, C] = 10.0  # undefined wins the raw argmax ...
    logits[0, 1] = 1.0   # ... but among real classes image 0 predicts 1
    logits[1, 2] = 1.0   # and image 1 predicts 2
    labels = torch.ones(2, 4, 4, dtype=torch.long)
    labels[1] = 2
    labels[1, 0, 0] = 255
    loader = [{"image": torch.zeros(2, 3, 4, 4), "label": labels}]
    out = evaluate(_FixedModel(logits), loader, C, "cpu")
    assert out["iou"][1] == 1.0 and out["iou"][2] == 1.0 and math.isnan(out["iou"][0])
    assert out["miou"] == 1.0
    assert sum(map(sum, out["confusion"])) == 31
