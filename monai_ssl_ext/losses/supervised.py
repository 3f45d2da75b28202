"""Supervised losses for the labeled batch of a joint classification + segmentation task."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

from monai_ssl_ext.keys import DataKeys, OutputKeys

__all__ = ["ClassBalance", "TaskLoss", "class_prior", "inverse_frequency_weights", "mask_to_index"]


def mask_to_index(mask: torch.Tensor) -> torch.Tensor:
    """A ``(B, 1, H, W)`` binary/label mask as a ``(B, H, W)`` long tensor of class indices."""
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    return (mask > 0.5).long() if mask.is_floating_point() else mask.long()


def class_prior(class_counts: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """``pi_c = n_c / sum_c' n_c'`` ``(C,)`` (float32) from per-class counts; an empty class counts as 1.

    The pseudo-count keeps ``log pi_c`` finite for a class without a labeled image.
    """
    counts = torch.as_tensor(class_counts, dtype=torch.float64).reshape(-1)
    if counts.numel() == 0 or bool((counts < 0).any()):
        raise ValueError(f"class_counts must be a non-empty list of counts >= 0, got {class_counts}.")
    counts = counts.clamp_min(1.0)
    return (counts / counts.sum()).float()


def inverse_frequency_weights(class_counts: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """``w_c = N / (C n_c)`` ``(C,)``: inverse class frequency, scaled so that the mean weight per counted sample is 1.

    (scikit-learn's ``class_weight="balanced"``; an empty class counts as 1.)
    """
    prior = class_prior(class_counts)
    return 1.0 / (prior * prior.numel())


@dataclass(frozen=True)
class ClassBalance:
    """The class-imbalance options of the supervised classification loss, one switch for every algorithm.

    Bundle configs build one from their settings and :func:`monai_ssl_ext.algorithms.choose` hands it
    to the chosen algorithm, whose default supervised loss (:class:`TaskLoss`) then takes these options;
    the algorithm's own loss settings (Hermes' task weights...) are kept.

    Attributes:
        class_weights: per-class weights of the cross-entropy: a list ``(C,)``, ``"inverse_frequency"``
            or ``None`` (off); see :class:`TaskLoss`.
        logit_adjustment_tau: ``tau`` of the logit-adjusted loss (``0``: off); see :class:`TaskLoss`.
        class_counts: labeled images per class ``(C,)``, index order (``"inverse_frequency"`` and the
            logit adjustment read it). Alone it changes nothing.
    """

    class_weights: str | Sequence[float] | None = None
    logit_adjustment_tau: float = 0.0
    class_counts: Sequence[int] | None = None

    def __post_init__(self) -> None:
        # tuples: the options cannot change after construction (lists from a config are copied)
        if self.class_weights is not None and not isinstance(self.class_weights, str):
            object.__setattr__(self, "class_weights", tuple(float(w) for w in self.class_weights))
        if self.class_counts is not None:
            object.__setattr__(self, "class_counts", tuple(int(n) for n in self.class_counts))
        object.__setattr__(self, "logit_adjustment_tau", float(self.logit_adjustment_tau))

    @property
    def active(self) -> bool:
        """Whether an option changes the loss (class weights or a non-zero ``tau``)."""
        return self.class_weights is not None or self.logit_adjustment_tau != 0.0

    def loss_options(self) -> dict[str, Any]:
        """The keyword arguments of :class:`TaskLoss` for these options (none when inactive)."""
        if not self.active:
            return {}
        return {
            "class_weights": self.class_weights,
            "class_counts": self.class_counts,
            "logit_adjustment_tau": self.logit_adjustment_tau,
        }


class TaskLoss(nn.Module):
    """Supervised loss over the tasks a network predicts: ``w_cls * CE + w_seg * (Dice + CE)``.

    Input: the network's output dict (``class`` ``(B, C)``, optional ``seg`` ``(B, K, H, W)``) and the
    labeled batch (``label`` ``(B,)``, optional ``mask`` ``(B, 1, H, W)``). Segmentation is supervised
    only when the network predicts it and the batch carries masks.

    Args:
        class_weight: weight of the classification cross-entropy.
        seg_weight: weight of the segmentation Dice + cross-entropy.
        label_smoothing: label smoothing of the classification cross-entropy.
        class_weights: per-class weights ``w_c`` of the classification cross-entropy, against class
            imbalance: a list ``(C,)``, ``"inverse_frequency"`` (``w_c = N / (C n_c)`` from
            ``class_counts``, see :func:`inverse_frequency_weights`) or ``None`` (off). The batch loss
            is then ``sum_i w_{y_i} l_i / sum_i w_{y_i}`` (PyTorch's weighted mean), so only the
            relative weights matter. Not to be confused with ``class_weight``, the weight of the task.
        class_counts: labeled images per class ``(C,)`` (index order), for ``"inverse_frequency"`` and
            the logit adjustment.
        logit_adjustment_tau: ``tau`` of the logit-adjusted loss (Menon et al., ICLR 2021, eq. 10):
            the cross-entropy is taken of ``logits + tau * log(pi)``, ``pi`` the labeled class prior
            from ``class_counts``. Only the training loss is adjusted; the network's predictions (and
            so validation and inference) are not. ``0`` (default) is off; ``1`` is the paper's choice.

    Both imbalance options affect the classification term only (not segmentation).
    """

    def __init__(
        self,
        class_weight: float = 1.0,
        seg_weight: float = 1.0,
        label_smoothing: float = 0.0,
        class_weights: Sequence[float] | str | None = None,
        class_counts: Sequence[float] | None = None,
        logit_adjustment_tau: float = 0.0,
    ) -> None:
        super().__init__()
        self.class_weight = class_weight
        self.seg_weight = seg_weight
        self.label_smoothing = label_smoothing
        self.dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, include_background=True)
        self.logit_adjustment_tau = float(logit_adjustment_tau)
        # non-persistent: the state dict, and so checkpoints of the algorithm, are unchanged
        weights = None
        if isinstance(class_weights, str):
            if class_weights != "inverse_frequency":
                raise ValueError(f"class_weights must be a list, 'inverse_frequency' or None, got {class_weights!r}.")
            if class_counts is None:
                raise ValueError("class_weights='inverse_frequency' needs class_counts.")
            weights = inverse_frequency_weights(class_counts)
        elif class_weights is not None:
            weights = torch.as_tensor(class_weights, dtype=torch.float32).reshape(-1)
            if weights.numel() == 0 or bool((weights < 0).any()):
                raise ValueError(f"class_weights must be non-negative, got {class_weights}.")
        self.register_buffer("ce_weights", weights, persistent=False)
        offset = None
        if self.logit_adjustment_tau != 0.0:
            if class_counts is None:
                raise ValueError("logit_adjustment_tau needs class_counts (the labeled images per class).")
            offset = self.logit_adjustment_tau * class_prior(class_counts).log()
        self.register_buffer("logit_offset", offset, persistent=False)

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the weighted total and, when both tasks are supervised, the per-task terms."""
        terms: dict[str, torch.Tensor] = {}
        total = None
        if OutputKeys.CLASS in outputs and DataKeys.LABEL in batch:
            target = torch.as_tensor(batch[DataKeys.LABEL], device=outputs[OutputKeys.CLASS].device).long().view(-1)
            if self.ce_weights is None and self.logit_offset is None:
                terms["loss_sup_cls"] = F.cross_entropy(
                    outputs[OutputKeys.CLASS], target, label_smoothing=self.label_smoothing
                )
            else:
                terms["loss_sup_cls"] = self.imbalance_cross_entropy(outputs[OutputKeys.CLASS], target)
            total = self.class_weight * terms["loss_sup_cls"]
        if OutputKeys.SEG in outputs and batch.get(DataKeys.MASK) is not None:
            target = mask_to_index(batch[DataKeys.MASK]).unsqueeze(1)
            terms["loss_sup_seg"] = self.dice_ce(outputs[OutputKeys.SEG], target)
            seg = self.seg_weight * terms["loss_sup_seg"]
            total = seg if total is None else total + seg
        if len(terms) == 1:
            terms = {}  # one task: its term is the total, already reported as loss_sup
        if total is None:
            raise ValueError(
                f"no supervised target matches the network outputs {sorted(outputs)} "
                f"(batch keys {sorted(k for k in batch if isinstance(k, str))})"
            )
        return total, terms

    def imbalance_cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of ``logits + tau log(pi)`` ``(B, C)`` with the class weights, when set."""
        num_classes = int(logits.shape[1])
        for name, value in (("class_weights", self.ce_weights), ("class_counts", self.logit_offset)):
            if value is not None and value.numel() != num_classes:
                raise ValueError(f"{name} has {value.numel()} classes, the network predicts {num_classes}.")
        if self.logit_offset is not None:
            logits = logits + self.logit_offset.to(device=logits.device, dtype=logits.dtype)
        weight = None if self.ce_weights is None else self.ce_weights.to(device=logits.device, dtype=logits.dtype)
        return F.cross_entropy(logits, target, weight=weight, label_smoothing=self.label_smoothing)
