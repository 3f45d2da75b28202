"""Parameter groups of the optimiser: weight decay on weights, optionally not on normalisation and biases."""

from __future__ import annotations

from torch import nn

__all__ = ["NORM_LAYERS", "parameter_groups"]

# layers whose parameters are scales and shifts of normalised activations, not filters
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def parameter_groups(network: nn.Module, weight_decay: float, decay_norm_and_bias: bool = True) -> list[dict]:
    """The trainable parameters of ``network`` as optimiser parameter groups.

    Weight decay pulls a parameter towards zero. For convolution and linear weights that is the
    intended regulariser; for a normalisation layer's scale and shift, and for biases, it only biases
    them towards zero (USB and the FixMatch reference code exclude them).

    Args:
        network: the model (a ``DistributedDataParallel`` wrapper is fine: its parameters are the module's).
        weight_decay: decay of the decayed group.
        decay_norm_and_bias: ``True``: one group, every parameter decayed (the plain optimiser); ``False``:
            a second group, with no decay, of normalisation-layer parameters and biases.

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay}]``, plus ``{"params": [...], "weight_decay": 0.0}``
        when ``decay_norm_and_bias`` is ``False`` (groups in the network's parameter order).
    """
    trainable = [(name, p) for name, p in network.named_parameters() if p.requires_grad]
    if decay_norm_and_bias:
        return [{"params": [p for _, p in trainable], "weight_decay": float(weight_decay)}]
    no_decay = set()
    for module in network.modules():
        if isinstance(module, NORM_LAYERS):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    for name, p in trainable:
        if name.endswith("bias"):
            no_decay.add(id(p))
    decayed = [p for _, p in trainable if id(p) not in no_decay]
    undecayed = [p for _, p in trainable if id(p) in no_decay]
    return [
        {"params": decayed, "weight_decay": float(weight_decay)},
        {"params": undecayed, "weight_decay": 0.0},
    ]
