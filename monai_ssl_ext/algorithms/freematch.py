"""FreeMatch (Wang et al., ICLR 2023): self-adaptive thresholding and self-adaptive fairness."""

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

__all__ = ["FreeMatch", "FreeMatchThreshold", "freematch_fairness_loss"]


class FreeMatchThreshold(PseudoLabelSelector):
    """FreeMatch's self-adaptive thresholds (SAT): a global threshold scaled per class.

    With ``q_b`` the weak-view probabilities ``(B, C)`` of the batch and momentum ``lambda``::

        tau_t      = lambda * tau_{t-1}      + (1 - lambda) * 1/B sum_b max_c q_b(c)      (global)
        p~_t(c)    = lambda * p~_{t-1}(c)    + (1 - lambda) * 1/B sum_b q_b(c)           (local)
        h_t(c)     = lambda * h_{t-1}(c)     + (1 - lambda) * 1/B sum_b 1[argmax q_b = c] (label histogram)
        tau_t(c)   = MaxNorm(p~_t)(c) * tau_t = p~_t(c) / max_c' p~_t(c') * tau_t
        mask_b     = 1[max_c q_b(c) >= tau_t(argmax_c q_b(c))]

    ``tau``, ``p~`` and ``h`` start at ``1/C`` (the paper and its TorchSSL code; USB starts ``p~`` and
    ``h`` at 1, which gives other early thresholds). As in both official implementations the state is
    updated with the current batch first, and the mask uses the updated thresholds. ``h`` is not used
    for the mask: :class:`FreeMatch`'s fairness loss reads it.

    The batch statistics are summed over all ranks under ``torch.distributed`` (one all-reduce of the
    sample count, the summed confidences, probabilities and label counts), so every rank holds the
    same state, also with unequal batch sizes. The state is kept in buffers (``global_threshold``,
    ``p_model``, ``label_hist``), so ``state_dict()`` resumes it exactly.

    Args:
        num_classes: number of classes ``C``.
        momentum: EMA momentum ``lambda`` (0.999 in the paper and in USB).
    """

    def __init__(self, num_classes: int, momentum: float = 0.999) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"FreeMatchThreshold needs at least 2 classes, got {num_classes}.")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}.")
        self.num_classes = int(num_classes)
        self.momentum = float(momentum)
        self.register_buffer("global_threshold", torch.tensor(1.0 / self.num_classes))
        self.register_buffer("p_model", torch.full((self.num_classes,), 1.0 / self.num_classes))
        self.register_buffer("label_hist", torch.full((self.num_classes,), 1.0 / self.num_classes))

    @torch.no_grad()
    def update(self, probs: torch.Tensor) -> None:
        """One EMA step of ``tau``, ``p~`` and ``h`` with the probabilities ``(B, C)`` of all ranks."""
        p = probs.detach().to(torch.float64)
        confidence, pseudo = p.max(dim=1)
        stats = torch.cat(
            [
                p.new_tensor([float(p.shape[0])]),
                confidence.sum().reshape(1),
                p.sum(dim=0),
                torch.bincount(pseudo, minlength=self.num_classes).to(p.dtype),
            ]
        )
        # every rank joins the reduction, even with an empty batch
        stats = all_reduce_sum(stats)
        n = stats[0]
        if n <= 0:
            return
        c = self.num_classes
        m = self.momentum
        mean_conf, mean_prob, hist = stats[1] / n, stats[2 : 2 + c] / n, stats[2 + c :] / n
        self.global_threshold.copy_(m * self.global_threshold.double() + (1 - m) * mean_conf)
        self.p_model.copy_(m * self.p_model.double() + (1 - m) * mean_prob)
        self.label_hist.copy_(m * self.label_hist.double() + (1 - m) * hist)

    def thresholds(self) -> torch.Tensor:
        """The class thresholds ``tau_t(c) = p~_t(c) / max p~_t * tau_t`` ``(C,)``."""
        return self.p_model / self.p_model.max() * self.global_threshold

    def forward(self, probs: torch.Tensor, indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Update the state with ``probs`` ``(B, C)``, then return pseudo labels ``(B,)`` and the 0/1 mask ``(B,)``."""
        if probs.ndim != 2 or probs.shape[1] != self.num_classes:
            raise ValueError(
                f"FreeMatchThreshold works on image-level probabilities (B, {self.num_classes}), "
                f"got shape {tuple(probs.shape)}."
            )
        self.update(probs)
        with torch.no_grad():
            confidence, pseudo = probs.detach().float().max(dim=1)
            mask = confidence >= self.thresholds()[pseudo]
        return pseudo, mask.to(probs.dtype)


def freematch_fairness_loss(
    logits_s: torch.Tensor, mask: torch.Tensor, p_model: torch.Tensor, label_hist: torch.Tensor
) -> torch.Tensor:
    """FreeMatch's self-adaptive fairness loss ``L_f = -H(SumNorm(p~_t / h_t), SumNorm(p_bar / h_bar))``.

    ``H(a, b) = -sum_c a_c log b_c`` is the cross-entropy, ``p~_t`` and ``h_t`` the EMA class
    probabilities and label histogram of the weak view (:class:`FreeMatchThreshold`), ``p_bar`` the
    mean strong-view probabilities of the masked samples and ``h_bar`` the normalised histogram of
    their strong-view predictions. Minimising ``L_f`` maximises that cross-entropy, which pushes
    the predictions on confident samples towards using all classes. Classes absent from ``h_bar``
    (or ``h_t``) get weight 0 (``1/0`` replaced by 0) and the scalers are constants, as in USB's
    ``entropy_loss``, which this follows (log of ``x + 1e-12``).

    Args:
        logits_s: strong-view logits ``(B, C)`` (gradients flow through ``p_bar``).
        mask: ``(B,)`` weights; samples with ``mask > 0`` are used.
        p_model: ``(C,)`` EMA class probabilities ``p~_t``.
        label_hist: ``(C,)`` EMA label histogram ``h_t``.

    Returns a scalar, a graph-connected 0 when no sample is masked in.
    """
    keep = mask.reshape(-1) > 0
    if not bool(keep.any()):
        return logits_s.sum() * 0.0
    probs_s = torch.softmax(logits_s[keep].float(), dim=1)
    num_classes = probs_s.shape[1]
    hist_s = torch.bincount(probs_s.detach().argmax(dim=1), minlength=num_classes).to(probs_s.dtype)
    hist_s = hist_s / hist_s.sum()

    def inverse(x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, 1.0 / x.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x)).detach()

    target = p_model.float() * inverse(label_hist.float())
    target = target / target.sum()
    mean_s = probs_s.mean(dim=0) * inverse(hist_s)
    mean_s = mean_s / mean_s.sum()
    return (target * torch.log(mean_s + 1e-12)).sum()


class FreeMatch(FixMatch):
    """FixMatch with self-adaptive class thresholds and a fairness term.

    ``L = L_sup + lambda_u * L_u + lambda_f * L_f`` with

    - ``L_u = 1/(mu B) sum_b 1[max q_b >= tau_t(argmax q_b)] H(argmax q_b, f(x_b^s))``, the masked
      cross-entropy of the strong view against the weak view's hard pseudo label, ``q_b`` the softmax of
      the weak view and ``tau_t(c)`` the self-adaptive thresholds of :class:`FreeMatchThreshold`;
    - ``L_f`` the self-adaptive fairness loss of :func:`freematch_fairness_loss` on the strong view's
      image-class logits of the masked samples.

    For networks with a segmentation output, pixel pseudo labels with FixMatch's fixed threshold
    ``seg_threshold`` supervise the strong view's segmentation (the paper defines the self-adaptive
    thresholds and the fairness term for image labels), as in :class:`FlexMatch`.

    Batches: as in :class:`~monai_ssl_ext.algorithms.base.SemiSupervisedAlgorithm`. The step returns
    the image pseudo labels ``(B_u,)`` and their 0/1 mask; it logs ``mask_rate`` (``mask_rate_seg``),
    ``global_threshold`` (``tau_t``) and the mean and minimum class threshold.

    Args:
        num_classes: number of image classes.
        momentum: EMA momentum ``lambda`` of the thresholds (0.999, paper and USB ``ema_p``).
        lambda_u: weight of the unlabeled loss (1.0, paper ``w_u``).
        lambda_f: weight of the fairness loss (0.01, USB's ``ent_loss_ratio`` default; the paper uses
            ``w_f`` 0.01 in most settings and 0.05 in some).
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
        lambda_u: float = 1.0,
        lambda_f: float = 0.01,
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
            selector=FreeMatchThreshold(num_classes, momentum),
            supervised_loss=supervised_loss,
            class_balance=class_balance,
            distribution_alignment=distribution_alignment,
        )
        self.momentum = float(momentum)
        self.lambda_f = float(lambda_f)

    @property
    def sat(self) -> FreeMatchThreshold:
        """The self-adaptive threshold selector (holds ``tau_t``, ``p~_t`` and ``h_t``)."""
        assert isinstance(self.selector, FreeMatchThreshold)
        return self.selector

    def extra_unlabeled_loss(
        self, logits_strong: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The self-adaptive fairness term ``lambda_f L_f`` on the masked strong views."""
        fairness = freematch_fairness_loss(logits_strong, mask, self.sat.p_model, self.sat.label_hist)
        return self.lambda_f * fairness, {"loss_fairness": fairness.detach()}

    def train_step(
        self, network: nn.Module, labeled: dict[str, Any], unlabeled: dict[str, Any] | None, step: int
    ) -> StepOutput:
        out = super().train_step(network, labeled, unlabeled, step)
        out.logs["global_threshold"] = float(self.sat.global_threshold)
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, momentum={self.momentum}, lambda_f={self.lambda_f}"
