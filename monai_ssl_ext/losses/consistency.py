"""Unlabeled-data losses shared by the semi-supervised algorithms.

All functions treat dimension 1 as the class dimension, so the same call serves image-level
outputs ``(B, C)`` and pixel-level outputs ``(B, C, H, W)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["masked_cross_entropy", "masked_dice_loss", "softmax_mse"]


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


def masked_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    include_background: bool = False,
    smooth: float = 1e-5,
) -> torch.Tensor:
    """Soft Dice loss restricted to accepted pixels: the unlabeled segmentation loss of Hermes (arXiv 2508.02265).

    With ``p = softmax(logits)``, ``t`` the one-hot pseudo labels and ``m`` the pixel weights, sums run
    over the batch and all pixels together (one Dice per class for the whole batch)::

        dice_k = (2 sum(p_k t_k m) + smooth) / (sum(p_k m) + sum(t_k m) + smooth)
        loss = 1 - mean_k dice_k          (k >= 1 unless include_background)

    Args:
        logits: ``(B, K, H, W)`` segmentation logits (usually of the strong view).
        target: ``(B, H, W)`` (or ``(B, 1, H, W)``) long pseudo labels; values outside ``[0, K)``
            (an ignore index) count as rejected.
        mask: ``(B, H, W)`` weights in [0, 1], 1 where the pseudo label is accepted; ``None`` for all.
        include_background: also average the Dice of class 0.
        smooth: added to numerator and denominator, so a class absent from both prediction and
            target on the accepted pixels scores a Dice of 1.

    Returns a scalar, a graph-connected 0 when no pixel is accepted.
    """
    if target.ndim == logits.ndim and target.shape[1] == 1:
        target = target[:, 0]
    num_classes = logits.shape[1]
    first = 0 if include_background else 1
    if num_classes <= first:
        raise ValueError(f"no class left to score: {num_classes} channel(s), include_background={include_background}.")
    target = target.to(logits.device).long()
    weight = torch.ones_like(target, dtype=logits.dtype) if mask is None else mask.to(logits.dtype)
    in_range = (target >= 0) & (target < num_classes)
    weight = weight * in_range.to(logits.dtype)
    if not bool((weight > 0).any()):
        return logits.sum() * 0.0
    probs = F.softmax(logits, dim=1)
    onehot = F.one_hot(target.clamp(0, num_classes - 1), num_classes).movedim(-1, 1).to(logits.dtype)
    weight = weight.unsqueeze(1)
    dims = [0, *range(2, logits.ndim)]
    inter = (probs * onehot * weight).sum(dim=dims)
    denom = (probs * weight).sum(dim=dims) + (onehot * weight).sum(dim=dims)
    dice = (2.0 * inter + smooth) / (denom + smooth)
    return 1.0 - dice[first:].mean()


def softmax_mse(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared difference of class probabilities: Mean Teacher's consistency (Tarvainen & Valpola 2017, eq. 2).

    ``J = mean_{i, c} (softmax(s_i)_c - softmax(t_i)_c)^2``; gradients flow into ``student_logits``
    only (the teacher's probabilities are a constant target). With per-sample ``weights`` ``(B,)``:
    ``J = 1/B sum_i w_i mean_c (...)^2`` (the unweighted value when every weight is 1); the weights may
    carry a gradient of their own (a meta-learnt reweighting differentiates through them).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} shapes differ"
        )
    if weights is None:
        return F.mse_loss(F.softmax(student_logits, dim=1), F.softmax(teacher_logits.detach(), dim=1))
    squared = (F.softmax(student_logits, dim=1) - F.softmax(teacher_logits.detach(), dim=1)).square()
    per_sample = squared.flatten(1).mean(dim=1)
    return (weights.to(per_sample.dtype) * per_sample).mean()
