"""DICOM SR and SEG results: written on real ultrasound images, read back with highdicom and pydicom."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

hd = pytest.importorskip("highdicom", reason="the DICOM outputs need the 'dicom' extra (highdicom)")

from conftest import shared_data  # noqa: E402

from monai_ssl_ext.deploy.dicom_results import (  # noqa: E402 - after the optional-dependency check
    CODING_SCHEME,
    RESEARCH_USE,
    ModelDescription,
    classification_report,
    lesion_segmentation,
    read_classification_report,
)

MODEL = ModelDescription("baselines_ultrasound", "0.4.0", "fixmatch", ("benign", "malignant"))


@pytest.fixture(scope="module")
def ultrasound():
    return pydicom.dcmread(shared_data("dicom", "US1_UNCR.dcm"))


def test_the_report_names_the_class_its_probabilities_and_the_image(tmp_path, ultrasound):
    sr = classification_report(ultrasound, [0.2, 0.8], MODEL, series_number=990)
    sr.save_as(tmp_path / "sr.dcm")
    back = pydicom.dcmread(tmp_path / "sr.dcm")
    assert back.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    assert back.StudyInstanceUID == ultrasound.StudyInstanceUID  # a new series in the source study
    assert back.SeriesInstanceUID != ultrasound.SeriesInstanceUID and back.SeriesDescription.startswith(RESEARCH_USE)
    read = read_classification_report(back)
    assert read["finding"] == "malignant"
    assert read["probabilities"] == pytest.approx({"benign": 0.2, "malignant": 0.8})
    assert read["algorithm"] == "baselines_ultrasound fixmatch"
    assert (read["study_uid"], read["series_uid"], read["sop_uid"]) == (
        ultrasound.StudyInstanceUID,
        ultrasound.SeriesInstanceUID,
        ultrasound.SOPInstanceUID,
    )
    assert read["frames"] == []
    # the class names are coded in the private scheme, meaning = the name
    codes = [item.ConceptCodeSequence[0] for item in _content_items(back) if "ConceptCodeSequence" in item]
    ours = [(c.CodeValue, c.CodeMeaning) for c in codes if c.CodingSchemeDesignator == CODING_SCHEME]
    assert ours == [("malignant", "malignant")]


def _content_items(node):
    for item in node.get("ContentSequence", []):
        yield item
        yield from _content_items(item)


def test_a_frame_of_a_cine_loop_is_referenced_by_number():
    cine = pydicom.dcmread(shared_data("dicom", "examples_ybr_color.dcm"), stop_before_pixels=True)  # 30 frames
    read = read_classification_report(classification_report(cine, [0.9, 0.1], MODEL, frame=4))
    assert read["finding"] == "benign" and read["frames"] == [5]
    with pytest.raises(ValueError, match="frame 30 is outside the 30 frame"):
        classification_report(cine, [0.9, 0.1], MODEL, frame=30)
    # a single-frame SOP class holding two frames anyway: referenced whole
    odd = pydicom.dcmread(shared_data("dicom", "OBXXXX1A_2frame.dcm"), stop_before_pixels=True)
    assert read_classification_report(classification_report(odd, [0.9, 0.1], MODEL, frame=1))["frames"] == []


@pytest.mark.parametrize("probs", [[0.5], [0.7, 0.7], [float("nan"), 1.0]])
def test_what_is_not_a_probability_per_class_is_refused(ultrasound, probs):
    with pytest.raises(ValueError):
        classification_report(ultrasound, probs, MODEL)


def test_the_segmentation_is_the_mask_on_the_image_grid(tmp_path, ultrasound):
    mask = np.zeros((ultrasound.Rows, ultrasound.Columns), np.uint8)
    mask[100:220, 150:400] = 255
    seg = lesion_segmentation(ultrasound, mask, MODEL)
    seg.save_as(tmp_path / "seg.dcm")
    back = hd.seg.segread(tmp_path / "seg.dcm")
    assert back.StudyInstanceUID == ultrasound.StudyInstanceUID and back.SeriesDescription.startswith(RESEARCH_USE)
    assert back.get_segment_description(1).segment_label == "lesion"
    pixels = back.get_pixels_by_source_instance(
        source_sop_instance_uids=[ultrasound.SOPInstanceUID], segment_numbers=[1]
    )
    assert np.array_equal(pixels[0, :, :, 0] > 0, mask > 0)
    # an empty mask is a result too
    empty = lesion_segmentation(ultrasound, np.zeros_like(mask), MODEL)
    assert empty.NumberOfFrames == 1
    with pytest.raises(ValueError, match="resize it to the stored image first"):
        lesion_segmentation(ultrasound, mask[::2, ::2], MODEL)


def test_the_frames_of_a_cine_loop_get_their_reports_and_one_for_the_loop(tmp_path):
    from monai_ssl_ext.deploy.dicom_results import DicomResultWriter, aggregate_frames

    path = shared_data("dicom", "examples_ybr_color.dcm")  # 30 frames
    writer = DicomResultWriter(tmp_path, MODEL)
    for frame, probs in ((0, [0.9, 0.1]), (10, [0.5, 0.5]), (20, [0.4, 0.6])):
        fields = writer(source=str(path), meta={"format": "dicom", "frame": frame}, probs=probs)
        assert read_classification_report(pydicom.dcmread(tmp_path / fields["dicom_sr"]))["frames"] == [frame + 1]
    (loop,) = writer.finish()
    source, probs, fields = loop
    assert source == str(path) and probs == pytest.approx([0.6, 0.4])
    whole = read_classification_report(pydicom.dcmread(tmp_path / fields["dicom_sr"]))
    assert whole["frames"] == [] and whole["finding"] == "benign"
    assert whole["probabilities"]["benign"] == pytest.approx(0.6)
    assert writer.finish() == []  # reported once
    assert aggregate_frames([[0.9, 0.1], [0.2, 0.8]], "max") == pytest.approx([0.9 / 1.7, 0.8 / 1.7])
    with pytest.raises(ValueError, match="frame_aggregation must be one of"):
        DicomResultWriter(tmp_path, MODEL, frame_aggregation="median")
