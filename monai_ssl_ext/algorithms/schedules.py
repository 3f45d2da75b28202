"""Ramp-up schedules for loss weights, as functions of the training step."""

from __future__ import annotations

import math

__all__ = ["RampUp", "linear_rampup", "sigmoid_rampup"]


def sigmoid_rampup(step: float, length: float) -> float:
    """``exp(-5 (1 - t)^2)`` with ``t = clip(step / length, 0, 1)``: 0.0067 at 0, 1 at ``length``.

    The schedule of Laine & Aila (ICLR 2017) and Tarvainen & Valpola (Mean Teacher, NeurIPS 2017).
    """
    if length <= 0:
        return 1.0
    t = min(max(step / length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def linear_rampup(step: float, length: float) -> float:
    """``clip(step / length, 0, 1)``."""
    if length <= 0:
        return 1.0
    return float(min(max(step / length, 0.0), 1.0))


_SHAPES = {"sigmoid": sigmoid_rampup, "linear": linear_rampup, "constant": lambda step, length: 1.0}


class RampUp:
    """A loss weight ``max_value * shape(step, length)``, configurable from a bundle.

    Args:
        max_value: weight reached at the end of the ramp.
        length: ramp length in steps. When ``None``, ``fraction`` of the run's total steps (resolved by
            :meth:`set_total_steps`, which the trainer calls before the first step).
        fraction: ramp length as a share of the run, used when ``length`` is ``None``; above 1 the run ends
            before the weight reaches ``max_value``.
        shape: ``"sigmoid"`` (default), ``"linear"`` or ``"constant"``.
        start_fraction: share of the run during which the weight is 0; the ramp begins after it (0: at once).
    """

    def __init__(
        self,
        max_value: float = 1.0,
        length: int | None = None,
        fraction: float = 0.4,
        shape: str = "sigmoid",
        start_fraction: float = 0.0,
    ) -> None:
        if shape not in _SHAPES:
            raise ValueError(f"unknown ramp-up shape '{shape}'; choose from {sorted(_SHAPES)}.")
        if length is None and not fraction >= 0.0:
            raise ValueError(f"ramp-up fraction must be >= 0, got {fraction}.")
        if not 0.0 <= start_fraction < 1.0:
            raise ValueError(f"ramp-up start_fraction must lie in [0, 1), got {start_fraction}.")
        self.max_value = float(max_value)
        self.length = None if length is None else int(length)
        self.fraction = float(fraction)
        self.shape = shape
        self.start_fraction = float(start_fraction)
        self.total_steps: int | None = None

    def set_total_steps(self, total_steps: int) -> None:
        self.total_steps = int(total_steps)

    @property
    def length_steps(self) -> float:
        if self.length is not None:
            return float(self.length)
        if self.total_steps is None:
            raise RuntimeError("RampUp length is a fraction of the run; call set_total_steps() first.")
        return self.fraction * self.total_steps

    @property
    def start_steps(self) -> float:
        """The step the ramp begins at."""
        if not self.start_fraction:
            return 0.0
        if self.total_steps is None:
            raise RuntimeError("RampUp start is a fraction of the run; call set_total_steps() first.")
        return self.start_fraction * self.total_steps

    def __call__(self, step: float) -> float:
        start = self.start_steps
        if step < start:
            return 0.0
        return self.max_value * _SHAPES[self.shape](step - start, self.length_steps)

    def __repr__(self) -> str:
        span = f"length={self.length}" if self.length is not None else f"fraction={self.fraction}"
        start = f", start_fraction={self.start_fraction}" if self.start_fraction else ""
        return f"RampUp(max_value={self.max_value}, {span}, shape='{self.shape}'{start})"
