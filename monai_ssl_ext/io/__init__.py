"""Clinical image readers: every reader returns a channel-first ``(C, H, W)`` array and a meta dict.

- :func:`read_image`: any supported file (PNG/JPEG/TIFF..., DICOM, NIfTI), chosen by suffix and content.
- :func:`read_raster`, :func:`read_dicom`, :func:`read_nifti`: one format each.
- :func:`slice_to_nifti`: a label map of a slice read by :func:`read_nifti`, back in its file's voxel grid.
- :mod:`~monai_ssl_ext.io.frames`: frame policies for cine / multi-frame files.
- :class:`DicomImageReader`: the DICOM reader as a MONAI ``ImageReader`` for ``LoadImage``.
- :func:`inspect_path` / :func:`format_inspection`: what each file of a folder loads as.
"""

from .dicom import (
    DICOM_SUFFIXES,
    UltrasoundRegion,
    is_dicom_file,
    read_dicom,
    select_imaging_region,
    ultrasound_regions,
)
from .errors import ImageReadError, MissingDecoderError
from .frames import FramePolicy, frame_indices, parse_frame_policy, resolve_frame
from .inspect import format_inspection, inspect_path
from .nifti import NIFTI_SUFFIXES, read_nifti, slice_to_nifti
from .raster import RASTER_SUFFIXES, read_raster
from .reader import IMAGE_SUFFIXES, count_frames, image_format, read_image


# MONAI is imported only when the ImageReader is used: the readers themselves do not need it
def __getattr__(name: str):
    if name == "DicomImageReader":
        from .monai_reader import DicomImageReader

        return DicomImageReader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DICOM_SUFFIXES",
    "IMAGE_SUFFIXES",
    "NIFTI_SUFFIXES",
    "RASTER_SUFFIXES",
    "DicomImageReader",
    "FramePolicy",
    "ImageReadError",
    "MissingDecoderError",
    "UltrasoundRegion",
    "count_frames",
    "format_inspection",
    "frame_indices",
    "image_format",
    "inspect_path",
    "is_dicom_file",
    "parse_frame_policy",
    "read_dicom",
    "read_image",
    "read_nifti",
    "read_raster",
    "resolve_frame",
    "select_imaging_region",
    "slice_to_nifti",
    "ultrasound_regions",
]
