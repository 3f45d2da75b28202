"""One entry point that picks the reader for a file by its content and suffix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from monai_ssl_ext.io.dicom import DICOM_SUFFIXES, is_dicom_file, read_dicom, read_dicom_header
from monai_ssl_ext.io.errors import ImageReadError
from monai_ssl_ext.io.frames import FrameSpec, resolve_frame
from monai_ssl_ext.io.nifti import NIFTI_SUFFIXES, is_nifti_path, nifti_frames, read_nifti
from monai_ssl_ext.io.raster import RASTER_SUFFIXES, read_raster

__all__ = [
    "DICOM_OPTIONS",
    "IMAGE_SUFFIXES",
    "NIFTI_OPTIONS",
    "check_finite",
    "count_frames",
    "image_format",
    "read_image",
]

# every suffix a reader takes by name (DICOM files without a suffix are recognised by their content)
IMAGE_SUFFIXES: tuple[str, ...] = tuple(sorted({*RASTER_SUFFIXES, *DICOM_SUFFIXES, *NIFTI_SUFFIXES}))

# options each reader takes; read_image passes a reader only its own, so one set of options can
# serve a manifest that mixes formats (PNG masks beside DICOM images, say)
DICOM_OPTIONS = frozenset({"crop_to_region", "modality_lut", "voi"})
NIFTI_OPTIONS = frozenset({"slice_axis", "slice_index"})


def image_format(path: str | os.PathLike) -> str | None:
    """``"dicom"``, ``"nifti"`` or ``"raster"`` for a file a reader supports, else ``None``.

    DICOM is recognised by a ``.dcm``/``.dicom``/``.dic`` suffix or, whatever the name, by the
    ``DICM`` marker after the 128-byte preamble (PS3.10 7.1); NIfTI by ``.nii``/``.nii.gz``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in RASTER_SUFFIXES:
        return "raster"
    if is_nifti_path(path):
        return "nifti"
    if suffix in DICOM_SUFFIXES or is_dicom_file(path):
        return "dicom"
    return None


def _unsupported(path: Path) -> ImageReadError:
    suffix = path.suffix.lower()
    return ImageReadError(path, f"unsupported file type '{suffix or '(no suffix)'}'")


def check_finite(array: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Return ``array`` unchanged, or raise :class:`ImageReadError` when it holds NaN or infinite values.

    A float image (TIFF, NIfTI, DICOM float pixel data) with such values would otherwise surface as a NaN
    loss in the middle of training, or NaN probabilities at inference, without naming the file.
    """
    if not np.issubdtype(array.dtype, np.floating):
        return array  # integer and boolean pixels are always finite
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise ImageReadError(path, f"{bad} NaN/infinite pixel values; fix the file or remove it from the data")
    return array


def read_image(path: str | os.PathLike, *, frame: FrameSpec = None, **options: Any) -> tuple[np.ndarray, dict]:
    """Read any supported image file as ``(array (C, H, W), meta)``; ``(C, T, H, W)`` for ``frame="all"``.

    Formats: PNG/JPEG/BMP/TIFF/GIF/WebP (:func:`~monai_ssl_ext.io.read_raster`), DICOM
    (:func:`~monai_ssl_ext.io.read_dicom`), NIfTI-1/2 (:func:`~monai_ssl_ext.io.read_nifti`).

    Args:
        frame: frame policy for multi-frame files (:mod:`monai_ssl_ext.io.frames`); raster images
            have one frame (only the first page of a multi-page file is read).
        options: reader options, each passed to the reader that takes it and ignored by the others:
            ``crop_to_region``, ``modality_lut``, ``voi`` (DICOM); ``slice_axis``, ``slice_index`` (NIfTI).

    Raises:
        ImageReadError: missing, unreadable or unsupported file, or NaN/infinite pixel values (see
            :func:`check_finite`); the message names the file.
        TypeError: an option no reader takes.
    """
    unknown = set(options) - DICOM_OPTIONS - NIFTI_OPTIONS
    if unknown:
        raise TypeError(f"read_image got unknown option(s) {sorted(unknown)}")
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found")
    kind = image_format(path)
    if kind == "dicom":
        array, meta = read_dicom(path, frame=frame, **{k: v for k, v in options.items() if k in DICOM_OPTIONS})
    elif kind == "nifti":
        array, meta = read_nifti(path, frame=frame, **{k: v for k, v in options.items() if k in NIFTI_OPTIONS})
    elif kind == "raster":
        array, meta = read_raster(path)
        index = resolve_frame(frame, 1, path)
        if index is None:
            array = array[:, None]
        meta["frame"] = index
    else:
        raise _unsupported(path)
    return check_finite(array, path), meta


def count_frames(path: str | os.PathLike) -> int:
    """Number of frames of an image file from its header: DICOM Number of Frames (0028,0008),
    NIfTI volumes (4th dimension), 1 for raster images (only their first page is read)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found")
    kind = image_format(path)
    if kind == "dicom":
        return int(read_dicom_header(path).get("NumberOfFrames") or 1)
    if kind == "nifti":
        return nifti_frames(path)
    if kind == "raster":
        return 1
    raise _unsupported(path)
