"""Supervised losses for the labeled batch of a joint classification + segmentation task."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

from monai_ssl_ext.keys import DataKeys, OutputKeys

__all__ = ["TaskLoss", "mask_to_index"]


def mask_to_index(mask: torch.Tensor) -> torch.Tensor:
    """A ``(B, 1, H, W)`` binary/label mask as a ``(B, H, W)`` long tensor of class indices."""
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    return (mask > 0.5).long() if mask.is_floating_point() else mask.long()


class TaskLoss(nn.Module):
    """Supervised loss over the tasks a network predicts: ``w_cls * CE + w_seg * (Dice + CE)``.

    Input: the network's output dict (``class`` ``(B, C)``, optional ``seg`` ``(B, K, H, W)``) and the
    labeled batch (``label`` ``(B,)``, optional ``mask`` ``(B, 1, H, W)``). Segmentation is supervised
    only when the network predicts it and the batch carries masks.

    Args:
        class_weight: weight of the classification cross-entropy.
        seg_weight: weight of the segmentation Dice + cross-entropy.
        label_smoothing: label smoothing of the classification cross-entropy.
    """

    def __init__(self, class_weight: float = 1.0, seg_weight: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.class_weight = class_weight
        self.seg_weight = seg_weight
        self.label_smoothing = label_smoothing
        self.dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, include_background=True)

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the weighted total and, when both tasks are supervised, the per-task terms."""
        terms: dict[str, torch.Tensor] = {}
        total = None
        if OutputKeys.CLASS in outputs and DataKeys.LABEL in batch:
            target = torch.as_tensor(batch[DataKeys.LABEL], device=outputs[OutputKeys.CLASS].device).long().view(-1)
            terms["loss_sup_cls"] = F.cross_entropy(
                outputs[OutputKeys.CLASS], target, label_smoothing=self.label_smoothing
            )
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
