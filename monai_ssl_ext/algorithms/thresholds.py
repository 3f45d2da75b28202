"""Pseudo-label selection: which unlabeled predictions are confident enough to train on.

Each selector maps class probabilities ``(B, C, *spatial)`` of the weak view to hard pseudo labels
``(B, *spatial)`` and a mask ``(B, *spatial)`` of 0/1 weights. They are modules so that their state
(FlexMatch's learning status) is saved in checkpoints with the algorithm.
"""

from __future__ import annotations

import torch
from torch import nn

from monai_ssl_ext.utils.distributed import all_gather_cat

__all__ = ["FixedThreshold", "FlexMatchThreshold", "PseudoLabelSelector"]


class PseudoLabelSelector(nn.Module):
    """Base class: ``forward(probs, indices) -> (pseudo_label, mask)``."""

    def forward(self, probs: torch.Tensor, indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def thresholds(self) -> torch.Tensor | None:
        """Current per-class thresholds ``(C,)`` for logging, if the selector has them."""
        return None


class FixedThreshold(PseudoLabelSelector):
    """``mask = max_c p_c >= tau``: FixMatch's confidence threshold (Sohn et al. 2020, eq. 2).

    Args:
        threshold: confidence ``tau`` (0.95 in FixMatch).
    """

    def __init__(self, threshold: float = 0.95) -> None:
        super().__init__()
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}.")
        self.threshold = float(threshold)

    def forward(self, probs: torch.Tensor, indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        confidence, pseudo = probs.max(dim=1)
        return pseudo, (confidence >= self.threshold).to(probs.dtype)


class FlexMatchThreshold(PseudoLabelSelector):
    """Curriculum pseudo labelling with class-wise flexible thresholds (Zhang et al., NeurIPS 2021).

    The learning status of class ``c`` is the number of unlabeled samples whose latest confident
    prediction (``max p >= tau``) is ``c``: ``sigma_c`` (eq. 6). It is normalised to
    ``beta_c = sigma_c / max(max_c' sigma_c', N_unused)`` with threshold warm-up (eq. 11; without
    warm-up the denominator is ``max_c' sigma_c'``), mapped by the convex ``M(x) = x / (2 - x)`` and
    the class threshold is ``T_c = M(beta_c) * tau`` (eq. 7). A sample is used when its confidence
    reaches the threshold of its predicted class (eq. 8). Classes that are learnt slowly get a lower
    bar; early in training, when few samples are confident, every threshold is low.

    The status is updated after the mask is computed, with the batch's confident predictions
    (gathered from all ranks under ``torch.distributed``), as in the authors' implementation.

    Args:
        num_classes: number of classes ``C``.
        num_unlabeled: size of the unlabeled set ``N`` (samples are identified by their ``index``).
        threshold: the upper threshold ``tau``.
        warmup: use threshold warm-up.
    """

    def __init__(self, num_classes: int, num_unlabeled: int, threshold: float = 0.95, warmup: bool = True) -> None:
        super().__init__()
        if num_unlabeled < 1:
            raise ValueError("FlexMatchThreshold needs the size of the unlabeled set (num_unlabeled >= 1).")
        self.num_classes = int(num_classes)
        self.threshold = float(threshold)
        self.warmup = warmup
        self.register_buffer("selected_label", torch.full((int(num_unlabeled),), -1, dtype=torch.long))
        self.register_buffer("class_status", torch.zeros(self.num_classes))

    @staticmethod
    def convex_map(beta: torch.Tensor) -> torch.Tensor:
        return beta / (2.0 - beta)

    @torch.no_grad()
    def update_status(self) -> None:
        counts = torch.bincount(self.selected_label[self.selected_label >= 0], minlength=self.num_classes).float()
        unused = (self.selected_label < 0).sum().float()
        denom = torch.maximum(counts.max(), unused) if self.warmup else counts.max()
        self.class_status.copy_(counts / denom if denom > 0 else torch.zeros_like(counts))

    def thresholds(self) -> torch.Tensor:
        return self.threshold * self.convex_map(self.class_status)

    def forward(self, probs: torch.Tensor, indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if probs.ndim != 2:
            raise ValueError("FlexMatchThreshold works on image-level probabilities (B, C).")
        if indices is None:
            raise ValueError("FlexMatchThreshold needs the unlabeled samples' indices to track learning status.")
        confidence, pseudo = probs.max(dim=1)
        mask = (confidence >= self.thresholds()[pseudo]).to(probs.dtype)
        with torch.no_grad():
            idx = all_gather_cat(indices.to(self.selected_label.device).long())
            lab = all_gather_cat(pseudo.to(self.selected_label.device))
            sure = all_gather_cat((confidence >= self.threshold).to(self.selected_label.device))
            if sure.any():
                if int(idx.max()) >= self.selected_label.numel():
                    raise IndexError(
                        f"unlabeled index {int(idx.max())} is outside the {self.selected_label.numel()} samples "
                        "FlexMatch was set up with"
                    )
                self.selected_label[idx[sure]] = lab[sure]
                self.update_status()
        return pseudo, mask
