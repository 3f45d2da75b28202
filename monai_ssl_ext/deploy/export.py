"""TorchScript export of a bundle's network with configuration and metadata overlays.

MONAI's ``ckpt_export`` merges a list of config files but reads a single metadata file. A bundle
trained with an overlay (HAM10000 on the SEMISE bundle: colour input, seven classes) needs the
metadata overlaid the same way, or the exported model declares the wrong input and outputs. This
module merges the metadata files in order (later files win; ``a::b::c`` keys set one nested
entry), writes the result to a temporary file, and calls ``ckpt_export`` with it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser, ckpt_export

from monai_ssl_ext.utils import atomic_path

__all__ = ["export_bundle", "merged_metadata"]


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
    """Export the checkpoint of ``bundle``'s network to TorchScript with merged configs and metadata.

    Args:
        bundle: bundle folder.
        ckpt_file: state dict of the network (``models/model.pt``).
        filepath: TorchScript file to write; replaced only once the export has succeeded.
        configs: config files, names under ``configs/`` or absolute paths, merged in order.
        metadata: metadata files, merged in order; the merged metadata is embedded in the model.
        net_id: id of the network definition in the configs.
        overrides: config values (``image_size=...``, ``backbone=...``), as on the command line.

    Returns:
        ``filepath``.
    """
    bundle = Path(bundle)
    ckpt_file = Path(ckpt_file)
    if not ckpt_file.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt_file}")
    config_files = _bundle_files(bundle, configs, "config")
    meta = merged_metadata(_bundle_files(bundle, metadata, "metadata"))
    target = Path(filepath)
    with tempfile.TemporaryDirectory() as tmp, atomic_path(target) as tmp_ts:
        meta_file = Path(tmp) / "metadata.json"
        meta_file.write_text(json.dumps(meta, indent=4))
        ckpt_export(
            net_id=net_id,
            filepath=str(tmp_ts),
            ckpt_file=str(ckpt_file),
            meta_file=str(meta_file),
            config_file=config_files,
            bundle_root=str(bundle),
            **overrides,
        )
    return target
