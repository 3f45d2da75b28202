"""Read a weights file without running code from it, and say in one line what is wrong with a bad one."""

from __future__ import annotations

import os
import pickle
from typing import Any

import torch

__all__ = ["UnreadableWeightsError", "load_weights_file"]


class UnreadableWeightsError(ValueError):
    """A weights file that is not a weights-only PyTorch file, or not a PyTorch file at all."""


def load_weights_file(path: str | os.PathLike, map_location: Any = None) -> Any:
    """``torch.load(path, weights_only=True)``, with a one-line error naming the file when it fails.

    ``weights_only`` refuses a pickle that would build arbitrary Python objects (and so could run code);
    that refusal, and a truncated or foreign file, become :class:`UnreadableWeightsError` naming the file.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnreadableWeightsError(
            f"{path}: not a weights-only checkpoint, refused (loading it would have to run code it contains: "
            f"{detail[:160]}); save the weights with torch.save(model.state_dict(), path)"
        ) from None
    except (RuntimeError, EOFError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnreadableWeightsError(
            f"{path}: cannot be read as a PyTorch weights file ({detail[:160]}): truncated, or not a checkpoint"
        ) from None
