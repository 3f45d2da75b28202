"""A folder of images nobody labelled, added to a manifest's ``unlabeled`` list.

A site's expert-labelled images are usually a few hundred; the archive beside them holds thousands. Built
manifests list the labelled ones in their three splits; :func:`add_unlabeled_folder` walks a folder of the
archive (below the manifest's data root, or anywhere by absolute path) and lists each image under
``unlabeled``, which training adds to its unlabeled stream. With the class-folder layout (``folder`` builder)
the archive lies beside the class folders' parent, not inside it (every folder inside is a class):

- an image is what inference takes from a folder (:func:`~monai_ssl_ext.data.inputs.not_an_image_input`): a file
  with a suffix :mod:`monai_ssl_ext.io` reads, or a DICOM image by its ``DICM`` marker whatever its name (PACS
  exports name files ``IM0000``); masks (``_mask``, ``_segmentation``), DICOMDIR, DICOM reports, presentation
  states and other non-image objects, hidden and other files are left out and recorded;
- a file the manifest already lists (in any split) is not listed again: the folder may be the whole archive;
- empty files are problems (stop the build, or skipped and reported with ``on_error="skip"``).

Entries have no ``group``: a plain folder does not say which patient an image shows, so nothing here can keep a
validation or test patient's other images out. Use a folder of patients not in validation or test, or build
from DICOM with ``keep_unlabeled`` (:func:`~monai_ssl_ext.data.builders.dicom_dir.build_dicom_dir`), which
groups by patient and leaves held-out patients' images out.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from monai_ssl_ext.data.builders.common import BuildReport
from monai_ssl_ext.data.builders.csv_list import natural_key
from monai_ssl_ext.data.inputs import not_an_image_input
from monai_ssl_ext.data.manifest import ENTRY_LISTS, Manifest
from monai_ssl_ext.keys import DataKeys

__all__ = ["add_unlabeled_folder"]

logger = logging.getLogger(__name__)


def _listed_paths(manifest: Manifest, root: Path) -> set[str]:
    """Every image path the manifest lists, as absolute normalised paths."""
    out = set()
    for split in ENTRY_LISTS:
        for entry in manifest.split(split):
            path = Path(entry[DataKeys.IMAGE])
            out.add(os.path.normpath(path if path.is_absolute() else root / path))
    return out


def add_unlabeled_folder(
    manifest: Manifest, folder: str | os.PathLike, data_root: str | os.PathLike, report: BuildReport
) -> Manifest:
    """List every image under ``folder`` in ``manifest.unlabeled`` (in place) and return the manifest.

    Args:
        manifest: a built manifest whose paths are relative to ``data_root``.
        folder: the folder of unlabeled images: relative to ``data_root`` (``../archive`` beside it), or
            absolute. Paths are stored relative to ``data_root``, like the manifest's others.
        data_root: the manifest's data root.
        report: where left-out files and problems go.

    Raises:
        FileNotFoundError: ``folder`` is not a folder.
        ManifestError: an empty image file, unless ``report`` skips problems.
    """
    root = Path(data_root).expanduser().resolve()
    top = Path(folder).expanduser()
    top = (top if top.is_absolute() else root / top).resolve()
    if not top.is_dir():
        raise FileNotFoundError(f"unlabeled folder '{folder}' does not exist or is not a folder (under {root}).")
    listed = _listed_paths(manifest, root)
    found: list[Path] = []
    already = 0
    for current, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for file in files:
            path = Path(current) / file
            if file.startswith("."):
                continue
            if path.stat().st_size == 0:
                report.problem(path, "empty_file", "empty file (0 bytes).")
                continue
            reason = not_an_image_input(path)  # what inference passes over in a folder is passed over here too
            if reason is not None:
                report.exclude(path, "not_image", reason)
                continue
            if os.path.normpath(path) in listed:
                already += 1
                continue
            found.append(path)
    # relative to the data root even beside it (``../archive/...``), so the manifest moves with its data
    entries = [
        {DataKeys.IMAGE: Path(os.path.relpath(p, root)).as_posix()}
        for p in sorted(found, key=lambda p: natural_key(p.as_posix()))
    ]
    manifest.unlabeled.extend(entries)
    logger.info(
        "%s: %d unlabeled images added from %s (%d already listed in the manifest)",
        manifest.name,
        len(entries),
        top,
        already,
    )
    return manifest
