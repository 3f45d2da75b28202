"""FlexMatch (Zhang et al., NeurIPS 2021): FixMatch with curriculum pseudo labelling."""

from __future__ import annotations

from torch import nn

from monai_ssl_ext.algorithms.distribution_alignment import DistributionAlignment
from monai_ssl_ext.algorithms.fixmatch import FixMatch
from monai_ssl_ext.algorithms.thresholds import FlexMatchThreshold
from monai_ssl_ext.losses.supervised import ClassBalance

__all__ = ["FlexMatch"]


class FlexMatch(FixMatch):
    """FixMatch whose fixed threshold is replaced by class-wise flexible thresholds.

    ``L = L_sup + lambda_u * 1/(mu B) sum_b 1[max q_b >= T_{argmax q_b}] H(argmax q_b, f(x_b^s))`` with
    ``T_c = M(beta_c) * tau`` from each class's learning status (eq. 6-8, 11 of the paper; see
    :class:`~monai_ssl_ext.algorithms.thresholds.FlexMatchThreshold`). Segmentation outputs keep
    FixMatch's fixed per-pixel threshold (the paper defines the curriculum for image labels).

    Args:
        num_classes: number of image classes.
        threshold: upper threshold ``tau``.
        warmup: threshold warm-up (count unused samples in the normaliser).
        lambda_u, temperature, seg_threshold, supervised_loss, class_balance, distribution_alignment: as
            in :class:`FixMatch`.
    """

    def __init__(
        self,
        num_classes: int,
        threshold: float = 0.95,
        warmup: bool = True,
        lambda_u: float = 1.0,
        temperature: float = 1.0,
        seg_threshold: float = 0.95,
        supervised_loss: nn.Module | None = None,
        *,
        class_balance: ClassBalance | None = None,
        distribution_alignment: DistributionAlignment | None = None,
    ) -> None:
        super().__init__(
            num_classes,
            threshold=threshold,
            lambda_u=lambda_u,
            temperature=temperature,
            seg_threshold=seg_threshold,
            supervised_loss=supervised_loss,
            class_balance=class_balance,
            distribution_alignment=distribution_alignment,
        )
        self.warmup = warmup

    def setup(self, network: nn.Module, total_steps: int, num_unlabeled: int | None = None) -> None:
        super().setup(network, total_steps, num_unlabeled)
        if not num_unlabeled:
            raise ValueError("FlexMatch needs the size of the unlabeled set; the trainer passes it from its loader.")
        device = next(network.parameters()).device
        self.selector = FlexMatchThreshold(self.num_classes, num_unlabeled, self.threshold, self.warmup).to(device)
