"""SimCLR's NT-Xent, the self-supervised term of SEMISE's severity representation objective.

SEMISE (Tran et al., arXiv 2501.03848) uses two augmented views of every image, labeled or not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monai_ssl_ext.losses._utils import check_embeddings

__all__ = ["NTXentLoss"]


class NTXentLoss(nn.Module):
    """SimCLR's normalized temperature-scaled cross-entropy (Chen et al., ICML 2020, eq. 1).

    The ``2B`` rows of ``z1`` and ``z2`` are L2-normalised. For anchor ``k`` with positive ``k+`` (the
    other view of the same image):
    ``l_k = -log( exp(cos(z_k, z_k+) / T) / sum_{a != k} exp(cos(z_k, z_a) / T) )``,
    the denominator running over the other ``2B - 1`` embeddings (the positive and ``2B - 2``
    negatives). The loss is the mean of ``l_k`` over the ``2B`` anchors.

    Args:
        temperature: ``T`` (0.5 in SimCLR's CIFAR experiments).

    Input: ``z1`` and ``z2`` ``(B, D)`` with ``B >= 2`` (row ``b`` of each is a view of image ``b``).
    Output: a scalar.
    """

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.temperature = float(temperature)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        check_embeddings(z1, "z1")
        if z1.shape != z2.shape:
            raise ValueError(f"z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)} shapes differ.")
        batch = z1.shape[0]
        if batch < 2:
            raise ValueError(f"NT-Xent needs at least 2 images (negatives come from the batch), got {batch}.")
        z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
        logits = z @ z.T / self.temperature
        # an embedding is not its own negative: removed from the softmax, not just zeroed
        logits = logits.masked_fill(torch.eye(2 * batch, dtype=torch.bool, device=z.device), float("-inf"))
        index = torch.arange(batch, device=z.device)
        targets = torch.cat([index + batch, index])
        return F.cross_entropy(logits, targets)
