"""Ultrasound instances written from arrays read back as the pipeline's reader sees them."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from monai_ssl_ext.io import read_dicom
from monai_ssl_ext.io.dicom_writer import write_ultrasound_instance


def test_a_grey_and_an_rgb_instance_read_back_with_their_pixels_and_uids(tmp_path):
    grey = np.arange(40 * 48, dtype=np.uint32).reshape(40, 48).astype(np.uint8)
    rgb = np.stack([grey, 255 - grey, grey // 2], axis=-1)
    a = write_ultrasound_instance(tmp_path / "study" / "IM0001", grey, "1.2.3", "1.2.3.4", 1)
    b = write_ultrasound_instance(tmp_path / "study" / "IM0002", rgb, "1.2.3", "1.2.3.4", 2, Modality="OT")
    header = pydicom.dcmread(a)
    assert (header.Modality, header.SOPClassUID, header.StudyInstanceUID, header.InstanceNumber) == (
        "US", pydicom.uid.UltrasoundImageStorage, "1.2.3", 1
    )  # fmt: skip
    assert header.file_meta.MediaStorageSOPInstanceUID == header.SOPInstanceUID
    assert pydicom.dcmread(b).Modality == "OT" and pydicom.dcmread(b).SOPInstanceUID != header.SOPInstanceUID
    image, _ = read_dicom(a)
    assert np.array_equal(np.asarray(image)[0], grey)
    image, _ = read_dicom(b)
    assert np.array_equal(np.moveaxis(np.asarray(image), 0, -1), rgb)


def test_pixels_that_are_not_8_bit_images_are_refused_with_the_file_named(tmp_path):
    with pytest.raises(ValueError, match=r"IM0001: pixels must be uint8 .* float32 \(4, 4\)"):
        write_ultrasound_instance(tmp_path / "IM0001", np.zeros((4, 4), np.float32), "1", "2", 1)
