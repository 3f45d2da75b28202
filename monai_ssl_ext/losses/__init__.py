"""Losses: supervised task losses and the unlabeled-data consistency losses."""

from .calibration import prototype_alignment_loss, weighted_soft_cross_entropy
from .consistency import masked_cross_entropy, masked_dice_loss, softmax_mse
from .healthy_anomaly_margin import HealthyAnomalyMarginLoss
from .inter_task import inter_task_consistency
from .ntxent import NTXentLoss
from .pixel_contrast import PixelContrastLoss
from .preference_ranking import PreferenceRankingLoss, healthy_reference
from .pseudo_label_contrast import pseudo_label_contrast
from .severity_representation import severity_representation_loss
from .supcon import SupConLoss
from .supervised import ClassBalance, TaskLoss, class_prior, inverse_frequency_weights, mask_to_index

__all__ = [
    "ClassBalance",
    "HealthyAnomalyMarginLoss",
    "NTXentLoss",
    "PixelContrastLoss",
    "PreferenceRankingLoss",
    "SupConLoss",
    "TaskLoss",
    "class_prior",
    "healthy_reference",
    "inter_task_consistency",
    "inverse_frequency_weights",
    "mask_to_index",
    "masked_cross_entropy",
    "masked_dice_loss",
    "prototype_alignment_loss",
    "pseudo_label_contrast",
    "severity_representation_loss",
    "softmax_mse",
    "weighted_soft_cross_entropy",
]
