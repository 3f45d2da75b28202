"""Inputs of an inference run: a file, a folder of images, or a manifest split.

A folder exported from a PACS holds more than images: DICOM files without a suffix (recognised by their
``DICM`` marker), a ``DICOMDIR``, masks beside their images, notes. Inference predicts on every readable
image and accounts for every other file:

- *ignored*: not an image input (a mask by its name, a DICOMDIR, a DICOM report, presentation state, key
  object or segmentation, a file no reader recognises); listed in ``skipped.csv`` with the reason, the run
  still succeeds;
- *failed*: an image that cannot be read (corrupt, truncated, NaN pixels) or whose DICOM modality is not
  the one the model was trained on; listed in ``skipped.csv`` and on stderr, and the run exits non-zero
  after writing the predictions of all the others.

:class:`InferenceInputs` reads each input once through the preprocessing before inference starts, so a
bad file is named up front instead of stopping the run half way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai.data import Dataset

from monai_ssl_ext.data.datalist import expand_frames, load_manifest
from monai_ssl_ext.io import ImageReadError
from monai_ssl_ext.io.dicom import read_dicom_header
from monai_ssl_ext.io.frames import FrameSpec
from monai_ssl_ext.io.reader import IMAGE_SUFFIXES, image_format
from monai_ssl_ext.keys import DataKeys
from monai_ssl_ext.utils.errors import innermost_cause

__all__ = [
    "IMAGE_SUFFIXES",
    "InferenceInputs",
    "SkippedInput",
    "list_inputs",
    "not_an_image_input",
    "read_failure",
    "scan_inputs",
]

logger = logging.getLogger("monai_ssl_ext.inference")

# masks sit beside their images in public data sets (BUSI: "<name>_mask.png"); they are not inputs
_MASK_MARKERS = ("_mask", "_segmentation")


@dataclass(frozen=True)
class SkippedInput:
    """A file of the input that got no prediction.

    Attributes:
        path: the file.
        reason: why, in words.
        failed: ``True`` for an image that could not be used (the run exits non-zero), ``False`` for a file
            that is not an image input (ignored).
    """

    path: str
    reason: str
    failed: bool


def not_an_image_input(path: Path) -> str | None:
    """Why a file found in a folder of images is not an image (to predict on, or to train on without a label), or
    ``None`` when it is one: a hidden file, a DICOMDIR, a mask by its name, not an image, a DICOM object that is not
    an image."""
    name = path.name.lower()
    if name.startswith("."):
        return "hidden file"
    if name == "dicomdir":
        return "DICOMDIR: a media directory, not an image"
    if any(marker in name for marker in _MASK_MARKERS):
        return "named as a mask ('_mask' or '_segmentation' in its name)"
    kind = image_format(path)
    if kind is None:
        return f"not an image file (suffix '{path.suffix or '(none)'}' and no DICOM 'DICM' marker)"
    if kind == "dicom":
        return _not_a_dicom_image(path)
    return None


# DICOM objects that describe images rather than hold one: reports, presentation states, key images, results
_NON_IMAGE_MODALITIES = frozenset({"SR", "PR", "KO", "SEG", "RTSTRUCT", "DOC", "REG", "FID"})


def _not_a_dicom_image(path: Path) -> str | None:
    """Why a DICOM file is not an image to predict on (a report, a segmentation, no pixel data), or ``None``.

    A study exported from a PACS holds such objects beside its images (the results of an earlier run among
    them); they are passed over, not failed. A header that cannot be read is left to the image reader, whose
    error then names the file.
    """
    try:
        header = read_dicom_header(path)
    except ImageReadError:
        return None
    modality = str(header.get("Modality") or "").upper()
    if modality in _NON_IMAGE_MODALITIES:
        return f"DICOM {modality} object, not an image"
    if "Rows" not in header:
        return "DICOM object without pixel data (no Rows)"
    return None


def scan_inputs(
    path: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    split: str = "test",
    frames: FrameSpec = "first",
    require_images: bool = True,
) -> tuple[list[dict], list[SkippedInput]]:
    """The entries ``{"image": path}`` to predict on, and the files of a folder that are not inputs.

    Args:
        path: an image file; a folder (searched recursively, sorted; DICOM recognised by its marker
            whatever its name); or a manifest ``.json`` whose ``split`` is used (labels are dropped:
            inference never sees them).
        data_root: data root of a manifest's relative paths.
        split: manifest split to use.
        frames: frame policy of multi-frame files, as in training; with ``"every:k"`` each k-th frame
            is an entry of its own (``{"image": path, "frame": index}``), as the model was trained.
        require_images: a folder without any image is an error; ``False`` returns no entries instead (a
            study sent to an application may hold only objects it does not read).

    Raises:
        FileNotFoundError: ``path`` does not exist or (``require_images``) a folder holds no image.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"Inference input not found: {p}")
    ignored: list[SkippedInput] = []
    if p.is_file() and p.suffix.lower() == ".json":
        manifest = load_manifest(p, data_root)
        entries = [{DataKeys.IMAGE: e[DataKeys.IMAGE]} for e in manifest.split(split)]
    elif p.is_file():
        entries = [{DataKeys.IMAGE: str(p)}]
    else:
        entries = []
        for f in sorted(f for f in p.rglob("*") if f.is_file()):
            reason = not_an_image_input(f)
            if reason is None:
                entries.append({DataKeys.IMAGE: str(f)})
            elif reason != "hidden file":  # .DS_Store and the like: not worth a line
                ignored.append(SkippedInput(str(f), reason, failed=False))
        if not entries and require_images:
            others = (
                f"; {len(ignored)} other files, e.g. {Path(ignored[0].path).name}: {ignored[0].reason}"
                if ignored
                else ""
            )
            raise FileNotFoundError(
                f"No image files ({', '.join(IMAGE_SUFFIXES)}, or DICOM by its marker) under {p}{others}"
            )
    entries = [{k: v for k, v in e.items() if k != "group"} for e in expand_frames(entries, frames)]
    return entries, ignored


