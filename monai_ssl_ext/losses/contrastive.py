"""Contrastive losses of Hermes: image-level and pixel-level supervised contrast, inter-task consistency.

Hermes (Zhang et al., ECAI 2025, arXiv 2508.02265) pulls together the features of samples (or pixels)
that share a label, using ground truth on labeled images and filtered pseudo labels on unlabeled
ones, and aligns the lesion embeddings of its classification and segmentation branches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["InterTaskConsistencyLoss", "PixelContrastLoss", "SupConLoss", "inter_task_consistency"]


def _zero_like_graph(tensor: torch.Tensor) -> torch.Tensor:
    # a zero that keeps the graph, so callers can always backward() and DDP sees every parameter used
    return tensor.sum() * 0.0


def _supcon_per_anchor(
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
        losses, rows = _supcon_per_anchor(z, anchor_labels, anchor_weights > 0, self.temperature)
        if rows.numel() == 0:
            return _zero_like_graph(features)
        scale = 1.0 if self.base_temperature is None else self.temperature / self.base_temperature
        return scale * (losses * weights.repeat_interleave(views)[rows]).sum() / rows.numel()


class PixelContrastLoss(nn.Module):
    """Pixel-level supervised contrast, after Wang et al., "Exploring cross-image pixel contrast" (ICCV 2021, eq. 2).

    Labels are resized (nearest) to the embedding grid. For each class present among the valid pixels
    of the whole batch, at most ``max_pixels_per_class`` pixels are drawn uniformly without replacement
    (global RNG, or ``generator``); the drawn L2-normalised embeddings are then contrasted with the
    per-anchor ``L_out`` of :class:`SupConLoss` (factor 1) and averaged over the anchors that have a
    positive. A graph-connected 0 comes back when fewer than two classes are present or no anchor
    has a positive.

    Args:
        temperature: ``T`` (0.1 as in Wang et al.).
        max_pixels_per_class: cap of sampled anchors per class (memory is quadratic in the total).
        ignore_index: label of rejected pixels (they neither anchor nor contrast).

    Input: ``embeddings`` ``(B, D, h, w)``; ``labels`` ``(B, H, W)`` long. Output: a scalar.
    """

    def __init__(self, temperature: float = 0.1, max_pixels_per_class: int = 256, ignore_index: int = -1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        if max_pixels_per_class < 1:
            raise ValueError(f"max_pixels_per_class must be >= 1, got {max_pixels_per_class}.")
        self.temperature = float(temperature)
        self.max_pixels_per_class = int(max_pixels_per_class)
        self.ignore_index = int(ignore_index)

    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Indices into the flattened ``labels`` ``(N,)``: at most ``max_pixels_per_class`` valid pixels per class."""
        valid = labels != self.ignore_index
        chosen = []
        for cls in torch.unique(labels[valid]).tolist():
            where = torch.nonzero(labels == cls).squeeze(1)
            if where.numel() > self.max_pixels_per_class:
                # drawn on the CPU so that a CPU generator (or the global seed) fixes the draw on any device
                pick = torch.randperm(where.numel(), generator=generator)[: self.max_pixels_per_class]
                where = where[pick.to(where.device)]
            chosen.append(where)
        if not chosen:
            return torch.zeros(0, dtype=torch.long, device=labels.device)
        return torch.cat(chosen)

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        if embeddings.ndim != 4:
            raise ValueError(f"embeddings must be (B, D, h, w), got shape {tuple(embeddings.shape)}.")
        if labels.ndim == 4 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 3 or labels.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"labels must be (B, H, W) for embeddings {tuple(embeddings.shape)}, got {tuple(labels.shape)}."
            )
        labels = labels.to(embeddings.device).long()
        if labels.shape[-2:] != embeddings.shape[-2:]:
            labels = F.interpolate(labels[:, None].float(), size=embeddings.shape[-2:], mode="nearest")[:, 0].long()
        flat_labels = labels.reshape(-1)
        flat_emb = embeddings.permute(0, 2, 3, 1).reshape(flat_labels.numel(), -1)
        index = self.sample(flat_labels, generator)
        picked = flat_labels[index]
        if index.numel() < 2 or torch.unique(picked).numel() < 2:
            return _zero_like_graph(embeddings)
        z = F.normalize(flat_emb[index], dim=1)
        losses, rows = _supcon_per_anchor(z, picked, torch.ones_like(picked, dtype=torch.bool), self.temperature)
        if rows.numel() == 0:
            return _zero_like_graph(embeddings)
        return losses.mean()


def inter_task_consistency(
    z_cls: torch.Tensor, z_seg: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Hermes' inter-task consistency: the mean over samples of ``1 - cos(z_cls, z_seg)``.

    Input: ``z_cls`` and ``z_seg`` ``(B, D)`` (other trailing shapes are flattened to ``(B, -1)``);
    ``weights`` ``(B,)`` or ``None``. With weights the result is ``sum_i w_i d_i / #{i: w_i > 0}``
    (the convention of :class:`SupConLoss`), a graph-connected 0 when no weight is positive.
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
        return _zero_like_graph(distance)
    return (distance * weights).sum() / count


class InterTaskConsistencyLoss(nn.Module):
    """Module form of :func:`inter_task_consistency` (``(B, D)``, ``(B, D)``, optional ``(B,)`` -> scalar)."""

    def forward(self, z_cls: torch.Tensor, z_seg: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        return inter_task_consistency(z_cls, z_seg, weights)
