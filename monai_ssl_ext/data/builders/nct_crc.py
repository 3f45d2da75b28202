"""NCT-CRC-HE-100K / CRC-VAL-HE-7K colorectal H&E patches, 9 tissue classes.

Kather JN, Halama N, Marx A. 100,000 histological images of human colorectal cancer and healthy tissue.
Zenodo (2018), doi:10.5281/zenodo.1214456; Kather JN et al., PLoS Med 16(1): e1002730 (2019).

Three layouts are read (``layout="auto"`` picks the first that applies):

- ``csv``: a ``labels.csv`` in the data root (or ``labels=``) with ``filename`` (or ``path``) and
  ``label`` columns, and optionally others such as ``source_dataset``, which ``group_by`` or
  ``stratify_by`` can name::

      labels.csv    filename,label,source_dataset
                    images/ADI/ADI-TCGA-AAICEQFN.tif,ADI,CRC-VAL-HE-7K

- ``folders``: one folder per class, as the Zenodo zips unpack: ``ADI/ADI-AAAFLCLY.tif``, ``BACK/...``.
- ``prefix``: flat files whose name starts with the class: ``ADI-AAQEFMRI.tif``, ``TUM-AACHEHDV.tif``.

In every layout a file name that starts with a class code (``MUS-...``) must agree with its label.
The release has no slide or patient ids, so unless ``group_by`` is given the split is by patch, and
patches of one slide may fall on both sides of it.

A pool of patches from several releases (``../shared/data/histology/crc_he_9class_samples``: MUS, NORM
and STR mostly from NCT-CRC-HE-100K, the six other classes only from CRC-VAL-HE-7K, another centre)
confounds the class with the source. Grouping by the source would put each centre on one side of the
split, and with it every class that only one centre has; ``stratify_by="source_dataset"`` instead deals
each (source, class) cell 70/10/20 on its own, so that every split holds each class from the same mix
of sources, and records the source (salted hash) under ``stratum``. The confound inside each split stays:
such a manifest checks a pipeline, it does not measure tissue classification.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from monai_ssl_ext.data.anonymise import hash_policy
from monai_ssl_ext.data.builders.common import DEFAULT_FRACTIONS, BuildReport, split_entries
from monai_ssl_ext.data.builders.csv_list import natural_key, read_labelled_csv
from monai_ssl_ext.data.manifest import Manifest, ManifestError
from monai_ssl_ext.io.raster import RASTER_SUFFIXES
from monai_ssl_ext.keys import DataKeys

__all__ = ["NCT_CLASSES", "NCT_CLASS_NAMES", "build_nct_crc"]

logger = logging.getLogger(__name__)

# the order of the release, of PathMNIST and of most published confusion matrices
NCT_CLASSES = ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")
NCT_CLASS_NAMES = {
    "ADI": "adipose tissue",
    "BACK": "background",
    "DEB": "debris",
    "LYM": "lymphocytes",
    "MUC": "mucus",
    "MUS": "smooth muscle",
    "NORM": "normal colon mucosa",
    "STR": "cancer-associated stroma",
    "TUM": "colorectal adenocarcinoma epithelium",
}
LAYOUTS = ("auto", "csv", "folders", "prefix")
_CITATION = (
    "Kather JN, Halama N, Marx A. 100,000 histological images of human colorectal cancer and healthy tissue. "
    "Zenodo (2018), doi:10.5281/zenodo.1214456."
)


def _prefix(name: str) -> str:
    return name.split("-", 1)[0] if "-" in name else ""


def _pick_layout(root: Path, labels: Path | None) -> str:
    if labels is not None and labels.is_file():
        return "csv"
    if any((root / c).is_dir() for c in NCT_CLASSES):
        return "folders"
    return "prefix"


def _listed(
    root: Path, labels: Path, group_by: str | None, stratify_by: str | None, report: BuildReport, salt
) -> list[tuple[str, dict]]:
    entries = read_labelled_csv(
        labels,
        root,
        report,
        image_column=None,
        label_column="label",
        group_column=group_by,
        salt=salt,
        stratum_column=stratify_by,
    )
    return [(e.pop("_row"), e) for e in entries]


def _files(root: Path, layout: str, report: BuildReport) -> list[tuple[str, dict]]:
    """``(path, entry)`` with the class name as label, from class folders or class-prefixed names."""
    out = []
    if layout == "folders":
        folders = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
        for folder in folders:
            if folder.name not in NCT_CLASSES:
                report.problem(
                    folder, "unknown_class", f"folder '{folder.name}' is not one of {', '.join(NCT_CLASSES)}."
                )
                continue
            files = sorted(
                (p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")),
                key=lambda p: natural_key(p.as_posix()),
            )
            for path in files:
                label = folder.name if path.suffix.lower() in RASTER_SUFFIXES else None
                out.append((str(path), {DataKeys.IMAGE: path.relative_to(root).as_posix(), DataKeys.LABEL: label}))
    else:
        for path in sorted(
            (p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")), key=lambda p: natural_key(p.name)
        ):
            if path.suffix.lower() not in RASTER_SUFFIXES:
                out.append((str(path), {DataKeys.IMAGE: path.name, DataKeys.LABEL: None}))
                continue
            label = _prefix(path.name)
            if label not in NCT_CLASSES:
                report.problem(
                    path,
                    "unknown_class",
                    f"the name does not start with a class code ({', '.join(NCT_CLASSES)}) and '-'.",
                )
                continue
            out.append((str(path), {DataKeys.IMAGE: path.name, DataKeys.LABEL: label}))
    return out


def build_nct_crc(
    root: str | os.PathLike,
    classes: Sequence[str] | None = None,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    layout: str = "auto",
    labels: str | os.PathLike | None = None,
    group_by: str | None = None,
    stratify_by: str | None = None,
    name: str | None = None,
    on_error: str = "raise",
    report: BuildReport | None = None,
    salt: str | bytes | None = None,
) -> Manifest:
    """A manifest of NCT-CRC-HE style patches (see the module docstring for the layouts), split 70/10/20.

    The class list is always the 9 NCT classes in :data:`NCT_CLASSES` order, so class indices agree
    across data sets (and with PathMNIST). The split is stratified by class and drawn over every class
    before being restricted to ``classes``.

    Args:
        root: the data root: the folder with ``labels.csv``, the class folders or the patches.
        classes: keep only these classes, in this order; ``None`` keeps all 9.
        seed: split seed.
        fractions: training, validation and test shares.
        layout: ``"auto"``, ``"csv"``, ``"folders"`` or ``"prefix"``.
        labels: the labels CSV (default ``root/labels.csv``); paths in it are relative to ``root``.
        group_by: a column of the labels CSV whose value keeps patches together, for example
            ``"source_dataset"`` (a whole centre on one side of the split, for a cross-centre test)
            or a slide id. The value is stored as a salted hash.
        stratify_by: a column of the labels CSV to stratify the split by besides the class, for example
            ``"source_dataset"`` (every split holds each class from the same mix of sources). The value is
            stored as a salted hash under ``stratum``.
        name: manifest name (default: the folder's name).
        on_error: ``"raise"`` or ``"skip"``.
        report: a report to fill (one is made otherwise).
        salt: salt of the group hash.

    Raises:
        FileNotFoundError: ``root`` or the labels CSV does not exist.
        ManifestError: ``classes`` names a non-NCT class, ``group_by`` or ``stratify_by`` names a missing
            column or is given without a labels CSV, no patch
            is found, or (unless ``on_error="skip"``) a file has an unknown class, a label that
            disagrees with its name's prefix, is missing or empty, or is listed twice.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"NCT-CRC-HE folder not found: {root}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}.")
    if classes is not None:
        unknown = [c for c in classes if c not in NCT_CLASSES]
        if unknown:
            raise ManifestError(f"{root}: class(es) {unknown} are not NCT-CRC-HE classes {list(NCT_CLASSES)}.")
    report = BuildReport.attach(report, "nct_crc", root, on_error)
    labels_path = None
    if labels is not None:
        labels_path = Path(labels).expanduser()
        labels_path = labels_path if labels_path.is_absolute() or labels_path.is_file() else root / labels_path
        if not labels_path.is_file():
            raise FileNotFoundError(f"labels CSV not found: {labels_path}")
    elif (root / "labels.csv").is_file():
        labels_path = root / "labels.csv"
    chosen = _pick_layout(root, labels_path) if layout == "auto" else layout
    if chosen == "csv" and labels_path is None:
        raise FileNotFoundError(f"{root}: layout 'csv' needs a labels CSV (none given, no labels.csv).")
    for option, column in (("group_by", group_by), ("stratify_by", stratify_by)):
        if column is not None and chosen != "csv":
            raise ManifestError(
                f"{root}: {option}='{column}' needs a labels CSV; the '{chosen}' layout has no columns."
            )

    if chosen == "csv":
        found = _listed(root, labels_path, group_by, stratify_by, report, salt)
    else:
        found = _files(root, chosen, report)
    entries = []
    for where, entry in found:
        image, label = entry[DataKeys.IMAGE], entry[DataKeys.LABEL]
        if label is None:
            report.exclude(where, "not_image", "not an image file.")
            continue
        if label not in NCT_CLASSES:
            report.problem(where, "unknown_class", f"{image}: label '{label}' is not one of {', '.join(NCT_CLASSES)}.")
            continue
        stated = _prefix(Path(image).name)
        if stated in NCT_CLASSES and stated != label:
            report.problem(where, "label_mismatch", f"{image}: labelled {label} but its name says {stated}.")
            continue
        if chosen != "csv" and (root / image).stat().st_size == 0:
            report.problem(where, "empty_file", f"{image}: empty file (0 bytes).")
            continue
        entries.append(dict(entry, label=NCT_CLASSES.index(label)))
    if not entries:
        raise ManifestError(f"{root}: no NCT-CRC-HE patch found ({chosen} layout).")
    logger.info(
        "NCT-CRC-HE %s: %d patches (%s layout), %d left out", root.name, len(entries), chosen, len(report.skipped)
    )

    kept = list(classes) if classes is not None else list(NCT_CLASSES)
    source: dict = {"builder": "nct_crc", "layout": chosen}
    if labels_path is not None and chosen == "csv":
        source["labels"] = labels_path.name
    if group_by is not None:
        source.update(group=group_by, id_hash=hash_policy(salt))
    if stratify_by is not None:
        source.update(stratify_by=stratify_by, id_hash=hash_policy(salt))
    grouping = f"grouped by {group_by} (salted hash)" if group_by else "split by patch (the release has no slide ids)"
    if stratify_by is not None:
        grouping += f", stratified by class and by {stratify_by} (salted hash under 'stratum')"
    return split_entries(
        entries,
        NCT_CLASSES,
        name=name or root.name,
        description=(
            f"Colorectal H&E patches, classes {', '.join(kept)}; {grouping}. "
            f"Paths are relative to the data folder. {_CITATION}"
        ),
        source=source,
        fractions=fractions,
        seed=seed,
        report=report,
        keep=kept,
        strata_key=DataKeys.STRATUM if stratify_by is not None else None,
    )
