"""CLCP-MT: labeled-data contrastive learning and class-adaptive pseudo labels on Mean Teacher (Yang et al. 2025)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from monai_ssl_ext.algorithms.base import StepOutput
from monai_ssl_ext.algorithms.capr import ClassAdaptiveThreshold
from monai_ssl_ext.algorithms.distribution_alignment import DistributionAlignment
from monai_ssl_ext.algorithms.mean_teacher import MeanTeacher
from monai_ssl_ext.algorithms.schedules import RampUp
from monai_ssl_ext.algorithms.thresholds import FixedThreshold, PseudoLabelSelector
from monai_ssl_ext.keys import DataKeys, OutputKeys
from monai_ssl_ext.losses.consistency import masked_cross_entropy, softmax_mse
from monai_ssl_ext.losses.supcon import SupConLoss
from monai_ssl_ext.losses.supervised import ClassBalance
from monai_ssl_ext.networks.heads import as_output_dict

__all__ = ["CLCPMT"]


class CLCPMT(MeanTeacher):
    """Mean Teacher with a supervised contrastive loss on the labeled images and class-adaptive pseudo labels.

    ``L = L_sup + w(t) L_MT + lambda_u L_CAPR + lambda_s L_SDE`` where

    - ``L_MT = mean_u || softmax(f_theta(x_u^s)) - softmax(f_theta'(x_u^w)) ||^2``: Mean Teacher's consistency
      between the student on the strong view and the EMA teacher on the weak view (:class:`MeanTeacher`).
    - ``L_CAPR = 1/B sum_b m_b H(argmax q_b, f_theta(x_b^s))``: the teacher's pseudo labels ``q = softmax(
      f_theta'(x^w))`` train the student's strong view where ``max q_b`` reaches the threshold of its class,
      ``m_b = 1[max q_b >= T_{argmax q_b}(t)]`` (:class:`ClassAdaptiveThreshold`: the thresholds follow each
      class's learning progress, lower for lagging tail classes, and start equal).
    - ``L_SDE``: the supervised contrastive loss (Khosla et al. 2020; :class:`~monai_ssl_ext.losses.SupConLoss`,
      the one Hermes uses) on the labeled images' projected embeddings. The paper's SDE module names the loss
      and restricts it to labeled data; which two views it contrasts is not stated. Ours: the student's
      embedding of each labeled image and the teacher's embedding of the same image (detached), so every
      anchor has at least one positive even in a batch with one image per class.

    The network returns a dict with ``class`` and ``embedding`` (``Classifier(return_dict=True,
    embed_dim=...)``); with ``use_sde=False`` any network of the baselines works. ``use_capr=False``
    replaces the class-adaptive thresholds with a fixed one at ``threshold`` (the ablation "CAPR off").
    The thresholds' state (progress per class, ramp step) is a submodule, saved in checkpoints and the same
    on every rank; the teacher is saved as :class:`MeanTeacher`'s is.

    Args:
        num_classes: number of image classes.
        ema_decay: teacher EMA decay (0.99, as :class:`MeanTeacher`).
        consistency: ramp-up of the Mean Teacher consistency weight (default: as :class:`MeanTeacher`).
        lambda_u: weight of ``L_CAPR`` (1.0).
        lambda_s: weight of ``L_SDE`` (0.1).
        sde_temperature: SupCon temperature (0.07, as SupCon and Hermes).
        threshold: ``tau``, the bar of a learnt class (and the fixed bar without CAPR) (0.95).
        min_threshold: the lowest class bar (0.5).
        progress_momentum: momentum of the per-class progress (0.99).
        threshold_rampup: share of the run over which the bars become class-adaptive (0.2).
        progress_measure: what CAPR reads as a class's learning progress: ``"confidence"`` (the mean confidence
            of the teacher's predictions of the class) or ``"confident_share"`` (FlexMatch's learning effect);
            see :class:`ClassAdaptiveThreshold`.
        use_sde, use_capr: the two components (both on).
        supervised_loss, class_balance: as in :class:`MeanTeacher`.
        distribution_alignment: applied to the teacher's probabilities before the pseudo labels are chosen.
    """

    find_unused_parameters = True

    def __init__(
        self,
        num_classes: int,
        ema_decay: float = 0.99,
        consistency: RampUp | None = None,
        lambda_u: float = 1.0,
        lambda_s: float = 0.1,
        sde_temperature: float = 0.07,
        threshold: float = 0.95,
        min_threshold: float = 0.5,
        progress_momentum: float = 0.99,
        threshold_rampup: float = 0.2,
        progress_measure: str = "confidence",
        use_sde: bool = True,
        use_capr: bool = True,
        supervised_loss: nn.Module | None = None,
        *,
        class_balance: ClassBalance | None = None,
        distribution_alignment: DistributionAlignment | None = None,
    ) -> None:
        super().__init__(
            num_classes,
            ema_decay=ema_decay,
            consistency=consistency,
            supervised_loss=supervised_loss,
            class_balance=class_balance,
            distribution_alignment=distribution_alignment,
        )
        self.lambda_u = float(lambda_u)
        self.lambda_s = float(lambda_s)
        self.use_sde = bool(use_sde)
        self.use_capr = bool(use_capr)
        self.sde_loss = SupConLoss(temperature=sde_temperature)
        self.selector: PseudoLabelSelector = (
            ClassAdaptiveThreshold(
                num_classes, threshold, min_threshold, progress_momentum, threshold_rampup, progress_measure
            )
            if use_capr
            else FixedThreshold(threshold)
        )

    def train_step(
        self, network: nn.Module, labeled: dict[str, Any], unlabeled: dict[str, Any] | None, step: int
    ) -> StepOutput:
        if self.teacher is None:
            raise RuntimeError("CLCPMT.setup() must run before training (the trainer calls it).")
        if unlabeled is None:
            raise ValueError("CLCPMT needs an unlabeled batch.")
        images_l = labeled[DataKeys.IMAGE]
        out_l, out_s = self.forward_views(network, [images_l, unlabeled[DataKeys.IMAGE_STRONG]])
        with torch.no_grad():
            # the teacher's view of the labeled images is SDE's second view; one forward pass for both inputs
            teacher_inputs = (
                [unlabeled[DataKeys.IMAGE_WEAK], images_l] if self.use_sde else [unlabeled[DataKeys.IMAGE_WEAK]]
            )
            out_t_all = self.forward_views(self.teacher, teacher_inputs)
        out_t = out_t_all[0]
        sup, terms = self.supervised_loss(out_l, labeled)
        consistency = softmax_mse(out_s[OutputKeys.CLASS], out_t[OutputKeys.CLASS])
        weight = self.consistency(step)

        if isinstance(self.selector, ClassAdaptiveThreshold):
            self.selector.set_step(step)
        probs = torch.softmax(out_t[OutputKeys.CLASS].float(), dim=1)
        probs = self.align_probabilities(OutputKeys.CLASS, probs)
        pseudo, mask = self.selector(probs, self.unlabeled_indices(unlabeled))
        capr = masked_cross_entropy(out_s[OutputKeys.CLASS], pseudo, mask)
        loss = sup + weight * consistency + self.lambda_u * capr
        extra: dict[str, torch.Tensor] = {}
        if self.use_sde:
            student_z, teacher_z = self.embeddings(out_l), self.embeddings(out_t_all[1])
            labels = torch.as_tensor(labeled[DataKeys.LABEL], device=student_z.device).long().view(-1)
            extra["loss_sde"] = self.sde_loss(torch.stack([student_z, teacher_z.detach()], dim=1), labels)
            loss = loss + self.lambda_s * extra["loss_sde"]
        logs = {"consistency_weight": weight, "mask_rate": float(mask.mean())}
        thresholds = self.selector.thresholds()
        if thresholds is not None:
            logs["threshold_mean"] = float(thresholds.mean())
            logs["threshold_min"] = float(thresholds.min())
        return StepOutput(
            loss=loss,
            terms={
                "loss_sup": sup.detach(),
                "loss_consistency": consistency.detach(),
                "loss_capr": capr.detach(),
                **{name: value.detach() for name, value in extra.items()},
                **terms,
            },
            logs=logs,
            labeled_outputs=out_l,
            pseudo_label=pseudo,
            pseudo_mask=mask,
        )

    @staticmethod
    def embeddings(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The network's ``embedding`` output ``(B, D)`` (SDE contrasts projections, not the classifier's features)."""
        z = as_output_dict(outputs).get(OutputKeys.EMBEDDING)
        if z is None:
            raise KeyError(
                "CLCP-MT's SDE needs the network's projected embeddings: a dict output with 'embedding' "
                "(Classifier(return_dict=True, embed_dim=...)); or set use_sde=False."
            )
        return z

    def extra_repr(self) -> str:
        parts = [name for name in ("sde", "capr") if getattr(self, f"use_{name}")]
        return f"{super().extra_repr()}, components={'+'.join(parts) or 'none'}"
