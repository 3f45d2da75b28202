"""TorchScript export of a trained bundle model, described by the settings it was trained with.

MONAI's ``ckpt_export`` embeds the config files it is given and one metadata file, as they are. A
model trained at 64 px with a ResNet-10 from the smoke profile would then carry a config that builds
a 224 px ResNet-18 and metadata that declares one. :func:`export_bundle` instead:

1. reads the bundle's inference config (and overlays), which looks its settings up in the trained
   configuration beside the checkpoint (``train_config.json``, written by training);
2. checks that the checkpoint fits the network those settings build (one line naming the first
   differing key if not);
3. embeds one merged inference config with the settings written in as values (no file lookups:
   MONAI Deploy runs it as it is), and metadata whose input channels, spatial shape, modality and
   class names are the trained ones. Metadata files are merged in order (later files win; ``a::b::c``
   keys set one nested entry) for descriptive overlays such as ``ham10000_metadata.json``;
4. adds what an inference application needs to run the model on pixels it has read itself, with no file
   loader in its pipeline (:data:`DEPLOY_ENTRIES`: the reader of the modality profile, and the preprocessing
   after it), the bundle's name (``bundle_name``), and the DICOM images the model reads, as metadata
   ``network_data_format.inputs.image.dicom_selection`` (Modality and SOP Class UID values, see
   :class:`~monai_ssl_ext.deploy.selection.DicomSelection`).

The TorchScript file is replaced only once the export has succeeded.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser, ckpt_export

from monai_ssl_ext.bundle.literal import inert
from monai_ssl_ext.bundle.trained import describe_network_io, freeze_settings, read_trained_config
from monai_ssl_ext.deploy.selection import DicomSelection
from monai_ssl_ext.engines.model_loader import load_model_weights
from monai_ssl_ext.utils import atomic_path
from monai_ssl_ext.utils.weights import load_weights_file

__all__ = ["DEPLOY_ENTRIES", "export_bundle", "merged_metadata"]

#: config entries embedded for MONAI Deploy: the profile's reader (a file in, the image in memory out: the
#: application's loader runs it) and the rest of the preprocessing, which opens no file
DEPLOY_ENTRIES = {
    "deploy_reader": {"_target_": "Compose", "transforms": "$@profile.read(False)"},
    "deploy_preprocessing": "$@profile.preprocess(keep_meta=True, read=False)",
}


#: inference settings that replace the DICOM images a profile reads (Modality, SOP Class UID values)
_ACCEPT = ("accept_modalities", "accept_sop_classes")


def _bundle_files(bundle: Path, names: str | Sequence[str], kind: str) -> list[str]:
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError(f"no {kind} file given")
    files = []
    for name in names:
        path = Path(name) if Path(name).is_absolute() else bundle / "configs" / name
        if not path.is_file():
            raise FileNotFoundError(f"{kind} file not found: {path}")
        files.append(str(path))
    return files


def merged_metadata(files: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """The metadata of ``files`` merged in order, as MONAI merges a list of config files."""
    parser = ConfigParser()
    parser.read_meta([str(f) for f in files])
    return parser.get(parser.meta_key)


def export_bundle(
    bundle: str | os.PathLike,
    ckpt_file: str | os.PathLike,
    filepath: str | os.PathLike,
    configs: str | Sequence[str] = ("inference.json",),
    metadata: str | Sequence[str] = ("metadata.json",),
    net_id: str = "network_def",
    **overrides: Any,
) -> Path:
    """Export the checkpoint of ``bundle``'s network to TorchScript, described by its trained settings.

    Args:
        bundle: bundle folder.
        ckpt_file: state dict of the network (``models/model.pt``); its ``train_config.json`` beside it
            gives the settings (without one, the bundle's own defaults).
        filepath: TorchScript file to write; replaced only once the export has succeeded.
        configs: config files, names under ``configs/`` or absolute paths, merged in order.
        metadata: metadata files, merged in order; the result, with the network's input and outputs
            stated from the settings, is embedded in the model.
        net_id: id of the network definition in the configs.
        overrides: config values that replace the trained settings (for a checkpoint trained elsewhere).

    Returns:
        ``filepath``.

    Raises:
        FileNotFoundError: a missing checkpoint, config or metadata file (named).
        ValueError: an override that names no setting of the configs.
        TrainedConfigError: an unreadable ``train_config.json`` beside the checkpoint.
        CheckpointMismatchError: the checkpoint does not fit the network (checkpoint and key named).
    """
    bundle = Path(bundle)
    ckpt_file = Path(ckpt_file)
    if not ckpt_file.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt_file}")
    load_weights_file(ckpt_file, map_location="cpu")  # an unsafe or damaged file is refused before anything else
    parser = ConfigParser()
    parser.read_config(_bundle_files(bundle, configs, "config"))
    unknown = [key for key in overrides if key not in parser]
    if unknown:
        raise ValueError(f"{bundle.name}: no setting {unknown[0]!r} in {', '.join(map(str, configs))}")
    if "fallback" in parser:  # a missing or unreadable trained configuration, named here in one line
        # read once: its values (class names from data among them) enter the config as literals
        parser.update({"trained": inert(read_trained_config(ckpt_file, fallback=parser.get("fallback")))})
    parser.update({"bundle_root": str(bundle), "checkpoint": str(ckpt_file), **overrides})
    setting_names = list(parser.get("fallback", {})) or [k for k in overrides if k in parser]
    settings = {name: parser.get_parsed_content(name) for name in setting_names}
    settings["in_channels"] = parser.get_parsed_content("profile").channels if "profile" in parser else None
    load_model_weights(parser.get_parsed_content(net_id), ckpt_file)

    meta = merged_metadata(_bundle_files(bundle, metadata, "metadata"))
    if {"image_size", "modality", "class_names"} <= set(settings):
        meta["network_data_format"] = describe_network_io(meta["network_data_format"], settings)
    frozen = freeze_settings(parser.config, settings)
    if "profile" in parser:
        profile = parser.get_parsed_content("profile")
        accept = {k: parser.get_parsed_content(k) if k in parser else None for k in _ACCEPT}
        selection = DicomSelection.for_profile(profile, accept["accept_modalities"], accept["accept_sop_classes"])
        image_in = meta.get("network_data_format", {}).get("inputs", {}).get("image")
        if isinstance(image_in, dict):
            image_in["dicom_selection"] = selection.to_metadata()
        frozen.update({**DEPLOY_ENTRIES, "bundle_name": inert(bundle.resolve().name)})
    target = Path(filepath)
    with tempfile.TemporaryDirectory() as tmp, atomic_path(target) as tmp_ts:
        meta_file = Path(tmp) / "metadata.json"
        meta_file.write_text(json.dumps(meta, indent=4))
        config_file = Path(tmp) / "inference.json"  # the name MONAI Deploy looks for inside model.ts
        config_file.write_text(json.dumps(frozen, indent=4))
        ckpt_export(
            net_id=net_id,
            filepath=str(tmp_ts),
            ckpt_file=str(ckpt_file),
            meta_file=str(meta_file),
            config_file=str(config_file),
            bundle_root=str(bundle),
        )
    return target
