"""The projection head that contrastive and consistency losses read, shared by several networks."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ProjectionHead"]


class ProjectionHead(nn.Module):
    """Two-layer MLP ``Linear -> BN -> ReLU -> Linear`` mapping pooled features ``(B, F)`` to ``(B, D)``.

    Contrastive and consistency losses act on such projections rather than on the features the
    classifier reads (SimCLR, Chen et al., ICML 2020: the head absorbs what the loss throws away).
    """

    def __init__(self, in_features: int, out_features: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or in_features
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
