"""Any data set laid out as one folder per class (the ``ImageFolder`` layout), with optional masks beside the images.

::

    root/
        benign/     case_001.png  case_001_mask.png  case_002.png ...
        malignant/  p17/scan_3.dcm  p17/scan_4.dcm ...

- Every immediate sub-folder of ``root`` that holds an image is a class; images may sit in nested
  folders below it. An image is a file with a suffix that :mod:`monai_ssl_ext.io` reads (Pillow rasters,
  ``.dcm``, ``.nii``, ``.nii.gz``); other files are recorded in the report and left out.
- A file named ``<stem>_mask<suffix>``, ``<stem>_mask_<n><suffix>`` or ``<stem>_segmentation<suffix>``
  is a mask of ``<stem>`` in the same folder (several masks: their union).
- Groups (patients) can be read from the path with a regular expression, for example ``r"^(p\\d+)/"``
  for one folder per patient inside each class folder; the group is stored as a salted hash.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from monai_ssl_ext.data.anonymise import hash_identifier, hash_policy
from monai_ssl_ext.data.builders.common import (
    DEFAULT_FRACTIONS,
    IMAGE_SUFFIXES,
    BuildReport,
    image_suffix,
    split_entries,
)
from monai_ssl_ext.data.builders.csv_list import natural_key
from monai_ssl_ext.data.manifest import Manifest, ManifestError
from monai_ssl_ext.keys import DataKeys

__all__ = ["build_folder"]

logger = logging.getLogger(__name__)

_MASK = re.compile(r"^(?P<stem>.+?)(?:_mask(?:_\d+)?|_segmentation)$", re.IGNORECASE)


def _stem(name: str) -> str:
    return name[: len(name) - len(image_suffix(name))]


def _scan_class(
    root: Path, folder: Path, suffixes: tuple[str, ...], report: BuildReport
) -> list[tuple[Path, list[Path]]]:
    """``(image, [masks])`` under one class folder, in natural path order; problems go to ``report``."""
    images: dict[tuple[Path, str], Path] = {}
    masks: dict[tuple[Path, str], list[Path]] = {}
    broken: set[tuple[Path, str]] = set()
    for current, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for file in files:
            if file.startswith("."):
                continue
            path = Path(current) / file
            if image_suffix(file) not in suffixes:
                report.exclude(path, "not_image", f"suffix '{image_suffix(file) or '(none)'}' is not an image type.")
                continue
            match = _MASK.match(_stem(file))
            if path.stat().st_size == 0:
                report.problem(path, "empty_file", "empty file (0 bytes).")
                broken.add((path.parent, _stem(file)))
                continue
            if match:
                masks.setdefault((path.parent, match.group("stem")), []).append(path)
            else:
                images[(path.parent, _stem(file))] = path
    # the masks of an image already reported as broken are not reported again
    for key in sorted(set(masks) - set(images) - broken, key=lambda k: natural_key(masks[k][0].as_posix())):
        for mask in masks[key]:
            report.problem(mask, "orphan_mask", f"mask without an image '{key[1]}.*' beside it.")
    out = []
    for key in sorted(images, key=lambda k: natural_key(images[k].relative_to(root).as_posix())):
        found = sorted(masks.get(key, []), key=lambda p: natural_key(p.name))
        out.append((images[key], found))
    return out


def build_folder(
    root: str | os.PathLike,
    classes: Sequence[str] | None = None,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    name: str | None = None,
    on_error: str = "raise",
    report: BuildReport | None = None,
    salt: str | bytes | None = None,
    suffixes: Sequence[str] | None = None,
    group_pattern: str | None = None,
    require_masks: bool = False,
) -> Manifest:
    """A manifest of a folder with one sub-folder per class (see the module docstring), split 70/10/20.

    The split is stratified by class, keeps each group whole, and is drawn over every class folder
    found before being restricted to ``classes``, so manifests of different class subsets built with
    one seed agree on every image's split.

    Args:
        root: the data root, holding the class folders.
        classes: keep only these classes, in this order; ``None`` keeps every class folder that holds
            an image, in natural sort order of the folder names.
        seed: split seed.
        fractions: training, validation and test shares.
        name: manifest name (default: the folder's name).
        on_error: ``"raise"`` or ``"skip"``.
        report: a report to fill (one is made otherwise).
        salt: salt of the group hash.
        suffixes: image suffixes to take (default :data:`~monai_ssl_ext.data.builders.common.IMAGE_SUFFIXES`).
        group_pattern: regular expression searched in each image's path relative to its class folder
            (POSIX separators); its group ``group``, or else its first group, or else the whole match
            is the group id. An image it does not match is a problem.
        require_masks: treat an image without a mask as a problem.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ManifestError: no class folder with images, a class of ``classes`` without a folder or images,
            or (unless ``on_error="skip"``) an empty file, a mask without an image, an image without a
            mask while ``require_masks`` is set, a path that ``group_pattern`` does not match.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    report = BuildReport.attach(report, "folder", root, on_error)
    wanted = tuple(s.lower() if s.startswith(".") else "." + s.lower() for s in (suffixes or IMAGE_SUFFIXES))
    pattern = re.compile(group_pattern) if group_pattern else None
    folders = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: natural_key(p.name)
    )
    if classes is not None:
        missing = [c for c in classes if not (root / c).is_dir()]
        if missing:
            raise ManifestError(f"{root}: no folder for class(es) {missing}; found {[p.name for p in folders]}.")
    scanned = {}
    for folder in folders:
        found = _scan_class(root, folder, wanted, report)
        if found:
            scanned[folder.name] = found
        else:
            report.exclude(folder, "empty_folder", "no image file; not a class.")
    if not scanned:
        raise ManifestError(f"{root}: no class folder with images ({', '.join(wanted)}).")
    empty = [c for c in (classes or []) if c not in scanned]
    if empty:
        raise ManifestError(f"{root}: class folder(s) {empty} hold no image.")
    present = list(scanned)
    entries = []
    for label, cls in enumerate(present):
        for image, masks in scanned[cls]:
            rel = image.relative_to(root).as_posix()
            entry: dict = {DataKeys.IMAGE: rel, DataKeys.LABEL: label}
            if masks:
                paths = [m.relative_to(root).as_posix() for m in masks]
                entry[DataKeys.MASK] = paths[0] if len(paths) == 1 else paths
            elif require_masks:
                report.problem(image, "missing_mask", "no mask beside it (expected '<name>_mask.<suffix>').")
                continue
            if pattern is not None:
                inside = image.relative_to(root / cls).as_posix()
                match = pattern.search(inside)
                if not match:
                    report.problem(
                        image, "missing_group", f"group pattern '{pattern.pattern}' does not match '{inside}'."
                    )
                    continue
                value = match.groupdict().get("group") or (match.group(1) if pattern.groups else match.group(0))
                entry[DataKeys.GROUP] = hash_identifier(value, salt)
            entries.append(entry)
    logger.info(
        "folder %s: %d images in %d classes, %d left out", root.name, len(entries), len(present), len(report.skipped)
    )
    kept = list(classes) if classes is not None else present
    source: dict = {"builder": "folder", "classes_found": present}
    if pattern is not None:
        source.update(group_pattern=pattern.pattern, id_hash=hash_policy(salt))
    return split_entries(
        entries,
        present,
        name=name or root.name,
        description=f"One folder per class ({', '.join(kept)}); paths are relative to the data root.",
        source=source,
        fractions=fractions,
        seed=seed,
        report=report,
        keep=kept,
    )
