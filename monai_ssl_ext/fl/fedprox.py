"""FedProx's proximal term (Li et al., MLSys 2020, eq. 2) as a gradient added after the backward pass."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.engines.utils import IterationEvents

from monai_ssl_ext.utils.distributed import unwrap_model

__all__ = ["FedProxTerm"]


class FedProxTerm:
    """Adds the gradient of ``mu / 2 * ||w - w_global||^2``, ``mu * (w - w_global)``, to each trained parameter.

    The local objective of FedProx is the site's loss plus that term; adding its gradient at
    ``BACKWARD_COMPLETED`` (after the algorithm's backward pass, before clipping and the optimiser's step) gives
    the same update without touching the algorithm's loss, so it applies to every method alike. Parameters
    without a gradient this step (frozen by the algorithm) are left alone. Under mixed precision the term is
    scaled as the loss was.

    Args:
        mu: weight of the proximal term (FedProx's ``mu``; 0 is FedAvg).
    """

    def __init__(self, mu: float) -> None:
        if mu < 0:
            raise ValueError(f"mu must be >= 0, got {mu}")
        self.mu = float(mu)
        self.anchor: list[torch.Tensor] = []

    def attach(self, trainer) -> None:
        trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def set_anchor(self, network: torch.nn.Module, global_weights: Mapping[str, Any]) -> None:
        """Take ``w_global`` of this round from the global ``state_dict``, for each parameter of ``network``."""
        anchor = []
        for name, p in unwrap_model(network).named_parameters():
            if name not in global_weights:
                raise KeyError(f"the global weights have no {name}: not this network's state_dict")
            anchor.append(torch.as_tensor(global_weights[name], dtype=p.dtype, device=p.device).reshape(p.shape))
        self.anchor = anchor

    @torch.no_grad()
    def __call__(self, engine) -> None:
        if not self.mu or not self.anchor:
            return
        scale = float(engine.scaler.get_scale()) if getattr(engine, "scaler", None) is not None else 1.0
        for p, w0 in zip(unwrap_model(engine.network).parameters(), self.anchor, strict=True):
            if p.grad is not None:
                p.grad.add_(p.detach() - w0, alpha=self.mu * scale)
