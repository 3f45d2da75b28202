"""Bundles rendered from one definition: shared templates plus one specification per method.

Model-zoo bundles must be standalone folders, so the configuration they share cannot be imported at
run time. It is written once instead, in ``definition/common/`` (train, evaluate, inference and
multi-GPU configs, profiles, metadata, logging), and each method states only what is its own in
``definition/<bundle>.json``:

- ``network_settings``: settings the network is built from (training and inference).
- ``settings``: other training settings the method adds or changes (``algorithm_name``...).
- ``training_settings``: settings that shape the optimisation only (an optimiser's learning rate...):
  recorded in the trained configuration like the others, but not read back by evaluation.
- ``class_names``: the classes inference declares when no trained configuration is beside the model.
- ``train``, ``evaluate``, ``inference``, ``multi_gpu_train``, ``metadata``, ``profiles/<name>``:
  entries set on the template, with MONAI's override rules: a ``#`` path sets one nested entry, a
  top-level key replaces the template's in place or is appended; ``"remove"`` lists keys to drop.
- ``overlays``: further config files of the bundle (``configs/<name>``), written as given.
- ``uses``: fragments of ``definition/common/fragments/`` shared by a family of bundles (see :func:`load_spec`).
- ``data_license``: the data sets whose licences ``docs/data_license.txt`` states.

:func:`render_bundle` turns that into the files of ``bundles/<bundle>/``; ``monai-ssl render_bundles``
writes them and ``--check`` lists files that differ from their rendering (a test runs the same check).
The bundle's ``docs/README.md`` is written by hand, except for the sections every bundle shares
(the trained configuration, weights, system configuration, logging), which are rendered between
two markers from ``definition/common/README_shared.md``.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from monai_ssl_ext.utils import write_text

from .trained import describe_network_io, trained_config_entries

__all__ = ["bundle_names", "check_rendered", "load_spec", "render_bundle", "write_bundle"]

DEFINITION = resources.files("monai_ssl_ext.bundle") / "definition"
COMMON = DEFINITION / "common"

# the data and input settings every bundle has, which evaluation reads back from the trained configuration
DATA_SETTINGS = (
    "seed",
    "algorithm_name",
    "datalist",
    "data_root",
    "classes",
    "label_budget",
    "split_seed",
    "modality",
    "frame",
    "crop_to_region",
    "image_size",
    "in_channels",
    "pretrained_weights",
)
# settings that shape the optimisation only: evaluation does not need them back
TRAINING_ONLY_SETTINGS = (
    "benchmark_mode",
    "strong_view",
    "num_iterations",
    "val_interval",
    "labeled_batch_size",
    "unlabeled_batch_size",
    "unlabeled_includes_labeled",
    "labeled_sampling",
    "class_weights",
    "logit_adjustment_tau",
    "distribution_alignment_target",
    "learning_rate",
    "weight_decay",
    "decay_norm_and_bias",
    "ema_eval",
    "ema_decay",
    "key_metric",
)
# every setting every bundle has: the trained configuration records them (with the method's own)
COMMON_SETTINGS = (*DATA_SETTINGS, *TRAINING_ONLY_SETTINGS)
# settings inference needs besides the network's own (modality profile and class list)
# (``pretrained_weights``: whether the network normalises its input as those weights expect; no file is read)
INFERENCE_SETTINGS = (
    "algorithm_name",
    "class_names",
    "modality",
    "frame",
    "crop_to_region",
    "image_size",
    "in_channels",
    "pretrained_weights",
)


def _read_json(path: Any) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _dumps(data: Any) -> str:
    return json.dumps(data, indent=4, ensure_ascii=False) + "\n"


def bundle_names() -> list[str]:
    """Names of the bundles the definition specifies."""
    return sorted(p.name[: -len(".json")] for p in DEFINITION.iterdir() if p.name.endswith(".json"))


def load_spec(name: str) -> dict[str, Any]:
    """The specification of bundle ``name`` (``definition/<name>.json``) with the fragments it ``uses``.

    A fragment (``definition/common/fragments/<fragment>.json``) holds what a family of bundles shares,
    in the sections of a specification (the classification + segmentation bundles: selection on AUC and
    Dice, masks in the pipeline, mask outputs at inference...). The bundle's own entries come first and
    win; a fragment's entries the bundle does not set follow them.
    """
    path = DEFINITION / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no bundle definition '{name}'; defined: {bundle_names()}")
    spec = _read_json(path)
    for fragment in spec.get("uses", []):
        fragment_path = COMMON / "fragments" / f"{fragment}.json"
        if not fragment_path.is_file():
            raise FileNotFoundError(f"{name}: no fragment '{fragment}' ({fragment_path})")
        for section, entries in _read_json(fragment_path).items():
            own = spec.get(section, {})
            if section == "profiles":
                spec[section] = {p: {**entries.get(p, {}), **own.get(p, {})} for p in {**entries, **own}}
            else:
                spec[section] = {**own, **{k: v for k, v in entries.items() if k not in own}}
    return spec


def _insert_after(config: dict[str, Any], anchor: str, entries: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with ``entries`` replacing keys in place, new keys placed after ``anchor``."""
    out: dict[str, Any] = {}
    new = {k: v for k, v in entries.items() if k not in config}
    for key, value in config.items():
        out[key] = entries.get(key, value)
        if key == anchor:
            out.update(new)
    if anchor not in config:
        out.update(new)
    return out


