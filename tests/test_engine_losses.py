"""Stage-1 objectives of mulact.engine.losses against per-pixel naive formulations."""
import math
from types import SimpleNamespace

import pytest
import torch

from mulact.engine.losses import infimum_loss, pixel_label_sets, rc_loss, stage1_loss


def _case(seed=0, B=2, K=4, H=5, W=7, R=6):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.rand(B, K, H, W, generator=g) * 2 - 1).double().requires_grad_()
    regions = torch.randint(-1, R, (B, H, W), generator=g)
    labels = torch.rand(B, R, K, generator=g) < 0.4
    labels[:, 0] = False  # region 0 unlabeled
    return logits, regions, labels


def _naive(logits, regions, labels, tau, kind):
    total, n = 0.0, 0
    B, K, H, W = logits.shape
    for b in range(B):
        for y in range(H):
            for x in range(W):
                r = int(regions[b, y, x])
                if r < 0 or not labels[b, r].any():
                    continue
                logp = torch.log_softmax(logits[b, :, y, x].detach() / tau, 0)
                Y = labels[b, r].nonzero().flatten()
                if kind == "infimum":
                    total += float(-logp[Y].max())
                else:
                    w = logp[Y].exp() / logp[Y].exp().sum()
                    total += float(-(w * logp[Y]).sum())
                n += 1
    return total / n if n else 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_infimum_and_rc_match_naive(seed):
    logits, regions, labels = _case(seed)
    assert infimum_loss(logits, regions, labels, 0.1).item() == pytest.approx(_naive(logits, regions, labels, 0.1, "infimum"), rel=1e-6)
    assert rc_loss(logits, regions, labels, 0.1).item() == pytest.approx(_naive(logits, regions, labels, 0.1, "rc"), rel=1e-6)


def test_rc_uniform_warmup_and_gradients():
    logits, regions, labels = _case(3)
    loss = rc_loss(logits, regions, labels, 0.1, uniform=True)
    sets, labeled = pixel_label_sets(regions, labels)
    logp = torch.log_softmax(logits.detach() / 0.1, 1).permute(0, 2, 3, 1)
    expect = (-(logp * sets).sum(-1) / sets.sum(-1).clamp_min(1))[labeled].mean()
    assert loss.item() == pytest.approx(expect.item(), rel=1e-9)
    loss.backward()
    # unlabeled pixels get no gradient
    assert logits.grad.permute(0, 2, 3, 1)[~labeled].abs().max() == 0
    assert logits.grad.abs().sum() > 0


def test_all_unlabeled_is_zero_with_zero_grad():
    logits, regions, labels = _case(4)
    labels[:] = False
    for fn in (infimum_loss, rc_loss):
        lg = logits.detach().clone().requires_grad_()
        out = fn(lg, regions, labels, 0.1)
        out.backward()
        assert out.item() == 0.0 and lg.grad.abs().max() == 0


def test_stage1_loss_switches():
    logits, regions, labels = _case(5)
    logits = logits.float().detach().requires_grad_()
    cfg = SimpleNamespace(temperature=0.1, loss="mulact", lambda_ce=16.0, lambda_mp=8.0, lambda_pp=1.0)
    total, parts = stage1_loss(cfg, logits, regions, labels, 0.0)
    assert set(parts) == {"ce", "mp", "pp"}
    assert total.item() == pytest.approx(16 * parts["ce"].item() + 8 * parts["mp"].item() + parts["pp"].item(), rel=1e-5)
    cfg.lambda_pp = 0.0  # ablation "w/o PP": the term is not computed
    total, parts = stage1_loss(cfg, logits, regions, labels, 0.0)
    assert "pp" not in parts
    cfg.loss = "dominant"
    with pytest.raises(ValueError, match="dominant"):
        stage1_loss(cfg, logits, regions, labels, 0.0)
    one_hot = torch.zeros_like(labels)
    one_hot[..., 1] = labels.any(-1)
    total, parts = stage1_loss(cfg, logits, regions, one_hot, 0.0)
    assert math.isfinite(total.item()) and set(parts) == {"ce"}
    for name in ("infimum", "rc"):
        cfg.loss = name
        total, _ = stage1_loss(cfg, logits, regions, labels, 0.5)
        assert total.item() > 0
