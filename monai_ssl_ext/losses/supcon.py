"""Supervised contrastive loss (Khosla et al., NeurIPS 2020), the image-level contrast of Hermes.

Hermes (Zhang et al., ECAI 2025, arXiv 2508.02265) pulls together the features of samples that share
a label, using ground truth on labeled images and filtered pseudo labels on unlabeled ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monai_ssl_ext.losses._utils import zero_like_graph

__all__ = ["SupConLoss", "supcon_per_anchor"]


def supcon_per_anchor(
    z: torch.Tensor, labels: torch.Tensor, usable: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor ``L_out`` of Khosla et al. (2020, eq. 2) on L2-normalised rows of ``z`` ``(N, D)``.

    ``usable`` ``(N,)`` bool marks rows that may anchor, be positives or be contrasted against.
    Returns the losses ``(M,)`` of the anchors that have at least one positive and their row indices ``(M,)``.
    """
    same = labels[:, None] == labels[None, :]
    others = usable[None, :] & usable[:, None]
    others.fill_diagonal_(False)
    positives = same & others
    num_pos = positives.sum(dim=1)
    rows = torch.nonzero(num_pos > 0).squeeze(1)
    if rows.numel() == 0:
        return z.new_zeros(0), rows
    # only anchors with a positive (hence a non-empty denominator) are computed: an all-masked row
    # would give a -inf log-sum-exp whose backward is NaN even if the row were discarded afterwards
    logits = z[rows] @ z.T / temperature
    logits = logits.masked_fill(~others[rows], float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    log_prob = log_prob.masked_fill(~positives[rows], 0.0)
    return -log_prob.sum(dim=1) / num_pos[rows].to(z.dtype), rows


class SupConLoss(nn.Module):
    """Supervised contrastive loss ``L_out`` (Khosla et al., NeurIPS 2020, eq. 2), with per-sample weights.

    With ``z`` the L2-normalised features of all ``N = B * V`` views, ``A(i)`` all views except ``i``
    and ``P(i)`` those with the label of ``i``:
    ``l_i = -(T / T_base) * 1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / T) / sum_{a in A(i)} exp(z_i.z_a / T) )``.

    Weights (per sample, shared by its views): samples with weight 0 (rejected pseudo labels) are
    removed from ``A(i)`` and ``P(i)`` of every anchor and do not anchor; the others' losses are
    multiplied by their weight. The result is ``sum_i w_i l_i / M`` over the ``M`` anchors with
    ``w_i > 0`` and ``|P(i)| > 0`` (anchors without a positive are left out of both sums), and a
    graph-connected 0 when ``M = 0``.

    Args:
        temperature: ``T`` (0.07 in Hermes and SupCon).
        base_temperature: ``T_base``; ``None`` for ``T_base = T`` (factor 1).

    Input: ``features`` ``(B, V, D)`` (``V`` views) or ``(B, D)``; ``labels`` ``(B,)``; ``weights``
    ``(B,)`` or ``None``. Output: a scalar.
    """

    def __init__(self, temperature: float = 0.07, base_temperature: float | None = None) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.temperature = float(temperature)
        self.base_temperature = None if base_temperature is None else float(base_temperature)

    def forward(
        self, features: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        if features.ndim == 2:
            features = features.unsqueeze(1)
        if features.ndim != 3:
            raise ValueError(f"features must be (B, V, D) or (B, D), got shape {tuple(features.shape)}.")
        batch, views, _ = features.shape
        labels = torch.as_tensor(labels, device=features.device).reshape(-1)
        if labels.numel() != batch:
            raise ValueError(f"{labels.numel()} labels for {batch} samples.")
        if weights is None:
            weights = features.new_ones(batch)
        weights = torch.as_tensor(weights, device=features.device, dtype=features.dtype).reshape(-1)
        if weights.numel() != batch:
            raise ValueError(f"{weights.numel()} weights for {batch} samples.")
        # sample-major order: row b * V + v is view v of sample b
        z = F.normalize(features.reshape(batch * views, -1), dim=1)
        anchor_labels = labels.repeat_interleave(views)
        anchor_weights = weights.detach().repeat_interleave(views)
        losses, rows = supcon_per_anchor(z, anchor_labels, anchor_weights > 0, self.temperature)
        if rows.numel() == 0:
            return zero_like_graph(features)
        scale = 1.0 if self.base_temperature is None else self.temperature / self.base_temperature
        return scale * (losses * weights.repeat_interleave(views)[rows]).sum() / rows.numel()
