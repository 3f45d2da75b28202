"""FixMatch (Sohn et al., NeurIPS 2020)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from monai_ssl_ext.algorithms.base import SemiSupervisedAlgorithm, StepOutput
from monai_ssl_ext.algorithms.distribution_alignment import DistributionAlignment
from monai_ssl_ext.algorithms.thresholds import FixedThreshold, PseudoLabelSelector
from monai_ssl_ext.keys import DataKeys, OutputKeys
from monai_ssl_ext.losses.consistency import masked_cross_entropy
from monai_ssl_ext.losses.supervised import ClassBalance

__all__ = ["FixMatch"]


class FixMatch(SemiSupervisedAlgorithm):
    """Pseudo labels from the weak view, kept when confident, supervise the strong view.

    ``L = L_sup + lambda_u * 1/(mu B) sum_b 1[max q_b >= tau] H(argmax q_b, f(x_b^s))`` with
    ``q_b = softmax(f(x_b^w))`` (eq. 2 of the paper). The pseudo-label selection is a
    :class:`~monai_ssl_ext.algorithms.thresholds.PseudoLabelSelector` (a fixed ``tau`` here; FlexMatch
    swaps in class-wise thresholds). For networks with a segmentation output, pixel-level pseudo
    labels with the fixed threshold ``seg_threshold`` supervise the strong view's segmentation.

    Args:
        num_classes: number of image classes.
        threshold: confidence threshold ``tau`` (0.95).
        lambda_u: weight of the unlabeled loss.
        temperature: sharpening of the weak-view probabilities before thresholding (1 = none).
        seg_threshold: per-pixel confidence threshold for segmentation pseudo labels.
        selector: a custom pseudo-label selector (overrides ``threshold``).
        supervised_loss: loss on the labeled batch.
        class_balance, distribution_alignment: recipe switches shared by every method (see
            :class:`~monai_ssl_ext.algorithms.SemiSupervisedAlgorithm`); the alignment applies to the
            weak-view class probabilities before the selector.
    """

    # reads only the class/seg outputs: the training-only projection heads of HermesNet or
    # JointClassSegNet(embed_dim) get no gradient
    find_unused_parameters = True

    def __init__(
        self,
        num_classes: int,
        threshold: float = 0.95,
        lambda_u: float = 1.0,
        temperature: float = 1.0,
        seg_threshold: float = 0.95,
        selector: PseudoLabelSelector | None = None,
        supervised_loss: nn.Module | None = None,
        *,
        class_balance: ClassBalance | None = None,
        distribution_alignment: DistributionAlignment | None = None,
    ) -> None:
        super().__init__(
            num_classes, supervised_loss, class_balance=class_balance, distribution_alignment=distribution_alignment
        )
        self.threshold = float(threshold)
        self.lambda_u = float(lambda_u)
        self.temperature = float(temperature)
        self.selector: PseudoLabelSelector = selector if selector is not None else FixedThreshold(threshold)
        self.seg_selector = FixedThreshold(seg_threshold)

    def select(self, task: str, probs: torch.Tensor, indices: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        selector = self.selector if task == OutputKeys.CLASS else self.seg_selector
        return selector(probs, indices)

    def extra_unlabeled_loss(
        self, logits_strong: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        """A further image-level unlabeled term of a method built on FixMatch's step (none here).

        Args:
            logits_strong: class logits of the strong views ``(B_u, C)``.
            mask: the pseudo-label mask or weights ``(B_u,)`` of this step.

        Returns:
            ``None``, or the weighted term added to the loss and its unweighted parts, by name, for logging.
        """
        return None

    def train_step(
        self, network: nn.Module, labeled: dict[str, Any], unlabeled: dict[str, Any] | None, step: int
    ) -> StepOutput:
        if unlabeled is None:
            raise ValueError(f"{type(self).__name__} needs an unlabeled batch.")
        out_l, out_w, out_s = self.forward_views(
            network, [labeled[DataKeys.IMAGE], unlabeled[DataKeys.IMAGE_WEAK], unlabeled[DataKeys.IMAGE_STRONG]]
        )
        sup, terms = self.supervised_loss(out_l, labeled)
        indices = self.unlabeled_indices(unlabeled)
        unsup = torch.zeros((), device=sup.device)
        logs: dict[str, float] = {}
        pseudo_cls = mask_cls = None
        tasks = self.tasks(out_w)
        for task in tasks:
            probs = torch.softmax(out_w[task].detach().float() / self.temperature, dim=1)
            probs = self.align_probabilities(task, probs)
            valid = None
            if task == OutputKeys.SEG:
                probs, valid = self.to_strong_frame(probs, unlabeled)
            pseudo, mask = self.select(task, probs, indices)
            if valid is not None:
                mask = mask * valid.to(mask.dtype).reshape(mask.shape)
            term = masked_cross_entropy(out_s[task], pseudo, mask)
            if len(tasks) > 1:
                terms[f"loss_unsup_{task}"] = term.detach()
            logs[f"mask_rate_{task}" if task != OutputKeys.CLASS else "mask_rate"] = float(mask.mean())
            unsup = unsup + term
            if task == OutputKeys.CLASS:
                pseudo_cls, mask_cls = pseudo, mask
        thresholds = self.selector.thresholds()
        if thresholds is not None:
            logs["threshold_mean"] = float(thresholds.mean())
            logs["threshold_min"] = float(thresholds.min())
        loss = sup + self.lambda_u * unsup
        extra_terms: dict[str, torch.Tensor] = {}
        if pseudo_cls is not None:
            extra = self.extra_unlabeled_loss(out_s[OutputKeys.CLASS], mask_cls)
            if extra is not None:
                weighted, extra_terms = extra
                loss = loss + weighted
        return StepOutput(
            loss=loss,
            terms={"loss_sup": sup.detach(), "loss_unsup": unsup.detach(), **extra_terms, **terms},
            logs=logs,
            labeled_outputs=out_l,
            pseudo_label=pseudo_cls,
            pseudo_mask=mask_cls,
        )
