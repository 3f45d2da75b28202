"""Pixel-level supervised contrast (Wang et al., ICCV 2021), the segmentation-side contrast of Hermes.

Hermes (Zhang et al., ECAI 2025, arXiv 2508.02265) pulls together the embeddings of pixels that share
a label, using ground-truth masks on labeled images and filtered pseudo masks on unlabeled ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monai_ssl_ext.losses._utils import zero_like_graph
from monai_ssl_ext.losses.supcon import supcon_per_anchor

__all__ = ["PixelContrastLoss"]


class PixelContrastLoss(nn.Module):
    """Pixel-level supervised contrast, after Wang et al., "Exploring cross-image pixel contrast" (ICCV 2021, eq. 2).

    Labels are resized (nearest) to the embedding grid. For each class present among the valid pixels
    of the whole batch, at most ``max_pixels_per_class`` pixels are drawn uniformly without replacement
    (global RNG, or ``generator``); the drawn L2-normalised embeddings are then contrasted with the
    per-anchor ``L_out`` of :class:`~monai_ssl_ext.losses.SupConLoss` (factor 1) and averaged over the
    anchors that have a positive. A graph-connected 0 comes back when fewer than two classes are
    present or no anchor has a positive.

    Args:
        temperature: ``T`` (0.1 as in Wang et al.).
        max_pixels_per_class: cap of sampled anchors per class (memory is quadratic in the total).
        ignore_index: label of rejected pixels (they neither anchor nor contrast).

    Input: ``embeddings`` ``(B, D, h, w)``; ``labels`` ``(B, H, W)`` long. Output: a scalar.
    """

    def __init__(self, temperature: float = 0.1, max_pixels_per_class: int = 256, ignore_index: int = -1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        if max_pixels_per_class < 1:
            raise ValueError(f"max_pixels_per_class must be >= 1, got {max_pixels_per_class}.")
        self.temperature = float(temperature)
        self.max_pixels_per_class = int(max_pixels_per_class)
        self.ignore_index = int(ignore_index)

    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Indices into the flattened ``labels`` ``(N,)``: at most ``max_pixels_per_class`` valid pixels per class."""
        valid = labels != self.ignore_index
        chosen = []
        for cls in torch.unique(labels[valid]).tolist():
            where = torch.nonzero(labels == cls).squeeze(1)
            if where.numel() > self.max_pixels_per_class:
                # drawn on the CPU so that a CPU generator (or the global seed) fixes the draw on any device
                pick = torch.randperm(where.numel(), generator=generator)[: self.max_pixels_per_class]
                where = where[pick.to(where.device)]
            chosen.append(where)
        if not chosen:
            return torch.zeros(0, dtype=torch.long, device=labels.device)
        return torch.cat(chosen)

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        if embeddings.ndim != 4:
            raise ValueError(f"embeddings must be (B, D, h, w), got shape {tuple(embeddings.shape)}.")
        if labels.ndim == 4 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 3 or labels.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"labels must be (B, H, W) for embeddings {tuple(embeddings.shape)}, got {tuple(labels.shape)}."
            )
        labels = labels.to(embeddings.device).long()
        if labels.shape[-2:] != embeddings.shape[-2:]:
            labels = F.interpolate(labels[:, None].float(), size=embeddings.shape[-2:], mode="nearest")[:, 0].long()
        flat_labels = labels.reshape(-1)
        flat_emb = embeddings.permute(0, 2, 3, 1).reshape(flat_labels.numel(), -1)
        index = self.sample(flat_labels, generator)
        picked = flat_labels[index]
        if index.numel() < 2 or torch.unique(picked).numel() < 2:
            return zero_like_graph(embeddings)
        z = F.normalize(flat_emb[index], dim=1)
        losses, rows = supcon_per_anchor(z, picked, torch.ones_like(picked, dtype=torch.bool), self.temperature)
        if rows.numel() == 0:
            return zero_like_graph(embeddings)
        return losses.mean()
