"""Losses: supervised task losses and the unlabeled-data consistency losses."""

from .consistency import masked_cross_entropy, softmax_mse
from .supervised import TaskLoss, mask_to_index

__all__ = ["TaskLoss", "mask_to_index", "masked_cross_entropy", "softmax_mse"]
