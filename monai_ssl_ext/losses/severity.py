"""Severity representation losses of SEMISE: NT-Xent, healthy/anomaly margin contrast and preference ranking.

SEMISE (Tran et al., arXiv 2501.03848) trains an encoder with ``L = alpha * L_NT-Xent + (1 - alpha) * L_PrO``:
the self-supervised SimCLR term uses two augmented views of every image, labeled or not; the
supervised term orders the labeled images by severity, first separating healthy from anomalous
images (phase 1, a margin loss on cosine distances), then asking that a more severe image lies
farther from a healthy reference embedding than a less severe one (phase 2, preference optimisation
with a Bradley-Terry likelihood on the difference of the two cosine similarities).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "HealthyAnomalyMarginLoss",
    "NTXentLoss",
    "PreferenceRankingLoss",
    "SeverityRepresentationLoss",
    "healthy_reference",
    "severity_representation_loss",
]


def _zero_like_graph(tensor: torch.Tensor) -> torch.Tensor:
    # a zero that keeps the graph, so callers can always backward() and DDP sees every parameter used
    return tensor.sum() * 0.0


def _check_embeddings(embeddings: torch.Tensor, name: str = "embeddings") -> None:
    if embeddings.ndim != 2:
        raise ValueError(f"{name} must be (B, D), got shape {tuple(embeddings.shape)}.")


def _per_sample(values: torch.Tensor | None, batch: int, like: torch.Tensor, name: str) -> torch.Tensor:
    """``values`` as a ``(B,)`` tensor of ``like``'s dtype and device (ones when ``None``)."""
    if values is None:
        return like.new_ones(batch)
    values = torch.as_tensor(values, device=like.device, dtype=like.dtype).reshape(-1)
    if values.numel() != batch:
        raise ValueError(f"{values.numel()} {name} for {batch} samples.")
    return values


