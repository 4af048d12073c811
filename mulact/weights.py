"""Encoder weights: ImageNet weights from the Hugging Face cache, or a local ``state_dict`` file.

``encoder_weights='imagenet'`` uses the weights segmentation-models-pytorch publishes on the
Hugging Face hub (``smp-hub/<encoder>.imagenet``), through ``huggingface_hub``'s cache
(``$HF_HUB_CACHE``, by default ``~/.cache/huggingface/hub``; ``$HF_HOME`` moves it). Unlike a
plain smp download, a machine without network fails at once with what to do instead of
retrying the hub for half a minute:

- pre-download where there is network, then copy the cache directory (or set ``HF_HOME``)::

      python -m mulact.weights resnet50          # prints the cached file

- or pass a local file: ``--encoder-weights /path/to/encoder.pt`` (a ``state_dict`` saved with
  ``torch.save(model.encoder.state_dict(), path)`` or a ``.safetensors`` file; a torchvision/timm
  classification checkpoint works too, its ``fc.*`` head is dropped).

``timm`` (``tu-``) encoders download through timm itself and are passed through unchanged.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
from urllib.parse import urlparse

import torch

__all__ = ["WeightsUnavailableError", "imagenet_weights_file", "load_encoder_state_dict",
           "prepare_encoder_weights", "read_state_dict"]

FILENAME = "model.safetensors"
PREDOWNLOAD = "python -m mulact.weights {encoder}"


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights are neither cached nor downloadable here."""


def _hub_source(encoder: str) -> tuple[str, str]:
    from segmentation_models_pytorch.encoders import encoders

    try:
        settings = encoders[encoder]["pretrained_settings"]["imagenet"]
    except KeyError:
        raise ValueError(f"encoder_weights: smp has no ImageNet weights for encoder {encoder!r}") from None
    return settings["repo_id"], settings["revision"]


def _hub_unreachable() -> str | None:
    """Why the hub cannot be reached right now (None: it can, as far as a quick check tells)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # only the proxy knows; let the download try
    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        # One quick connection attempt instead of the hub client's retries with back-off.
        socket.create_connection((host, port), timeout=3).close()
    except OSError as err:
        return f"cannot connect to {host}:{port} ({err.strerror or err})"
    return None


def imagenet_weights_file(encoder: str, download: bool = True) -> str:
    """Path of the cached ImageNet weights of smp ``encoder``, downloading them when allowed
    and possible; :class:`WeightsUnavailableError` with instructions otherwise."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo, revision = _hub_source(encoder)
    try:
        return hf_hub_download(repo, FILENAME, revision=revision, local_files_only=True)
    except LocalEntryNotFoundError:
        pass
    why = _hub_unreachable() if download else "downloads are off"
    if why is None:
        return hf_hub_download(repo, FILENAME, revision=revision)
    raise WeightsUnavailableError(
        f"encoder_weights 'imagenet': the {encoder} weights ({repo}) are not in the Hugging Face cache "
        f"{constants.HF_HUB_CACHE} and cannot be downloaded: {why}. Either run "
        f"`{PREDOWNLOAD.format(encoder=encoder)}` where there is network and copy that cache here "
        f"(or point HF_HOME at it), or pass --encoder-weights PATH to a local encoder state_dict."
    )


def prepare_encoder_weights(encoder: str, weights: str | None) -> None:
    """Fetch (or find) what :func:`mulact.model.build_model` will load, before any other work."""
    if weights == "imagenet" and not encoder.startswith("tu-"):
        imagenet_weights_file(encoder)
    elif weights not in (None, "imagenet") and not os.path.isfile(weights):
        raise WeightsUnavailableError(f"encoder_weights: no such file {weights!r}")


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or of a ``torch.save``'d state_dict (``{'state_dict': ...}``
    and ``{'model': ...}`` wrappers are unwrapped)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"encoder_weights: no such file {path!r}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle of anything: torch raises many types
        raise ValueError(f"encoder_weights: {path!r} is not a torch state_dict file ({err})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"encoder_weights: {path!r} does not hold a state_dict (name -> tensor)")
    return state


def _names(keys, most: int = 5) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - most} more" if len(keys) > most else ""
    return ", ".join(keys[:most]) + more


def load_encoder_state_dict(encoder: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``encoder`` exactly; a :class:`ValueError` names the missing,
    unexpected and mis-shaped tensors otherwise. A classification head (``fc.*``) is dropped."""
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = encoder.state_dict()
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    shapes = {k for k in set(own) & set(state) if own[k].shape != state[k].shape}
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing ({_names(missing)})" if missing else "",
                 f"{len(unexpected)} unexpected ({_names(unexpected)})" if unexpected else "",
                 f"{len(shapes)} of another shape ({_names(shapes)})" if shapes else ""]
        raise ValueError(f"encoder_weights: {source} does not fit the {type(encoder).__name__} encoder: "
                         + "; ".join(p for p in parts if p))
    encoder.load_state_dict(state)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mulact.weights",
                                description="Download smp's ImageNet encoder weights into the Hugging Face "
                                            "cache, for later runs with --encoder-weights imagenet offline.")
    p.add_argument("encoders", nargs="+", metavar="ENCODER", help="smp encoder name(s), e.g. resnet50")
    args = p.parse_args(argv)
    for name in args.encoders:
        try:
            print(imagenet_weights_file(name))
        except (ValueError, WeightsUnavailableError) as err:
            print(f"mulact.weights: error: {err}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
