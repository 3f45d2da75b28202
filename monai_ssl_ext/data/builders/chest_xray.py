"""Paediatric chest X-rays, normal vs pneumonia (Kermany et al., Cell 172(5):1122-1131, 2018).

The data (Mendeley Data doi:10.17632/rscbjbr9sj, CC BY 4.0; the Kaggle "chest-xray-pneumonia" split)
are anterior-posterior radiographs of children aged 1-5 from one centre, with an official train/test
split. The builder reads a folder of images and a ``labels.csv`` with one row per image::

    path,label,group,split,subtype,source_path,source_md5,duplicate_of
    images/train/PNEUMONIA/person1481_bacteria_3862.jpg,PNEUMONIA,train/person1481,train,bacteria,...,
    images/train/PNEUMONIA/person1481_bacteria_3863.jpg,PNEUMONIA,train/person1481,train,bacteria,...,images/...3862.jpg

- ``path``: the image, relative to the folder; ``label``: ``NORMAL`` or ``PNEUMONIA`` (any case).
- ``group``: the patient. The copy in ``shared/data/chest_xray`` prefixes it with the split
  (``train/person1481``, ``test/person1481``): person numbers recur in train and test but are
  separate numberings, so they are separate patients here.
- ``split``: the official ``train`` or ``test``.
- ``subtype`` (optional): ``normal``, ``bacteria`` or ``virus``; kept on each entry as ``subtype``.
- ``duplicate_of`` (optional): for a byte-identical copy of another image, the path of that image.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from monai_ssl_ext.data.anonymise import hash_identifier, hash_policy
from monai_ssl_ext.data.builders.common import (
    IMAGE_SUFFIXES,
    BuildReport,
    image_suffix,
    pick_column,
    read_csv_rows,
    split_entries,
)
from monai_ssl_ext.data.manifest import Manifest, ManifestError
from monai_ssl_ext.keys import DataKeys

__all__ = ["CHEST_XRAY_CLASSES", "SUBTYPE_KEY", "build_chest_xray"]

logger = logging.getLogger(__name__)

# healthy first, as PneumoniaMNIST (built from the same images) numbers them
CHEST_XRAY_CLASSES = ("normal", "pneumonia")
SUBTYPE_KEY = "subtype"
_OFFICIAL_SPLITS = ("train", "test")
_CITATION = (
    "Kermany DS, Goldbaum M, Cai W, et al. Identifying Medical Diagnoses and Treatable Diseases by Image-Based "
    "Deep Learning. Cell 172(5):1122-1131 (2018); data: Kermany D, Zhang K, Goldbaum M, Mendeley Data, "
    "doi:10.17632/rscbjbr9sj (CC BY 4.0)."
)


def _relative_path(value: str) -> Path | None:
    """``value`` as a path inside the data root, or ``None`` when it is absolute or climbs out with ``..``."""
    path = Path(value)
    if path.is_absolute() or ".." in path.parts:
        return None
    return path


def build_chest_xray(
    root: str | os.PathLike,
    classes: Sequence[str] | None = None,
    seed: int = 0,
    validation_fraction: float = 0.1,
    labels: str | os.PathLike = "labels.csv",
    name: str | None = None,
    on_error: str = "raise",
    report: BuildReport | None = None,
    salt: str | bytes | None = None,
) -> Manifest:
    """A manifest of the Kermany chest X-rays: official test kept, official train split 90/10 by patient.

    - ``test``: the official test split, as it is.
    - ``training`` / ``validation``: the official train split, 90/10, stratified by class, every
      patient (``group``) on one side, a pure function of ``seed``
      (:func:`~monai_ssl_ext.data.builders.common.split_entries`). Validation is cut from train so
      that the official test split stays untouched for final figures.
    - Duplicates: a row whose ``duplicate_of`` names another image is a byte-identical copy of it and
      is dropped from **every** split, training included (recorded in the report with ``problem``
      false, counted in ``source["skipped"]``). In validation and test a copy would count one image
      twice. In training it adds nothing but a double weight for that image (and a double count
      against a label budget), and dropping it everywhere cannot leak: the copy of the shared data
      whose original has another patient id (``NORMAL2-IM-0096`` of ``NORMAL2-IM-0095``, official test)
      could otherwise sit on the other side of a split from its original. The original is kept.
    - Entries: ``image``, ``label`` (index into ``normal``, ``pneumonia``), ``group`` (the salted hash
      of the patient id, :func:`~monai_ssl_ext.data.anonymise.hash_identifier`) and, when the CSV has
      the column, ``subtype`` (``normal``, ``bacteria``, ``virus``, lower case; for analysis only).

    Args:
        root: the data folder (the data root of the manifest), holding ``labels`` and the images.
        classes: keep only these classes, in this order, after the split; ``None`` keeps both.
        seed: seed of the training/validation split.
        validation_fraction: share of the official train split that goes to ``validation``.
        labels: the label table, relative to ``root`` or absolute.
        name: manifest name (default: the folder's name, plus ``_<classes>`` for a subset).
        on_error: ``"raise"`` or ``"skip"`` (see :class:`~monai_ssl_ext.data.builders.common.BuildReport`).
        report: a report to fill (one is made otherwise).
        salt: salt of the patient-id hash (default: ``$MONAI_SSL_ID_SALT`` or the public default).

    Raises:
        FileNotFoundError: ``root`` or the label table does not exist.
        ManifestError: a column is missing, ``classes`` names an unknown class, no row of the official
            train or test split is left, or (unless ``on_error="skip"``) a row is wrong: an empty or
            repeated path, a path outside ``root``, a missing or empty image, an unknown label or split,
            an empty group, a group in both official splits, a ``duplicate_of`` that is not a listed image.

    Images under ``root`` without a row are left out and recorded in the report (never an error).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"chest X-ray folder not found: {root}")
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be between 0 and 1 (exclusive), got {validation_fraction}.")
    report = BuildReport.attach(report, "chest_xray", root, on_error)
    if classes is not None:
        unknown = [c for c in classes if c not in CHEST_XRAY_CLASSES]
        if unknown or len(set(classes)) != len(classes) or not classes:
            raise ManifestError(f"{root}: classes {list(classes)} must be distinct names among {CHEST_XRAY_CLASSES}.")
    table = Path(labels).expanduser()
    table = table if table.is_absolute() else root / table
    if not table.is_file():
        raise FileNotFoundError(f"chest X-ray label table not found: {table}")
    fields, rows = read_csv_rows(table)
    where = str(table)
    path_col = pick_column(fields, ["path", "image", "filename"], where, "image path")
    label_col = pick_column(fields, ["label", "class"], where, "label")
    group_col = pick_column(fields, ["group", "patient", "patient_id"], where, "group (patient)")
    split_col = pick_column(fields, ["split"], where, "split")
    subtype_col = pick_column(fields, ["subtype"], where, "subtype", required=False)
    duplicate_col = pick_column(fields, ["duplicate_of"], where, "duplicate_of", required=False)
    if not rows:
        raise ManifestError(f"{table}: no data rows.")
    listed = {row[path_col] for _, row in rows if row[path_col]}

    seen: dict[str, int] = {}
    group_split: dict[str, tuple[str, int]] = {}
    pools: dict[str, list[tuple[str, dict]]] = {s: [] for s in _OFFICIAL_SPLITS}
    n_duplicates = 0
    for line, row in rows:
        at = f"{table}:{line}"
        value = row[path_col]
        label, split, group = row[label_col].lower(), row[split_col].lower(), row[group_col]
        if not value:
            report.problem(at, "missing_path", f"empty '{path_col}' cell.")
            continue
        if value in seen:
            report.problem(at, "duplicate_row", f"{value} is listed twice (first on line {seen[value]}).")
            continue
        seen[value] = line
        if label not in CHEST_XRAY_CLASSES:
            report.problem(at, "unknown_class", f"{value}: label '{row[label_col]}' is not NORMAL or PNEUMONIA.")
            continue
        if split not in _OFFICIAL_SPLITS:
            report.problem(at, "unknown_split", f"{value}: split '{row[split_col]}' is not train or test.")
            continue
        if not group:
            report.problem(at, "missing_group", f"{value} has an empty '{group_col}' cell; its patient is unknown.")
            continue
        image = _relative_path(value)
        if image is None:
            report.problem(at, "outside_root", f"{value}: not a path inside the data root {root}.")
            continue
        file = root / image
        if not file.is_file() or file.stat().st_size == 0:
            state = "not found" if not file.is_file() else "an empty file"
            report.problem(at, "missing_image", f"{file} is {state}.")
            continue
        original = row[duplicate_col] if duplicate_col else ""
        if original:
            if original not in listed or original == value:
                report.problem(
                    at, "unknown_duplicate", f"{value}: duplicate_of '{original}' is not another listed image."
                )
                continue
            report.exclude(file, "duplicate", f"byte-identical copy of {original}; left out of every split.")
            n_duplicates += 1
            continue
        hashed = hash_identifier(group, salt)
        first = group_split.setdefault(hashed, (split, line))
        if first[0] != split:
            report.problem(
                at,
                "group_in_both_splits",
                f"{value}: its patient also has images in the official {first[0]} split (line {first[1]}); "
                "prefix the groups with the split if the two splits number patients separately.",
            )
            continue
        entry: dict = {DataKeys.IMAGE: image.as_posix(), DataKeys.LABEL: CHEST_XRAY_CLASSES.index(label)}
        entry[DataKeys.GROUP] = hashed
        if subtype_col:
            entry[SUBTYPE_KEY] = row[subtype_col].lower()
        pools[split].append((image.as_posix(), entry))

    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for file_name in sorted(files):
            path = Path(folder) / file_name
            if image_suffix(file_name) in IMAGE_SUFFIXES and path.relative_to(root).as_posix() not in seen:
                report.exclude(path, "unlabeled", f"no row in {table.name}.")

    for split in _OFFICIAL_SPLITS:
        if not pools[split]:
            raise ManifestError(f"{table}: no usable row of the official {split} split.")
        # sorted by path so that neither the split nor the manifest depends on the order of the rows
        pools[split].sort(key=lambda item: item[0])
    train = [e for _, e in pools["train"]]
    test = [e for _, e in pools["test"]]
    logger.info(
        "chest X-ray: %d train and %d test images of %d patients, %d duplicates dropped, %d files left out",
        len(train),
        len(test),
        len(group_split),
        n_duplicates,
        len(report.skipped),
    )
    kept = list(classes) if classes is not None else list(CHEST_XRAY_CLASSES)
    base = Path(os.path.abspath(root)).name or "chest_xray"
    default_name = base if kept == list(CHEST_XRAY_CLASSES) else f"{base}_" + "_".join(kept)
    share = round(100 * validation_fraction)
    drawn = split_entries(
        train,
        CHEST_XRAY_CLASSES,
        name=name or default_name,
        description=(
            "Paediatric chest X-rays (AP, ages 1-5, one centre), normal vs pneumonia; subtype bacteria/virus kept "
            f"per entry. Official test split kept; official train split {100 - share}/{share} into training/"
            "validation by patient (group = salted hash of the patient id), stratified by class. Byte-identical "
            f"copies (duplicate_of) are left out of every split. Paths are relative to the data folder. {_CITATION}"
        ),
        source={
            "builder": "chest_xray",
            "labels": table.name,
            "group": "patient",
            "id_hash": hash_policy(salt),
            "test": "official test split",
            "validation": f"{share} % of the official train split, by patient",
            "duplicates_dropped": n_duplicates,
        },
        fractions=(1 - validation_fraction, validation_fraction, 0.0),
        seed=seed,
        report=report,
    )
    data = drawn.to_dict()
    data["test"] = test
    manifest = Manifest.from_dict(data)  # checks again that no patient is in two splits
    missing = [c for c in sorted({e[DataKeys.LABEL] for e in train}) if all(e[DataKeys.LABEL] != c for e in test)]
    if missing:
        logger.warning("chest X-ray: no test image of class(es) %s", [CHEST_XRAY_CLASSES[c] for c in missing])
    if kept != list(CHEST_XRAY_CLASSES):
        manifest = manifest.with_classes(kept)
        manifest.source["classes_kept"] = kept
    return manifest
