"""MedFuseNet: a classifier whose late features are fused with similarity-weighted early features (DSRPGC)."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from monai_ssl_ext.networks.heads import _encoder
from monai_ssl_ext.networks.projection import ProjectionHead

__all__ = ["MedFuseNet", "SimilarityFusion"]


class SimilarityFusion(nn.Module):
    """Low-level positions re-weighted by their similarity to each high-level position, added to the high level.

    With ``P = BN(conv_P(low))`` ``(B, C, N_l)`` and ``Q = BN(conv_Q(high))`` ``(B, C, N_h)`` (1x1 convolutions
    to ``C`` channels, each followed by batch normalisation, positions flattened), the similarity matrix
    ``S = softmax_i(Q_j . P_i / sqrt(C))``
    ``(B, N_h, N_l)`` says for each high-level position ``j`` which low-level positions ``i`` resemble it;
    ``P~_j = sum_i S_ji P_i`` gathers them, and ``fused = Q + P~`` ``(B, C, H_h, W_h)`` (reshaped to the
    high-level grid). The softmax over low-level positions and the ``sqrt(C)`` scale are our choices (the
    DSRPGC text describes a similarity matrix from flattened, multiplied features that re-weights the
    low-level ones, and leaves its normalisation open): they keep ``P~`` a weighted mean of low-level
    features, of the scale of ``P`` whatever the number of positions. The batch normalisation is ours too: an
    ImageNet encoder's early stages come out several times larger than its last (standard deviations about 8
    against 0.6 for EfficientNet-Lite0 at 64 px), so without it ``P~`` swamped ``Q`` and SGD at the profiles'
    learning rate diverged within 40 iterations (the loss passed 10^5 by iteration 30).

    Args:
        low_channels, high_channels: channels of the two input maps.
        channels: common channel count ``C``.
    """

    def __init__(self, low_channels: int, high_channels: int, channels: int) -> None:
        super().__init__()
        self.conv_p = nn.Conv2d(low_channels, channels, kernel_size=1)
        self.conv_q = nn.Conv2d(high_channels, channels, kernel_size=1)
        self.norm_p = nn.BatchNorm2d(channels)
        self.norm_q = nn.BatchNorm2d(channels)
        self.scale = float(channels) ** -0.5

    def project_low(self, low: torch.Tensor) -> torch.Tensor:
        """``P`` before flattening: ``(B, C, H_l, W_l)``."""
        return self.norm_p(self.conv_p(low))

    def project_high(self, high: torch.Tensor) -> torch.Tensor:
        """``Q``: ``(B, C, H_h, W_h)``."""
        return self.norm_q(self.conv_q(high))

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        p = self.project_low(low).flatten(2)  # (B, C, N_l)
        q = self.project_high(high)  # (B, C, H_h, W_h)
        q_flat = q.flatten(2)  # (B, C, N_h)
        similarity = torch.softmax(torch.bmm(q_flat.transpose(1, 2), p) * self.scale, dim=2)  # (B, N_h, N_l)
        weighted = torch.bmm(p, similarity.transpose(1, 2))  # (B, C, N_h)
        return q + weighted.reshape(q.shape)


class MedFuseNet(nn.Module):
    """Encoder -> fusion of an early and the last stage (:class:`SimilarityFusion`) -> pooling -> linear head.

    Input ``(B, C_in, H, W)``. Output: class logits ``(B, num_classes)``, or, with ``return_dict``,
    ``{"class": (B, num_classes), "features": (B, channels), "embedding": (B, embed_dim)}`` (``embedding``
    when ``embed_dim`` is set: a :class:`~monai_ssl_ext.networks.ProjectionHead` of the pooled fused
    features, which DSRPGC's pseudo-label guided contrast reads). With ``fuse=False`` the head reads the last
    stage brought to ``channels`` by the same 1x1 convolution and normalisation, without the early stage: the
    ablation of the fusion on an otherwise identical network. ``return_dict`` is a TorchScript constant, as in
    :class:`~monai_ssl_ext.networks.Classifier`; an exported model returns the logits.

    Args:
        num_classes: number of classes.
        in_channels: input channels.
        backbone: encoder name (:func:`~monai_ssl_ext.networks.build_encoder`), or ``None`` for a ResNet of ``depth``.
        depth: ResNet depth when ``backbone`` is ``None``.
        pretrained: local weights of the encoder, or the name of the offline ImageNet weights package.
        low_stage: which of the encoder's five stages (0-4, strides 2-32) is the low level (2: stride 8).
        channels: common channel count of the fusion (256).
        embed_dim: size of the projected embedding (``None``: no projection head).
        fuse: fuse the low-level stage (``False``: the ablation above).
        dropout: dropout before the linear head.
        return_dict: return the dict above.
        normalize_input: as in :class:`~monai_ssl_ext.networks.Classifier`.
    """

    __constants__ = ["return_dict", "fuse", "low_stage"]

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        backbone: str | None = None,
        depth: int = 18,
        pretrained: str | os.PathLike | None = None,
        low_stage: int = 2,
        channels: int = 256,
        embed_dim: int | None = None,
        fuse: bool = True,
        dropout: float = 0.0,
        return_dict: bool = False,
        normalize_input: bool | None = None,
    ) -> None:
        super().__init__()
        self.encoder = _encoder(backbone, depth, in_channels, pretrained, normalize_input)
        stage_channels = list(self.encoder.out_channels)
        if not 0 <= low_stage < len(stage_channels) - 1:
            raise ValueError(f"low_stage must be an early stage, 0 to {len(stage_channels) - 2}, got {low_stage}.")
        self.low_stage = int(low_stage)
        self.fuse = bool(fuse)
        self.fusion = SimilarityFusion(stage_channels[low_stage], stage_channels[-1], channels)
        self.feature_dim = int(channels)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels, num_classes)
        self.projection = ProjectionHead(channels, embed_dim) if embed_dim is not None else None
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.return_dict = return_dict

    def forward(self, x: torch.Tensor):
        stages = self.encoder(x)
        high = stages[-1]
        if self.fuse:
            fused = self.fusion(stages[self.low_stage], high)
        else:
            fused = self.fusion.project_high(high)
        features = torch.flatten(F.adaptive_avg_pool2d(fused, 1), 1)
        logits = self.head(self.dropout(features))
        if self.return_dict:
            # OutputKeys; TorchScript needs literals
            out: dict[str, torch.Tensor] = {"class": logits, "features": features}
            if self.projection is not None:
                out["embedding"] = self.projection(features)
            return out
        return logits
