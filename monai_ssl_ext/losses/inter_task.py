"""Hermes' inter-task consistency: the lesion embeddings of the classification and segmentation branches agree.

Hermes (Zhang et al., ECAI 2025, arXiv 2508.02265) aligns the two branches' embeddings of an image by
their cosine distance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from monai_ssl_ext.losses._utils import zero_like_graph

__all__ = ["inter_task_consistency"]


def inter_task_consistency(
    z_cls: torch.Tensor, z_seg: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Hermes' inter-task consistency: the mean over samples of ``1 - cos(z_cls, z_seg)``.

    Input: ``z_cls`` and ``z_seg`` ``(B, D)`` (other trailing shapes are flattened to ``(B, -1)``);
    ``weights`` ``(B,)`` or ``None``. With weights the result is ``sum_i w_i d_i / #{i: w_i > 0}``
    (the convention of :class:`~monai_ssl_ext.losses.SupConLoss`), a graph-connected 0 when no weight is positive.
    Output: a scalar in ``[0, 2]`` for weights in ``[0, 1]``: 0 for parallel, 1 for orthogonal, 2 for
    opposite embeddings.
    """
    if z_cls.shape != z_seg.shape:
        raise ValueError(f"z_cls {tuple(z_cls.shape)} and z_seg {tuple(z_seg.shape)} shapes differ.")
    distance = 1.0 - F.cosine_similarity(z_cls.flatten(1), z_seg.flatten(1), dim=1)
    if weights is None:
        return distance.mean()
    weights = torch.as_tensor(weights, device=distance.device, dtype=distance.dtype).reshape(-1)
    count = (weights > 0).sum()
    if count == 0:
        return zero_like_graph(distance)
    return (distance * weights).sum() / count
