"""Encoder weights without network: fail fast with guidance; local and cached state_dicts."""
import time

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants

from mulact.cli import main
from mulact.model import build_model
from mulact.weights import WeightsUnavailableError, imagenet_weights_file


def _tiny(encoder="resnet18", weights=None, seed=0):
    return build_model(5, encoder, weights, decoder_channels=16, seed=seed)


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def no_download(monkeypatch):
    """A network download attempt fails the test (instead of retrying for half a minute)."""
    real = huggingface_hub.hf_hub_download

    def guarded(*args, **kwargs):
        if not kwargs.get("local_files_only"):
            raise AssertionError("tried to download")
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", guarded)


def _assert_guidance(message: str, cache) -> None:
    assert "resnet18" in message and str(cache) in message
    assert "python -m mulact.weights resnet18" in message
    assert "--encoder-weights PATH" in message


def test_offline_imagenet_fails_fast_with_guidance(empty_cache, no_download, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    t0 = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as e:
        _tiny(weights="imagenet")
    assert time.monotonic() - t0 < 10
    assert "HF_HUB_OFFLINE" in str(e.value)
    _assert_guidance(str(e.value), empty_cache)


def test_unreachable_hub_fails_fast_with_guidance(empty_cache, no_download, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    t0 = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as e:
        imagenet_weights_file("resnet18")
    assert time.monotonic() - t0 < 10
    assert "cannot connect to 127.0.0.1:9" in str(e.value)
    _assert_guidance(str(e.value), empty_cache)


def test_cli_offline_imagenet_stops_before_any_work(empty_cache, no_download, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    run = tmp_path / "run"
    assert main(["--encoder-weights", "imagenet", "--run-dir", str(run), "--data-root", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mulact-train: error: encoder_weights 'imagenet'") and "Traceback" not in err
    _assert_guidance(err, empty_cache)
    assert not run.exists() and not (tmp_path / "demo").exists()


def test_cached_imagenet_weights_load_without_network(tmp_path, no_download, monkeypatch):
    """A file in the hub cache is what 'imagenet' loads (stand-in: a tiny encoder's weights)."""
    from safetensors.torch import save_file

    src = _tiny(seed=3).net.encoder.state_dict()
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in src.items()}, str(path))
    asked = []

    def cached(repo, filename, revision=None, local_files_only=False, **kw):
        asked.append((repo, filename, local_files_only))
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", cached)
    model = _tiny(weights="imagenet", seed=4)
    assert asked == [("smp-hub/resnet18.imagenet", "model.safetensors", True)]
    got = model.net.encoder.state_dict()
    assert all(torch.equal(got[k], v) for k, v in src.items())


def test_local_state_dict_pt_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    src = _tiny(seed=3).net.encoder.state_dict()
    pt, st = tmp_path / "enc.pt", tmp_path / "enc.safetensors"
    torch.save({"state_dict": {**src, "fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}}, pt)
    save_file({k: v.contiguous() for k, v in src.items()}, str(st))
    for path in (pt, st):
        got = _tiny(weights=str(path), seed=4).net.encoder.state_dict()
        assert all(torch.equal(got[k], v) for k, v in src.items())
    assert not all(torch.equal(_tiny(seed=4).net.encoder.state_dict()[k], v) for k, v in src.items())


def test_state_dict_that_does_not_fit_names_the_keys(tmp_path):
    src = _tiny(seed=3).net.encoder.state_dict()
    path = tmp_path / "enc.pt"
    torch.save(src, path)
    with pytest.raises(ValueError) as e:
        _tiny("resnet34", str(path))
    msg = str(e.value)
    assert "does not fit the ResNetEncoder encoder" in msg and "missing (layer1.2." in msg and str(path) in msg
    bad = dict(src)
    bad["conv1.weight"] = torch.zeros(1)
    bad["head.weight"] = torch.zeros(3)
    del bad["bn1.bias"]
    torch.save(bad, path)
    with pytest.raises(ValueError) as e:
        _tiny("resnet18", str(path))
    msg = str(e.value)
    assert "1 missing (bn1.bias)" in msg and "1 unexpected (head.weight)" in msg
    assert "1 of another shape (conv1.weight)" in msg


def test_missing_or_unreadable_local_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="encoder_weights: no such file"):
        _tiny(weights=str(tmp_path / "missing.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="is not a torch state_dict file"):
        _tiny(weights=str(junk))
    torch.save([torch.zeros(1)], junk)
    with pytest.raises(ValueError, match="does not hold a state_dict"):
        _tiny(weights=str(junk))
