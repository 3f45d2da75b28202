"""The model-zoo checks of a bundle: metadata schema, network input/output shapes, TorchScript export.

Runs MONAI's own ``verify_metadata``, ``verify_net_in_out`` and ``ckpt_export`` (what
``python -m monai.bundle <command>`` runs), then loads the exported TorchScript model and checks
that it predicts what the eager network predicts.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser, verify_metadata, verify_net_in_out

from .export import export_bundle

__all__ = ["BundleCheckError", "check_bundle"]

logger = logging.getLogger("monai_ssl_ext.deploy")

DEFAULT_SCHEMA = Path(__file__).resolve().parents[2].parent / "shared" / "schemas" / "meta_schema_20240725.json"


class BundleCheckError(AssertionError):
    """A bundle failed one of the checks; the message says which and why."""


def _input_shape(meta: dict, key: str = "image") -> tuple[int, ...]:
    spec = meta["network_data_format"]["inputs"][key]
    spatial = [int(s) if isinstance(s, int) or str(s).isdigit() else 64 for s in spec["spatial_shape"]]
    return (1, int(spec["num_channels"]), *spatial)


def _verify_named_outputs(config_file: Path, meta_file: Path, net_id: str, overrides: dict[str, Any]) -> None:
    """``verify_net_in_out`` for a network with several named outputs (a dict), which MONAI's check cannot read.

    Each output declared under ``network_data_format.outputs`` must be returned with the declared
    channels and dtype; an output of type ``image`` must also have the input's spatial shape.
    """
    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser.read_meta(str(meta_file))
    parser.update(overrides)
    meta = parser.get("_meta_")
    declared = meta["network_data_format"]["outputs"]
    network = parser.get_parsed_content(net_id).eval()
    shape = _input_shape(meta)
    with torch.no_grad():
        out = network(torch.rand(shape))
    if not isinstance(out, dict):
        raise ValueError(f"the metadata declares outputs {sorted(declared)} but the network returns one tensor")
    for key, spec in declared.items():
        if key not in out:
            raise ValueError(f"declared output '{key}' is not among the network's outputs {sorted(out)}")
        value = out[key]
        if value.shape[1] != int(spec["num_channels"]):
            declared_channels = spec["num_channels"]
            raise ValueError(f"output '{key}' has {value.shape[1]} channels, the metadata declares {declared_channels}")
        if str(value.dtype).replace("torch.", "") != spec.get("dtype", "float32"):
            raise ValueError(f"output '{key}' is {value.dtype}, the metadata declares {spec.get('dtype')}")
        if spec.get("type") == "image" and tuple(value.shape[2:]) != tuple(shape[2:]):
            raise ValueError(f"output '{key}' has spatial shape {tuple(value.shape[2:])}, the input {tuple(shape[2:])}")


def check_bundle(
    bundle: str | os.PathLike,
    schema: str | os.PathLike | None = None,
    inference_config: str = "inference.json",
    net_id: str = "network_def",
    work_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Run the model-zoo checks on ``bundle``; return what was checked (raises on the first failure).

    Args:
        bundle: bundle folder.
        schema: local copy of the metadata JSON schema (no download happens); defaults to the shared copy.
        inference_config: config (under ``configs/``) that defines the exported network.
        net_id: id of the network definition in that config.
        work_dir: where the export is written (a temporary folder by default).

    Checks:
        1. ``verify_metadata`` against the schema.
        2. ``verify_net_in_out``: the network maps the declared input shape to the declared channels.
        3. ``ckpt_export`` of a checkpoint of the network to TorchScript ``model.ts``.
        4. the TorchScript model loads and its prediction equals the eager network's.
    """
    bundle = Path(bundle)
    configs = bundle / "configs"
    meta_file = configs / "metadata.json"
    config_file = configs / inference_config
    for f in (meta_file, config_file, bundle / "LICENSE", bundle / "docs" / "README.md"):
        if not f.is_file():
            raise BundleCheckError(f"{bundle.name}: missing {f.relative_to(bundle)}")
    schema = Path(schema) if schema is not None else DEFAULT_SCHEMA
    if not schema.is_file():
        raise FileNotFoundError(f"metadata schema not found: {schema} (pass schema=...)")
    report: dict[str, Any] = {"bundle": bundle.name}

    try:
        verify_metadata(meta_file=str(meta_file), filepath=str(schema))
    except ValueError as e:
        raise BundleCheckError(f"{bundle.name}: metadata does not match the schema: {e}") from e
    report["metadata"] = "ok"

    overrides = {"bundle_root": str(bundle)}
    outputs = json.loads(meta_file.read_text())["network_data_format"]["outputs"]
    try:
        if "pred" in outputs:
            verify_net_in_out(
                net_id=net_id, meta_file=str(meta_file), config_file=str(config_file), device="cpu", **overrides
            )
        else:
            _verify_named_outputs(config_file, meta_file, net_id, overrides)
    except (ValueError, RuntimeError) as e:
        raise BundleCheckError(f"{bundle.name}: network input/output check failed: {e}") from e
    report["net_in_out"] = "ok"

    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        parser = ConfigParser()
        parser.read_config(str(config_file))
        parser.read_meta(str(meta_file))
        parser.update(overrides)
        torch.manual_seed(0)
        network = parser.get_parsed_content(net_id)
        ckpt = Path(tmp) / "model.pt"
        torch.save(network.state_dict(), ckpt)
        ts_path = export_bundle(bundle, ckpt, Path(tmp) / "model.ts", configs=inference_config, net_id=net_id)
        if not ts_path.is_file():
            raise BundleCheckError(f"{bundle.name}: ckpt_export wrote no {ts_path.name}")
        extra_files = {"metadata.json": "", "inference.json": ""}
        scripted = torch.jit.load(str(ts_path), map_location="cpu", _extra_files=extra_files)
        if not extra_files["metadata.json"]:
            raise BundleCheckError(f"{bundle.name}: the exported model does not embed metadata.json")
        x = torch.rand(_input_shape(parser.get("_meta_")))
        network.eval()
        with torch.no_grad():
            expected, got = network(x), scripted(x)
        if isinstance(expected, dict):
            if set(expected) != set(got):
                raise BundleCheckError(
                    f"{bundle.name}: TorchScript outputs {sorted(got)} differ from {sorted(expected)}"
                )
            pairs = [(expected[k], got[k]) for k in expected]
        else:
            pairs = [(expected, got)]
        for e, g in pairs:
            if e.shape != g.shape or not torch.allclose(e, g, atol=1e-5):
                raise BundleCheckError(f"{bundle.name}: the TorchScript model predicts differently from the network")
        report["export"] = {"ts_bytes": ts_path.stat().st_size, "output_shape": [list(e.shape) for e, _ in pairs]}
    logger.info(f"{bundle.name}: metadata, network input/output and TorchScript export verified")
    return report
