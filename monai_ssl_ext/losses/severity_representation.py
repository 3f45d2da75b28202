"""SEMISE's severity representation objective ``L = alpha * L_NT-Xent + (1 - alpha) * L_PrO``.

SEMISE (Tran et al., arXiv 2501.03848) combines the self-supervised SimCLR term
(:class:`~monai_ssl_ext.losses.NTXentLoss`) with a supervised term that orders the labeled images by
severity: the healthy/anomaly margin loss in its first phase
(:class:`~monai_ssl_ext.losses.HealthyAnomalyMarginLoss`), preference ranking against a healthy
reference in its second (:class:`~monai_ssl_ext.losses.PreferenceRankingLoss`).
"""

from __future__ import annotations

import torch

__all__ = ["severity_representation_loss"]


def severity_representation_loss(nt_xent: torch.Tensor, pro: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """SEMISE's combined objective ``L = alpha * L_NT-Xent + (1 - alpha) * L_PrO`` for ``alpha`` in ``[0, 1]``.

    Input: two scalars (or broadcastable tensors). Output: their convex combination.
    """
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}.")
    return alpha * nt_xent + (1.0 - alpha) * pro
