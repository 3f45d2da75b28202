"""CAPR: class-adaptive pseudo-label thresholds that follow each class's learning progress."""

from __future__ import annotations

import torch

from monai_ssl_ext.algorithms.schedules import RampUp
from monai_ssl_ext.algorithms.thresholds import PseudoLabelSelector
from monai_ssl_ext.utils.distributed import all_reduce_sum

__all__ = ["ClassAdaptiveThreshold"]


class ClassAdaptiveThreshold(PseudoLabelSelector):
    """Per-class confidence thresholds from the learning progress of each class (CLCP-MT's CAPR).

    The CLCP-MT paper describes the rule only in words (thresholds calibrated to the real-time learning
    progress of each class, lower for tail classes, guarding against early noise); the equations are ours.
    With ``q_b`` the teacher's probabilities ``(B, C)`` of the batch and momentum ``m``:

        pi_t(c)  = m * pi_{t-1}(c) + (1 - m) * mean_{b: argmax q_b = c} max q_b     (classes predicted in the batch)
        beta(c)  = pi_t(c) / max_c' pi_t(c')                                        (progress relative to the best)
        T_c(t)   = tau - r(t) * (tau - max(tau_min, tau * beta(c) / (2 - beta(c))))

    ``pi(c)`` is the learning progress of class ``c``: how confident the teacher is, on average, when it
    predicts ``c`` (``progress_measure="confidence"``). A class the model has learnt keeps the bar ``tau``; a
    lagging class (a tail class, whose predictions are hesitant) gets a bar lowered by FlexMatch's convex map
    ``x / (2 - x)``, never below ``tau_min``.

    With ``progress_measure="confident_share"`` the progress is FlexMatch's learning effect on the teacher: the
    share of the unlabeled batch the teacher predicts as ``c`` with confidence ``>= tau``,

        pi_t(c)  = m * pi_{t-1}(c) + (1 - m) * 1/B sum_b 1[argmax q_b = c] 1[max q_b >= tau]    (every step)

    starting at 0 (the bias of the start is common to all classes and cancels in ``beta``). A class the teacher
    seldom predicts confidently, a rare one above all, gets a low bar. The mean confidence instead ranks classes
    by how confusable they are: in CLCP-MT's test predictions on HAM10000 (``cpu`` profile, seed 0) the rarest
    class, vasc, had the highest mean confidence (0.79; mel 0.60, akiec 0.55) and so the highest bar. Until
    some class has a confident prediction every bar is ``tau``.

    ``r(t)`` ramps from 0 to 1 (sigmoid, ``rampup_fraction`` of the run), so every class starts at ``tau``:
    early, unreliable predictions are not let in by a low bar and their bias is not amplified.
    ``mask_b = 1[max q_b >= T_{argmax q_b}]``.

    ``pi`` of the mean confidence starts at ``1/C`` for every class; the batch statistics (per-class sums of the
    confidences and counts) are summed over all ranks under ``torch.distributed``, so every rank holds the same
    thresholds. ``pi`` and the step of the ramp are buffers, saved in checkpoints.

    Args:
        num_classes: number of classes ``C``.
        threshold: ``tau``, the bar of a learnt class (0.95).
        min_threshold: ``tau_min``, the lowest bar (0.5).
        momentum: ``m`` of the progress estimate (0.99: a few hundred images).
        rampup_fraction: share of the run over which the thresholds become class-adaptive (0.2).
        progress_measure: ``"confidence"`` (the mean confidence of the teacher's predictions of the class) or
            ``"confident_share"`` (FlexMatch's learning effect).
    """

    progress_measures = ("confidence", "confident_share")

    def __init__(
        self,
        num_classes: int,
        threshold: float = 0.95,
        min_threshold: float = 0.5,
        momentum: float = 0.99,
        rampup_fraction: float = 0.2,
        progress_measure: str = "confidence",
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"ClassAdaptiveThreshold needs at least 2 classes, got {num_classes}.")
        if not 0.0 <= min_threshold <= threshold <= 1.0:
            raise ValueError(f"need 0 <= min_threshold <= threshold <= 1, got {min_threshold}, {threshold}.")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}.")
        if progress_measure not in self.progress_measures:
            raise ValueError(f"progress_measure must be one of {self.progress_measures}, got {progress_measure!r}.")
        self.num_classes = int(num_classes)
        self.threshold = float(threshold)
        self.min_threshold = float(min_threshold)
        self.momentum = float(momentum)
        self.progress_measure = progress_measure
        self.ramp = RampUp(max_value=1.0, fraction=rampup_fraction, shape="sigmoid")
        start = 1.0 / self.num_classes if progress_measure == "confidence" else 0.0
        self.register_buffer("progress", torch.full((self.num_classes,), start))
        self.register_buffer("current_step", torch.zeros((), dtype=torch.long))

    def set_total_steps(self, total_steps: int) -> None:
        """Planned number of steps of the run (the ramp spans ``rampup_fraction`` of it)."""
        self.ramp.set_total_steps(total_steps)

    def set_step(self, step: int) -> None:
        """The current training step ``t`` of the ramp."""
        self.current_step.fill_(int(step))

    @torch.no_grad()
    def update(self, probs: torch.Tensor) -> None:
        """One momentum step of ``pi`` with the probabilities ``(B, C)`` of all ranks."""
        confidence, predicted = probs.detach().float().max(dim=1)
        one_hot = torch.nn.functional.one_hot(predicted, self.num_classes).float()
        # per class, the measured values summed (confidences, or confident predictions counted) and the
        # predictions counted: one reduction; every rank joins, even with an empty batch
        measured = confidence if self.progress_measure == "confidence" else (confidence >= self.threshold).float()
        stats = all_reduce_sum(torch.stack([one_hot.T @ measured, one_hot.sum(dim=0)]))
        sums, counts = stats.to(self.progress.device)
        if self.progress_measure == "confident_share":
            if counts.sum() > 0:  # the images of all ranks
                self.progress.mul_(self.momentum).add_((1.0 - self.momentum) * sums / counts.sum())
            return
        present = counts > 0
        means = sums[present] / counts[present]
        self.progress[present] = self.momentum * self.progress[present] + (1.0 - self.momentum) * means

    def thresholds(self) -> torch.Tensor:
        """``T_c`` ``(C,)`` at the current step and progress."""
        best = self.progress.max()
        if best <= 0:  # no class has a confident prediction yet: every class is as far along as the others
            return torch.full_like(self.progress, self.threshold)
        beta = self.progress / best
        adaptive = (self.threshold * beta / (2.0 - beta)).clamp_min(self.min_threshold)
        r = self.ramp(float(self.current_step.item()))
        return self.threshold - r * (self.threshold - adaptive)

    def forward(self, probs: torch.Tensor, indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Update the progress with ``probs`` ``(B, C)``; return pseudo labels ``(B,)`` and the 0/1 mask ``(B,)``."""
        if probs.ndim != 2 or probs.shape[1] != self.num_classes:
            raise ValueError(
                f"ClassAdaptiveThreshold works on image-level probabilities (B, {self.num_classes}), "
                f"got shape {tuple(probs.shape)}."
            )
        self.update(probs)
        confidence, pseudo = probs.detach().float().max(dim=1)
        mask = confidence >= self.thresholds().to(confidence.device)[pseudo]
        return pseudo, mask.to(probs.dtype)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, threshold={self.threshold}, min_threshold={self.min_threshold}, "
            f"momentum={self.momentum}, progress_measure={self.progress_measure!r}"
        )
