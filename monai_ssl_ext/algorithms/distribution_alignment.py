"""Distribution alignment of pseudo labels (ReMixMatch, Berthelot et al. ICLR 2020; USB's ``DistAlignEMAHook``).

A model trained on an imbalanced labeled set over-predicts its frequent classes on the unlabeled data,
and confidence-thresholded pseudo labels amplify that bias. Distribution alignment rescales the
weak-view class probabilities so that, on average, they follow a target class distribution.

How an algorithm applies it (one call on the weak-view probabilities, before ``max``/``argmax``,
pseudo-label selection and sharpening), for example in a FixMatch-style ``train_step``::

    probs_w = torch.softmax(logits_w.detach() / temperature, dim=1)
    if self.dist_align is not None:  # a DistributionAlignment module, so its state is checkpointed
        probs_w = self.dist_align(probs_w)
    pseudo, mask = self.selector(probs_w, indices)

Being a submodule of the algorithm, its running mean is saved and restored with the algorithm's
``state_dict`` (exact resume).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from monai_ssl_ext.utils.distributed import all_reduce_sum

__all__ = ["DistributionAlignment"]


class DistributionAlignment(nn.Module):
    """``p~ = normalise(p * (pi_target + eps) / (p_model + eps))`` with ``p_model`` an EMA of the mean prediction.

    Input: weak-view probabilities ``(B, C)`` or ``(B, C, *spatial)`` (class dimension 1, rows summing
    to 1). Output: aligned probabilities of the same shape and dtype, renormalised over dimension 1.

    At every training call, first the running mean ``p_model`` ``(C,)`` is updated with the batch mean
    of ``probs`` (over the batch and, for maps, every position; summed over all ranks under
    ``torch.distributed``, so every rank holds the same ``p_model``):
    ``p_model <- m p_model + (1 - m) mean(probs)``, the first batch setting it directly. Then the
    probabilities are aligned with the updated mean, as in USB's ``DistAlignEMAHook``
    (``eps = 1e-6``). The state is ``p_model`` and whether it was set, both buffers (checkpointed).

    Args:
        num_classes: ``C``.
        momentum: EMA momentum ``m`` of ``p_model`` (0.999 in USB).
        target: the target distribution ``pi_target``: ``"uniform"`` (``1 / C``), ``"labeled"`` (the
            labeled class prior ``n_c / N`` from ``class_counts``) or a list of ``C`` non-negative
            numbers (normalised).
        class_counts: labeled images per class ``(C,)``, for ``target="labeled"``.
        eps: the ``eps`` of the ratio.
    """

    def __init__(
        self,
        num_classes: int,
        momentum: float = 0.999,
        target: str | Sequence[float] = "uniform",
        class_counts: Sequence[float] | None = None,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"DistributionAlignment needs at least 2 classes, got {num_classes}.")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}.")
        self.num_classes = int(num_classes)
        self.momentum = float(momentum)
        self.eps = float(eps)
        if isinstance(target, str):
            if target == "uniform":
                p_target = torch.full((self.num_classes,), 1.0 / self.num_classes)
            elif target == "labeled":
                if class_counts is None:
                    raise ValueError("target='labeled' needs class_counts (the labeled images per class).")
                p_target = torch.as_tensor(class_counts, dtype=torch.float64).reshape(-1)
            else:
                raise ValueError(
                    f"target must be 'uniform', 'labeled' or a list of {num_classes} numbers, got {target!r}."
                )
        else:
            p_target = torch.as_tensor(target, dtype=torch.float64).reshape(-1)
        if p_target.numel() != self.num_classes or bool((p_target < 0).any()) or float(p_target.sum()) <= 0:
            raise ValueError(f"the target needs {self.num_classes} non-negative values with a positive sum.")
        self.register_buffer("p_target", (p_target / p_target.sum()).float())
        self.register_buffer("p_model", torch.full((self.num_classes,), 1.0 / self.num_classes))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update(self, probs: torch.Tensor) -> None:
        """Move ``p_model`` towards the mean of ``probs`` ``(B, C, *spatial)`` over all ranks."""
        p = probs.detach().float().movedim(1, -1).reshape(-1, self.num_classes)
        # sum and count, not a mean: every rank joins the reduction, even with an empty batch
        stats = torch.cat([p.sum(dim=0), p.new_tensor([p.shape[0]])]).to(self.p_model.device)
        stats = all_reduce_sum(stats)
        count = float(stats[-1])
        if count == 0:
            return
        mean = stats[:-1] / count
        if bool(self.initialised):
            self.p_model.mul_(self.momentum).add_(mean, alpha=1.0 - self.momentum)
        else:
            self.p_model.copy_(mean)
            self.initialised.fill_(True)

    @torch.no_grad()
    def align(self, probs: torch.Tensor) -> torch.Tensor:
        """``probs`` times ``(pi_target + eps) / (p_model + eps)``, renormalised over dimension 1 (no update)."""
        shape = [1, self.num_classes] + [1] * (probs.ndim - 2)
        ratio = ((self.p_target + self.eps) / (self.p_model + self.eps)).to(probs.device).view(shape)
        aligned = probs.detach().float() * ratio
        return (aligned / aligned.sum(dim=1, keepdim=True)).to(probs.dtype)

    def forward(self, probs: torch.Tensor, update: bool | None = None) -> torch.Tensor:
        """Update ``p_model`` (by default in training mode only) and return the aligned ``probs``."""
        if probs.ndim < 2 or probs.shape[1] != self.num_classes:
            raise ValueError(
                f"DistributionAlignment expects probabilities (B, {self.num_classes}, *spatial), "
                f"got shape {tuple(probs.shape)}."
            )
        if self.training if update is None else update:
            self.update(probs)
        return self.align(probs)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, momentum={self.momentum}"
