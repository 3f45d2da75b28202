"""Class prototypes: momentum means of the embeddings of each class."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monai_ssl_ext.utils.distributed import all_reduce_sum

__all__ = ["ClassPrototypes"]


class ClassPrototypes(nn.Module):
    """One unit vector per class ``(K, D)``, the momentum mean of the embeddings assigned to it.

    For each class ``k`` with members in a batch (weights ``w_b`` summed over all ranks)::

        mean_k = sum_b w_b [y_b = k] z_b / sum_b w_b [y_b = k]        (z_b L2-normalised)
        c_k   <- normalize(m * c_k + (1 - m) * mean_k)                (first time: c_k = normalize(mean_k))

    Classes without members keep their prototype. :meth:`assign` gives the prototype distribution of an
    embedding, ``softmax_k(z . c_k / T)`` over the classes seen so far (a class never seen gets 0).
    The prototypes and the classes seen are buffers, saved in checkpoints; under ``torch.distributed`` the
    class sums are all-reduced before the update, so every rank holds the same prototypes.

    Args:
        num_classes: number of classes ``K``.
        dim: embedding size ``D``.
        momentum: ``m`` (0.9: a prototype follows the last few tens of steps).
    """

    def __init__(self, num_classes: int, dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}.")
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.momentum = float(momentum)
        self.register_buffer("prototypes", torch.zeros(self.num_classes, self.dim))
        self.register_buffer("seen", torch.zeros(self.num_classes, dtype=torch.bool))

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """Move the prototypes of the classes in ``labels`` ``(B,)`` towards the mean of their ``features`` ``(B, D)``.

        ``weights`` ``(B,)`` (default 1) weigh the members; a row of weight 0 does not count.
        """
        z = F.normalize(features.detach().float(), dim=1)
        w = torch.ones(z.shape[0], device=z.device) if weights is None else weights.detach().float().to(z.device)
        one_hot = F.one_hot(labels.long().to(z.device), self.num_classes).float() * w[:, None]
        # sums and counts of all ranks in one reduction; every rank joins, even with an empty batch
        stats = all_reduce_sum(torch.cat([one_hot.T @ z, one_hot.sum(dim=0)[:, None]], dim=1))
        sums, counts = stats[:, :-1].to(self.prototypes.device), stats[:, -1].to(self.prototypes.device)
        present = counts > 0
        if not present.any():
            return
        means = sums[present] / counts[present, None]
        old = self.prototypes[present]
        first = ~self.seen[present]
        moved = torch.where(first[:, None], means, self.momentum * old + (1.0 - self.momentum) * means)
        self.prototypes[present] = F.normalize(moved, dim=1)
        self.seen |= present

    def assign(self, features: torch.Tensor, temperature: float) -> torch.Tensor:
        """``softmax_k(normalize(z) . c_k / T)`` ``(B, K)`` over the seen classes; differentiable in ``features``.

        Before any class is seen the distribution is uniform.
        """
        if not bool(self.seen.any()):
            return features.new_full((features.shape[0], self.num_classes), 1.0 / self.num_classes).float()
        # a copy: the prototypes are updated in place later in the step, before the backward pass
        logits = F.normalize(features.float(), dim=1) @ self.prototypes.detach().clone().T / temperature
        logits = logits.masked_fill(~self.seen, float("-inf"))
        return torch.softmax(logits, dim=1)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, dim={self.dim}, momentum={self.momentum}"
