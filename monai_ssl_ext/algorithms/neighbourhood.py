"""A sample's semantic neighbourhood in a memory bank: what its neighbours were predicted to be, how tight they are."""

from __future__ import annotations

import torch
from torch import nn

from monai_ssl_ext.algorithms.memory_bank import FeatureMemoryBank

__all__ = ["NeighbourhoodCalibration", "compactness_weight"]


def compactness_weight(compactness: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """A weight in ``[0, 1]`` that grows with the compactness ``(B,)`` (mean cosine similarity, in ``[-1, 1]``).

    ``w = max(compactness, 0) ** power``: monotone non-decreasing, 0 for a neighbourhood no closer than
    orthogonal, 1 when every neighbour coincides with the sample; ``power`` > 1 trusts only tight ones.
    """
    if power <= 0:
        raise ValueError(f"power must be > 0, got {power}.")
    return compactness.clamp(0.0, 1.0).pow(power)


class NeighbourhoodCalibration(nn.Module):
    """The class distribution of a sample's ``k`` nearest neighbours in a :class:`FeatureMemoryBank`.

    For an embedding ``z_b`` with neighbours ``j = 1..k`` (cosine similarities ``s_bj``, stored
    distributions ``p_j``)::

        q_nb(b)   = sum_j softmax_j(s_bj / T) p_j          similarity-weighted vote of the neighbours
        kappa(b)  = 1/k sum_j s_bj                          compactness of the neighbourhood

    Used by :class:`~monai_ssl_ext.algorithms.HSC` to calibrate a pseudo label: an ambiguous sample
    borrows the evidence of the samples that look like it.

    Args:
        k: number of neighbours (10).
        temperature: ``T`` of the similarity weights (0.1; large ``T``: a plain average).
    """

    def __init__(self, k: int = 10, temperature: float = 0.1) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.k = int(k)
        self.temperature = float(temperature)

    def ready(self, bank: FeatureMemoryBank) -> bool:
        """Whether the bank holds at least ``k`` entries."""
        return len(bank) >= self.k

    @torch.no_grad()
    def forward(self, bank: FeatureMemoryBank, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``q_nb`` ``(B, K)`` and ``kappa`` ``(B,)`` of the embeddings ``query`` ``(B, D)``."""
        similarity, probs = bank.neighbours(query, self.k)
        vote = torch.softmax(similarity / self.temperature, dim=1)
        return (vote[:, :, None] * probs).sum(dim=1), similarity.mean(dim=1)

    def extra_repr(self) -> str:
        return f"k={self.k}, temperature={self.temperature}"
