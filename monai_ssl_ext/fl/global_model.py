"""A federation's global model as a trained model of the bundle: weights beside a site's trained configuration.

FLARE's server keeps the global model (``FL_global_model.pt``, and ``best_FL_global_model.pt`` by the sites'
validation metric) as ``{"model": weights, ...}``; the bundle's evaluation, inference and export read a folder
with ``model.pt`` and the ``train_config.json`` of the training that made it. Every site writes its trained
configuration to its ``ckpt_dir`` (:class:`~monai_ssl_ext.fl.algo.SemiSupervisedMonaiAlgo`): the global model has
that site's network, classes and preprocessing, and is tested on that site's test split.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from monai_ssl_ext.bundle.trained import TRAINED_CONFIG_NAME
from monai_ssl_ext.engines.model_loader import state_dict_of
from monai_ssl_ext.utils.atomic import atomic_path
from monai_ssl_ext.utils.weights import load_weights_file

__all__ = ["export_global_model"]


def export_global_model(
    global_model: str | os.PathLike, site_ckpt_dir: str | os.PathLike, output: str | os.PathLike
) -> Path:
    """Write ``output/model.pt`` (the global weights) and ``output/train_config.json`` (the site's); return ``output``.

    Raises:
        FileNotFoundError: no global model file, or no trained configuration in ``site_ckpt_dir``.
        ValueError: the file holds no weights (a dict of tensors, or one under ``"model"``).
    """
    config = Path(site_ckpt_dir) / TRAINED_CONFIG_NAME
    if not config.is_file():
        raise FileNotFoundError(f"{config}: no trained configuration; give the ckpt_dir of a site that trained")
    if not Path(global_model).is_file():
        raise FileNotFoundError(f"global model not found: {global_model}")
    state = load_weights_file(global_model, map_location="cpu")  # weights only: no code from the file runs
    weights = state_dict_of(state)
    if not isinstance(weights, dict) or not weights or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ValueError(f"{global_model}: holds no weights (a dict of tensors, or one under 'model')")
    out = Path(output)
    with atomic_path(out / "model.pt") as tmp:
        torch.save({"model": dict(weights)}, tmp)
    with atomic_path(out / TRAINED_CONFIG_NAME) as tmp:
        shutil.copyfile(config, tmp)
    return out
