"""One call that builds a manifest with any builder, writes it atomically and writes the skip report beside it."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from monai_ssl_ext.data.builders.busi import build_busi
from monai_ssl_ext.data.builders.chest_xray import build_chest_xray
from monai_ssl_ext.data.builders.common import BuildReport, check_on_error
from monai_ssl_ext.data.builders.csv_list import build_csv_list
from monai_ssl_ext.data.builders.dicom_dir import build_dicom_dir
from monai_ssl_ext.data.builders.folder import build_folder
from monai_ssl_ext.data.builders.ham10000 import build_ham10000
from monai_ssl_ext.data.builders.medmnist import build_medmnist
from monai_ssl_ext.data.builders.nct_crc import build_nct_crc
from monai_ssl_ext.data.builders.unlabeled import add_unlabeled_folder
from monai_ssl_ext.data.builders.verify import HEALTHY_CLASSES, verify_manifest
from monai_ssl_ext.data.manifest import Manifest

__all__ = ["BUILDERS", "build_manifest", "default_report_path"]

logger = logging.getLogger(__name__)

# source name -> builder; each takes the data set path first, then classes=, seed= (not medmnist), name=
BUILDERS: dict[str, Callable[..., Manifest]] = {
    "busi": build_busi,
    "medmnist": build_medmnist,
    "ham10000": build_ham10000,
    "chest_xray": build_chest_xray,
    "nct_crc": build_nct_crc,
    "folder": build_folder,
    "csv": build_csv_list,
    "dicom": build_dicom_dir,
}


def default_report_path(output: str | os.PathLike) -> Path:
    """Where :func:`build_manifest` writes the skip report of ``output``: ``<stem>.skipped.csv`` beside it.

    CSV rather than JSON so that a tool listing a folder's manifests (``*.json``) does not take it for one.
    """
    output = Path(output)
    return output.with_name(f"{output.stem}.skipped.csv")


def _data_root(source: str, path: str | os.PathLike, output: Path, options: dict[str, Any]) -> Path:
    """The folder a built manifest's paths are relative to."""
    if source == "medmnist":
        return output.parent
    if source == "csv":
        return Path(options.get("root") or Path(path).parent)
    return Path(path)


def _as_classes(classes: str | Sequence[str] | None) -> list[str] | None:
    if classes is None:
        return None
    if isinstance(classes, str):
        names = [c.strip() for c in classes.split(",") if c.strip()]
    else:
        names = [str(c) for c in classes]
    return names or None


def build_manifest(
    source: str,
    path: str | os.PathLike,
    output: str | os.PathLike,
    classes: str | Sequence[str] | None = None,
    seed: int = 0,
    name: str | None = None,
    on_error: str = "raise",
    report: str | os.PathLike | None = None,
    verify: bool = False,
    empty_mask_classes: Sequence[str] = HEALTHY_CLASSES,
    unlabeled: str | os.PathLike | None = None,
    **options: Any,
) -> Manifest:
    """Build a manifest from a data set as distributed and write it to ``output`` (atomically).

    Args:
        source: the builder, one of :data:`BUILDERS`: ``busi``, ``medmnist``, ``ham10000``, ``chest_xray``,
            ``nct_crc``, ``folder``, ``csv``, ``dicom``.
        path: what the builder reads: the data set folder (the data root of the manifest), or the
            ``.npz`` file for ``medmnist`` (its images are written as PNG files beside ``output``) or
            the CSV file for ``csv``.
        output: the manifest JSON to write.
        classes: keep only these classes, in this order (a list or a comma-separated string); for
            ``csv`` and ``dicom`` the full class list.
        seed: split seed (``medmnist`` keeps the official splits).
        name: manifest name (default: the builder's).
        on_error: ``"raise"`` (stop at the first problem, naming the file) or ``"skip"`` (leave the file
            out and record it in the report).
        report: where to write the report of the files left out (``.csv`` or ``.json``); default
            :func:`default_report_path`. It is written when ``on_error="skip"``, when ``report`` is
            given, or when some file was left out anyway (a non-DICOM file in a DICOM folder).
        verify: also load every image and mask as training will (see
            :func:`~monai_ssl_ext.data.builders.verify.verify_manifest`): unreadable images, masks that
            cannot be matched to their image and empty lesion masks stop the build or, with
            ``on_error="skip"``, are left out and reported.
        empty_mask_classes: with ``verify``, classes whose masks may be empty (healthy images).
        unlabeled: a folder of images without labels (relative to the data root, or absolute), listed in the
            manifest's ``unlabeled`` list (:func:`~monai_ssl_ext.data.builders.unlabeled.add_unlabeled_folder`);
            with ``verify`` they are read too.
        options: further arguments of the builder (``labels=``, ``key=``, ``group_by=``, ``root=``...).

    Raises:
        KeyError: unknown ``source``.
        ValueError: an option the builder does not take, or a bad ``on_error``.
        FileNotFoundError, ManifestError: from the builder; the message names the file.
    """
    if source not in BUILDERS:
        raise KeyError(f"unknown manifest source '{source}'; choose one of {sorted(BUILDERS)}.")
    check_on_error(on_error)
    if unlabeled is not None and source == "medmnist":
        raise ValueError("--unlabeled: a MedMNIST archive has no folder of unlabeled images beside it.")
    builder = BUILDERS[source]
    accepted = inspect.signature(builder).parameters
    unknown = sorted(k for k in options if k not in accepted)
    if unknown:
        takes = sorted(k for k in accepted if k not in ("root", "npz", "csv_path", "output_dir"))
        raise ValueError(f"the {source} builder does not take {unknown}; it takes {takes}.")
    out = Path(output)
    record = BuildReport(source, path, on_error)
    if source == "medmnist":
        manifest = builder(path, out.parent, classes=_as_classes(classes), name=name, **options)
    else:
        manifest = builder(
            path, classes=_as_classes(classes), seed=seed, name=name, on_error=on_error, report=record, **options
        )
    if unlabeled is not None:
        manifest = add_unlabeled_folder(manifest, unlabeled, _data_root(source, path, out, options), record)
    if verify:
        manifest = verify_manifest(manifest, _data_root(source, path, out, options), record, empty_mask_classes)
    manifest.save(out)
    logger.info("wrote %s\n%s", out, manifest.summary())
    if on_error == "skip" or report is not None or record.skipped:
        written = record.write(report if report is not None else default_report_path(out))
        logger.info("%s; report: %s", record.summary(), written)
    return manifest
