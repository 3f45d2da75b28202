"""Any labelled image list given as a CSV file: ``path,label[,mask][,group]``, one image per row.

::

    path,label,mask,group
    scans/a01.png,benign,masks/a01.png,patient-17
    scans/a02.png,malignant,masks/a02_1.png;masks/a02_2.png,patient-17

- ``path`` (or ``image``, ``filename``, ``file``): the image, relative to the data root (by default the
  CSV file's folder). An absolute path must lie under the data root, since manifests hold relative paths.
- ``label`` (or ``class``): the class name.
- ``mask`` (optional): one path, or several separated by ``;`` whose union is the mask; empty when none.
- ``group`` (optional): the patient or lesion the image comes from; stored as a salted hash
  (:mod:`monai_ssl_ext.data.anonymise`) and kept on one side of the split.
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
    BuildReport,
    pick_column,
    read_csv_rows,
    split_entries,
)
from monai_ssl_ext.data.manifest import Manifest, ManifestError
from monai_ssl_ext.keys import DataKeys

__all__ = ["IMAGE_COLUMNS", "build_csv_list", "natural_key", "read_labelled_csv"]

logger = logging.getLogger(__name__)

IMAGE_COLUMNS = ("path", "image", "filename", "file")
LABEL_COLUMNS = ("label", "class")


def natural_key(text: str) -> list:
    """Sort key that orders ``"2"`` before ``"10"`` and ignores case."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def _relative(value: str, root: Path) -> Path:
    """``value`` relative to ``root``; raises ``ValueError`` for an absolute path outside it."""
    path = Path(value)
    if not path.is_absolute():
        return path
    try:
        return path.relative_to(root)
    except ValueError:
        return path.resolve().relative_to(root.resolve())


def read_labelled_csv(
    csv_path: str | os.PathLike,
    root: str | os.PathLike,
    report: BuildReport,
    classes: Sequence[str] | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    mask_column: str | None = None,
    group_column: str | None = None,
    salt: str | bytes | None = None,
    stratum_column: str | None = None,
) -> list[dict]:
    """Entries of a labelled CSV: ``image`` and ``mask`` relative to ``root``, ``label`` as the class *name*.

    Checks each row (problems go to ``report``): an empty label, a label outside ``classes`` (when
    given), an empty path, a path outside ``root``, an image or mask that does not exist or is empty,
    an image listed twice, an empty group or stratum. A column named explicitly must exist; ``mask`` and
    ``group`` columns are used when present. ``stratum_column`` (a source centre...) is stored as a salted
    hash under ``stratum``, as groups are. Each entry also carries ``"_row"`` (``"<csv>:<line>"``) for messages.
    """
    csv_path, root = Path(csv_path), Path(root)
    fields, rows = read_csv_rows(csv_path)
    where = str(csv_path)
    image_col = pick_column(fields, [image_column] if image_column else IMAGE_COLUMNS, where, "image path")
    label_col = pick_column(fields, [label_column] if label_column else LABEL_COLUMNS, where, "label")
    mask_col = pick_column(fields, [mask_column or "mask"], where, "mask", required=mask_column is not None)
    group_col = pick_column(fields, [group_column or "group"], where, "group", required=group_column is not None)
    stratum_col = pick_column(fields, [stratum_column], where, "stratum", required=True) if stratum_column else None
    seen: dict[str, str] = {}
    entries = []
    for line, row in rows:
        at = f"{csv_path}:{line}"
        label, value = row[label_col], row[image_col]
        if not value:
            report.problem(at, "missing_path", f"empty '{image_col}' cell.")
            continue
        if not label:
            report.problem(at, "missing_label", f"{value} has an empty '{label_col}' cell.")
            continue
        if classes is not None and label not in classes:
            report.problem(at, "unknown_class", f"{value}: label '{label}' is not one of the classes {list(classes)}.")
            continue
        try:
            image = _relative(value, root)
            masks = [_relative(m.strip(), root) for m in row[mask_col].split(";") if m.strip()] if mask_col else []
        except ValueError:
            report.problem(at, "outside_root", f"{value}: an absolute path outside the data root {root}.")
            continue
        broken = next((p for p in [image, *masks] if not (root / p).is_file() or (root / p).stat().st_size == 0), None)
        if broken is not None:
            state = "not found" if not (root / broken).is_file() else "an empty file"
            kind = "missing_image" if broken == image else "missing_mask"
            report.problem(at, kind, f"{root / broken} is {state}.")
            continue
        key = image.as_posix()
        if key in seen:
            report.problem(at, "duplicate", f"{key} is listed twice (first at {seen[key]}).")
            continue
        seen[key] = at
        entry: dict = {DataKeys.IMAGE: key, DataKeys.LABEL: label, "_row": at}
        if masks:
            entry[DataKeys.MASK] = masks[0].as_posix() if len(masks) == 1 else [m.as_posix() for m in masks]
        if group_col:
            group = row[group_col]
            if not group:
                report.problem(at, "missing_group", f"{key} has an empty '{group_col}' cell.")
                continue
            entry[DataKeys.GROUP] = hash_identifier(group, salt)
        if stratum_col:
            stratum = row[stratum_col]
            if not stratum:
                report.problem(at, "missing_stratum", f"{key} has an empty '{stratum_col}' cell.")
                continue
            entry[DataKeys.STRATUM] = hash_identifier(stratum, salt)
        entries.append(entry)
    return entries


