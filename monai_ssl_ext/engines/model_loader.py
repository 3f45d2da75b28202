"""Load a model's weights for evaluation, inference and export, naming the first difference on a mismatch.

MONAI's ``CheckpointLoader`` passes a mismatch on as PyTorch's ``load_state_dict`` message: every
missing and unexpected key, often forty lines for a network trained with another depth. A user
needs one line: which checkpoint, which key, and what differs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import nn

from monai_ssl_ext.utils import load_weights_file, unwrap_model

__all__ = [
    "CheckpointMismatchError",
    "ModelLoader",
    "first_state_dict_difference",
    "load_model_weights",
    "state_dict_of",
]

logger = logging.getLogger("monai_ssl_ext.engines")


class CheckpointMismatchError(ValueError):
    """The checkpoint's weights do not fit the network; the message names the checkpoint and the key."""


def first_state_dict_difference(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> str | None:
    """The first difference between two state dicts, in the network's order, as a phrase; ``None`` if they fit."""
    for key, value in expected.items():
        if key not in found:
            return f"the network's '{key}' {tuple(value.shape)} is not in the checkpoint"
        if tuple(found[key].shape) != tuple(value.shape):
            return f"'{key}' is {tuple(found[key].shape)} in the checkpoint, {tuple(value.shape)} in the network"
    for key in found:
        if key not in expected:
            return f"the checkpoint's '{key}' {tuple(found[key].shape)} is not in the network"
    return None


def state_dict_of(checkpoint: Any, key: str | None = "model") -> Mapping[str, torch.Tensor]:
    """The weights in a loaded checkpoint: under ``key``, under ``"network"``, or the checkpoint itself."""
    # the best-model file holds the weights under "model" (or alone); a training checkpoint under "network"
    for name in (key, "network"):
        if name is not None and isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(name), Mapping):
            return checkpoint[name]
    return checkpoint


def load_model_weights(
    network: nn.Module, path: str | os.PathLike, key: str | None = "model", map_location: Any = "cpu"
) -> nn.Module:
    """Load the weights in ``path`` into ``network`` (unwrapped from DDP); return the network.

    Args:
        network: the model.
        path: a state dict, or a checkpoint holding it under ``key`` (MONAI's ``{"model": ...}``) or under
            ``"network"`` (a training checkpoint, ``checkpoint_epoch=N.pt``).
        key: entry of the checkpoint holding the weights.
        map_location: ``torch.load`` map location.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointMismatchError: the weights are not this network's; the message names the
            checkpoint and the first differing key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if map_location is not None and not isinstance(map_location, (dict, str)):
        map_location = str(map_location)
    state = state_dict_of(load_weights_file(path, map_location=map_location), key)
    model = unwrap_model(network)
    difference = first_state_dict_difference(model.state_dict(), state)
    if difference is not None:
        raise CheckpointMismatchError(
            f"{path}: the weights do not fit the network: {difference} (trained with other settings? "
            f"the train_config.json beside the weights states them)"
        )
    model.load_state_dict(state)
    return network


class ModelLoader:
    """Handler: load a model's weights when an engine starts (evaluation and inference workflows).

    Args:
        load_path: the weights (``models/model.pt``).
        network: the model to load into.
        key: entry of the checkpoint holding the weights (``"model"`` for the best-model checkpoint).
        map_location: ``torch.load`` map location.
    """

    def __init__(
        self, load_path: str | os.PathLike, network: nn.Module, key: str | None = "model", map_location: Any = None
    ) -> None:
        self.load_path = load_path
        self.network = network
        self.key = key
        self.map_location = map_location

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        load_model_weights(self.network, self.load_path, self.key, self.map_location)
        logger.info("loaded weights from %s", self.load_path)
