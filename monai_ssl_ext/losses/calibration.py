"""Losses between class-level representations: prototypes across views, and two calibrated distributions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from monai_ssl_ext.losses._utils import zero_like_graph

__all__ = ["prototype_alignment_loss", "weighted_soft_cross_entropy"]


def prototype_alignment_loss(
    features: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, prototypes: torch.Tensor
) -> torch.Tensor:
    """``mean_k (1 - cos(mu_k, c_k))`` over the classes present: batch centroids pulled onto fixed prototypes.

    ``mu_k = sum_b w_b [y_b = k] z_b / sum_b w_b [y_b = k]`` is the centroid of class ``k`` among
    ``features`` ``(B, D)`` (L2-normalised first) with labels ``(B,)`` and weights ``(B,)``; ``prototypes``
    ``(K, D)`` are targets (detached). Zero, still in the graph, when no class has weight.
    """
    z = F.normalize(features.float(), dim=1)
    one_hot = F.one_hot(labels.long(), prototypes.shape[0]).float() * weights.float()[:, None]
    counts = one_hot.sum(dim=0)
    present = counts > 0
    if not bool(present.any()):
        return zero_like_graph(features)
    centroids = (one_hot.T @ z)[present] / counts[present, None]
    target = F.normalize(prototypes.detach().float()[present], dim=1)
    return (1.0 - F.cosine_similarity(centroids, target, dim=1)).mean()


def weighted_soft_cross_entropy(target: torch.Tensor, probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``1/B sum_b w_b H(t_b, p_b)`` with ``H(t, p) = -sum_k t_k log p_k``: soft targets ``(B, K)`` (detached).

    ``probs`` ``(B, K)`` carry the gradient; ``weights`` ``(B,)`` in ``[0, 1]``. Cross-entropy rather than KL:
    the two differ by the targets' entropy, a constant for the gradient.
    """
    log_p = torch.log(probs.float().clamp_min(1e-8))
    per_sample = -(target.detach().float() * log_p).sum(dim=1)
    return (weights.detach().float() * per_sample).mean()
