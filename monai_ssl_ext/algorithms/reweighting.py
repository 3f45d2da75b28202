"""Dynamic sample reweighting (DSRPGC): unlabeled weights from prediction entropy, refined by a meta step."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call

from monai_ssl_ext.utils.distributed import unwrap_model

__all__ = ["MetaReweighting", "entropy_weights"]

#: ``forward(images) -> outputs`` of the network with a given set of parameters
Forward = Callable[[torch.Tensor], object]


def entropy_weights(probs: torch.Tensor) -> torch.Tensor:
    """``w = 1 - H(p) / ln C`` ``(B,)`` from probabilities ``(B, C)``: 1 for a certain prediction, 0 for a uniform one.

    The DSRPGC text converts the prediction entropy ``H(p) = -sum_c p_c ln p_c`` into a confidence score
    (low entropy, high weight); its exact formula is not legible in our copy, so the normalised complement is
    ours: it is bounded, monotone (a more confident prediction never weighs less) and needs no constant.
    Early in training most predictions are uncertain, so the weights start low and rise with the model.
    """
    p = probs.detach().float().clamp_min(0.0)
    entropy = -torch.special.xlogy(p, p).sum(dim=1)
    return (1.0 - entropy / math.log(p.shape[1])).clamp(0.0, 1.0)


class MetaReweighting:
    """Refine per-sample weights by one look-ahead step of the network, as in learning to reweight.

    Following Ren et al. (ICML 2018, "Learning to reweight examples for robust deep learning"), with the
    network's parameters ``theta`` and the current weights ``w`` ``(B,)`` of the unlabeled samples:

        theta'(w) = theta - lr * grad_theta L_u(theta; w)            one SGD step on the weighted unlabeled loss
        g         = d L_meta(theta'(w)) / d w                          the labeled meta loss after that step
        w        <- clip(w - step_size * g / max_b |g_b|, 0, 1)

    A sample whose weighted loss, taken one step, would lower the labeled loss has ``g_b < 0`` and gains
    weight; one that would raise it loses weight. The step is normalised by the largest ``|g_b|``, so the
    most influential sample moves by ``step_size`` and the refinement does not depend on the scale of the
    losses (or, to first order, on ``lr``); that normalisation and the clip to ``[0, 1]`` are our choices
    (Ren et al. keep ``max(-g, 0)`` normalised to sum 1, which discards the prior weights).

    The look-ahead runs through :func:`torch.func.functional_call` on the network's own modules with the
    stepped parameters (no copy of the network); buffers are passed as copies, so batch-norm statistics of
    the look-ahead passes leave the network's untouched. Only ``interval``-th steps are refined.

    Args:
        lookahead_lr: ``lr`` of the look-ahead step (0.01).
        step_size: largest change of a weight per refinement (0.5).
        interval: refine every ``interval`` steps (1).
    """

    def __init__(self, lookahead_lr: float = 0.01, step_size: float = 0.5, interval: int = 1) -> None:
        if lookahead_lr <= 0 or step_size <= 0:
            raise ValueError(f"lookahead_lr and step_size must be > 0, got {lookahead_lr}, {step_size}.")
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}.")
        self.lookahead_lr = float(lookahead_lr)
        self.step_size = float(step_size)
        self.interval = int(interval)

    def due(self, step: int) -> bool:
        """Whether step ``step`` is refined."""
        return step % self.interval == 0

    def refine(
        self,
        network: nn.Module,
        weights: torch.Tensor,
        unlabeled_loss: Callable[[Forward, torch.Tensor], torch.Tensor],
        meta_loss: Callable[[Forward], torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The refined weights ``(B,)`` and the meta gradient ``g`` ``(B,)``.

        Args:
            network: the student (possibly wrapped in ``DistributedDataParallel``: its module is used, so the
                look-ahead does not synchronise gradients between ranks).
            weights: current weights ``(B,)`` in ``[0, 1]``.
            unlabeled_loss: ``(forward, weights) -> scalar``, the weighted unlabeled loss of ``forward``'s outputs.
            meta_loss: ``forward -> scalar``, the labeled meta loss.
        """
        module = unwrap_model(network)
        names = [name for name, p in module.named_parameters() if p.requires_grad]
        params = dict(module.named_parameters())
        buffers = {name: b.clone() for name, b in module.named_buffers()}

        def forward_with(parameters: dict[str, torch.Tensor]) -> Forward:
            return lambda images: functional_call(module, {**parameters, **buffers}, (images,))

        w = weights.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            inner = unlabeled_loss(forward_with(params), w)
            grads = torch.autograd.grad(inner, [params[n] for n in names], create_graph=True, allow_unused=True)
            stepped = dict(params)
            for name, grad in zip(names, grads, strict=True):
                if grad is not None:
                    stepped[name] = params[name] - self.lookahead_lr * grad
            outer = meta_loss(forward_with(stepped))
            (g,) = torch.autograd.grad(outer, w, allow_unused=True)
        if g is None:  # the meta loss does not depend on these samples (no parameter is shared)
            g = torch.zeros_like(w)
        g = g.detach()
        scale = g.abs().max()
        if scale <= 0:
            return weights.detach(), g
        refined = (weights.detach() - self.step_size * g / scale).clamp(0.0, 1.0)
        return refined, g

    def __repr__(self) -> str:
        return (
            f"MetaReweighting(lookahead_lr={self.lookahead_lr}, step_size={self.step_size}, interval={self.interval})"
        )
