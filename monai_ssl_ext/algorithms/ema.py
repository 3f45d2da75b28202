"""An exponential-moving-average copy of a network: the teacher of Mean Teacher and its descendants."""

from __future__ import annotations

import copy

import torch
from torch import nn

from monai_ssl_ext.utils.distributed import unwrap_model

__all__ = ["EMATeacher"]


class EMATeacher(nn.Module):
    """Teacher weights ``theta'_t = a_t theta'_{t-1} + (1 - a_t) theta_t`` (Tarvainen & Valpola 2017, eq. 1).

    ``a_t = min(decay, (t + 1) / (t + 10))`` when ``warmup`` is on, so that early teachers follow the
    fast-changing student instead of averaging in its random initialisation. Buffers (batch-norm
    running statistics) are copied from the student, as in the reference implementation.

    Input/output: the teacher's ``forward`` is the student network's forward, without gradients.

    Args:
        student: the network to follow (a ``DistributedDataParallel`` wrapper is unwrapped).
        decay: EMA decay ``a``.
        warmup: use the ``(t + 1) / (t + 10)`` warm-up of the decay.
    """

    def __init__(self, student: nn.Module, decay: float = 0.99, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}.")
        self.decay = float(decay)
        self.warmup = warmup
        self.network = copy.deepcopy(unwrap_model(student))
        for p in self.network.parameters():
            p.requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def decay_at(self, step: int) -> float:
        return min(self.decay, (step + 1) / (step + 10)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, student: nn.Module, step: int | None = None) -> float:
        """Move the teacher towards ``student``; returns the decay used."""
        step = int(self.num_updates) if step is None else step
        a = self.decay_at(step)
        student = unwrap_model(student)
        for t, s in zip(self.network.parameters(), student.parameters(), strict=True):
            t.mul_(a).add_(s.detach(), alpha=1.0 - a)
        for t, s in zip(self.network.buffers(), student.buffers(), strict=True):
            t.copy_(s)
        self.num_updates += 1
        return a

    @torch.no_grad()
    def forward(self, *args, **kwargs):
        return self.network(*args, **kwargs)
