"""A directory of DICOM files (any depth, any file names, as a PACS export or a CD leaves them) with labels in a CSV.

DICOM: NEMA PS3 / ISO 12052, Digital Imaging and Communications in Medicine. Each file's header is
read with pydicom (``stop_before_pixels=True``: pixels are neither read nor decoded), and labels are
joined from a CSV keyed by SOP Instance UID (one row per image) or by accession number (one row per
study, every image of the study gets it)::

    labels.csv    sop_instance_uid,label            or    accession_number,label
                  1.2.840.113619.2.1.1.1,malignant        A20240117-3,benign

What happens to each file:

- not DICOM (no ``DICM`` preamble): left out, recorded as ``not_dicom``;
- DICOM without an image (no Rows/Columns/BitsAllocated: structured reports, key objects,
  presentation states, DICOMDIR): left out, recorded as ``no_pixel_data``; an *image* SOP class without
  them is a truncated header, a problem. Pixel data are checked when the images are loaded;
- an image whose key has no label row: left out and recorded as ``unlabeled``; with
  ``keep_unlabeled=True`` it goes to the manifest's ``unlabeled`` list instead (``image`` and ``group``),
  unless its patient is in the validation or test split; training adds those images to its unlabeled
  stream;
- problems (unreadable header, no SOP Instance UID, the same SOP Instance UID in two files, no
  PatientID, a path that contains the patient's name or id, a bad label row) stop the build, or are
  skipped and recorded with ``on_error="skip"``.

Images are grouped by patient (PatientID) or by study (StudyInstanceUID); the group stored is the salted
hash of the id (:mod:`monai_ssl_ext.data.anonymise`). No name, id, UID or accession number is written to
the manifest, the report or the log; messages name the file and the CSV line instead.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from monai_ssl_ext.data.anonymise import hash_identifier, hash_policy
from monai_ssl_ext.data.builders.common import DEFAULT_FRACTIONS, BuildReport, pick_column, read_csv_rows, split_entries
from monai_ssl_ext.data.builders.csv_list import natural_key
from monai_ssl_ext.data.manifest import SPLITS, Manifest, ManifestError
from monai_ssl_ext.keys import DataKeys

__all__ = ["DICOM_KEYS", "build_dicom_dir"]

logger = logging.getLogger(__name__)

# key argument -> (DICOM keyword, accepted CSV column names)
DICOM_KEYS = {
    "sop": ("SOPInstanceUID", ("sop_instance_uid", "SOPInstanceUID", "sop_uid")),
    "accession": ("AccessionNumber", ("accession_number", "AccessionNumber", "accession")),
}
_GROUPS = {"patient": "PatientID", "study": "StudyInstanceUID"}
_IMAGE_TAGS = ("Rows", "Columns", "BitsAllocated")
# shorter name parts ("Li", "OB") occur inside ordinary file names too often to tell anything
_MIN_ID_IN_PATH = 4


def _read_labels(
    path: Path, key: str, key_column: str | None, label_column: str, classes: Sequence[str] | None, report: BuildReport
) -> tuple[dict[str, tuple[str, int]], set[str], list[str]]:
    """``{key value: (label, line)}``, the key values of rejected rows, and the labels of the accepted rows."""
    fields, rows = read_csv_rows(path)
    keyword, aliases = DICOM_KEYS[key]
    key_col = pick_column(fields, [key_column] if key_column else aliases, str(path), f"{keyword} key")
    label_col = pick_column(fields, [label_column], str(path), "label")
    table: dict[str, tuple[str, int]] = {}
    rejected: set[str] = set()
    for line, row in rows:
        at = f"{path}:{line}"
        value, label = row[key_col], row[label_col]
        if not value:
            report.problem(at, "missing_key", f"empty '{key_col}' cell.")
            continue
        if not label:
            report.problem(at, "missing_label", f"empty '{label_col}' cell.")
            rejected.add(value)
            continue
        if classes is not None and label not in classes:
            report.problem(at, "unknown_class", f"label '{label}' is not one of the classes {list(classes)}.")
            rejected.add(value)
            continue
        if value in table:
            if table[value][0] != label:
                report.problem(
                    at,
                    "conflicting_label",
                    f"the same {keyword} has label '{table[value][0]}' on line {table[value][1]}.",
                )
                rejected.add(value)
            continue
        table[value] = (label, line)
    for value in rejected:
        table.pop(value, None)
    return table, rejected, sorted({lab for lab, _ in table.values()}, key=natural_key)


def _sop_class_name(ds) -> str:
    uid = ds.get("SOPClassUID") or getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", None)
    return (getattr(uid, "name", None) or str(uid)) if uid else "unknown SOP class"


def _redact_identifiers(rel: str, ds) -> str | None:
    """``rel`` with the PatientID and each PatientName part replaced by a placeholder, or ``None`` if it holds none.

    Matching ignores case; parts shorter than 4 characters are not looked for.
    """
    name = str(ds.get("PatientName", "") or "")
    words = {str(ds.get("PatientID", "") or "").strip().lower(): "<PatientID>"}
    for part in name.split("^"):
        for word in part.split():
            words.setdefault(word.lower(), "<PatientName>")
    found = sorted((w for w in words if len(w) >= _MIN_ID_IN_PATH and w in rel.lower()), key=len, reverse=True)
    if not found:
        return None
    pattern = re.compile("|".join(re.escape(w) for w in found), re.IGNORECASE)
    return pattern.sub(lambda m: words[m.group(0).lower()], rel)


def build_dicom_dir(
    root: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    key: str = "sop",
    classes: Sequence[str] | None = None,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    group_by: str = "patient",
    keep_unlabeled: bool = False,
    key_column: str | None = None,
    label_column: str = "label",
    check_paths: bool = True,
    force: bool = False,
    name: str | None = None,
    on_error: str = "raise",
    report: BuildReport | None = None,
    salt: str | bytes | None = None,
) -> Manifest:
    """A manifest of the DICOM images under ``root`` labelled from a CSV (see the module docstring), split 70/10/20.

    The split is stratified by class and keeps every patient (or study) on one side.

    Args:
        root: the data root; every file below it is examined (hidden files and folders excepted).
        labels: the labels CSV (absolute, or relative to the working folder or to ``root``).
        key: ``"sop"`` (column ``sop_instance_uid``) or ``"accession"`` (column ``accession_number``).
        classes: the class names in label order; a row with another label is a problem. ``None`` takes
            the labels of the CSV, in natural sort order.
        seed: split seed.
        fractions: training, validation and test shares.
        group_by: ``"patient"`` (PatientID) or ``"study"`` (StudyInstanceUID).
        keep_unlabeled: list images without a label row in the manifest's ``unlabeled`` list (see above).
        key_column, label_column: CSV column names, when not the defaults.
        check_paths: treat a path that contains the PatientID or a part of the PatientName (4 characters
            or more) as a problem, since the manifest and the report hold the paths.
        force: read files without the ``DICM`` preamble too (old ACR-NEMA style files).
        name: manifest name (default ``dicom``).
        on_error: ``"raise"`` or ``"skip"``.
        report: a report to fill (one is made otherwise).
        salt: salt of the patient/study hash.

    Raises:
        FileNotFoundError: ``root`` or the labels CSV does not exist.
        ValueError: no labels CSV given, or an unknown ``key`` or ``group_by``.
        ManifestError: a CSV column is missing, no labelled image is found, or (unless
            ``on_error="skip"``) one of the problems listed in the module docstring.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"DICOM folder not found: {root}")
    if labels is None:
        raise ValueError("the DICOM builder needs labels=<CSV keyed by SOP Instance UID or accession number>.")
    if key not in DICOM_KEYS:
        raise ValueError(f"key must be one of {sorted(DICOM_KEYS)}, got {key!r}.")
    if group_by not in _GROUPS:
        raise ValueError(f"group_by must be one of {sorted(_GROUPS)}, got {group_by!r}.")
    labels_path = Path(labels).expanduser()
    if not labels_path.is_absolute() and not labels_path.is_file():
        labels_path = root / labels_path
    if not labels_path.is_file():
        raise FileNotFoundError(f"labels CSV not found: {labels_path}")
    report = BuildReport.attach(report, "dicom", root, on_error)
    table, rejected, found_classes = _read_labels(labels_path, key, key_column, label_column, classes, report)
    names = list(classes) if classes is not None else found_classes
    if not names:
        raise ManifestError(f"{labels_path}: no usable label row.")
    keyword = DICOM_KEYS[key][0]
    group_tag = _GROUPS[group_by]

    sop_files: dict[str, str] = {}
    seen_keys: set[str] = set()
    entries: list[dict] = []
    unlabeled: list[dict] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted((d for d in dirs if not d.startswith(".")), key=natural_key)
        for file in sorted((f for f in files if not f.startswith(".")), key=natural_key):
            path = Path(folder) / file
            if path.resolve() == labels_path.resolve():
                continue
            rel = path.relative_to(root).as_posix()
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=force)
            except InvalidDicomError:
                report.exclude(path, "not_dicom", "not a DICOM file (no DICM preamble).")
                continue
            except Exception as e:  # pydicom raises many types for a truncated or corrupt header
                report.problem(path, "unreadable", f"unreadable DICOM header ({type(e).__name__}).")
                continue
            if len(ds) == 0:
                report.problem(path, "unreadable", "empty or truncated DICOM header.")
                continue
            if not all(tag in ds for tag in _IMAGE_TAGS):
                sop_class = _sop_class_name(ds)
                if "Image Storage" in sop_class:
                    # pydicom reads a cut-off header without complaint; an image class without Rows is one
                    report.problem(
                        path, "unreadable", f"{sop_class} without Rows/Columns: truncated or incomplete header."
                    )
                else:
                    report.exclude(path, "no_pixel_data", f"no image in this DICOM object ({sop_class}).")
                continue
            value = str(ds.get(keyword, "") or "").strip()
            seen_keys.add(value)
            sop = str(ds.get("SOPInstanceUID", "") or "").strip()
            if not sop:
                report.problem(path, "missing_uid", "no SOPInstanceUID.")
                continue
            if sop in sop_files:
                report.problem(
                    path, "duplicate", f"the same SOP Instance UID as {sop_files[sop]} (one image, two files)."
                )
                continue
            sop_files[sop] = rel
            group_id = str(ds.get(group_tag, "") or "").strip()
            if not group_id:
                report.problem(path, "missing_group", f"no {group_tag}; its images cannot be kept in one split.")
                continue
            redacted = _redact_identifiers(rel, ds) if check_paths else None
            if redacted is not None:
                # the message and the report show the path with the identifiers masked
                report.problem(
                    root / redacted,
                    "identifier_in_path",
                    "the path contains the patient's name or id; rename it before building.",
                )
                continue
            group = hash_identifier(group_id, salt)
            if value in table:
                entries.append(
                    {DataKeys.IMAGE: rel, DataKeys.LABEL: names.index(table[value][0]), DataKeys.GROUP: group}
                )
            elif value in rejected:
                report.exclude(path, "rejected_label", "its label row was left out (see the labels CSV problems).")
            elif keep_unlabeled:
                unlabeled.append({DataKeys.IMAGE: rel, DataKeys.GROUP: group})
            else:
                what = f"its {keyword}" if value else f"it (no {keyword})"
                report.exclude(path, "unlabeled", f"no label row for {what}.")
    for value, (_, line) in sorted(table.items(), key=lambda item: item[1][1]):
        # a row whose image was skipped for a problem is not reported twice
        if value not in seen_keys:
            report.exclude(f"{labels_path}:{line}", "unmatched_label", "no DICOM image under the root has this key.")
    if not entries:
        raise ManifestError(f"{root}: no labelled DICOM image (labels from {labels_path}).")
    logger.info(
        "DICOM: %d labelled images of %d %ss, %d unlabeled kept, %d files left out",
        len(entries),
        len({e[DataKeys.GROUP] for e in entries}),
        group_by,
        len(unlabeled),
        len(report.skipped),
    )
    source: dict = {
        "builder": "dicom",
        "labels": labels_path.name,
        "key": keyword,
        "group": group_tag,
        "id_hash": hash_policy(salt),
    }
    manifest = split_entries(
        entries,
        names,
        name=name or "dicom",
        description=(
            f"DICOM images labelled by {keyword}, grouped by {group_tag} (salted hash); paths are relative to "
            "the DICOM folder."
        ),
        source=source,
        fractions=fractions,
        seed=seed,
        report=None,
    )
    if keep_unlabeled:
        held_out = {e[DataKeys.GROUP] for split in SPLITS[1:] for e in manifest.split(split)}
        pool = []
        for entry in unlabeled:
            if entry[DataKeys.GROUP] in held_out:
                # an unlabeled image of a test patient in the training stream would leak that patient
                report.exclude(
                    root / entry[DataKeys.IMAGE],
                    "unlabeled",
                    "no label row; its patient or study is in validation or test.",
                )
            else:
                pool.append(entry)
        manifest.unlabeled = pool
    if report.skipped:
        manifest.source["skipped"] = report.counts()
    return manifest
