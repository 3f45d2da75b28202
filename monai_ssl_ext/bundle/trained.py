"""The trained configuration: the settings a model was trained with, written beside its weights.

Training resolves every setting (bundle defaults, profile, overlays, command-line overrides) and
writes the values to ``<ckpt_dir>/train_config.json`` before the first iteration. Evaluation reads
them back, so it tests the model on the same data, classes, image size and network; inference reads
the ones it needs (classes, modality, image size, channels, network); export embeds them as plain
values in the TorchScript model's configuration and derives the declared input and output shapes
from them. A model trained by the bundle and its description therefore agree; weights brought from
elsewhere, without the file, run with the bundle's own settings (a warning says so) and a network they
do not fit is refused in one line.

The file holds JSON values only. Nothing read from it is ever evaluated: configs look values up
by key (``"$@trained['image_size']"``), so a path or a class name containing ``$`` or ``@`` stays
a string.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from monai_ssl_ext.bundle.literal import inert
from monai_ssl_ext.transforms.profiles import PROFILES
from monai_ssl_ext.utils import is_main_process, write_json

logger = logging.getLogger("monai_ssl_ext.bundle")

__all__ = [
    "PATH_SETTINGS",
    "RESUMABLE_CHANGES",
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
    if location.suffix in (".pt", ".pth", ".ts", ".ckpt") or location.is_file():
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


# settings holding paths: recorded absolute, so that another working folder reads the same files
PATH_SETTINGS = ("datalist", "data_root", "pretrained_weights")
# settings a resumed run may change: extending a run is resuming it with more iterations
RESUMABLE_CHANGES = ("num_iterations",)


def _absolute_paths(settings: dict[str, Any]) -> dict[str, Any]:
    out = dict(settings)
    for key in PATH_SETTINGS:
        value = out.get(key)
        if isinstance(value, str) and value and Path(value).expanduser().exists():
            out[key] = str(Path(value).expanduser().resolve())
    return out


def write_trained_config(ckpt_dir: str | os.PathLike, settings: Mapping[str, Any], resume_from: Any = None) -> Path:
    """Write the resolved ``settings`` to ``<ckpt_dir>/train_config.json`` (atomically) and return its path.

    Paths that exist (``datalist``, ``data_root``, ``pretrained_weights``) are recorded absolute. Under
    ``torchrun`` the first process writes it; the others return the path.

    Args:
        ckpt_dir: the run's checkpoint folder.
        settings: the resolved settings (a training config's ``trained_config``).
        resume_from: the run's ``resume_from``; when set, the run continues the one recorded in the
            folder and may change only ``num_iterations``: any other difference is refused before
            training, instead of relabelling the weights with settings they were not trained with.

    Raises:
        TrainedConfigError: a resumed run with other settings than the recorded ones.
    """
    path = trained_config_path(ckpt_dir)
    if not is_main_process():
        return path
    record = _absolute_paths(_plain(settings))
    if resume_from not in (None, "", False) and path.is_file():
        previous = read_trained_config(path.parent)
        for key, value in record.items():
            if key not in RESUMABLE_CHANGES and key in previous and previous[key] != value:
                raise TrainedConfigError(
                    f"{path}: the run to resume was trained with {key}={previous[key]!r}, this run sets "
                    f"{key}={value!r}; resume with the same settings (only num_iterations may change)"
                )
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json(path, record, indent=4)


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
        logger.warning(f"{path} not found: the bundle's own settings are used for {Path(checkpoint).name}")
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
    size = settings["image_size"]
    spatial = [int(s) for s in size] if isinstance(size, (list, tuple)) else [int(size), int(size)]
    channels = int(settings["in_channels"])
    image = out["inputs"]["image"]
    image["num_channels"] = channels
    image["spatial_shape"] = spatial
    image["channel_def"] = _CHANNEL_NAMES.get(channels, {str(i): f"channel {i}" for i in range(channels)})
    image["modality"] = _dicom_modality(str(settings["modality"]))
    names = [str(n) for n in settings["class_names"]]
    for spec in out["outputs"].values():
        if spec.get("format") == "classes":
            spec["num_channels"] = len(names)
            spec["spatial_shape"] = [len(names)]
            spec["channel_def"] = {str(i): n for i, n in enumerate(names)}
        elif spec.get("type") == "image":
            spec["spatial_shape"] = list(spatial)
    return out


def freeze_settings(config: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """An inference config with ``settings`` written in as values and the trained-configuration lookup removed.

    The result is self-contained (what a TorchScript model embeds for MONAI Deploy): it reads no
    file beside the weights.
    """
    frozen = {k: copy.deepcopy(v) for k, v in config.items() if k not in ("trained", "fallback")}
    for key, value in settings.items():
        frozen[key] = inert(_plain(value))
    return frozen


def _dicom_modality(modality: str) -> str:
    """The DICOM Modality a bundle's metadata declares for a modality profile ("OT" when unknown)."""
    profile = PROFILES.get(modality)
    return profile.dicom_modalities[0] if profile is not None else "OT"
