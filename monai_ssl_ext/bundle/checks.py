"""The model-zoo checks of a bundle folder, as model-zoo's ``ci/verify_bundle.py`` makes them, and ours.

What model-zoo's verification checks (its code is not used here; MONAI's own functions are):

- the bundle directory: ``configs/metadata.json`` and ``LICENSE`` must exist; ``configs/inference.json``
  and ``models/model.pt`` are preferred, with ``large_files.yml`` (or ``.yaml``/``.json``) pointing
  at files too large for the repository. Weights are never committed here, so the README must say
  how ``models/model.pt`` is made. The export check below always runs on freshly initialised weights
  (model-zoo's CI produces such "fake weights" too) and the bundle's declared settings, not on
  weights a local run may have left in ``models/``;
- ``version`` present in ``changelog``; the metadata against the schema (``verify_metadata``);
- the workflow properties MONAI declares for training and inference (``check_properties``:
  ``dataset_dir``, ``train#dataset``, ``train#inferer``..., and ``val_interval`` referenced by the
  ``ValidationHandler``'s ``interval``);
- the network's input/output shapes (``verify_net_in_out``); networks with several named outputs
  (a dict) cannot be read by it and are on model-zoo's ``exclude_verify_shape_list``: for them every
  declared output is checked here by name instead;
- TorchScript export (``ckpt_export``), loaded back and compared with the eager network.

What this project adds: ``docs/data_license.txt``; ``eval_metrics`` in the metadata, or, for a bundle
whose figures have not been measured yet, no ``eval_metrics`` and a README Performance section that says
so (:data:`UNMEASURED`), since a figure nobody measured must not be stated; README sections Performance,
System configuration and Limitations, and a command for every workflow.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser, ConfigWorkflow, verify_metadata, verify_net_in_out
from monai.utils import BundleProperty, BundlePropertyConfig

__all__ = ["BundleCheckError", "check_bundle"]

logger = logging.getLogger("monai_ssl_ext.bundle")

DEFAULT_SCHEMA = Path(__file__).resolve().parents[2].parent / "shared" / "schemas" / "meta_schema_20240725.json"
LARGE_FILE_LISTS = ("large_files.yml", "large_files.yaml", "large_files.json")
#: what the README's Performance section says (case aside) when a bundle states no ``eval_metrics`` yet
UNMEASURED = "no figures have been measured"
README_SECTIONS = ("Performance", "System configuration", "Limitations")
README_WORKFLOWS = (
    "run training",
    "run evaluating",
    "inference.json",
    "multi_gpu_train.json",
    "ckpt_export",
    "verify_metadata",
    "resume_from",
    "large_files.yml",
)


class BundleCheckError(AssertionError):
    """A bundle failed one of the checks; the message names the bundle, the check and why."""


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


def _check_directory(bundle: Path) -> str:
    configs = bundle / "configs"
    for rel in ("configs/metadata.json", "LICENSE", "configs/inference.json", "docs/README.md"):
        if not (bundle / rel).is_file():
            raise BundleCheckError(f"{bundle.name}: missing {rel}")
    if not (bundle / "docs" / "data_license.txt").is_file():
        raise BundleCheckError(f"{bundle.name}: missing docs/data_license.txt (the licences of the data it uses)")
    for name in ("train.json", "evaluate.json", "multi_gpu_train.json", "logging.conf"):
        if not (configs / name).is_file():
            raise BundleCheckError(f"{bundle.name}: missing configs/{name}")
    if (bundle / "models" / "model.pt").is_file():
        return "models/model.pt"
    listed = [name for name in LARGE_FILE_LISTS if (bundle / name).is_file()]
    if listed:
        return listed[0]
    return "none committed (random weights for the export check)"


def _performance_section(readme: str) -> str:
    """The text of the README's Performance section (up to the next heading of the same or a higher level)."""
    match = re.search(r"^(#+)\s+Performance\b.*$", readme, flags=re.MULTILINE)
    if match is None:
        return ""
    level = len(match.group(1))
    rest = readme[match.end() :]
    end = re.search(rf"^#{{1,{level}}}\s", rest, flags=re.MULTILINE)
    return rest[: end.start()] if end else rest


