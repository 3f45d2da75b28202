"""Losses: supervised task losses and the unlabeled-data consistency losses."""

from .consistency import masked_cross_entropy, masked_dice_loss, softmax_mse
from .contrastive import InterTaskConsistencyLoss, PixelContrastLoss, SupConLoss, inter_task_consistency
from .severity import (
    HealthyAnomalyMarginLoss,
    NTXentLoss,
    PreferenceRankingLoss,
    SeverityRepresentationLoss,
    healthy_reference,
    severity_representation_loss,
)
from .supervised import TaskLoss, mask_to_index

__all__ = [
    "HealthyAnomalyMarginLoss",
    "InterTaskConsistencyLoss",
    "NTXentLoss",
    "PixelContrastLoss",
    "PreferenceRankingLoss",
    "SeverityRepresentationLoss",
    "SupConLoss",
    "TaskLoss",
    "healthy_reference",
    "inter_task_consistency",
    "mask_to_index",
    "masked_cross_entropy",
    "masked_dice_loss",
    "severity_representation_loss",
    "softmax_mse",
]
