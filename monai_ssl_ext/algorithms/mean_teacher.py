"""Mean Teacher (Tarvainen & Valpola, NeurIPS 2017)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from monai_ssl_ext.algorithms.base import SemiSupervisedAlgorithm, StepOutput
from monai_ssl_ext.algorithms.distribution_alignment import DistributionAlignment
from monai_ssl_ext.algorithms.ema import EMATeacher
from monai_ssl_ext.algorithms.schedules import RampUp
from monai_ssl_ext.keys import DataKeys, OutputKeys
from monai_ssl_ext.losses.consistency import softmax_mse
from monai_ssl_ext.losses.supervised import ClassBalance
from monai_ssl_ext.networks.heads import as_output_dict

__all__ = ["MeanTeacher"]


class MeanTeacher(SemiSupervisedAlgorithm):
    """Consistency between the student and an EMA teacher on differently augmented views.

    ``L = L_sup(f_theta(x_l), y_l) + w(t) * mean_u || softmax(f_theta(x_u^s)) - softmax(f_theta'(x_u^w)) ||^2``

    (eq. 2 of the paper), with ``theta'`` the EMA of ``theta`` (eq. 1, :class:`EMATeacher`) and
    ``w(t)`` a sigmoid ramp-up. The teacher sees the weak view and the student the strong view: the
    two inputs must differ, or the consistency is identically zero (a bug that has shipped in a
    widely used library). For networks with a segmentation output the same cost is applied per pixel.

    Args:
        num_classes: number of image classes.
        ema_decay: teacher EMA decay (0.99 in the paper's small-data runs, 0.999 late in training).
        consistency: ramp-up of the consistency weight (default: sigmoid to 10 over 40 % of the run).
        supervised_loss: loss on the labeled batch.
        class_balance: class-imbalance options of the default supervised loss.
        distribution_alignment: accepted for a uniform interface; Mean Teacher makes no pseudo labels
            (its consistency target is the teacher's full prediction), so it is not applied.
    """

    # reads only the class/seg outputs: the training-only projection heads of HermesNet or
    # JointClassSegNet(embed_dim) get no gradient
    find_unused_parameters = True

    def __init__(
        self,
        num_classes: int,
        ema_decay: float = 0.99,
        consistency: RampUp | None = None,
        supervised_loss: nn.Module | None = None,
        *,
        class_balance: ClassBalance | None = None,
        distribution_alignment: DistributionAlignment | None = None,
    ) -> None:
        super().__init__(
            num_classes, supervised_loss, class_balance=class_balance, distribution_alignment=distribution_alignment
        )
        self.ema_decay = float(ema_decay)
        self.consistency = consistency if consistency is not None else RampUp(max_value=10.0, fraction=0.4)
        self.teacher: EMATeacher | None = None

    def setup(self, network: nn.Module, total_steps: int, num_unlabeled: int | None = None) -> None:
        super().setup(network, total_steps, num_unlabeled)
        self.teacher = EMATeacher(network, decay=self.ema_decay)

    def train_step(
        self, network: nn.Module, labeled: dict[str, Any], unlabeled: dict[str, Any] | None, step: int
    ) -> StepOutput:
        if self.teacher is None:
            raise RuntimeError("MeanTeacher.setup() must run before training (the trainer calls it).")
        if unlabeled is None:
            raise ValueError("MeanTeacher needs an unlabeled batch.")
        out_l, out_s = self.forward_views(network, [labeled[DataKeys.IMAGE], unlabeled[DataKeys.IMAGE_STRONG]])
        with torch.no_grad():
            out_t = as_output_dict(self.teacher(unlabeled[DataKeys.IMAGE_WEAK]))
        sup, terms = self.supervised_loss(out_l, labeled)
        if OutputKeys.SEG in out_s and unlabeled.get(DataKeys.STRONG_AFFINE) is not None:
            raise ValueError(
                "MeanTeacher's pixel consistency needs the weak and strong views in one geometry: use the "
                "profile's photometric strong view (strong_view='photometric') with a segmentation output."
            )
        consistency = sum(softmax_mse(out_s[task], out_t[task]) for task in self.tasks(out_s))
        weight = self.consistency(step)
        loss = sup + weight * consistency
        pseudo = mask = None
        if OutputKeys.CLASS in out_t:
            pseudo = out_t[OutputKeys.CLASS].argmax(dim=1)
            mask = torch.ones_like(pseudo, dtype=torch.float32)  # every unlabeled sample contributes
        return StepOutput(
            loss=loss,
            terms={"loss_sup": sup.detach(), "loss_consistency": consistency.detach(), **terms},
            logs={"consistency_weight": weight, "mask_rate": 1.0},
            labeled_outputs=out_l,
            pseudo_label=pseudo,
            pseudo_mask=mask,
        )

    def after_optimizer_step(self, network: nn.Module, step: int) -> None:
        assert self.teacher is not None
        self.teacher.update(network, step)
