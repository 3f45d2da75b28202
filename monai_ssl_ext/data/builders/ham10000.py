"""HAM10000: dermoscopic images of pigmented skin lesions (Tschandl, Rosendahl, Kittler, Sci Data 5, 180161, 2018).

The release (Harvard Dataverse, doi:10.7910/DVN/DBW86T; also the ISIC 2018 task 3 training set) is a
metadata table and the images, with lesion masks published later by Tschandl et al. (Nature Medicine
26, 1229-1234, 2020)::

    HAM10000_metadata.csv           lesion_id,image_id,dx,dx_type,age,sex,localization
    images/ISIC_0024306.jpg         (or HAM10000_images_part_1/, HAM10000_images_part_2/: any folder)
    masks/ISIC_0024306_segmentation.png

Images and masks are found anywhere under the data root by name, so the Dataverse, Kaggle and ISIC
layouts all work. The masks are 600 x 450 while some copies of the images are resized (200 x 150 here):
same aspect, so the manifest declares ``"mask_resize": true`` and the loader resizes them. Several images
often show the same lesion (10,015 images of 7,470 lesions): the split keeps each ``lesion_id`` on one
side, or near-duplicates leak into the test split.
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

__all__ = ["HAM10000_CLASSES", "HAM10000_CLASS_NAMES", "build_ham10000"]

logger = logging.getLogger(__name__)

# the official ``dx`` codes in alphabetical order: the order of the ISIC 2018 task 3 ground truth and DermaMNIST
HAM10000_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
HAM10000_CLASS_NAMES = {
    "akiec": "actinic keratosis / intraepithelial carcinoma (Bowen's disease)",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis-like lesion",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevus",
    "vasc": "vascular lesion",
}
_METADATA_NAMES = ("HAM10000_metadata.csv", "HAM10000_metadata.tab", "HAM10000_metadata", "HAM10000_metadata.txt")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_IMAGE_ID = re.compile(r"^ISIC_\d+$")
_MASK = re.compile(r"^(?P<id>ISIC_\d+)_segmentation\.png$", re.IGNORECASE)
_CITATION = (
    "Tschandl P, Rosendahl C, Kittler H. The HAM10000 dataset, a large collection of multi-source dermatoscopic "
    "images of common pigmented skin lesions. Sci Data 5, 180161 (2018); masks: Tschandl P et al., Nat Med 26, "
    "1229-1234 (2020)."
)


def _find_metadata(root: Path, metadata: str | os.PathLike | None) -> Path:
    if metadata is not None:
        path = Path(metadata).expanduser()
        path = path if path.is_absolute() or path.is_file() else root / path
        if not path.is_file():
            raise FileNotFoundError(f"HAM10000 metadata file not found: {path}")
        return path
    for candidate in _METADATA_NAMES:
        if (root / candidate).is_file():
            return root / candidate
    raise FileNotFoundError(f"{root}: no HAM10000 metadata file (looked for {', '.join(_METADATA_NAMES)}).")


def _index_files(root: Path, report: BuildReport) -> tuple[dict[str, Path], dict[str, Path]]:
    """``{image_id: image path}`` and ``{image_id: mask path}`` of every HAM10000 file under ``root``."""
    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for file in sorted(files):
            path = Path(folder) / file
            mask = _MASK.match(file)
            if mask:
                masks.setdefault(mask.group("id"), path)
                continue
            stem, suffix = os.path.splitext(file)
            if suffix.lower() not in _IMAGE_SUFFIXES or not _IMAGE_ID.match(stem):
                continue
            if stem in images:
                # the Dataverse zips split the images over two folders; one id in both is a broken copy
                report.problem(path, "duplicate_image", f"image {stem} also found at {images[stem]}.")
                continue
            images[stem] = path
    return images, masks


def build_ham10000(
    root: str | os.PathLike,
    classes: Sequence[str] | None = None,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    metadata: str | os.PathLike | None = None,
    require_masks: bool = False,
    name: str | None = None,
    on_error: str = "raise",
    report: BuildReport | None = None,
    salt: str | bytes | None = None,
) -> Manifest:
    """A manifest of HAM10000 from its metadata table, split 70/10/20 by lesion and stratified by ``dx``.

    Reads the metadata table (``lesion_id``, ``image_id``, ``dx`` columns; comma- or tab-separated)
    and finds ``<image_id>.jpg`` and ``<image_id>_segmentation.png`` anywhere under ``root``. Each
    entry's ``group`` is the salted hash of its ``lesion_id``
    (:func:`~monai_ssl_ext.data.anonymise.hash_identifier`); no other metadata (age, sex, site) is kept.
    As for BUSI, the split is drawn over all classes and then restricted to ``classes``, so manifests of
    different class subsets built with one seed agree on every image's split.

    Args:
        root: the data root: the folder holding the metadata table and the images (in sub-folders or not).
        classes: keep only these ``dx`` classes, in this order; ``None`` keeps the official 7 in
            :data:`HAM10000_CLASSES` order.
        seed: split seed.
        fractions: training, validation and test shares.
        metadata: the metadata table, if not one of the standard names in ``root``.
        require_masks: treat an image without a mask as a problem (otherwise it has no ``mask`` key).
        name: manifest name (default ``ham10000``, or ``ham10000_<classes>`` for a subset).
        on_error: ``"raise"`` or ``"skip"`` (see :class:`~monai_ssl_ext.data.builders.common.BuildReport`).
        report: a report to fill (one is made otherwise).
        salt: salt of the lesion-id hash (default: ``$MONAI_SSL_ID_SALT`` or the public default).

    Raises:
        FileNotFoundError: ``root`` or the metadata table does not exist.
        ManifestError: a metadata column is missing, ``classes`` names an unknown class, or (unless
            ``on_error="skip"``) a row's image is missing, its ``dx`` is unknown, its ``image_id`` is
            repeated, its ``lesion_id`` is empty, or it has no mask while ``require_masks`` is set.

    Images under ``root`` without a metadata row are left out and recorded in the report (never an error).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"HAM10000 folder not found: {root}")
    report = BuildReport.attach(report, "ham10000", root, on_error)
    if classes is not None:
        unknown = [c for c in classes if c not in HAM10000_CLASSES]
        if unknown:
            raise ManifestError(f"{root}: class(es) {unknown} are not HAM10000 dx codes {list(HAM10000_CLASSES)}.")
    table = _find_metadata(root, metadata)
    fields, rows = read_csv_rows(table)
    lesion_col = pick_column(fields, ["lesion_id"], str(table), "lesion_id")
    image_col = pick_column(fields, ["image_id"], str(table), "image_id")
    dx_col = pick_column(fields, ["dx"], str(table), "dx")
    if not rows:
        raise ManifestError(f"{table}: no data rows.")
    images, masks = _index_files(root, report)

    seen: dict[str, int] = {}
    entries = []
    for line, row in rows:
        where = f"{table}:{line}"
        image_id, dx, lesion = row[image_col], row[dx_col], row[lesion_col]
        if not image_id:
            report.problem(where, "missing_id", "empty image_id.")
            continue
        if image_id in seen:
            report.problem(where, "duplicate_id", f"image_id {image_id} is repeated (first on line {seen[image_id]}).")
            continue
        seen[image_id] = line
        if dx not in HAM10000_CLASSES:
            report.problem(
                where, "unknown_class", f"{image_id} has dx '{dx}', not one of {', '.join(HAM10000_CLASSES)}."
            )
            continue
        if not lesion:
            report.problem(
                where, "missing_group", f"{image_id} has an empty lesion_id; its lesion cannot be kept whole."
            )
            continue
        image = images.get(image_id)
        if image is None:
            report.problem(where, "missing_image", f"image {image_id} not found under {root}.")
            continue
        entry: dict = {DataKeys.IMAGE: image.relative_to(root).as_posix(), DataKeys.LABEL: HAM10000_CLASSES.index(dx)}
        if image_id in masks:
            entry[DataKeys.MASK] = masks[image_id].relative_to(root).as_posix()
        elif require_masks:
            report.problem(image, "missing_mask", f"no mask {image_id}_segmentation.png under {root}.")
            continue
        entry[DataKeys.GROUP] = hash_identifier(lesion, salt)
        entries.append((image_id, entry))
    for image_id in sorted(set(images) - set(seen)):
        report.exclude(images[image_id], "unlabeled", f"{image_id} has no row in {table.name}.")

    # sorted by image id so that the split does not depend on the order of the metadata rows
    entries.sort(key=lambda item: item[0])
    found = [e for _, e in entries]
    n_masks = sum(DataKeys.MASK in e for e in found)
    logger.info(
        "HAM10000: %d images of %d lesions, %d with masks, %d left out",
        len(found),
        len({e[DataKeys.GROUP] for e in found}),
        n_masks,
        len(report.skipped),
    )
    kept = list(classes) if classes is not None else list(HAM10000_CLASSES)
    default_name = "ham10000" if kept == list(HAM10000_CLASSES) else "ham10000_" + "_".join(kept)
    manifest = split_entries(
        found,
        HAM10000_CLASSES,
        name=name or default_name,
        description=(
            f"HAM10000 dermoscopy, dx classes {', '.join(kept)}; lesion masks where released; split by lesion "
            f"(group = salted hash of lesion_id). Paths are relative to the HAM10000 folder. {_CITATION}"
        ),
        source={
            "builder": "ham10000",
            "metadata": table.name,
            "group": "lesion_id",
            "id_hash": hash_policy(salt),
            "images_with_mask": n_masks,
        },
        fractions=fractions,
        seed=seed,
        report=report,
        keep=kept,
    )
    manifest.mask_resize = True  # masks at the release's resolution, images possibly downsampled copies
    return manifest
