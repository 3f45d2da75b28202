"""The trained configuration: the settings a model was trained with, written beside its weights.

Training resolves every setting (bundle defaults, profile, overlays, command-line overrides) and
writes the values to ``<ckpt_dir>/train_config.json`` before the first iteration. Evaluation reads
them back, so it tests the model on the same data, classes, image size and network; inference reads
the ones it needs (classes, modality, image size, channels, network); export embeds them as plain
values in the TorchScript model's configuration and derives the declared input and output shapes
from them. A model and its description therefore cannot disagree.

The file holds JSON values only. Nothing read from it is ever evaluated: configs look values up
by key (``"$@trained['image_size']"``), so a path or a class name containing ``$`` or ``@`` stays
a string.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from monai_ssl_ext.utils import write_json

__all__ = [
    "TRAINED_CONFIG_NAME",
    "TrainedConfigError",
    "describe_network_io",
    "freeze_settings",
    "read_trained_config",
    "trained_config_entries",
    "trained_config_path",
    "write_trained_config",
]

TRAINED_CONFIG_NAME = "train_config.json"

# DICOM modality codes of the modality profiles (metadata ``network_data_format.inputs.image.modality``)
_DICOM_MODALITY = {"ultrasound": "US", "dermoscopy": "XC", "histology": "SM", "xray": "DX"}
_CHANNEL_NAMES = {1: {"0": "image"}, 3: {"0": "R", "1": "G", "2": "B"}}


class TrainedConfigError(ValueError):
    """The trained configuration is missing or unreadable; the message names the file."""


def trained_config_entries(names: Iterable[str]) -> dict[str, str]:
    """The ``trained_config`` entry of a training config: each setting by reference, resolved by MONAI.

    ``in_channels`` is recorded as the profile's resolved channel count and ``class_names`` as the
    manifest's classes, so the record is complete even where the setting was ``null``.
    """
    entries = {name: f"@{name}" for name in names}
    entries["in_channels"] = "$@profile.channels"
    entries["class_names"] = "@class_names"
    entries["num_classes"] = "@num_classes"
    return entries


def trained_config_path(location: str | os.PathLike) -> Path:
    """``train_config.json`` in ``location`` (a folder) or beside it (a checkpoint file)."""
    location = Path(location)
    if location.suffix in (".pt", ".pth", ".ts"):
        return location.parent / TRAINED_CONFIG_NAME
    return location / TRAINED_CONFIG_NAME


def _plain(value: Any) -> Any:
    """``value`` as JSON data (tuples as lists, paths as strings, tensors and arrays as lists)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"setting of type {type(value).__name__} cannot be recorded in {TRAINED_CONFIG_NAME}")


def write_trained_config(ckpt_dir: str | os.PathLike, settings: Mapping[str, Any]) -> Path:
    """Write the resolved ``settings`` to ``<ckpt_dir>/train_config.json`` (atomically) and return its path."""
    path = trained_config_path(ckpt_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json(path, _plain(settings), indent=4)


def read_trained_config(checkpoint: str | os.PathLike, fallback: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The trained configuration beside ``checkpoint`` (a weights file or its folder).

    Args:
        checkpoint: the model's weights (``models/model.pt``) or the folder holding them.
        fallback: settings to return where no trained configuration exists (a bundle's own
            defaults, for a model trained elsewhere). With a fallback the result has exactly its
            keys, trained values replacing defaults; without one, a missing file is an error.

    Raises:
        TrainedConfigError: no fallback and no file, or a file that is not a JSON object.
    """
    path = trained_config_path(checkpoint)
    if not path.is_file():
        if fallback is None:
            raise TrainedConfigError(
                f"{path}: no trained configuration beside the checkpoint; train the bundle first "
                "(training writes it), or copy the file that came with the weights"
            )
        return dict(fallback)
    try:
        trained = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TrainedConfigError(f"{path}: not a readable JSON file ({e})") from e
    if not isinstance(trained, dict):
        raise TrainedConfigError(f"{path}: expected a JSON object of settings, found {type(trained).__name__}")
    if fallback is None:
        return trained
    return {key: trained.get(key, default) for key, default in fallback.items()}


def describe_network_io(network_data_format: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """``network_data_format`` (bundle metadata) stating the input and outputs of a model with ``settings``.

    Sets the image input's channels (and their names), spatial shape and DICOM modality, the class
    output's channels and class names (an output of format ``classes``), and the spatial shape of
    image-shaped outputs (segmentation), from ``in_channels``, ``image_size``, ``modality`` and
    ``class_names``.
    """
    out = copy.deepcopy(dict(network_data_format))
    size = int(settings["image_size"])
    channels = int(settings["in_channels"])
    image = out["inputs"]["image"]
    image["num_channels"] = channels
    image["spatial_shape"] = [size, size]
    image["channel_def"] = _CHANNEL_NAMES.get(channels, {str(i): f"channel {i}" for i in range(channels)})
    image["modality"] = _DICOM_MODALITY.get(str(settings["modality"]), image.get("modality", "OT"))
    names = [str(n) for n in settings["class_names"]]
    for spec in out["outputs"].values():
        if spec.get("format") == "classes":
            spec["num_channels"] = len(names)
            spec["spatial_shape"] = [len(names)]
            spec["channel_def"] = {str(i): n for i, n in enumerate(names)}
        elif spec.get("type") == "image":
            spec["spatial_shape"] = [size, size]
    return out


def freeze_settings(config: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """An inference config with ``settings`` written in as values and the trained-configuration lookup removed.

    The result is self-contained (what a TorchScript model embeds for MONAI Deploy): it reads no
    file beside the weights.
    """
    frozen = {k: copy.deepcopy(v) for k, v in config.items() if k not in ("trained", "fallback")}
    for key, value in settings.items():
        frozen[key] = _inert(_plain(value))
    return frozen


def _inert(value: Any) -> Any:
    """``value`` with strings that MONAI would read as an expression, reference or macro made literal.

    A string from data that begins with ``$``, ``@`` or ``%`` becomes an expression that rebuilds
    it from hexadecimal digits, which contain none of MONAI's reference characters.
    """
    if isinstance(value, dict):
        return {k: _inert(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_inert(v) for v in value]
    if isinstance(value, str) and value.startswith(("$", "@", "%")):
        return f"$bytes.fromhex('{value.encode('utf-8').hex()}').decode('utf-8')"
    return value
