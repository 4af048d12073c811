import pytest
import torch

from mulact.model import CosineClassifier, build_model


def _tiny(num_classes=5, seed=0):
    return build_model(num_classes, "resnet18", None, decoder_channels=16, seed=seed).eval()


def test_cosine_logits_range_and_channels():
    model = _tiny(5)
    x = torch.randn(2, 3, 64, 96) * 3
    with torch.no_grad():
        logits, feats = model(x, return_features=True)
    assert logits.shape == (2, 6, 64, 96)  # C + undefined
    assert logits.dtype == torch.float32
    assert logits.min() >= -1.0 - 1e-5 and logits.max() <= 1.0 + 1e-5
    assert feats.shape == (2, 16, 16, 24)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(2, 16, 24), atol=1e-4, rtol=0)


def test_cosine_head_is_cosine_similarity_without_bias():
    head = CosineClassifier(4, 3)
    f = torch.randn(1, 4, 2, 2)
    f[0, :, 0, 0] *= 100.0  # scale invariance
    out = head(f)
    w = head.weight.detach()
    expect = torch.einsum("dhw,cd->chw", f[0] / f[0].norm(dim=0, keepdim=True), w / w.norm(dim=1, keepdim=True))
    torch.testing.assert_close(out[0], expect, atol=1e-5, rtol=1e-5)
    assert not any("bias" in n for n, _ in head.named_parameters())


def test_odd_input_size_is_padded_and_cropped():
    model = _tiny(3)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 37, 50))
    assert out.shape == (1, 4, 37, 50)


def test_same_seed_same_init_and_different_seed_differs():
    a, b, c = _tiny(seed=1), _tiny(seed=1), _tiny(seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_local_encoder_weights(tmp_path):
    src = _tiny(seed=3)
    path = tmp_path / "enc.pt"
    torch.save(src.net.encoder.state_dict(), path)
    dst = build_model(5, "resnet18", str(path), decoder_channels=16, seed=4)
    for k, v in src.net.encoder.state_dict().items():
        assert torch.equal(dst.net.encoder.state_dict()[k], v)
    with pytest.raises(FileNotFoundError, match="encoder_weights"):
        build_model(5, "resnet18", str(tmp_path / "missing.pt"), decoder_channels=16)


def test_bad_input_shape():
    with pytest.raises(ValueError, match="x"):
        _tiny()(torch.randn(3, 32, 32))
