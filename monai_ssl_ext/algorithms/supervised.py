"""Supervised-only training on the labeled subset: the lower bound every method must beat."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from monai_ssl_ext.algorithms.base import SemiSupervisedAlgorithm, StepOutput
from monai_ssl_ext.keys import DataKeys

__all__ = ["Supervised"]


class Supervised(SemiSupervisedAlgorithm):
    """``L = L_sup(f(x_l), y_l)``: the labeled batch only; unlabeled data is not loaded.

    Same network, schedule and augmentation as the semi-supervised methods, so the difference in
    results is what the unlabeled images bring.

    Args:
        num_classes: number of image classes.
        supervised_loss: loss on the labeled batch (default cross-entropy, plus Dice + CE for masks).
        class_balance: class-imbalance options of the default supervised loss.
        distribution_alignment: accepted for a uniform interface; without unlabeled data there are no
            pseudo labels to align, so it is not applied.
    """

    uses_unlabeled: ClassVar[bool] = False
    # reads only the class/seg outputs: the training-only projection heads of HermesNet or
    # JointClassSegNet(embed_dim) get no gradient
    find_unused_parameters = True

    def train_step(
        self, network: nn.Module, labeled: dict[str, Any], unlabeled: dict[str, Any] | None, step: int
    ) -> StepOutput:
        (out,) = self.forward_views(network, [labeled[DataKeys.IMAGE]])
        loss, terms = self.supervised_loss(out, labeled)
        return StepOutput(loss=loss, terms={"loss_sup": loss.detach(), **terms}, labeled_outputs=out)
