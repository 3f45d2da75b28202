"""Evaluate an exponential moving average of the training weights (USB's ``ema_model``) for any algorithm.

:class:`EvaluationEMA` is an ignite handler and an ``nn.Module``: attached to the trainer it moves an
EMA copy of the network towards the student after every optimizer step; its :attr:`~EvaluationEMA.module`
(a copy of the student network, with the same ``state_dict`` keys) is what the validator evaluates and
what the best-model saver writes, and the handler itself goes into the checkpoint's ``save_dict`` so
that a resumed run continues the same average. The student's training is not touched (no random
numbers are drawn), so enabling it changes validation results and the saved best model only.
"""

from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from torch import nn

from monai_ssl_ext.algorithms.ema import EMATeacher
from monai_ssl_ext.utils.distributed import unwrap_model

__all__ = ["EvaluationEMA", "ema_decay_for"]

BUFFER_MODES = ("copy", "average")


def ema_decay_for(num_iterations: int, horizon: float = 0.1, min_decay: float = 0.9, max_decay: float = 0.999) -> float:
    """EMA decay for ``T = num_iterations`` steps: ``1 - 1 / (horizon T)`` clipped to ``[min_decay, max_decay]``.

    The EMA's effective averaging window is ``1 / (1 - decay) = horizon * T`` steps (the last 10 % of
    the run by default), and the weight the final average still gives to the initial (random) weights
    is ``decay^T ~ exp(-1 / horizon) = e^-10 ~ 5e-5``. A fixed 0.999 (USB's default) over a 1,500-step
    run leaves ``0.999^1500 = e^-1.5 ~ 22 %`` of every averaged weight at its initialisation; here that
    run gets 0.99333 (``4.5e-5``). 3,000 steps give 0.99667, 300 steps 0.96667; from 10,000 steps on the
    cap 0.999 applies (``decay^T <= 4.5e-5`` still), below 100 steps the floor 0.9.
    """
    if num_iterations < 1:
        raise ValueError(f"num_iterations must be >= 1, got {num_iterations}.")
    if horizon <= 0:
        raise ValueError(f"horizon must be > 0, got {horizon}.")
    return float(min(max(1.0 - 1.0 / (horizon * num_iterations), min_decay), max_decay))


