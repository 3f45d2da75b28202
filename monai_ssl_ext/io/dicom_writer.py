"""DICOM ultrasound instances made from pixel arrays, for trying the DICOM path without a scanner.

:func:`write_ultrasound_instance` writes what a scanner's export holds at its simplest: an Ultrasound Image
Storage instance (8-bit greyscale or RGB, uncompressed) in a given study and series, with the patient and study
attributes present but empty. The load measurement of ``monai-ssl predict`` (``scripts/predict_load.py``) and the
tests of the DICOM outputs and the Deploy applications build their studies with it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_ultrasound_instance"]


def write_ultrasound_instance(
    path: str | os.PathLike, pixels: np.ndarray, study_uid: str, series_uid: str, number: int, **attributes: Any
) -> Path:
    """Write ``pixels`` as an Ultrasound Image Storage instance; return the path.

    Args:
        path: the file to write (no suffix needed: scanners often write none); folders are created.
        pixels: ``(H, W)`` uint8 (MONOCHROME2) or ``(H, W, 3)`` uint8 (RGB).
        study_uid: Study Instance UID (an empty string leaves the instance without a study).
        series_uid: Series Instance UID.
        number: Instance Number.
        attributes: further data elements by keyword, set last (``Modality="CT"``, ``SOPClassUID=...``).
    """
    from pydicom import uid
    from pydicom.dataset import Dataset, FileMetaDataset

    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"{path}: pixels must be uint8 (H, W) or (H, W, 3), got {pixels.dtype} {pixels.shape}")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SOPClassUID = uid.UltrasoundImageStorage
    ds.SOPInstanceUID = uid.generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "", "", "", ""
    ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "", "", "", ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "US", 1, number
    ds.set_pixel_data(pixels, photometric_interpretation="MONOCHROME2" if pixels.ndim == 2 else "RGB", bits_stored=8)
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
