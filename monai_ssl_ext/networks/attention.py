"""Blocks that let a classification branch use what a segmentation branch has found.

Hermes (Zhang et al., ECAI 2025, arXiv 2508.02265) couples a classifier and a segmenter of the same
image in two ways: an **inter-task attention** block re-weights the classifier's feature maps with
attention computed from both branches' features (channels first, then positions, as in CBAM, Woo et
al., ECCV 2018), and a **saliency** map, the segmenter's lesion probability, tells the classifier
where to pool.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ChannelAttention", "InterTaskAttention", "SaliencyPooling", "SpatialAttention", "lesion_saliency"]


class ChannelAttention(nn.Module):
    """Channel weights from the fused features of both tasks, applied to the classification features.

    ``u = BN(conv3x3([f_cls; f_seg]))``, ``a = sigmoid(W_2 relu(W_1 GAP(u)))``, output ``a * f_cls``: what the
    classifier should attend to is decided with the segmenter's view of the same image. The batch normalisation is
    ours: an ImageNet encoder's stages come out with standard deviations of 6-9, which would push the gate's
    sigmoid into saturation.

    Input: ``f_cls`` and ``f_seg`` ``(B, C, H, W)`` (same shape). Output ``(B, C, H, W)``.

    Args:
        channels: ``C``.
        reduction: bottleneck ratio of the two-layer gate.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.fuse = nn.Sequential(
            nn.Conv2d(2 * channels, channels, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(channels)
        )
        hidden = max(1, channels // reduction)
        self.gate = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def forward(self, f_cls: torch.Tensor, f_seg: torch.Tensor) -> torch.Tensor:
        fused = self.fuse(torch.cat([f_cls, f_seg], dim=1))
        weights = torch.sigmoid(self.gate(torch.flatten(F.adaptive_avg_pool2d(fused, 1), 1)))
        return f_cls * weights[:, :, None, None]


class SpatialAttention(nn.Module):
    """Position weights from channel max and mean: ``s = sigmoid(BN(conv_k([max_c x; mean_c x])))``, output ``s * x``.

    The batch normalisation after the convolution is in CBAM's authors' code (its spatial gate is a convolution
    with batch normalisation); without it, features at an ImageNet encoder's scale saturated 79 % of the gates.

    Input and output ``(B, C, H, W)``.

    Args:
        kernel_size: odd size of the convolution over the two pooled maps (7 in CBAM).
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}.")
        self.conv = nn.Sequential(
            nn.Conv2d(2, 1, kernel_size=kernel_size, padding=kernel_size // 2, bias=False), nn.BatchNorm2d(1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class InterTaskAttention(nn.Module):
    """Inter-task attention of Hermes: channel attention from both branches, then spatial attention.

    The segmentation features are first brought to the classification features' channels (1x1 conv,
    batch norm, ReLU) and spatial size (bilinear), so the block joins any pair of stages.

    Input: ``f_cls`` ``(B, C_cls, H, W)`` and ``f_seg`` ``(B, C_seg, H', W')``. Output ``(B, C_cls, H, W)``.

    Args:
        cls_channels: ``C_cls``.
        seg_channels: ``C_seg``.
        reduction: channel-gate bottleneck ratio.
        kernel_size: spatial-attention kernel.
    """

    def __init__(self, cls_channels: int, seg_channels: int, reduction: int = 4, kernel_size: int = 7) -> None:
        super().__init__()
        self.align = nn.Sequential(
            nn.Conv2d(seg_channels, cls_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(cls_channels),
            nn.ReLU(inplace=True),
        )
        self.channel = ChannelAttention(cls_channels, reduction)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, f_cls: torch.Tensor, f_seg: torch.Tensor) -> torch.Tensor:
        f_seg = self.align(f_seg)
        if f_seg.shape[-2:] != f_cls.shape[-2:]:
            f_seg = F.interpolate(f_seg, size=f_cls.shape[-2:], mode="bilinear", align_corners=False)
        return self.spatial(self.channel(f_cls, f_seg))


def lesion_saliency(seg_logits: torch.Tensor) -> torch.Tensor:
    """The probability of any foreground class, ``1 - softmax(seg)_bg``: ``(B, K, H, W)`` -> ``(B, 1, H, W)``."""
    return 1.0 - torch.softmax(seg_logits, dim=1)[:, :1]


class SaliencyPooling(nn.Module):
    """Global pooling guided by a saliency map: ``z = GAP(f * (1 + s))``.

    The residual form keeps the image context (a lesion's surroundings carry diagnostic signs such
    as posterior shadowing) while features inside the predicted lesion count up to twice. With
    ``enabled=False`` it is plain global average pooling (the ablation without saliency).

    Input: ``features`` ``(B, C, h, w)`` and ``saliency`` ``(B, 1, H, W)`` in [0, 1] (resized to ``(h, w)``
    by area averaging). Output ``(B, C)``.
    """

    __constants__ = ["enabled"]

    def __init__(self, enabled: bool = True) -> None:
        super().__init__()
        self.enabled = enabled

    def forward(self, features: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            s = F.adaptive_avg_pool2d(saliency, features.shape[-2:])
            features = features * (1.0 + s)
        return torch.flatten(F.adaptive_avg_pool2d(features, 1), 1)
