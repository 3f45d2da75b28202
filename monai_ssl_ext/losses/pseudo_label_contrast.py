"""Pseudo-label guided contrast (DSRPGC): queries against momentum keys that share their pseudo label."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from monai_ssl_ext.losses._utils import zero_like_graph

__all__ = ["pseudo_label_contrast"]


def pseudo_label_contrast(
    queries: torch.Tensor,
    labels: torch.Tensor,
    keys: torch.Tensor,
    key_labels: torch.Tensor,
    weights: torch.Tensor | None = None,
    temperature: float = 0.1,
) -> torch.Tensor:
    """``1/M sum_i w_i l_i`` with ``l_i = -1/|P(i)| sum_{p in P(i)} log( exp(q_i.k_p / T) / sum_a exp(q_i.k_a / T) )``.

    ``queries`` ``(B, D)`` (the student's embeddings, with the gradient) with pseudo labels ``(B,)``; ``keys``
    ``(M_k, D)`` (a momentum encoder's embeddings of the batch and a queue of earlier ones, detached) with
    their pseudo labels ``(M_k,)``; both L2-normalised here. ``P(i)``: the keys with the label of query ``i``
    (MoCo-v2's single positive, its own key, generalised to every key of its class, as in supervised
    contrast); ``a`` runs over all keys. ``weights`` ``(B,)`` (the DSR weights; default 1) scale each
    query's loss; the mean is over the ``M`` queries that have a positive (a graph-connected 0 when none has).
    """
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f"queries (B, D) and keys (M, D) expected, got {tuple(queries.shape)}, {tuple(keys.shape)}.")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    q = F.normalize(queries.float(), dim=1)
    k = F.normalize(keys.detach().float(), dim=1)
    positives = labels.reshape(-1, 1).to(key_labels.device) == key_labels.reshape(1, -1)
    has_positive = positives.any(dim=1)
    if not bool(has_positive.any()):
        return zero_like_graph(queries)
    log_prob = torch.log_softmax(q @ k.T / temperature, dim=1)
    per_query = -(log_prob * positives).sum(dim=1) / positives.sum(dim=1).clamp_min(1)
    w = torch.ones_like(per_query) if weights is None else weights.detach().float().reshape(-1)
    return (w * per_query)[has_positive].sum() / has_positive.sum()
