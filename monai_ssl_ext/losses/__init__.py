"""Losses: supervised task losses and the unlabeled-data consistency losses."""

from .consistency import masked_cross_entropy, masked_dice_loss, softmax_mse
from .contrastive import InterTaskConsistencyLoss, PixelContrastLoss, SupConLoss, inter_task_consistency
from .supervised import TaskLoss, mask_to_index

__all__ = [
    "InterTaskConsistencyLoss",
    "PixelContrastLoss",
    "SupConLoss",
    "TaskLoss",
    "inter_task_consistency",
    "mask_to_index",
    "masked_cross_entropy",
    "masked_dice_loss",
    "softmax_mse",
]
