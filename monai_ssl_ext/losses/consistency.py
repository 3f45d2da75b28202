"""Unlabeled-data losses shared by the semi-supervised algorithms.

All functions treat dimension 1 as the class dimension, so the same call serves image-level
outputs ``(B, C)`` and pixel-level outputs ``(B, C, H, W)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["masked_cross_entropy", "softmax_mse"]


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``1/N sum_i mask_i * H(target_i, softmax(logits_i))``: FixMatch's unlabeled loss (Sohn et al. 2020, eq. 2).

    Args:
        logits: ``(B, C, *spatial)`` student logits (usually on the strong view).
        target: hard pseudo labels ``(B, *spatial)`` (long) or soft targets ``(B, C, *spatial)``.
        mask: weights ``(B, *spatial)`` in [0, 1], 1 where the pseudo label is used; ``None`` for all.

    The sum is divided by the number of elements ``N``, not by the number of accepted ones, so the
    loss grows as more pseudo labels pass the threshold, as in the paper.
    """
    if not target.is_floating_point():
        loss = F.cross_entropy(logits, target.long(), reduction="none")
    else:
        loss = -(target * F.log_softmax(logits, dim=1)).sum(dim=1)
    if mask is not None:
        loss = loss * mask.to(loss.dtype)
    return loss.mean()


def softmax_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of class probabilities: Mean Teacher's consistency (Tarvainen & Valpola 2017, eq. 2).

    ``J = mean_{i, c} (softmax(s_i)_c - softmax(t_i)_c)^2``; gradients flow into ``student_logits``
    only (the teacher's probabilities are a constant target).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} shapes differ"
        )
    return F.mse_loss(F.softmax(student_logits, dim=1), F.softmax(teacher_logits.detach(), dim=1))
