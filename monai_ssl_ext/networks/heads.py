"""Classification and segmentation networks on top of a multi-stage encoder."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from monai_ssl_ext.keys import OutputKeys
from monai_ssl_ext.networks.backbones import build_encoder
from monai_ssl_ext.networks.encoders import ResNetEncoder
from monai_ssl_ext.networks.projection import ProjectionHead

__all__ = ["Classifier", "JointClassSegNet", "UNetDecoder", "as_output_dict"]


def as_output_dict(output: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Normalise a network output to a dict: a ``(B, C)`` tensor is class logits, ``(B, K, H, W)`` seg logits."""
    if isinstance(output, dict):
        return output
    if isinstance(output, (tuple, list)):
        raise TypeError("networks must return a tensor or a dict of tensors, not a tuple")
    if output.ndim == 2:
        return {OutputKeys.CLASS: output}
    if output.ndim >= 4:
        return {OutputKeys.SEG: output}
    raise ValueError(f"cannot tell what a network output of shape {tuple(output.shape)} is")


def _encoder(
    backbone: str | None,
    depth: int,
    in_channels: int,
    pretrained: str | os.PathLike | None,
    normalize_input: bool | None,
) -> nn.Module:
    if backbone is None:
        return ResNetEncoder(
            depth=depth, in_channels=in_channels, pretrained=pretrained, normalize_input=normalize_input
        )
    return build_encoder(backbone, in_channels=in_channels, pretrained=pretrained, normalize_input=normalize_input)


class Classifier(nn.Module):
    """Image classifier: encoder -> global average pooling -> dropout -> linear.

    Input ``(B, C_in, H, W)``. Output: class logits ``(B, num_classes)``, or, with ``return_dict``,
    ``{"class": (B, num_classes), "features": (B, F)}`` where ``features`` is the pooled embedding
    that contrastive and prototype-based methods use, plus ``"embedding": (B, embed_dim)`` when
    ``embed_dim`` is set (a :class:`~monai_ssl_ext.networks.ProjectionHead` of the pooled features, for
    losses and memory banks that work in a compact space, such as HSC's). ``return_dict`` is a
    TorchScript constant: an exported model returns a plain tensor, as MONAI Deploy's classification
    operator expects.

    Args:
        num_classes: number of classes.
        in_channels: input channels.
        depth: ResNet depth of the encoder (10, 18, 34, 50) when ``backbone`` is ``None``.
        pretrained: local weights file of the encoder (``torchvision`` format for ResNets; see
            :func:`~monai_ssl_ext.networks.build_encoder`); ``None``: random initialisation.
        dropout: dropout before the linear layer.
        normalize_input: scale ``[0, 1]`` inputs as ImageNet weights expect (``None``: when ``pretrained``).
            A network rebuilt for inference from a model trained on pretrained weights, without loading
            them again, sets it to ``True``: the normalisation has no weights to load.
        return_dict: return the dict above instead of the logits.
        backbone: encoder name for :func:`~monai_ssl_ext.networks.build_encoder` (``"resnet10"``,
            ``"efficientnet-lite0"``...); ``None`` builds a ResNet of ``depth``.
        embed_dim: size of the projected embedding (``None``: no projection head, no ``embedding``).
    """

    __constants__ = ["return_dict"]

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        depth: int = 18,
        pretrained: str | os.PathLike | None = None,
        dropout: float = 0.0,
        return_dict: bool = False,
        normalize_input: bool | None = None,
        backbone: str | None = None,
        embed_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.encoder = _encoder(backbone, depth, in_channels, pretrained, normalize_input)
        self.feature_dim = self.encoder.out_channels[-1]
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.feature_dim, num_classes)
        # None rather than an identity so that checkpoints of networks without one stay unchanged
        self.projection = ProjectionHead(self.feature_dim, embed_dim) if embed_dim is not None else None
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.return_dict = return_dict

    def forward(self, x: torch.Tensor):
        features = torch.flatten(F.adaptive_avg_pool2d(self.encoder(x)[-1], 1), 1)
        logits = self.head(self.dropout(features))
        if self.return_dict:
            # OutputKeys; TorchScript needs literals
            out: dict[str, torch.Tensor] = {"class": logits, "features": features}
            if self.projection is not None:
                out["embedding"] = self.projection(features)
            return out
        return logits


class _UpBlock(nn.Module):
    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_ch + skip_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], dim=1))