class EvaluationEMA(nn.Module):
    """An EMA of the training network, updated after every optimizer step, for validation and the saved model.

    ``theta_ema <- a theta_ema + (1 - a) theta_student`` after each optimizer step, with ``a = decay``
    (or, with ``warmup``, :class:`~monai_ssl_ext.algorithms.EMATeacher`'s ``min(decay, (t + 1) / (t + 10))``,
    ``t`` the number of earlier updates). It reuses :class:`~monai_ssl_ext.algorithms.EMATeacher` (the
    Mean Teacher average) for the copy and the update.

    Decay: ``decay`` when given; else :func:`ema_decay_for` of ``num_iterations``, or, when that is
    ``None`` too, of the trainer's ``max_epochs * epoch_length`` read at :meth:`attach`.

    Batch-norm buffers: ``"copy"`` (default) takes the student's running statistics at every update,
    as USB (which averages parameters only) and :class:`EMATeacher` do; ``"average"`` averages the
    floating-point buffers with the same decay (as timm's ``ModelEmaV2``), integer buffers
    (``num_batches_tracked``) are copied.

    Events: the update runs on the trainer's ``IterationEvents.MODEL_COMPLETED``, which
    :class:`~monai_ssl_ext.engines.SemiSupervisedTrainer` fires after ``optimizer.step()`` and
    ``algorithm.after_optimizer_step`` and before any ``ITERATION_COMPLETED`` handler (validation,
    checkpoints); engines without that event get ``ITERATION_COMPLETED``. At the first iteration of a
    fresh run (no update yet) the average is reset to the student, so weights loaded into the network
    by a handler after this one was built are the starting point.

    Distributed: the average is of the unwrapped module (``DistributedDataParallel.module``); every
    rank keeps its own copy, identical in parameters (DDP keeps the students equal).

    Checkpoints: put the handler itself in ``save_dict``/``load_dict`` (its ``state_dict`` holds the
    averaged weights and the update count), so a resumed run continues the same average.

    Args:
        network: the student network (a ``DistributedDataParallel`` wrapper is unwrapped); the trainer's
            network is the one followed.
        decay: EMA decay in ``[0, 1]``; ``None`` to derive it from the run length. ``0``: the average
            is the student.
        num_iterations: run length for the derived decay (``None``: read from the trainer).
        warmup: use :class:`EMATeacher`'s warm-up of the decay.
        buffers: ``"copy"`` or ``"average"`` (see above).
        horizon, min_decay, max_decay: the rule of :func:`ema_decay_for`.
    """

    def __init__(
        self,
        network: nn.Module,
        decay: float | None = None,
        num_iterations: int | None = None,
        warmup: bool = False,
        buffers: str = "copy",
        horizon: float = 0.1,
        min_decay: float = 0.9,
        max_decay: float = 0.999,
    ) -> None:
        super().__init__()
        if buffers not in BUFFER_MODES:
            raise ValueError(f"buffers must be one of {BUFFER_MODES}, got {buffers!r}.")
        self.buffers_mode = buffers
        self.horizon = float(horizon)
        self.min_decay = float(min_decay)
        self.max_decay = float(max_decay)
        resolved = decay
        if resolved is None and num_iterations is not None:
            resolved = ema_decay_for(num_iterations, self.horizon, self.min_decay, self.max_decay)
        # until the decay is known (at attach), 1.0 is a placeholder that update() refuses
        self.teacher = EMATeacher(network, decay=1.0 if resolved is None else resolved, warmup=warmup)
        self._decay_known = resolved is not None
        self._checked_start = False

    # ------------------------------------------------------------------ the averaged network
    @property
    def module(self) -> nn.Module:
        """The averaged network: the student's class and ``state_dict`` keys (the validator's ``network``)."""
        return self.teacher.network

    @property
    def decay(self) -> float | None:
        return self.teacher.decay if self._decay_known else None

    @property
    def num_updates(self) -> int:
        return int(self.teacher.num_updates)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.teacher(*args, **kwargs)

    # ------------------------------------------------------------------ averaging
    def set_num_iterations(self, num_iterations: int) -> None:
        """Derive the decay from the run length (only when no ``decay`` was given)."""
        if not self._decay_known:
            self.teacher.decay = ema_decay_for(num_iterations, self.horizon, self.min_decay, self.max_decay)
            self._decay_known = True

    @torch.no_grad()
    def reset(self, student: nn.Module) -> None:
        """Set the average to ``student``'s weights and buffers (the update count is kept)."""
        student = unwrap_model(student)
        for t, s in zip(self.module.parameters(), student.parameters(), strict=True):
            t.copy_(s.detach())
        for t, s in zip(self.module.buffers(), student.buffers(), strict=True):
            t.copy_(s)

    @torch.no_grad()
    def update(self, student: nn.Module) -> float:
        """One EMA step towards ``student``; returns the decay used."""
        if not self._decay_known:
            raise RuntimeError("EvaluationEMA has no decay yet: give decay or num_iterations, or attach it first.")
        student = unwrap_model(student)
        previous = None
        if self.buffers_mode == "average":
            previous = [b.clone() if b.is_floating_point() else None for b in self.module.buffers()]
        a = self.teacher.update(student)  # parameters averaged, buffers copied, count + 1
        if previous is not None:
            for b, old in zip(self.module.buffers(), previous, strict=True):
                if old is not None:
                    b.mul_(1.0 - a).add_(old, alpha=a)
        return a

    # ------------------------------------------------------------------ ignite
    def attach(self, engine: Engine) -> None:
        if not self._decay_known:
            max_epochs, epoch_length = engine.state.max_epochs, engine.state.epoch_length
            if max_epochs is None or epoch_length is None:
                raise ValueError("EvaluationEMA needs decay or num_iterations: the engine's run length is unknown.")
            self.set_num_iterations(int(max_epochs) * int(epoch_length))
        engine.add_event_handler(Events.ITERATION_STARTED, self._start)
        try:
            engine.add_event_handler(IterationEvents.MODEL_COMPLETED, self._step)
        except ValueError:  # not a MONAI workflow: its IterationEvents are not registered
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._step)

    def _start(self, engine: Engine) -> None:
        if self._checked_start:
            return
        self._checked_start = True
        # a fresh run: start from the weights the network has now (after any loader); a resumed run
        # has restored its average and count from the checkpoint
        if self.num_updates == 0:
            self.reset(engine.network)

    def _step(self, engine: Engine) -> None:
        self.update(engine.network)

    def extra_repr(self) -> str:
        return f"decay={self.decay}, warmup={self.teacher.warmup}, buffers={self.buffers_mode!r}"
