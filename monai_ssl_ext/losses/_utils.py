"""Helpers shared by the losses: a graph-connected zero and the checks and pair means of the severity losses."""

from __future__ import annotations

import torch

__all__ = ["check_embeddings", "per_sample", "weighted_pair_mean", "zero_like_graph"]


def zero_like_graph(tensor: torch.Tensor) -> torch.Tensor:
    # a zero that keeps the graph, so callers can always backward() and DDP sees every parameter used
    return tensor.sum() * 0.0


def check_embeddings(embeddings: torch.Tensor, name: str = "embeddings") -> None:
    if embeddings.ndim != 2:
        raise ValueError(f"{name} must be (B, D), got shape {tuple(embeddings.shape)}.")


def per_sample(values: torch.Tensor | None, batch: int, like: torch.Tensor, name: str) -> torch.Tensor:
    """``values`` as a ``(B,)`` tensor of ``like``'s dtype and device (ones when ``None``)."""
    if values is None:
        return like.new_ones(batch)
    values = torch.as_tensor(values, device=like.device, dtype=like.dtype).reshape(-1)
    if values.numel() != batch:
        raise ValueError(f"{values.numel()} {name} for {batch} samples.")
    return values


def weighted_pair_mean(losses: torch.Tensor, pair_weights: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """``sum_p w_p l_p / #{p: w_p > 0}``, the convention of :class:`~monai_ssl_ext.losses.SupConLoss`.

    A graph-connected 0 when no pair weight is positive.
    """
    count = (pair_weights.detach() > 0).sum()
    if count == 0:
        return zero_like_graph(anchor)
    return (losses * pair_weights).sum() / count