class UNetDecoder(nn.Module):
    """U-Net decoder over encoder stages ``[stem, f1, f2, f3, f4]``; returns a map at the stem's resolution.

    Args:
        encoder_channels: channels of the five encoder stages.
        channels: output channels of the four up-sampling blocks.
    """

    def __init__(self, encoder_channels: list[int], channels: tuple[int, ...] = (256, 128, 64, 32)) -> None:
        super().__init__()
        if len(encoder_channels) != 5 or len(channels) != 4:
            raise ValueError("UNetDecoder expects 5 encoder stages and 4 decoder widths.")
        skips = encoder_channels[:4][::-1]  # f3, f2, f1, stem
        ins = [encoder_channels[4], *channels[:3]]
        self.blocks = nn.ModuleList(_UpBlock(i, s, o) for i, s, o in zip(ins, skips, channels, strict=True))
        self.out_channels = channels[-1]
        self.block_channels: list[int] = list(channels)

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        return self.forward_blocks(stages)[-1]

    def forward_blocks(self, stages: list[torch.Tensor]) -> list[torch.Tensor]:
        """The output of every up-sampling block, deepest first: strides 16, 8, 4 and 2."""
        x = stages[4]
        outputs: list[torch.Tensor] = []
        # deepest block first; indexing by the loop counter keeps this scriptable
        for i, block in enumerate(self.blocks):
            x = block(x, stages[3 - i])
            outputs.append(x)
        return outputs


class JointClassSegNet(nn.Module):
    """Shared encoder with a classification head and a U-Net segmentation decoder.

    Input ``(B, C_in, H, W)``. With ``return_dict``: ``{"class": (B, num_classes), "seg": (B, seg_classes,
    H, W), "features": (B, F)}``, plus ``"embedding": (B, embed_dim)`` when ``embed_dim`` is set (a
    :class:`~monai_ssl_ext.networks.ProjectionHead` of the pooled features, for contrastive and
    ranking losses such as SEMISE's). With ``training_outputs=False`` the dict holds ``class`` and
    ``seg`` only (what evaluation, inference and an exported model need). Without ``return_dict``:
    the class logits (the primary output, for export to a classification service).

    Args:
        num_classes: image classes.
        seg_classes: segmentation classes including background (2 for lesion vs background).
        in_channels, depth, pretrained, dropout, normalize_input: as in :class:`Classifier`.
        decoder_channels: widths of the four decoder blocks.
        return_dict: return the dict above.
        embed_dim: size of the projected embedding (``None``: no projection head, no ``embedding``).
        backbone: encoder name for :func:`~monai_ssl_ext.networks.build_encoder` (``"resnet18"``,
            ``"efficientnet-lite0"``...); ``None`` builds a ResNet of ``depth``.
        training_outputs: include ``features`` and ``embedding`` in the dict.
    """

    __constants__ = ["return_dict", "training_outputs"]

    def __init__(
        self,
        num_classes: int,
        seg_classes: int = 2,
        in_channels: int = 1,
        depth: int = 18,
        pretrained: str | os.PathLike | None = None,
        dropout: float = 0.0,
        decoder_channels: tuple[int, ...] = (256, 128, 64, 32),
        return_dict: bool = True,
        embed_dim: int | None = None,
        backbone: str | None = None,
        training_outputs: bool = True,
        normalize_input: bool | None = None,
    ) -> None:
        super().__init__()
        self.encoder = _encoder(backbone, depth, in_channels, pretrained, normalize_input)
        encoder_channels = list(self.encoder.out_channels)
        self.decoder = UNetDecoder(encoder_channels, tuple(decoder_channels))
        self.seg_head = nn.Conv2d(self.decoder.out_channels, seg_classes, kernel_size=1)
        self.feature_dim = encoder_channels[-1]
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.feature_dim, num_classes)
        # None rather than an identity so that old checkpoints and TorchScript graphs stay unchanged
        self.projection = ProjectionHead(self.feature_dim, embed_dim) if embed_dim is not None else None
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.seg_classes = seg_classes
        self.return_dict = return_dict
        self.training_outputs = training_outputs

    def forward(self, x: torch.Tensor):
        stages = self.encoder(x)
        features = torch.flatten(F.adaptive_avg_pool2d(stages[-1], 1), 1)
        logits = self.head(self.dropout(features))
        if self.return_dict:
            seg = self.seg_head(self.decoder(stages))
            seg = F.interpolate(seg, size=x.shape[-2:], mode="bilinear", align_corners=False)
            # OutputKeys; TorchScript needs literals
            out: dict[str, torch.Tensor] = {"class": logits, "seg": seg}
            if self.training_outputs:
                out["features"] = features
                if self.projection is not None:
                    out["embedding"] = self.projection(features)
            return out
        return logits
