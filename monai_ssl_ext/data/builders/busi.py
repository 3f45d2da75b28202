"""BUSI: Breast Ultrasound Images (Al-Dhabyani et al., Data in Brief 28, 2020).

The public release is one folder per class, each image beside its lesion mask(s)::

    benign/benign (1).png            benign/benign (1)_mask.png
    benign/benign (4).png            benign/benign (4)_mask.png  benign/benign (4)_mask_1.png
    normal/normal (1).png            normal/normal (1)_mask.png  (all zero: no lesion)

An image with several masks (one per lesion) gets all of them; the loader takes their union.
BUSI has no patient identifiers, so the split is stratified by class only.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from monai_ssl_ext.data.builders.common import DEFAULT_FRACTIONS, BuildReport, split_entries
from monai_ssl_ext.data.manifest import Manifest, ManifestError
from monai_ssl_ext.data.near_duplicates import near_duplicate_groups
from monai_ssl_ext.keys import DataKeys

__all__ = ["BUSI_CLASSES", "build_busi"]

logger = logging.getLogger(__name__)

# ordered by severity, so that the class index is the ordinal grade (normal < benign < malignant)
BUSI_CLASSES = ("normal", "benign", "malignant")
_MASK = re.compile(r"^(?P<stem>.+)_mask(?:_\d+)?\.png$", re.IGNORECASE)
_CITATION = (
    "Al-Dhabyani W, Gomaa M, Khaled H, Fahmy A. Dataset of breast ultrasound images. Data in Brief 28 (2020) 104863."
)


def _scan_class(root: Path, folder: Path, report: BuildReport) -> list[tuple[str, list[str]]]:
    """``(image, [masks])`` of one class folder, paths relative to ``root``, in natural file order."""
    images: dict[str, Path] = {}
    masks: dict[str, list[Path]] = {}
    for path in folder.iterdir():
        if not path.is_file() or path.suffix.lower() != ".png":
            continue
        match = _MASK.match(path.name)
        if match:
            masks.setdefault(match.group("stem"), []).append(path)
        else:
            images[path.stem] = path
    for stem in sorted(stem for stem in masks if stem not in images):
        report.problem(folder, "orphan_mask", f"mask(s) without an image: {[m.name for m in masks[stem]]}.")
    out = []
    for stem in sorted(images, key=_natural_key):
        found = sorted(masks.get(stem, []), key=lambda p: _natural_key(p.name))
        out.append((images[stem].relative_to(root).as_posix(), [m.relative_to(root).as_posix() for m in found]))
    return out


def _natural_key(text: str) -> list:
    # "benign (10)" after "benign (9)", as a file browser orders them
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def build_busi(
    root: str | os.PathLike,
    classes: Sequence[str] | None = None,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    require_masks: bool = True,
    name: str | None = None,
    on_error: str = "raise",
    report: BuildReport | None = None,
    near_duplicate_bits: int | None = None,
) -> Manifest:
    """A manifest of a BUSI folder, split 70/10/20 (stratified by class) with ``seed``.

    BUSI has no patient identifiers, and several of its images are captures of one lesion a moment apart: with
    ``near_duplicate_bits`` such images (difference hashes within that many of 256 bits,
    :func:`~monai_ssl_ext.data.near_duplicates.near_duplicate_groups`) form a ``group`` that the split keeps
    whole, so no test image has its twin in training. ``None`` splits by image, as the manifests committed before.

    The split is drawn over every class found, then restricted to ``classes``: the benign-vs-malignant
    manifest and the three-class manifest built with the same seed put every image in the same split,
    so results on the two are comparable.

    Args:
        root: the folder holding ``benign/``, ``malignant/`` and ``normal/`` (the data root of the manifest).
        classes: keep only these classes, in this order (for example ``["benign", "malignant"]``);
            ``None`` keeps all three, ordered by severity.
        seed: split seed.
        fractions: training, validation and test shares.
        require_masks: stop when an image has no mask (every image of the public release has one).
        name: manifest name (default ``busi``, or ``busi_<classes>`` for a subset).
        on_error: ``"raise"``, or ``"skip"`` to leave out an image without a mask (and ignore masks
            without an image), recording them in ``report``.
        report: a report to fill (one is made otherwise).
        near_duplicate_bits: group near-duplicate images within this Hamming distance (32 separates BUSI's
            same-lesion pairs from unrelated images), or ``None``.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ManifestError: no class folder, an image without a mask, a mask without an image, an unknown class.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"BUSI folder not found: {root}")
    present = [c for c in BUSI_CLASSES if (root / c).is_dir()]
    if not present:
        raise ManifestError(f"{root}: no BUSI class folder found (expected {', '.join(BUSI_CLASSES)} sub-folders).")
    if classes is not None:
        unknown = [c for c in classes if c not in present]
        if unknown:
            raise ManifestError(f"{root}: class(es) {unknown} not found; the folder has {present}.")
    report = BuildReport.attach(report, "busi", root, on_error)
    entries = []
    for label, cls in enumerate(present):
        for image, masks in _scan_class(root, root / cls, report):
            entry: dict = {DataKeys.IMAGE: image, DataKeys.LABEL: label}
            if masks:
                entry[DataKeys.MASK] = masks
            elif require_masks:
                report.problem(
                    root / image, "missing_mask", f"no mask found (expected '{Path(image).stem}_mask.png' beside it)."
                )
                continue
            entries.append(entry)
    logger.info("BUSI: %d images in %s (%s)", len(entries), root, ", ".join(present))
    source: dict = {"builder": "busi", "classes_found": present}
    if near_duplicate_bits is not None:
        groups = near_duplicate_groups([root / e[DataKeys.IMAGE] for e in entries], max_bits=int(near_duplicate_bits))
        for entry, group in zip(entries, groups, strict=True):
            entry[DataKeys.GROUP] = f"capture{group}"
        source["group"] = f"near-duplicate captures (difference hash within {near_duplicate_bits} of 256 bits)"
        logger.info("BUSI: %d images in %d groups of near-duplicates", len(entries), len(set(groups)))
    kept = list(classes) if classes is not None else present
    default_name = "busi" if kept == list(BUSI_CLASSES) else "busi_" + "_".join(kept)
    return split_entries(
        entries,
        present,
        name=name or default_name,
        description=(
            f"BUSI breast ultrasound, classes {', '.join(kept)}; lesion masks (several per image are merged)"
            f"{'; near-duplicate captures of a lesion kept in one split' if near_duplicate_bits is not None else ''}. "
            f"Paths are relative to the BUSI folder. {_CITATION}"
        ),
        source=source,
        fractions=fractions,
        seed=seed,
        report=report,
        keep=kept,
    )
