"""The DICOM instances a deployed model reads, and why every other file of a study is passed over.

A study sent to an inference application holds more than the images its model was trained on: reports (SR),
presentation states (PR), key-object selections (KO), earlier results (SEG), images of other modalities, files
without pixel data. :class:`DicomSelection` is what a model declares it reads, the Modality (0008,0060) and
SOP Class UID (0008,0016) values of its images, written by the export into the model's metadata
(``network_data_format.inputs.image.dicom_selection``) from the modality profile it was trained with
(:attr:`~monai_ssl_ext.transforms.ModalityProfile.dicom_modalities` and
:attr:`~monai_ssl_ext.transforms.ModalityProfile.dicom_sop_classes`).

:func:`load_instances` reads a folder as ``monai-ssl predict`` does (:func:`~monai_ssl_ext.data.scan_inputs`:
DICOM recognised by its marker whatever its name, non-image objects passed over), then, instance by instance,
refuses what the selection does not declare and reads the pixels of the rest with the model's own reader
(rendering, ultrasound region crop, channels). Every file that is not read is returned with its reason; an
image is predicted on only once it has been read, so no result can name an instance that was not.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai_ssl_ext.data.datalist import expand_frames
from monai_ssl_ext.data.inputs import SkippedInput, read_failure, scan_inputs
from monai_ssl_ext.io import ImageReadError
from monai_ssl_ext.io.dicom import read_dicom_header
from monai_ssl_ext.io.frames import FrameSpec
from monai_ssl_ext.io.reader import image_format
from monai_ssl_ext.keys import DataKeys

__all__ = ["REQUIRED_UIDS", "DicomSelection", "load_instances"]

logger = logging.getLogger("monai_ssl_ext.deploy")

#: what a result needs of its image to reference it (and be filed in its study)
REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def _uid_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name and name != uid else uid


@dataclass(frozen=True)
class DicomSelection:
    """The DICOM images a model reads: Modality and SOP Class UID values (an empty tuple accepts any).

    Attributes:
        modalities: Modality (0008,0060) values, upper case (``("US",)``).
        sop_classes: SOP Class UIDs (``("1.2.840.10008.5.1.4.1.1.6.1", ...)``).
    """

    modalities: tuple[str, ...] = ()
    sop_classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "modalities", tuple(str(m).strip().upper() for m in self.modalities))
        object.__setattr__(self, "sop_classes", tuple(str(u).strip() for u in self.sop_classes))

    @classmethod
    def for_profile(
        cls, profile: Any, modalities: Sequence[str] | None = None, sop_classes: Sequence[str] | None = None
    ) -> DicomSelection:
        """The selection of a modality profile; ``modalities`` and ``sop_classes`` (an inference config's
        ``accept_modalities`` and ``accept_sop_classes``) replace its values when given."""
        chosen = profile.dicom_modalities if modalities is None else modalities
        classes = getattr(profile, "dicom_sop_classes", ()) if sop_classes is None else sop_classes
        return cls(tuple(chosen), tuple(classes))

    def to_metadata(self) -> dict[str, list[str]]:
        """As written into a model's metadata: DICOM keywords and their accepted values."""
        return {"Modality": list(self.modalities), "SOPClassUID": list(self.sop_classes)}

    @classmethod
    def from_metadata(cls, value: Mapping[str, Iterable[str]] | None) -> DicomSelection:
        """The selection :meth:`to_metadata` wrote (``None``: a model that declares none accepts any image)."""
        value = value or {}
        return cls(tuple(value.get("Modality") or ()), tuple(value.get("SOPClassUID") or ()))

    def describe(self) -> str:
        """In words, for a log line."""
        modalities = "/".join(self.modalities) or "any modality"
        classes = ", ".join(dict.fromkeys(_uid_name(u) for u in self.sop_classes)) or "any image SOP class"
        return f"Modality {modalities}; {classes}"

    def refusal(self, header: Any) -> str | None:
        """Why the instance of ``header`` (a pydicom dataset, pixel data not needed) is not read, or ``None``."""
        modality = str(header.get("Modality") or "").strip().upper()
        if self.modalities and modality not in self.modalities:
            return f"DICOM modality {modality or '(none)'}, the model reads {'/'.join(self.modalities)} images"
        sop_class = str(header.get("SOPClassUID") or "")
        if self.sop_classes and sop_class not in self.sop_classes:
            accepted = ", ".join(dict.fromkeys(_uid_name(u) for u in self.sop_classes))
            found = _uid_name(sop_class) if sop_class else "(none)"
            return f"SOP class {found}, the model reads {accepted}"
        missing = [key for key in REQUIRED_UIDS if not header.get(key)]
        if missing:
            return f"no {', '.join(missing)}: a result could not reference the image"
        return None


def load_instances(
    folder: str | os.PathLike,
    selection: DicomSelection,
    reader: Callable[[dict], Mapping[str, Any]],
    frames: FrameSpec = "first",
) -> tuple[list[dict], list[SkippedInput]]:
    """The selected DICOM images under ``folder``, read, and every other file with the reason it was not.

    Args:
        folder: a study or any folder of DICOM files (searched recursively; a single file is accepted too).
        selection: what the model reads.
        reader: reads an entry ``{"image": path[, "frame": index]}`` into ``{"image": MetaTensor}`` (a model's
            ``Compose(profile.read(False))``).
        frames: the model's frame policy; with ``"every:k"`` each k-th frame of a multi-frame image is an item
            of its own, as the model was trained.

    Returns:
        ``(items, skipped)``: the read items in the folder's sorted order, and the :class:`SkippedInput` of every
        file passed over: ``failed`` for a selected image that could not be read, not for a file the selection
        refuses (another modality or SOP class, no pixel data, a report) or that is not DICOM.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
    """
    if not Path(folder).exists():
        raise FileNotFoundError(f"input not found: {folder}")
    entries, skipped = scan_inputs(folder, require_images=False)
    selected: list[dict] = []
    for entry in entries:
        path = str(entry[DataKeys.IMAGE])
        if image_format(path) != "dicom":
            skipped.append(SkippedInput(path, "not a DICOM file: results are written into DICOM studies", False))
            continue
        try:
            reason = selection.refusal(read_dicom_header(path))
        except ImageReadError as err:
            skipped.append(SkippedInput(path, read_failure(err), failed=True))
            continue
        if reason is None:
            selected.append(entry)
        else:
            skipped.append(SkippedInput(path, reason, failed=False))
    items = []
    for entry in expand_frames(selected, frames):
        try:
            items.append(dict(reader({k: v for k, v in entry.items() if k != "group"})))
        except Exception as err:  # one unreadable image must not stop the others
            skipped.append(SkippedInput(str(entry[DataKeys.IMAGE]), read_failure(err), failed=True))
    for skip in skipped:
        (logger.error if skip.failed else logger.warning)(f"{skip.path}: skipped, {skip.reason}")
    return items, skipped