def _weighted_pair_mean(losses: torch.Tensor, pair_weights: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """``sum_p w_p l_p / #{p: w_p > 0}``, the convention of :class:`SupConLoss`; a graph-connected 0 when empty."""
    count = (pair_weights.detach() > 0).sum()
    if count == 0:
        return _zero_like_graph(anchor)
    return (losses * pair_weights).sum() / count


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
        _check_embeddings(z1, "z1")
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
        _check_embeddings(embeddings)
        batch = embeddings.shape[0]
        healthy = torch.as_tensor(is_healthy, device=embeddings.device).reshape(-1).bool()
        if healthy.numel() != batch:
            raise ValueError(f"{healthy.numel()} is_healthy flags for {batch} samples.")
        weights = _per_sample(weights, batch, embeddings, "weights")
        if batch < 2:
            return _zero_like_graph(embeddings)
        z = F.normalize(embeddings, dim=1)
        i, j = torch.triu_indices(batch, batch, offset=1, device=z.device)
        distance = 1.0 - (z[i] * z[j]).sum(dim=1)
        both = healthy[i] & healthy[j]
        mixed = healthy[i] ^ healthy[j]
        losses = torch.where(both, distance.square(), (self.margin - distance).clamp(min=0).square())
        keep = both | mixed
        return _weighted_pair_mean(losses[keep], (weights[i] * weights[j])[keep], embeddings)


def healthy_reference(
    embeddings: torch.Tensor, severities: torch.Tensor, healthy_level: int = 0
) -> torch.Tensor | None:
    """The healthy reference of the preference loss: the mean of the L2-normalised healthy embeddings.

    Input: ``embeddings`` ``(B, D)``; ``severities`` ``(B,)`` integer levels. Output: ``(D,)`` (not
    re-normalised; only its direction matters to a cosine), or ``None`` when no row has
    ``healthy_level``. The result keeps the graph: detach it to hold the reference fixed.
    """
    _check_embeddings(embeddings)
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
        _check_embeddings(embeddings)
        batch, dim = embeddings.shape
        levels = torch.as_tensor(severities, device=embeddings.device).reshape(-1)
        if levels.is_floating_point() or levels.is_complex():
            raise ValueError(f"severities must be integer levels, got dtype {levels.dtype}.")
        if levels.numel() != batch:
            raise ValueError(f"{levels.numel()} severities for {batch} samples.")
        reference = torch.as_tensor(reference, device=embeddings.device, dtype=embeddings.dtype).reshape(-1)
        if reference.numel() != dim:
            raise ValueError(f"reference must be ({dim},) for embeddings {tuple(embeddings.shape)}.")
        weights = _per_sample(weights, batch, embeddings, "weights")
        similarity = F.cosine_similarity(embeddings, reference[None, :], dim=1)
        valid = levels != self.ignore_index
        ordered = (levels[:, None] > levels[None, :]) & valid[:, None] & valid[None, :]
        i, j = torch.nonzero(ordered, as_tuple=True)
        if i.numel() == 0:
            return _zero_like_graph(embeddings) + _zero_like_graph(reference)
        losses = F.softplus(self.beta * (similarity[i] - similarity[j]))
        return _weighted_pair_mean(losses, weights[i] * weights[j], embeddings)


def severity_representation_loss(nt_xent: torch.Tensor, pro: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """SEMISE's combined objective ``L = alpha * L_NT-Xent + (1 - alpha) * L_PrO`` for ``alpha`` in ``[0, 1]``.

    Input: two scalars (or broadcastable tensors). Output: their convex combination.
    """
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}.")
    return alpha * nt_xent + (1.0 - alpha) * pro


class SeverityRepresentationLoss(nn.Module):
    """SEMISE's representation objective on two views of a batch: ``alpha * L_NT-Xent + (1 - alpha) * L_PrO``.

    ``L_NT-Xent`` is :class:`NTXentLoss` on all images. The supervised term is
    ``L_PrO = L_rank + margin_weight * L_margin``, with :class:`PreferenceRankingLoss` and
    :class:`HealthyAnomalyMarginLoss` computed on the ``2B`` view embeddings of the images whose
    severity is not ``ignore_index`` (labels repeated per view). ``margin_weight = 0`` (the default)
    gives the two-term formula of the paper exactly; a positive value adds the phase-1 healthy/anomaly
    term. Without a ``reference`` the batch's :func:`healthy_reference` is used, and ``L_rank`` is a
    graph-connected 0 when the batch holds no healthy labeled image.

    Args:
        alpha: weight of the self-supervised term, in ``[0, 1]``.
        temperature: NT-Xent temperature.
        beta: preference inverse temperature.
        margin: healthy/anomaly cosine-distance margin.
        margin_weight: weight of the phase-1 margin term inside ``L_PrO`` (``>= 0``).
        healthy_level: severity of healthy images.
        ignore_index: severity of unlabeled images.

    Input: ``z1``, ``z2`` ``(B, D)``; ``severities`` ``(B,)`` integer levels; ``weights`` ``(B,)`` or
    ``None``; ``reference`` ``(D,)`` or ``None``. Output: a scalar (:meth:`terms` gives the parts).
    """

    def __init__(
        self,
        alpha: float = 0.5,
        temperature: float = 0.5,
        beta: float = 1.0,
        margin: float = 0.5,
        margin_weight: float = 0.0,
        healthy_level: int = 0,
        ignore_index: int = -1,
    ) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}.")
        if margin_weight < 0:
            raise ValueError(f"margin_weight must be >= 0, got {margin_weight}.")
        if healthy_level == ignore_index:
            raise ValueError(f"healthy_level and ignore_index are both {healthy_level}.")
        self.alpha = float(alpha)
        self.margin_weight = float(margin_weight)
        self.healthy_level = int(healthy_level)
        self.ignore_index = int(ignore_index)
        self.nt_xent = NTXentLoss(temperature)
        self.ranking = PreferenceRankingLoss(beta, ignore_index=ignore_index)
        self.margin = HealthyAnomalyMarginLoss(margin)

    def terms(
        self,
        z1: torch.Tensor,
        z2: torch.Tensor,
        severities: torch.Tensor,
        weights: torch.Tensor | None = None,
        reference: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``{"nt_xent", "ranking", "margin", "pro", "total"}`` scalars for the inputs of :meth:`forward`."""
        nt_xent = self.nt_xent(z1, z2)
        batch = z1.shape[0]
        levels = torch.as_tensor(severities, device=z1.device).reshape(-1)
        if levels.numel() != batch:
            raise ValueError(f"{levels.numel()} severities for {batch} samples.")
        weights = _per_sample(weights, batch, z1, "weights")
        # both views of a labeled image carry its severity; unlabeled rows get weight 0 in the margin term
        z = torch.cat([z1, z2], dim=0)
        levels2 = levels.repeat(2)
        weights2 = weights.repeat(2) * (levels2 != self.ignore_index).to(z.dtype)
        if reference is None:
            reference = healthy_reference(z, levels2, self.healthy_level)
        ranking = _zero_like_graph(z) if reference is None else self.ranking(z, levels2, reference, weights2)
        margin = (
            self.margin(z, levels2 == self.healthy_level, weights2) if self.margin_weight > 0 else _zero_like_graph(z)
        )
        pro = ranking + self.margin_weight * margin
        total = severity_representation_loss(nt_xent, pro, self.alpha)
        return {"nt_xent": nt_xent, "ranking": ranking, "margin": margin, "pro": pro, "total": total}

    def forward(
        self,
        z1: torch.Tensor,
        z2: torch.Tensor,
        severities: torch.Tensor,
        weights: torch.Tensor | None = None,
        reference: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.terms(z1, z2, severities, weights, reference)["total"]