def list_inputs(
    path: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    split: str = "test",
    frames: FrameSpec = "first",
) -> list[dict]:
    """The entries of :func:`scan_inputs` (the files that are not inputs are left out)."""
    return scan_inputs(path, data_root, split, frames)[0]


def input_root(path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> Path:
    """The folder inference outputs name inputs relative to: the input folder, a file's folder, or a
    manifest's data root (its own folder without one)."""
    p = Path(path).expanduser().resolve()
    if p.is_file() and p.suffix.lower() == ".json":
        return Path(data_root).expanduser().resolve() if data_root else p.parent
    return p.parent if p.is_file() else p


class InferenceInputs(Dataset):
    """The readable inputs of an inference run (a MONAI ``Dataset``), checked before inference starts.

    Every entry of :func:`scan_inputs` is read through ``transform`` once; one that raises, or whose
    DICOM modality is not one of ``modalities``, is left out and recorded in :attr:`skipped` with the
    reason (with the files that are not inputs). Items are read again when the loader asks for them, so
    memory does not grow with the number of inputs.

    Args:
        path, data_root, split, frames: see :func:`scan_inputs`.
        transform: the inference preprocessing (its images must carry their metadata, ``keep_meta``).
        modalities: DICOM Modality values (0008,0060) the model accepts; a DICOM input of another
            modality is refused. Empty: every modality (the explicit override).
        sop_classes: SOP Class UIDs (0008,0016) the model accepts, as the exported model declares them for
            MONAI Deploy; a DICOM input of another SOP class is refused. Empty: every SOP class.

    Attributes:
        skipped: the :class:`SkippedInput` of the run, failed and ignored.
        root: the folder outputs name inputs relative to (:func:`input_root`).

    Raises:
        FileNotFoundError: no input at all, or none readable (the first reasons are named).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        transform: Callable,
        data_root: str | os.PathLike | None = None,
        split: str = "test",
        frames: FrameSpec = "first",
        modalities: Sequence[str] = (),
        sop_classes: Sequence[str] = (),
    ) -> None:
        entries, self.skipped = scan_inputs(path, data_root, split, frames)
        self.root = input_root(path, data_root)
        accepted = {str(m).upper() for m in modalities}
        classes = tuple(str(u) for u in sop_classes)
        readable = []
        for entry in entries:
            reason = _unreadable(entry, transform, accepted, classes)
            if reason is None:
                readable.append(entry)
            else:
                self.skipped.append(SkippedInput(str(entry[DataKeys.IMAGE]), reason, failed=True))
        for skip in self.skipped:
            (logger.error if skip.failed else logger.warning)(f"{skip.path}: skipped, {skip.reason}")
        if not readable:
            failed = [s for s in self.skipped if s.failed][:3]
            examples = "; ".join(f"{Path(s.path).name}: {s.reason}" for s in failed)
            raise FileNotFoundError(f"No readable input in {path} ({len(entries)} tried): {examples}")
        super().__init__(readable, transform)


def read_failure(err: BaseException) -> str:
    """The reason an input whose reading raised ``err`` is skipped: ``cannot be read (<the reader's message>)``."""
    cause = innermost_cause(err)  # MONAI wraps a transform's error: the reader's own says what is wrong
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return f"cannot be read ({text})"


def _uid_names(uids: Sequence[str]) -> str:
    from pydicom.uid import UID

    return ", ".join(dict.fromkeys(UID(u).name or u for u in uids))


def _unreadable(entry: dict, transform: Callable, accepted: set[str], sop_classes: tuple[str, ...] = ()) -> str | None:
    """Why ``entry`` cannot be predicted on (read error, refused modality or SOP class), or ``None``."""
    try:
        item = transform(dict(entry))
    except Exception as err:  # any failure to read one file must not stop the others
        return read_failure(err)
    meta: Any = getattr(item.get(DataKeys.IMAGE), "meta", None) or {}
    modality = str(meta.get("modality") or "").upper()
    if accepted and meta.get("format") == "dicom" and modality and modality not in accepted:
        return (
            f"DICOM modality {modality}, the model reads {'/'.join(sorted(accepted))} images "
            "(set accept_modalities to [] to predict anyway)"
        )
    sop_class = meta.get("sop_class_uid")
    if sop_classes and meta.get("format") == "dicom" and sop_class and sop_class not in sop_classes:
        return (
            f"SOP class {meta.get('sop_class') or sop_class}, the model reads {_uid_names(sop_classes)} "
            "(set accept_sop_classes to [] to predict anyway)"
        )
    return None