def _replace_or_insert(config: dict[str, Any], entries: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with ``entries``: existing keys replaced in place, a new key placed before the next
    existing key that ``entries`` names after it (so a method's ``classifier_def`` lands before the
    ``network_def`` it feeds), or at the end."""
    out = dict(config)
    pending: list[str] = []
    for key in entries:
        if key not in config:
            pending.append(key)
            continue
        if pending:
            keys = list(out)
            at = keys.index(key)
            head, tail = keys[:at], keys[at:]
            out = {**{k: out[k] for k in head}, **{k: entries[k] for k in pending}, **{k: out[k] for k in tail}}
            pending = []
        out[key] = entries[key]
    for key in pending:
        out[key] = entries[key]
    return out


def _set_nested(config: dict[str, Any], path: str, value: Any, overlay: bool = False) -> None:
    """Set the entry at MONAI id ``path`` (``a#b#0#c``); a top-level key may itself contain ``#``.

    The parent of the entry must exist: an override that names nothing in the template is an error,
    not a silently added key; in an ``overlay`` (a config merged over another, such as
    ``evaluate.json``) it is kept as a ``#`` key for MONAI to apply to the config below.
    """
    parts = path.split("#")
    for cut in range(len(parts) - 1, 0, -1):
        head = "#".join(parts[:cut])
        if head in config:
            node: Any = config[head]
            break
    else:
        if overlay:
            config[path] = value
            return
        raise KeyError(f"override '{path}': the template has no entry '{parts[0]}'")
    for part in parts[cut:-1]:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError) as e:
            raise KeyError(f"override '{path}': the template has no entry '{part}'") from e
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise KeyError(f"override '{path}': '{'#'.join(parts[:-1])}' is not a dict or a list")


def apply_overrides(
    config: dict[str, Any], overrides: Mapping[str, Any] | None, overlay: bool = False
) -> dict[str, Any]:
    """``config`` with ``overrides`` applied as MONAI merges config files (``#`` paths set nested entries).

    ``"remove"`` (a list of top-level keys) drops entries; a top-level key replaces the template's
    in place, so the rendered file keeps the template's order.
    """
    overrides = dict(overrides or {})
    removed = set(overrides.pop("remove", []))
    out = {k: copy.deepcopy(v) for k, v in config.items() if k not in removed}
    nested = {k: v for k, v in overrides.items() if "#" in k}
    out = _replace_or_insert(out, {k: v for k, v in overrides.items() if "#" not in k})
    for key, value in nested.items():
        _set_nested(out, key, copy.deepcopy(value), overlay)
    return out


def _profile_channels(modality: str) -> int:
    from monai_ssl_ext.transforms import get_profile

    return int(get_profile(modality).channels)


def _train_config(spec: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The rendered ``train.json`` and the names of its settings (what the trained configuration records)."""
    template = _read_json(COMMON / "train.json")
    settings = {**spec.get("network_settings", {}), **spec.get("settings", {}), **spec.get("training_settings", {})}
    config = _insert_after(template, "in_channels", settings)
    config = apply_overrides(config, spec.get("train"))
    names = [*COMMON_SETTINGS, *(k for k in settings if k not in COMMON_SETTINGS)]
    missing = [k for k in names if k not in config]
    if missing:
        raise KeyError(f"{spec['name']}: settings {missing} are recorded but not defined in train.json")
    config = _insert_after(config, "num_classes", {"trained_config": trained_config_entries(names)})
    return config, names


def _inference_config(spec: Mapping[str, Any], train: Mapping[str, Any]) -> dict[str, Any]:
    template = _read_json(COMMON / "inference.json")
    keys = [*INFERENCE_SETTINGS, *spec.get("network_settings", {})]
    fallback = {k: train[k] for k in keys if k != "class_names"}
    fallback = {"class_names": list(spec["class_names"]), **fallback}
    entries = {"fallback": fallback, **{k: f"$@trained[{k!r}]" for k in fallback}}
    config = _insert_after(template, "trained", entries)
    return apply_overrides(config, spec.get("inference"))


def _evaluate_config(spec: Mapping[str, Any], settings: Iterable[str]) -> dict[str, Any]:
    template = _read_json(COMMON / "evaluate.json")
    training_only = {*TRAINING_ONLY_SETTINGS, *spec.get("training_settings", {})}
    entries = {k: f"$@trained[{k!r}]" for k in settings if k not in training_only}
    # the trained class list, in its order: the head's outputs mean these classes whatever the manifest says
    entries["classes"] = "$@trained['class_names']"
    config = _insert_after(template, "trained", entries)
    config = apply_overrides(config, {"validate#handlers#2#extra#bundle": spec["name"]})
    return apply_overrides(config, spec.get("evaluate"), overlay=True)


def _metadata(spec: Mapping[str, Any], inference: Mapping[str, Any]) -> dict[str, Any]:
    meta = apply_overrides(_read_json(COMMON / "metadata.json"), spec.get("metadata"))
    fallback = dict(inference["fallback"])
    if fallback.get("in_channels") is None:
        fallback["in_channels"] = _profile_channels(fallback["modality"])
    meta["network_data_format"] = describe_network_io(meta["network_data_format"], fallback)
    return meta


def _data_license(spec: Mapping[str, Any]) -> str:
    licences = _read_json(COMMON / "data_licenses.json")
    parts = [licences["header"]]
    for name in ["synthetic", *spec.get("data_license", [])]:
        if name not in licences["datasets"]:
            raise KeyError(f"{spec['name']}: no licence text for data set '{name}' in data_licenses.json")
        parts.append(licences["datasets"][name])
    return "\n\n".join(parts) + "\n"


README_BEGIN = "<!-- shared sections: rendered from monai_ssl_ext/bundle/definition/common/README_shared.md -->"
README_END = "<!-- end of shared sections -->"


def render_readme(name: str, readme: str) -> str:
    """``readme`` (a bundle's hand-written README) with its shared sections rendered between the markers."""
    if README_BEGIN not in readme or README_END not in readme:
        raise ValueError(f"{name}/docs/README.md: the markers of the shared sections are missing ({README_BEGIN})")
    head, rest = readme.split(README_BEGIN, 1)
    tail = rest.split(README_END, 1)[1]
    shared = (COMMON / "README_shared.md").read_text(encoding="utf-8").replace("{bundle}", name)
    return f"{head}{README_BEGIN}\n{shared}{README_END}{tail}"


def render_bundle(name: str, readme: str | None = None) -> dict[str, str]:
    """The files of bundle ``name`` as ``{relative path: text}``.

    Args:
        name: a defined bundle.
        readme: the bundle's current ``docs/README.md``; given, the result includes it with its shared
            sections rendered.
    """
    spec = load_spec(name)
    train, settings = _train_config(spec)
    inference = _inference_config(spec, train)
    files = {
        "configs/train.json": _dumps(train),
        "configs/evaluate.json": _dumps(_evaluate_config(spec, settings)),
        "configs/inference.json": _dumps(inference),
        "configs/multi_gpu_train.json": _dumps(
            apply_overrides(_read_json(COMMON / "multi_gpu_train.json"), spec.get("multi_gpu_train"), overlay=True)
        ),
        "configs/metadata.json": _dumps(_metadata(spec, inference)),
        "configs/logging.conf": (COMMON / "logging.conf").read_text(encoding="utf-8"),
        "LICENSE": (COMMON / "LICENSE").read_text(encoding="utf-8"),
        "docs/data_license.txt": _data_license(spec),
    }
    for template_path in sorted((COMMON / "profiles").glob("*.json")):
        profile = template_path.stem
        template = _read_json(template_path)
        files[f"configs/profiles/{profile}.json"] = _dumps(
            apply_overrides(template, spec.get("profiles", {}).get(profile))
        )
    for overlay, content in spec.get("overlays", {}).items():
        files[f"configs/{overlay}"] = _dumps(content)
    if readme is not None:
        files["docs/README.md"] = render_readme(name, readme)
    return files


def _committed_readme(root: Path) -> str | None:
    path = root / "docs" / "README.md"
    return path.read_text(encoding="utf-8") if path.is_file() else None


def write_bundle(name: str, bundles_dir: str | os.PathLike) -> list[Path]:
    """Write the rendered files of ``name`` under ``bundles_dir/<name>``; return the files that changed."""
    root = Path(bundles_dir) / name
    changed = []
    for rel, text in render_bundle(name, _committed_readme(root)).items():
        path = root / rel
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, text)
        changed.append(path)
    return changed


def check_rendered(name: str, bundles_dir: str | os.PathLike) -> list[str]:
    """Files of bundle ``name`` that differ from their rendering, are missing, or are configs it does not render."""
    root = Path(bundles_dir) / name
    rendered = render_bundle(name, _committed_readme(root))
    differing = []
    for rel, text in rendered.items():
        path = root / rel
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            differing.append(rel)
    # a config file the definition no longer renders (a removed overlay) would still be shipped
    if (root / "configs").is_dir():
        for path in sorted((root / "configs").rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_file() and rel not in rendered:
                differing.append(rel)
    return differing
