"""A first-in first-out memory of embeddings and the class distributions predicted for them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monai_ssl_ext.utils.distributed import all_gather_cat

__all__ = ["FeatureMemoryBank"]


class FeatureMemoryBank(nn.Module):
    """The last ``size`` embeddings ``(size, D)`` seen in training, each with a class distribution ``(size, K)``.

    Entries are written in a ring: :meth:`enqueue` overwrites the oldest ones. Embeddings are stored
    L2-normalised, so the similarity of :meth:`neighbours` is the cosine similarity. What a distribution
    is depends on the caller: a model's prediction for an unlabeled image, a one-hot label for a labeled
    one (HSC stores both).

    Under ``torch.distributed`` :meth:`enqueue` gathers the entries of all ranks (in rank order) before
    writing them, so every rank holds the same bank; every rank must call it with the same number of rows.
    The contents, the write position and the number of valid entries are buffers: ``state_dict()``
    carries them into checkpoints, and a resumed run finds the same neighbours as an uninterrupted one.

    Args:
        size: number of entries ``M``.
        dim: embedding size ``D``.
        num_classes: size ``K`` of the stored distributions.
    """

    def __init__(self, size: int, dim: int, num_classes: int) -> None:
        super().__init__()
        if size < 1 or dim < 1 or num_classes < 2:
            raise ValueError(f"need size >= 1, dim >= 1 and num_classes >= 2, got {size}, {dim}, {num_classes}.")
        self.size = int(size)
        self.dim = int(dim)
        self.num_classes = int(num_classes)
        self.register_buffer("features", torch.zeros(self.size, self.dim))
        self.register_buffer("probs", torch.zeros(self.size, self.num_classes))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        """Number of valid entries (at most ``size``)."""
        return int(self.filled)

    @torch.no_grad()
    def enqueue(self, features: torch.Tensor, probs: torch.Tensor) -> None:
        """Write ``features`` ``(B, D)`` and their distributions ``(B, K)`` of every rank over the oldest entries."""
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"expected features (B, {self.dim}), got {tuple(features.shape)}.")
        if probs.shape != (features.shape[0], self.num_classes):
            raise ValueError(f"expected probs ({features.shape[0]}, {self.num_classes}), got {tuple(probs.shape)}.")
        features = all_gather_cat(F.normalize(features.detach().float(), dim=1))
        probs = all_gather_cat(probs.detach().float())
        # a batch larger than the bank keeps its newest rows
        features, probs = features[-self.size :], probs[-self.size :]
        n = features.shape[0]
        slots = (self.pointer + torch.arange(n, device=self.pointer.device)) % self.size
        self.features[slots] = features.to(self.features.device)
        self.probs[slots] = probs.to(self.probs.device)
        self.pointer.copy_((self.pointer + n) % self.size)
        self.filled.copy_(torch.clamp(self.filled + n, max=self.size))

    @torch.no_grad()
    def neighbours(self, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` most similar valid entries of each row of ``query`` ``(B, D)``.

        Returns their cosine similarities ``(B, k)`` (descending) and stored distributions ``(B, k, K)``.
        ``k`` larger than the number of valid entries is an error: callers check ``len(bank)`` first.
        """
        if not 1 <= k <= len(self):
            raise ValueError(f"k must be in [1, {len(self)}] (the valid entries), got {k}.")
        query = F.normalize(query.detach().float(), dim=1)
        valid = self.features[: len(self)].to(query.device)
        similarity, index = (query @ valid.T).topk(k, dim=1)
        return similarity, self.probs[: len(self)].to(query.device)[index]

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, num_classes={self.num_classes}"