def _states_unmeasured(bundle: Path) -> bool:
    """Whether the bundle's README says, in its Performance section, that no figures have been measured."""
    readme = bundle / "docs" / "README.md"
    if not readme.is_file():
        return False
    return UNMEASURED in " ".join(_performance_section(readme.read_text()).lower().split())


def _check_metadata(bundle: Path, schema: Path) -> dict[str, Any]:
    meta_file = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    version = meta.get("version")
    if version is None or version not in meta.get("changelog", {}):
        raise BundleCheckError(f"{bundle.name}: metadata version {version!r} is not in its changelog")
    try:
        verify_metadata(meta_file=str(meta_file), filepath=str(schema))
    except ValueError as e:
        raise BundleCheckError(f"{bundle.name}: metadata does not match the schema: {e}") from e
    metrics = meta.get("eval_metrics")
    if "eval_metrics" not in meta and _states_unmeasured(bundle):
        return meta
    if not isinstance(metrics, dict) or not metrics or not all(isinstance(v, (int, float)) for v in metrics.values()):
        raise BundleCheckError(
            f"{bundle.name}: metadata needs eval_metrics, a dict of measured values (or none, with a README "
            f"Performance section that says '{UNMEASURED}')"
        )
    return meta


def _check_properties(bundle: Path) -> list[str]:
    """MONAI's training and inference workflow properties, checked on the config as written.

    ``ConfigWorkflow.check_properties`` instantiates every property, which for training means loading
    the data set; model-zoo's CI therefore checks inference only. The same tables
    (``monai.bundle.properties``) are checked here without instantiating anything: every required
    id exists, and optional ids referenced from elsewhere (the ``ValidationHandler``'s ``validator``
    and ``interval``) point at the property ids.
    """
    checked = []
    for workflow_type, config in (("train", "train.json"), ("infer", "inference.json")):
        workflow = ConfigWorkflow(
            config_file=str(bundle / "configs" / config),
            meta_file=str(bundle / "configs" / "metadata.json"),
            logging_file=str(bundle / "configs" / "logging.conf"),
            workflow_type=workflow_type,
        )
        missing = []
        for name, prop in workflow.properties.items():
            prop_id = prop.get(BundlePropertyConfig.ID)
            if prop.get(BundleProperty.REQUIRED, False):
                if prop_id not in workflow.parser:
                    missing.append(f"{name} ({prop_id})")
            elif not _optional_reference_fits(workflow.parser, name, prop):
                missing.append(f"{name} (referenced with another id)")
        if missing:
            raise BundleCheckError(f"{bundle.name}: {config} lacks the {workflow_type} workflow properties {missing}")
        checked.append(workflow_type)
    return checked


def _optional_reference_fits(parser: ConfigParser, name: str, prop: dict) -> bool:
    """Whether an optional property referenced from elsewhere is referenced by its property id.

    The rule of ``ConfigWorkflow._check_optional_id``; MONAI 1.6 writes property ids with ``::`` and
    compares them with the reference as written, so a config that references with ``#`` (both are
    valid separators) would fail it. The ids are compared here with the separator normalised.
    """
    ref_id = prop.get(BundlePropertyConfig.REF_ID)
    if ref_id is None:
        return True
    ref = None
    if name in ("evaluator", "val_interval"):  # the ValidationHandler's arguments, at an unknown index
        for handler in parser.get("train#handlers", None) or []:
            if isinstance(handler, dict) and handler.get("_target_") == "ValidationHandler":
                ref = handler.get(ref_id)
    else:
        ref = parser.get(ref_id, None)
    if not isinstance(ref, str) or ref.startswith("$"):
        return True  # absent, or an expression: nothing to compare

    def normalised(text: str) -> str:
        return text.replace("#", "::")

    return normalised(ref) == normalised("@" + str(prop[BundlePropertyConfig.ID]))


