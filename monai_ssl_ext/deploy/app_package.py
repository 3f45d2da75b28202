"""An application folder for the MONAI Application Packager (``monai-deploy package``): ``monai-ssl deploy_app``.

The folder holds what the packager builds a MONAI Application Package (MAP, a container image) from:

- ``app.py``: the application (:class:`~monai_ssl_ext.deploy.app.ClassificationApp` or
  :class:`~monai_ssl_ext.deploy.app.ClassificationSegmentationApp`), runnable as ``python app.py -i -o -m``;
- ``__main__.py``: what the package runs (``python <app folder>``);
- ``app.yaml``: the application configuration the packager reads (title, version, resources);
- ``requirements.txt``: the Python packages the application needs (this package's own requirements and its
  DICOM extra; the packager installs the MONAI Deploy App SDK itself);
- ``monai_ssl_ext/``: a copy of this package, so the image needs no package index that holds it (``vendor``);
- ``README.md``: the commands to package and run it.

The model is not copied: ``monai-deploy package`` takes it with ``-m``.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
from pathlib import Path
from typing import Any

__all__ = ["APP_KINDS", "write_app_folder"]

#: the application a folder runs: ``classification`` (SR) or ``segmentation`` (SR and SEG)
APP_KINDS = {"classification": "ClassificationApp", "segmentation": "ClassificationSegmentationApp"}
_DISTRIBUTION = "monai-ssl-ext"
_EXTRAS = ("dicom",)


def _requirements() -> list[str]:
    """This package's runtime requirements and those of its DICOM extra, without environment markers."""
    try:
        declared = importlib.metadata.requires(_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
        declared = []
    out = []
    for requirement in declared:
        name, _, marker = requirement.partition(";")
        marker = marker.strip()
        if not marker or any(f'extra == "{extra}"' in marker for extra in _EXTRAS):
            out.append(name.strip())
    return out


def _version() -> str:
    from monai_ssl_ext import __version__

    return __version__


def _app_py(kind: str, title: str) -> str:
    return f'''"""MONAI Deploy application: {title}. For research use only, not for diagnosis."""

from monai_ssl_ext.deploy.app import {APP_KINDS[kind]} as App

if __name__ == "__main__":
    App().run()
'''


_MAIN_PY = """from app import App

if __name__ == "__main__":
    App().run()
"""


def _app_yaml(title: str, version: str) -> str:
    return f"""%YAML 1.2
---
application:
  title: {title}
  version: {version}
  input-formats: ["file"]
  output-formats: ["file"]

resources:
  cpu: 2
  gpu: 0
  memory: 4Gi
"""


def _readme(name: str, kind: str) -> str:
    what = "a DICOM SR per image" + (" and a DICOM SEG of the lesion" if kind == "segmentation" else "")
    return f"""# {name}

A MONAI Deploy application that writes {what} for the ultrasound images of a DICOM folder, in their
study (research use only). Run it here, then package it as a MONAI Application Package (needs Docker):

```bash
python app.py -i /path/to/dicom_folder -o output -m /path/to/model.ts
monai-deploy package . -c app.yaml -m /path/to/model.ts -t {name}:{_version()} --platform x86_64
monai-deploy run {name}-x64-workstation-dgpu-linux-amd64:{_version()} -i /path/to/dicom_folder -o output
```
"""


def _vendor(folder: Path) -> None:
    import monai_ssl_ext

    source = Path(monai_ssl_ext.__file__).resolve().parent
    target = folder / "monai_ssl_ext"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def write_app_folder(
    folder: str | os.PathLike,
    model: str | os.PathLike | None = None,
    kind: str = "auto",
    vendor: bool = True,
    name: str | None = None,
) -> dict[str, Any]:
    """Write a MONAI Deploy application folder (see the module description).

    Args:
        folder: the folder to write (created; files of an earlier call are replaced).
        model: the exported model the application will run: it decides ``kind`` and names the application.
        kind: ``classification``, ``segmentation`` or ``auto`` (from ``model``; without one, ``segmentation``
            needs a model that segments and ``classification`` works with any).
        vendor: copy this package into the folder.
        name: the application's name (default: the model's bundle, else the folder's name).

    Returns:
        ``{"folder", "kind", "name", "package_command"}``.

    Raises:
        ValueError: an unknown ``kind``, ``auto`` without a model, or ``segmentation`` for a model that does not
            segment.
    """
    deployed = None
    if model is not None:
        from monai_ssl_ext.deploy.runtime import DeployedModel

        deployed = DeployedModel(model, device="cpu")
    if kind == "auto":
        if deployed is None:
            raise ValueError("give the model (--model model.ts) or the kind (classification or segmentation)")
        kind = "segmentation" if deployed.segments else "classification"
    if kind not in APP_KINDS:
        raise ValueError(f"kind must be one of {sorted(APP_KINDS)} or auto, got {kind!r}")
    if kind == "segmentation" and deployed is not None and not deployed.segments:
        raise ValueError(f"{deployed.path}: the model does not segment; write a classification application")
    folder = Path(folder)
    name = name or (deployed.bundle if deployed is not None else folder.resolve().name)
    name = name.lower().replace("_", "-")
    title = f"{name} {'classification and segmentation' if kind == 'segmentation' else 'classification'}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "app.py").write_text(_app_py(kind, title))
    (folder / "__main__.py").write_text(_MAIN_PY)
    (folder / "app.yaml").write_text(_app_yaml(title, _version()))
    (folder / "requirements.txt").write_text("\n".join(_requirements()) + "\n")
    (folder / "README.md").write_text(_readme(name, kind))
    if vendor:
        _vendor(folder)
    model_arg = str(model) if model is not None else "model.ts"
    command = (
        f"monai-deploy package {folder} -c {folder / 'app.yaml'} -m {model_arg} -t {name}:{_version()} "
        "--platform x86_64"
    )
    return {"folder": str(folder), "kind": kind, "name": name, "package_command": command}