def build_csv_list(
    csv_path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    classes: Sequence[str] | None = None,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    name: str | None = None,
    on_error: str = "raise",
    report: BuildReport | None = None,
    salt: str | bytes | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    mask_column: str | None = None,
    group_column: str | None = None,
) -> Manifest:
    """A manifest of the images listed in a CSV file (see the module docstring for the layout), split 70/10/20.

    The split is stratified by class and keeps each ``group`` whole.

    Args:
        csv_path: the CSV file.
        root: the data root that paths are relative to (default: the CSV file's folder).
        classes: the class names, in label order; a row with another label is a problem. ``None``
            takes the labels found, in natural sort order (``"2"`` before ``"10"``).
        seed: split seed.
        fractions: training, validation and test shares.
        name: manifest name (default: the CSV file's name without suffix).
        on_error: ``"raise"`` or ``"skip"``.
        report: a report to fill (one is made otherwise).
        salt: salt of the group hash.
        image_column, label_column, mask_column, group_column: column names, when not the defaults.

    Raises:
        FileNotFoundError: the CSV file or the data root does not exist.
        ManifestError: a needed column is missing, or (unless ``on_error="skip"``) a row is wrong:
            the message names the CSV file, the line and the problem.
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise FileNotFoundError(f"CSV file not found: {csv_path}")
    root = Path(root).expanduser() if root is not None else csv_path.parent
    if not root.is_dir():
        raise FileNotFoundError(f"data root not found: {root} (given for {csv_path})")
    if classes is not None and len(set(classes)) != len(classes):
        raise ManifestError(f"{csv_path}: classes {list(classes)} name a class twice.")
    report = BuildReport.attach(report, "csv", root, on_error)
    entries = read_labelled_csv(
        csv_path, root, report, classes, image_column, label_column, mask_column, group_column, salt
    )
    if not entries:
        raise ManifestError(f"{csv_path}: no usable row.")
    names = list(classes) if classes is not None else sorted({e[DataKeys.LABEL] for e in entries}, key=natural_key)
    for e in entries:
        e.pop("_row")
        e[DataKeys.LABEL] = names.index(e[DataKeys.LABEL])
    groups = any(DataKeys.GROUP in e for e in entries)
    logger.info(
        "CSV list %s: %d images, %d classes, %d left out", csv_path.name, len(entries), len(names), len(report.skipped)
    )
    source: dict = {"builder": "csv", "csv": csv_path.name}
    if groups:
        source["id_hash"] = hash_policy(salt)
    return split_entries(
        entries,
        names,
        name=name or csv_path.stem,
        description=f"Images listed in {csv_path.name}; paths are relative to the data root.",
        source=source,
        fractions=fractions,
        seed=seed,
        report=report,
    )