def _check_readme(bundle: Path, weights: str) -> None:
    readme = (bundle / "docs" / "README.md").read_text()
    headings = {m.group(1).strip() for m in re.finditer(r"^#+\s+(.+)$", readme, flags=re.MULTILINE)}
    for section in README_SECTIONS:
        if not any(h.startswith(section) for h in headings):
            raise BundleCheckError(f"{bundle.name}: docs/README.md has no '{section}' section")
    for text in README_WORKFLOWS:
        if text not in readme:
            raise BundleCheckError(f"{bundle.name}: docs/README.md does not show '{text}'")
    if weights.startswith("none") and "models/model.pt" not in readme:
        raise BundleCheckError(f"{bundle.name}: no weights committed and the README does not say how to make them")


def _check_export(bundle: Path, meta: dict[str, Any], inference_config: str, net_id: str) -> dict[str, Any]:
    from monai_ssl_ext.deploy.export import export_bundle

    with tempfile.TemporaryDirectory() as tmp:
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / inference_config))
        parser.update({"bundle_root": str(bundle), "checkpoint": str(Path(tmp) / "model.pt")})
        torch.manual_seed(0)
        network = parser.get_parsed_content(net_id)
        ckpt = Path(tmp) / "model.pt"
        torch.save(network.state_dict(), ckpt)
        ts_path = export_bundle(bundle, ckpt, Path(tmp) / "model.ts", configs=inference_config, net_id=net_id)
        extra_files = {"metadata.json": "", "inference.json": ""}
        scripted = torch.jit.load(str(ts_path), map_location="cpu", _extra_files=extra_files)
        if not extra_files["metadata.json"] or not extra_files["inference.json"]:
            raise BundleCheckError(f"{bundle.name}: the exported model does not embed its metadata and config")
        x = torch.rand(_input_shape(meta))
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
        return {"ts_bytes": ts_path.stat().st_size, "output_shape": [list(e.shape) for e, _ in pairs]}


def check_bundle(
    bundle: str | os.PathLike,
    schema: str | os.PathLike | None = None,
    inference_config: str = "inference.json",
    net_id: str = "network_def",
) -> dict[str, Any]:
    """Run the model-zoo checks (and ours) on ``bundle``; return what was checked. Raises on the first failure.

    Args:
        bundle: bundle folder.
        schema: local copy of the metadata JSON schema (no download happens); defaults to the shared copy.
        inference_config: config (under ``configs/``) that defines the exported network.
        net_id: id of the network definition in that config.

    Raises:
        BundleCheckError: the bundle fails a check (the message names it).
    """
    bundle = Path(bundle)
    schema = Path(schema) if schema is not None else DEFAULT_SCHEMA
    if not schema.is_file():
        raise FileNotFoundError(f"metadata schema not found: {schema} (pass schema=...)")
    report: dict[str, Any] = {"bundle": bundle.name}
    report["weights"] = _check_directory(bundle)
    meta = _check_metadata(bundle, schema)
    report["metadata"] = "ok"
    report["properties"] = _check_properties(bundle)
    _check_readme(bundle, report["weights"])
    report["readme"] = "ok"

    config_file = bundle / "configs" / inference_config
    meta_file = bundle / "configs" / "metadata.json"
    # a checkpoint path with no trained configuration beside it: the bundle's own declared settings are
    # checked, whatever a local training run left in models/
    overrides = {"bundle_root": str(bundle), "checkpoint": str(Path(tempfile.gettempdir()) / "untrained" / "model.pt")}
    try:
        if "pred" in meta["network_data_format"]["outputs"]:
            verify_net_in_out(
                net_id=net_id, meta_file=str(meta_file), config_file=str(config_file), device="cpu", **overrides
            )
            report["net_in_out"] = "verify_net_in_out"
        else:  # dict outputs: model-zoo's exclude_verify_shape_list; every named output checked here
            _verify_named_outputs(config_file, meta_file, net_id, overrides)
            report["net_in_out"] = "named outputs"
    except (ValueError, RuntimeError) as e:
        raise BundleCheckError(f"{bundle.name}: network input/output check failed: {e}") from e
    report["export"] = _check_export(bundle, meta, inference_config, net_id)
    logger.info(f"{bundle.name}: directory, metadata, properties, README, network input/output and export verified")
    return report
