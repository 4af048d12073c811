"""DeepLabV3+ with a cosine classifier and an extra *undefined* output (paper §3.1, Eq. 1).

The network is segmentation-models-pytorch's ``DeepLabV3Plus`` (encoder + ASPP decoder,
output stride 16) whose segmentation head is replaced by :class:`CosineClassifier`:
decoder features (stride 4) and class weights are L2-normalised and the logits are their
dot products, i.e. **unscaled cosine similarities in [-1, 1]**, with no bias. The
temperature τ (0.1 in the paper) is *not* applied inside the model: every op and loss of
``mulact`` takes ``temperature`` and works on ``logits / τ``. Keeping it out of the model
means acquisition, losses and pseudo labelling all agree on one definition and a user can
change τ without touching a checkpoint.

The model has ``num_classes + 1`` outputs; channel ``num_classes`` is the *undefined* class
(pixels outside the dataset's label set, Appendix B), matching index ``C`` of the oracle's
multi-hot labels.

Input sizes need not be multiples of the output stride (the paper trains on 769×769 crops):
the input is zero-padded on the bottom/right to a multiple of 16 and the logits are cropped
back, so every output pixel corresponds to an input pixel.

Encoder weights: ``None`` (random init; tests and the offline demo), ``"imagenet"`` (smp's
weights from the Hugging Face cache, downloaded only when the user asks for them; see
:mod:`mulact.weights`) or a path to a local ``state_dict`` file for the encoder. Building a
model never touches the network otherwise.
"""
from __future__ import annotations

import inspect
import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)

__all__ = ["CosineClassifier", "CosineDeepLabV3Plus", "build_model"]


class CosineClassifier(nn.Module):
    """1×1 cosine classifier: ``cos(f(x), w_c)`` for every pixel and class (no bias)."""

    def __init__(self, in_channels: int, num_outputs: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_outputs, in_channels))
        self.eps = eps
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # Normalisation and the product run in float32 even under autocast: the logits are
        # divided by τ = 0.1 downstream, so bf16 rounding of a cosine (~4e-3) would become
        # a 0.04 logit error.
        with torch.autocast(device_type=features.device.type, enabled=False):
            f = F.normalize(features.float(), dim=1, eps=self.eps)
            w = F.normalize(self.weight.float(), dim=1, eps=self.eps)
            return torch.einsum("bdhw,cd->bchw", f, w)


class CosineDeepLabV3Plus(nn.Module):
    """DeepLabV3+ (smp) with a :class:`CosineClassifier` head and ``num_classes + 1`` outputs.

    ``forward(x)`` → cosine logits ``(B, num_classes + 1, H, W)`` in ``[-1, 1]`` (float32),
    bilinearly upsampled from stride 4 to the input size.
    ``forward(x, return_features=True)`` also returns the L2-normalised decoder features
    ``(B, D, ceil(H/4), ceil(W/4))`` (stride 4, for stage-2 prototypes) from the same pass.
    """

    def __init__(
        self,
        num_classes: int,
        encoder: str = "resnet50",
        encoder_weights: str | None = None,
        decoder_channels: int = 256,
        output_stride: int = 16,
    ):
        super().__init__()
        import segmentation_models_pytorch as smp

        # smp downloads only timm (tu-) weights here; smp's own ImageNet weights come from the
        # Hugging Face cache through mulact.weights, which fails fast without network.
        timm_pretrained = encoder.startswith("tu-") and encoder_weights == "imagenet"
        self.net = smp.DeepLabV3Plus(
            encoder_name=encoder,
            encoder_weights="imagenet" if timm_pretrained else None,
            encoder_output_stride=output_stride,
            decoder_channels=decoder_channels,
            classes=num_classes + 1,
        )
        # Only the decoder output feeds the cosine head; smp's conv head is dropped.
        self.net.segmentation_head = nn.Identity()
        self.classifier = CosineClassifier(decoder_channels, num_classes + 1)
        self.encoder_name = encoder
        self.num_classes = num_classes
        self.num_outputs = num_classes + 1
        self.output_stride = output_stride
        self.feature_dim = decoder_channels
        params = inspect.signature(self.net.decoder.forward).parameters.values()
        self._decoder_varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
        if encoder_weights is not None and not timm_pretrained:
            self.load_encoder_weights(encoder_weights)

    def load_encoder_weights(self, weights: str) -> None:
        """``'imagenet'`` (cached or downloaded smp weights) or the path of an encoder state_dict."""
        from mulact.weights import imagenet_weights_file, load_encoder_state_dict, read_state_dict

        path = imagenet_weights_file(self.encoder_name) if weights == "imagenet" else weights
        load_encoder_state_dict(self.net.encoder, read_state_dict(path), repr(path))
        log.info("loaded encoder weights from %s", path)

    def encoder_parameters(self):
        return self.net.encoder.parameters()

    def head_parameters(self):
        """Decoder and classifier parameters (trained at 10× the encoder's learning rate)."""
        yield from self.net.decoder.parameters()
        yield from self.classifier.parameters()

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.net.encoder(x)
        if self._decoder_varargs:
            return self.net.decoder(*feats)
        return self.net.decoder(feats)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x: expected (B, 3, H, W) images, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        s = self.output_stride
        ph, pw = (-h) % s, (-w) % s
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        dec = self._decode(x)
        logits = self.classifier(dec)
        logits = F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)
        logits = logits[:, :, :h, :w]
        if not return_features:
            return logits
        # Stride-4 features of the unpadded area (ceil so every input pixel is covered).
        fh, fw = -(-h // 4), -(-w // 4)
        feats = F.normalize(dec[:, :, :fh, :fw].float(), dim=1)
        return logits, feats


def build_model(
    num_classes: int,
    encoder: str,
    encoder_weights: str | None = None,
    decoder_channels: int = 256,
    seed: int | None = None,
) -> CosineDeepLabV3Plus:
    """Build the model; with ``seed`` the random initialisation is reproducible (the AL loop
    re-initialises the model from the same seed every round) without disturbing the caller's
    global RNG stream."""
    if seed is None:
        return CosineDeepLabV3Plus(num_classes, encoder, encoder_weights, decoder_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CosineDeepLabV3Plus(num_classes, encoder, encoder_weights, decoder_channels)
