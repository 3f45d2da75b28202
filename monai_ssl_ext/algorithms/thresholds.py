"""Pseudo-label selection: which unlabeled predictions are confident enough to train on.

Each selector maps class probabilities ``(B, C, *spatial)`` of the weak view to hard pseudo labels
``(B, *spatial)`` and a mask ``(B, *spatial)`` of 0/1 weights. They are modules so that their state
(FlexMatch's learning status) is saved in checkpoints with the algorithm.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from monai_ssl_ext.algorithms.schedules import RampUp
from monai_ssl_ext.utils.distributed import all_gather_cat, all_reduce_sum

__all__ = ["DualThreshold", "FixedThreshold", "FlexMatchThreshold", "PseudoLabelSelector"]


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


class DualThreshold(PseudoLabelSelector):
    """Hermes' dual-threshold pseudo-label filter (Zhang et al., ECAI 2025, arXiv 2508.02265).

    Input: weak-view probabilities ``(B, C)`` or ``(B, C, *spatial)``. Output: pseudo labels
    ``argmax_c p_c`` ``(B, *spatial)`` (long) and a 0/1 mask ``(B, *spatial)`` (dtype of ``probs``) that
    combines two tests, applied per sample or per pixel, with AND (``combine="and"``: the authors' rule
    for image labels) or OR (``combine="or"``: their rule for pixels, which ignores a pixel only when it is
    neither confident nor certain, ``ignore = (1 - confident) * uncertain``):

    (a) class-adaptive confidence: ``max_c p_c >= tau_k`` for the pseudo class ``k``, with
        ``tau_k = high - span * (1 - r_k)`` and ``r_k = n_k / sum_c n_c`` the share of class ``k``
        among all pseudo labels of the batch (every position of every image for pixel maps; summed
        over ranks under ``torch.distributed``). Rare predicted classes get a lower bar (down to
        ``high - span``), a class that takes the whole batch keeps ``high``.
    (b) certainty: ``H(p) = -sum_c p_c ln p_c < (entropy_base + entropy_ramp * sigmoid_rampup(t, L)) * ln C``,
        a bound that loosens from ``(base + ramp * e^-5) ln C`` at step 0 to ``(base + ramp) ln C``.

    The step ``t`` is set with :meth:`set_step` and kept in a buffer so that it is restored with a
    checkpoint. The ramp length ``L`` is ``ramp_steps`` or, when ``None``, the run's total steps, which
    the algorithm passes on through :meth:`set_total_steps` (``SemiSupervisedAlgorithm.setup`` also
    finds the ``RampUp`` held here).

    Args:
        num_classes: expected ``C``; checked against ``probs`` when given (else taken from the input).
        high: the confidence threshold of a class that holds all pseudo labels (0.95).
        span: how far the threshold of an absent class drops below ``high`` (0.45).
        entropy_base: entropy bound, as a share of ``ln C``, at the start of the ramp (0.75).
        entropy_ramp: share of ``ln C`` added by the end of the ramp (0.25).
        ramp_steps: ramp length in steps; ``None`` for the run's total steps.
        use_confidence: apply test (a).
        use_entropy: apply test (b). With both tests off every pseudo label is accepted.
        combine: ``"and"`` (both tests) or ``"or"`` (either test) when both are applied.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        high: float = 0.95,
        span: float = 0.45,
        entropy_base: float = 0.75,
        entropy_ramp: float = 0.25,
        ramp_steps: int | None = None,
        use_confidence: bool = True,
        use_entropy: bool = True,
        combine: str = "and",
    ) -> None:
        super().__init__()
        if combine not in ("and", "or"):
            raise ValueError(f"combine is 'and' or 'or', got {combine!r}.")
        if not 0.0 <= span <= high <= 1.0:
            raise ValueError(f"need 0 <= span <= high <= 1, got high={high}, span={span}.")
        if entropy_base < 0 or entropy_ramp < 0:
            raise ValueError(f"entropy_base and entropy_ramp must be >= 0, got {entropy_base}, {entropy_ramp}.")
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"DualThreshold needs at least 2 classes, got {num_classes}.")
        self.num_classes = None if num_classes is None else int(num_classes)
        self.high = float(high)
        self.span = float(span)
        self.entropy_base = float(entropy_base)
        self.entropy_ramp = float(entropy_ramp)
        self.use_confidence = bool(use_confidence)
        self.use_entropy = bool(use_entropy)
        self.combine = combine
        # fraction=1.0: without an explicit length the ramp spans the whole run, as in the paper's code
        self.ramp = RampUp(max_value=1.0, length=ramp_steps, fraction=1.0, shape="sigmoid")
        self.register_buffer("current_step", torch.zeros((), dtype=torch.long))
        self._last_tau: torch.Tensor | None = None
        self._last_num_classes: int | None = self.num_classes

    # ------------------------------------------------------------------ schedule
    def set_total_steps(self, total_steps: int) -> None:
        """Planned number of steps of the run: the ramp length when ``ramp_steps`` is ``None``."""
        self.ramp.set_total_steps(total_steps)

    def set_step(self, step: int) -> None:
        """The current training step ``t`` (counted from 0) of the entropy ramp."""
        self.current_step.fill_(int(step))

    def entropy_threshold(self, num_classes: int | None = None) -> float:
        """The entropy bound ``(entropy_base + entropy_ramp * sigmoid_rampup(t, L)) * ln C`` at the current step.

        ``C`` is ``num_classes``, else the one given at construction, else that of the last batch.
        """
        classes = num_classes if num_classes is not None else self._last_num_classes
        if classes is None:
            raise RuntimeError("the number of classes is unknown: pass num_classes or run a batch first.")
        ramp = self.ramp(float(self.current_step.item()))
        return (self.entropy_base + self.entropy_ramp * ramp) * math.log(classes)

    def thresholds(self) -> torch.Tensor | None:
        """Per-class confidence thresholds ``tau_c`` ``(C,)`` of the last batch (``None`` before one)."""
        return self._last_tau

    # ------------------------------------------------------------------ selection
    def class_thresholds(self, pseudo: torch.Tensor, num_classes: int) -> torch.Tensor:
        """``tau_c = high - span * (1 - r_c)`` ``(C,)`` from the pseudo labels ``(B, *spatial)`` of all ranks."""
        counts = torch.bincount(pseudo.reshape(-1), minlength=num_classes)
        # every rank must join the reduction even with an empty batch, so it is not skipped on B == 0
        counts = all_reduce_sum(counts).float()
        total = counts.sum()
        share = counts / total if total > 0 else torch.zeros_like(counts)
        return self.high - self.span * (1.0 - share)

    def forward(self, probs: torch.Tensor, indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if probs.ndim < 2:
            raise ValueError(f"DualThreshold expects probabilities (B, C, *spatial), got shape {tuple(probs.shape)}.")
        num_classes = int(probs.shape[1])
        if num_classes < 2:
            raise ValueError("DualThreshold needs at least 2 classes in dimension 1.")
        if self.num_classes is not None and num_classes != self.num_classes:
            raise ValueError(f"expected {self.num_classes} classes in dimension 1, got {num_classes}.")
        self._last_num_classes = num_classes
        with torch.no_grad():
            # half-precision probabilities would blur comparisons near the thresholds
            p = probs.detach().float()
            confidence, pseudo = p.max(dim=1)
            tests = []
            if self.use_confidence:
                tau = self.class_thresholds(pseudo, num_classes)
                self._last_tau = tau
                tests.append(confidence >= tau[pseudo])
            if self.use_entropy:
                # xlogy gives 0 * ln 0 = 0, so one-hot predictions have entropy exactly 0
                entropy = -torch.special.xlogy(p, p).sum(dim=1)
                tests.append(entropy < self.entropy_threshold(num_classes))
            keep = torch.ones_like(confidence, dtype=torch.bool)
            if tests:
                keep = tests[0] & tests[-1] if self.combine == "and" else tests[0] | tests[-1]
        return pseudo, keep.to(probs.dtype)
