"""SoftMatch (Chen et al., ICLR 2023): truncated Gaussian sample weights and uniform alignment."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from monai_ssl_ext.algorithms.base import StepOutput
from monai_ssl_ext.algorithms.distribution_alignment import DistributionAlignment
from monai_ssl_ext.algorithms.fixmatch import FixMatch
from monai_ssl_ext.algorithms.thresholds import PseudoLabelSelector
from monai_ssl_ext.losses.supervised import ClassBalance
from monai_ssl_ext.utils.distributed import all_reduce_sum

__all__ = ["SoftMatch", "SoftMatchWeighting"]


class SoftMatchWeighting(PseudoLabelSelector):
    """SoftMatch's soft pseudo-label weights: a truncated Gaussian of the confidence.

    With ``p_b`` the weak-view probabilities ``(B, C)`` and momentum ``m``, each batch first updates
    the EMA estimates of the mean and variance of the confidence ``max_c p_b(c)`` and of the mean
    prediction::

        mu_t      = m * mu_{t-1}      + (1 - m) * mean_b max_c p_b(c)
        sigma2_t  = m * sigma2_{t-1}  + (1 - m) * var_b max_c p_b(c)      (unbiased, 1/(B-1))
        p_model_t = m * p_model_{t-1} + (1 - m) * mean_b p_b

    then weighs each sample by the truncated Gaussian (``lambda_max = 1``)::

        lambda(p) = 1                                                  if max p >= mu_t
                  = exp(-(max p - mu_t)^2 / (2 * sigma2_t / n_sigma^2))  otherwise

    where, with uniform alignment (UA, ``dist_align``), ``p = SumNorm(p_b * u / p_model_t)`` with ``u``
    the uniform distribution ``1/C``: the weights are computed on predictions rebalanced so that
    their mean moves towards uniform, which raises the weight of classes the model under-predicts.

    Choices, with their source:

    - ``mu = 1/C``, ``sigma2 = 1`` and ``p_model = 1/C`` at the start (the paper's TorchSSL code; USB
      starts ``p_model`` at the first batch's mean).
    - ``u`` uniform (the paper and USB's default; the TorchSSL code aligns to an EMA of the labeled
      batch's predictions instead).
    - UA enters only the weights: the pseudo label is the argmax of the unaligned prediction (both
      official implementations).
    - ``mu``, ``sigma2`` and ``p_model`` are estimated on the unaligned predictions, with the batch
      included before its weights are computed (the paper and TorchSSL; USB estimates ``mu`` and
      ``sigma2`` on the aligned predictions, a difference its authors acknowledge in USB issue #89).
    - ``n_sigma = 2``: both official implementations divide the variance by ``n_sigma^2 = 4``
      (TorchSSL hard-codes it; USB's ``n_sigma`` default is 2); ``n_sigma = 1`` is the paper's
      equation as printed.

    The batch statistics are summed over all ranks under ``torch.distributed`` (one all-reduce of the
    count, the sums of the confidences, of their squares and of the probabilities), so the state is
    the same on every rank, also with unequal batch sizes. A variance needs two samples in total:
    with fewer, ``sigma2`` keeps its value. The state lives in buffers (``mu``, ``sigma2``,
    ``p_model``), so ``state_dict()`` resumes it exactly.

    Args:
        num_classes: number of classes ``C``.
        momentum: EMA momentum ``m`` (0.999, paper and USB ``ema_p``).
        n_sigma: width divisor of the Gaussian (2.0, see above).
        dist_align: apply uniform alignment before weighting (True, paper and USB).
    """

    def __init__(
        self, num_classes: int, momentum: float = 0.999, n_sigma: float = 2.0, dist_align: bool = True
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"SoftMatchWeighting needs at least 2 classes, got {num_classes}.")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}.")
        if n_sigma <= 0:
            raise ValueError(f"n_sigma must be > 0, got {n_sigma}.")
        self.num_classes = int(num_classes)
        self.momentum = float(momentum)
        self.n_sigma = float(n_sigma)
        self.dist_align = bool(dist_align)
        self.register_buffer("mu", torch.tensor(1.0 / self.num_classes))
        self.register_buffer("sigma2", torch.tensor(1.0))
        self.register_buffer("p_model", torch.full((self.num_classes,), 1.0 / self.num_classes))

    @torch.no_grad()
    def update(self, probs: torch.Tensor) -> None:
        """One EMA step of ``mu``, ``sigma2`` and ``p_model`` with the probabilities ``(B, C)`` of all ranks."""
        p = probs.detach().to(torch.float64)
        confidence = p.max(dim=1).values
        stats = torch.cat(
            [
                p.new_tensor([float(p.shape[0])]),
                confidence.sum().reshape(1),
                confidence.square().sum().reshape(1),
                p.sum(dim=0),
            ]
        )
        # every rank joins the reduction, even with an empty batch
        stats = all_reduce_sum(stats)
        n, total, total_sq = stats[0], stats[1], stats[2]
        if n <= 0:
            return
        m = self.momentum
        mean = total / n
        self.mu.copy_(m * self.mu.double() + (1 - m) * mean)
        self.p_model.copy_(m * self.p_model.double() + (1 - m) * stats[3:] / n)
        if n >= 2:
            var = ((total_sq - n * mean * mean) / (n - 1)).clamp_min(0.0)
            self.sigma2.copy_(m * self.sigma2.double() + (1 - m) * var)

    def align(self, probs: torch.Tensor) -> torch.Tensor:
        """Uniform alignment ``SumNorm(p * u / p_model)`` of ``probs`` ``(B, C)`` with the current ``p_model``."""
        ratio = (1.0 / self.num_classes) / self.p_model.to(probs.dtype).clamp_min(1e-12)
        aligned = probs * ratio
        return aligned / aligned.sum(dim=1, keepdim=True)

    def weights(self, confidence: torch.Tensor) -> torch.Tensor:
        """``lambda`` of confidences ``(B,)``: 1 at or above ``mu``, the Gaussian below."""
        below = (confidence - self.mu.to(confidence.dtype)).clamp(max=0.0)
        scale = 2.0 * self.sigma2.to(confidence.dtype).clamp_min(1e-12) / self.n_sigma**2
        return torch.exp(-below.square() / scale)

    def thresholds(self) -> None:
        """No hard thresholds (``mu`` and ``sigma2`` are buffers)."""
        return None

    def forward(self, probs: torch.Tensor, indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Update the state with ``probs`` ``(B, C)``; return pseudo labels ``(B,)`` and weights ``(B,)`` in (0, 1]."""
        if probs.ndim != 2 or probs.shape[1] != self.num_classes:
            raise ValueError(
                f"SoftMatchWeighting works on image-level probabilities (B, {self.num_classes}), "
                f"got shape {tuple(probs.shape)}."
            )
        self.update(probs)
        with torch.no_grad():
            p = probs.detach().float()
            pseudo = p.argmax(dim=1)
            weighed = self.align(p) if self.dist_align else p
            weights = self.weights(weighed.max(dim=1).values)
        return pseudo, weights.to(probs.dtype)


class SoftMatch(FixMatch):
    """FixMatch with soft, confidence-dependent sample weights instead of a hard threshold.

    ``L = L_sup + lambda_u * 1/(mu B) sum_b lambda(p_b) H(argmax p_b, f(x_b^s))`` with ``p_b`` the
    softmax of the weak view and ``lambda`` the truncated Gaussian weight with uniform alignment of
    :class:`SoftMatchWeighting` (every sample contributes, the unconfident ones less). For networks
    with a segmentation output, pixel pseudo labels with FixMatch's fixed threshold ``seg_threshold``
    supervise the strong view's segmentation (the paper defines the weights for image labels), as in
    :class:`FlexMatch`.

    Batches: as in :class:`~monai_ssl_ext.algorithms.base.SemiSupervisedAlgorithm`. The step returns
    the image pseudo labels ``(B_u,)`` and their weights ``(B_u,)`` (all > 0); it logs ``mask_rate``
    (the mean weight, as USB's ``util_ratio``), ``full_weight_rate`` (share of weights equal to 1),
    ``mu`` and ``sigma`` (``sqrt(sigma2)``).

    Args:
        num_classes: number of image classes.
        momentum: EMA momentum of ``mu``, ``sigma2`` and ``p_model`` (0.999, paper and USB ``ema_p``).
        n_sigma: Gaussian width divisor (2.0, the official implementations; 1.0 for the printed equation).
        dist_align: uniform alignment before weighting (True, paper and USB).
        lambda_u: weight of the unlabeled loss (1.0, paper and USB).
        seg_threshold: per-pixel confidence threshold of segmentation pseudo labels (0.95, as FixMatch).
        supervised_loss: loss on the labeled batch.
        class_balance, distribution_alignment: as in :class:`FixMatch`.
    """

    # reads only the class/seg outputs: the training-only projection heads of HermesNet or
    # JointClassSegNet(embed_dim) get no gradient
    find_unused_parameters = True

    def __init__(
        self,
        num_classes: int,
        momentum: float = 0.999,
        n_sigma: float = 2.0,
        dist_align: bool = True,
        lambda_u: float = 1.0,
        seg_threshold: float = 0.95,
        supervised_loss: nn.Module | None = None,
        *,
        class_balance: ClassBalance | None = None,
        distribution_alignment: DistributionAlignment | None = None,
    ) -> None:
        super().__init__(
            num_classes,
            lambda_u=lambda_u,
            seg_threshold=seg_threshold,
            selector=SoftMatchWeighting(num_classes, momentum, n_sigma, dist_align),
            supervised_loss=supervised_loss,
            class_balance=class_balance,
            distribution_alignment=distribution_alignment,
        )
        self.momentum = float(momentum)
        self.n_sigma = float(n_sigma)
        self.dist_align = bool(dist_align)

    @property
    def weighting(self) -> SoftMatchWeighting:
        """The weighting selector (holds ``mu``, ``sigma2`` and ``p_model``)."""
        assert isinstance(self.selector, SoftMatchWeighting)
        return self.selector

    def train_step(
        self, network: nn.Module, labeled: dict[str, Any], unlabeled: dict[str, Any] | None, step: int
    ) -> StepOutput:
        out = super().train_step(network, labeled, unlabeled, step)
        if out.pseudo_mask is not None:
            out.logs["full_weight_rate"] = float((out.pseudo_mask >= 1.0).float().mean())
        out.logs["mu"] = float(self.weighting.mu)
        out.logs["sigma"] = float(self.weighting.sigma2.sqrt())
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, momentum={self.momentum}, n_sigma={self.n_sigma}, dist_align={self.dist_align}"
