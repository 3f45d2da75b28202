"""Phase 2 of SEMISE's supervised ordering term: preference ranking of severity against a healthy reference.

SEMISE (Tran et al., arXiv 2501.03848) asks that a more severe image lies farther from a healthy
reference embedding than a less severe one, with a Bradley-Terry likelihood on the difference of the
two cosine similarities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monai_ssl_ext.losses._utils import check_embeddings, per_sample, weighted_pair_mean, zero_like_graph

__all__ = ["PreferenceRankingLoss", "healthy_reference"]


def healthy_reference(
    embeddings: torch.Tensor, severities: torch.Tensor, healthy_level: int = 0
) -> torch.Tensor | None:
    """The healthy reference of the preference loss: the mean of the L2-normalised healthy embeddings.

    Input: ``embeddings`` ``(B, D)``; ``severities`` ``(B,)`` integer levels. Output: ``(D,)`` (not
    re-normalised; only its direction matters to a cosine), or ``None`` when no row has
    ``healthy_level``. The result keeps the graph: detach it to hold the reference fixed.
    """
    check_embeddings(embeddings)
    levels = torch.as_tensor(severities, device=embeddings.device).reshape(-1)
    if levels.numel() != embeddings.shape[0]:
        raise ValueError(f"{levels.numel()} severities for {embeddings.shape[0]} samples.")
    healthy = levels == healthy_level
    if not healthy.any():
        return None
    return F.normalize(embeddings[healthy], dim=1).mean(dim=0)


class PreferenceRankingLoss(nn.Module):
    """Phase 2 of SEMISE: preference optimisation (PrO) of severity against a healthy reference.

    With ``s_i = cos(z_i, r)`` the similarity of image ``i`` to the healthy reference ``r``, each
    ordered pair ``(i, j)`` with ``severity_i > severity_j`` states the preference "``j`` is closer
    to healthy than ``i``". Its Bradley-Terry likelihood is ``sigmoid(beta * (s_j - s_i))`` and the
    loss is its negative log, ``l_ij = -log sigmoid(beta * (s_j - s_i)) = softplus(beta * (s_i - s_j))``,
    averaged over the ordered pairs. Pairs of equal severity do not enter. With per-sample weights a
    pair counts ``w_i * w_j`` and the result is ``sum w_i w_j l_ij / #{pairs with w_i w_j > 0}``.
    Samples whose severity equals ``ignore_index`` (unlabeled images) take part in no pair. A
    graph-connected 0 comes back when there is no ordered pair.

    Args:
        beta: ``beta``, the inverse temperature of the preference (a larger value sharpens it).
        ignore_index: severity of samples to leave out.

    Input: ``embeddings`` ``(B, D)``; ``severities`` ``(B,)`` integer ordinal levels (0 = healthy);
    ``reference`` ``(D,)`` (e.g. :func:`healthy_reference` of the batch, or a running mean kept by
    the caller; gradients flow into it unless detached); ``weights`` ``(B,)`` or ``None``.
    Output: a scalar.
    """

    def __init__(self, beta: float = 1.0, ignore_index: int = -1) -> None:
        super().__init__()
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}.")
        self.beta = float(beta)
        self.ignore_index = int(ignore_index)

    def forward(
        self,
        embeddings: torch.Tensor,
        severities: torch.Tensor,
        reference: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        check_embeddings(embeddings)
        batch, dim = embeddings.shape
        levels = torch.as_tensor(severities, device=embeddings.device).reshape(-1)
        if levels.is_floating_point() or levels.is_complex():
            raise ValueError(f"severities must be integer levels, got dtype {levels.dtype}.")
        if levels.numel() != batch:
            raise ValueError(f"{levels.numel()} severities for {batch} samples.")
        reference = torch.as_tensor(reference, device=embeddings.device, dtype=embeddings.dtype).reshape(-1)
        if reference.numel() != dim:
            raise ValueError(f"reference must be ({dim},) for embeddings {tuple(embeddings.shape)}.")
        weights = per_sample(weights, batch, embeddings, "weights")
        similarity = F.cosine_similarity(embeddings, reference[None, :], dim=1)
        valid = levels != self.ignore_index
        ordered = (levels[:, None] > levels[None, :]) & valid[:, None] & valid[None, :]
        i, j = torch.nonzero(ordered, as_tuple=True)
        if i.numel() == 0:
            return zero_like_graph(embeddings) + zero_like_graph(reference)
        losses = F.softplus(self.beta * (similarity[i] - similarity[j]))
        return weighted_pair_mean(losses, weights[i] * weights[j], embeddings)
