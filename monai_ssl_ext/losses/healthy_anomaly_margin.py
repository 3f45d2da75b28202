"""Phase 1 of SEMISE's supervised ordering term: a margin loss that separates healthy from anomalous images.

SEMISE (Tran et al., arXiv 2501.03848) first pulls healthy images together and pushes anomalous ones
at least a margin away from them, on cosine distances.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monai_ssl_ext.losses._utils import check_embeddings, per_sample, weighted_pair_mean, zero_like_graph

__all__ = ["HealthyAnomalyMarginLoss"]


class HealthyAnomalyMarginLoss(nn.Module):
    """Phase 1 of SEMISE: healthy/anomaly discrimination with a margin loss on cosine distances.

    After the contrastive loss of Hadsell, Chopra and LeCun (CVPR 2006, eq. 4) with the Euclidean
    distance replaced by ``d_ij = 1 - cos(z_i, z_j)`` (in ``[0, 2]``). Over the unordered pairs
    ``i < j`` of the batch:

    - healthy-healthy pairs are pulled together: ``l_ij = d_ij^2``;
    - healthy-anomaly pairs are pushed apart to at least ``margin``: ``l_ij = max(0, margin - d_ij)^2``;
    - anomaly-anomaly pairs are not constrained (anomalies of different kinds or severities need
      not cluster): they are left out of the loss and of the mean.

    With per-sample weights a pair counts ``w_i * w_j``; the result is
    ``sum_ij w_i w_j l_ij / #{constrained pairs with w_i w_j > 0}`` (weight 0 removes an image,
    e.g. an unlabeled one), a graph-connected 0 when no pair is constrained.

    Args:
        margin: the cosine distance below which a healthy-anomaly pair is penalised, in ``(0, 2]``.

    Input: ``embeddings`` ``(B, D)``; ``is_healthy`` ``(B,)`` bool; ``weights`` ``(B,)`` or ``None``.
    Output: a scalar.
    """

    def __init__(self, margin: float = 0.5) -> None:
        super().__init__()
        if not 0 < margin <= 2:
            raise ValueError(f"margin must lie in (0, 2] (cosine distances do), got {margin}.")
        self.margin = float(margin)

    def forward(
        self, embeddings: torch.Tensor, is_healthy: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        check_embeddings(embeddings)
        batch = embeddings.shape[0]
        healthy = torch.as_tensor(is_healthy, device=embeddings.device).reshape(-1).bool()
        if healthy.numel() != batch:
            raise ValueError(f"{healthy.numel()} is_healthy flags for {batch} samples.")
        weights = per_sample(weights, batch, embeddings, "weights")
        if batch < 2:
            return zero_like_graph(embeddings)
        z = F.normalize(embeddings, dim=1)
        i, j = torch.triu_indices(batch, batch, offset=1, device=z.device)
        distance = 1.0 - (z[i] * z[j]).sum(dim=1)
        both = healthy[i] & healthy[j]
        mixed = healthy[i] ^ healthy[j]
        losses = torch.where(both, distance.square(), (self.margin - distance).clamp(min=0).square())
        keep = both | mixed
        return weighted_pair_mean(losses[keep], (weights[i] * weights[j])[keep], embeddings)
