"""PredictionWriter on a real MONAI SupervisedEvaluator: class probabilities and lesion masks per image.

The network segments bright pixels, so each synthetic image's bright rectangle is the lesion the mask
must show, at the image's original size and place (after the resize to the network size and back).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from PIL import Image
from torch import nn

from monai_ssl_ext.data import InferenceInputs, SkippedInput, scan_inputs
from monai_ssl_ext.engines import PredictionWriter
from monai_ssl_ext.engines.prediction_writer import MaskWriteError, SkippedInputsError
from monai_ssl_ext.transforms import get_profile

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ["benign", "malignant"]

# the postprocessing of a joint classification + segmentation bundle, as it appears in its inference.json
SEG_POSTPROCESSING = json.loads(
    """
{
    "_target_": "Compose",
    "transforms": [
        {"_target_": "FlattenSubKeysd", "keys": "pred", "sub_keys": ["class", "seg"], "delete_keys": true},
        {"_target_": "Activationsd", "keys": ["class", "seg"], "softmax": true},
        {"_target_": "CopyItemsd", "keys": "class", "times": 2, "names": ["probs", "pred"]},
        {"_target_": "DeleteItemsd", "keys": "class"},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": true}
    ]
}
"""
)
# the classification bundles' postprocessing (bundles/baselines_ultrasound/configs/inference.json)
CLS_POSTPROCESSING = {
    "_target_": "Compose",
    "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "CopyItemsd", "keys": "pred", "names": "probs"},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
    ],
}
# seg as a label map (1, h, w) instead of probabilities
LABEL_MAP_POSTPROCESSING = {
    "_target_": "Compose",
    "transforms": [
        *SEG_POSTPROCESSING["transforms"],
        {"_target_": "AsDiscreted", "keys": "seg", "argmax": True},
    ],
}


class BrightIsLesion(nn.Module):
    """Segments pixels brighter than 0.5; class logits from the lesion's area; also returns unused features.

    Input ``(B, C, H, W)``; output ``{"class": (B, 2), "seg": (B, 2, H, W), "features": (B, 4)}`` (logits).
    """

    def __init__(self, classification_only: bool = False) -> None:
        super().__init__()
        self.classification_only = classification_only

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor] | torch.Tensor:
        fg = (x.mean(1, keepdim=True) - 0.5) * 40.0
        area = (fg > 0).float().mean((1, 2, 3))
        logits = torch.stack([0.2 - area, area], 1)
        if self.classification_only:
            return logits
        return {"class": logits, "seg": torch.cat([-fg, fg], 1), "features": torch.zeros(x.shape[0], 4)}


def _postprocessing(config: dict):
    return ConfigParser({"post": config}).get_parsed_content("post")


def _run(
    paths: list,
    writer: PredictionWriter,
    postprocessing: dict = SEG_POSTPROCESSING,
    batch_size: int = 2,
    classification_only: bool = False,
    **profile_options,
) -> list[dict]:
    profile = get_profile("ultrasound", image_size=32, **profile_options)
    data = Dataset([{"image": str(p)} for p in paths], profile.preprocess(with_mask=False, keep_meta=True))
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(data, batch_size=batch_size, num_workers=0),
        network=BrightIsLesion(classification_only),
        postprocessing=_postprocessing(postprocessing),
        val_handlers=[writer],
    )
    evaluator.run()
    with open(writer.output_dir / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def _png(path, shape, box, value=220):
    array = np.full(shape, 30, dtype=np.uint8)
    r0, r1, c0, c1 = box
    array[r0:r1, c0:c1] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _box_mask(shape, box) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    r0, r1, c0, c1 = box
    m[r0:r1, c0:c1] = True
    return m


def _assert_rectangle(mask: np.ndarray, expected: np.ndarray, margin: int = 2) -> None:
    """``mask`` matches ``expected`` away from its border (the resize blurs a pixel or two) and overall."""
    from scipy import ndimage

    found = mask > 0
    inner = ndimage.binary_erosion(expected, iterations=margin)
    outer = ~ndimage.binary_dilation(expected, iterations=margin)
    assert found[inner].all(), "lesion pixels missing inside the rectangle"
    assert not found[outer].any(), "lesion pixels outside the rectangle"
    iou = (found & expected).sum() / (found | expected).sum()
    assert iou > 0.85, iou


# ---------------------------------------------------------------- raster inputs


@pytest.mark.parametrize("postprocessing", [SEG_POSTPROCESSING, LABEL_MAP_POSTPROCESSING], ids=["probs", "label_map"])
def test_png_masks_at_original_size(tmp_path, postprocessing):
    boxes = {"wide.png": ((50, 70), (10, 30, 20, 50)), "square.png": ((64, 64), (16, 48, 8, 40))}
    paths = [_png(tmp_path / "in" / name, shape, box) for name, (shape, box) in boxes.items()]
    out = tmp_path / "out"
    rows = _run(paths, PredictionWriter(out, CLASSES), postprocessing)

    assert [r["image"] for r in rows] == ["wide.png", "square.png"]  # no input root: file names, no folders
    assert set(rows[0]) == {
        "image",
        "prediction",
        "class_index",
        "prob_benign",
        "prob_malignant",
        "mask",
        "mask_shape",
        "mask_region",
        "lesion_pixels",
        "lesion_fraction",
    }
    for row, (name, (shape, box)) in zip(rows, boxes.items(), strict=True):
        assert row["mask"] == f"masks/{name[:-4]}_mask.png"
        mask = np.asarray(Image.open(out / row["mask"]))
        assert mask.shape == shape and mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 255}
        _assert_rectangle(mask, _box_mask(shape, box))
        assert json.loads(row["mask_shape"]) == list(shape)
        assert row["mask_region"] == ""
        assert int(row["lesion_pixels"]) == np.count_nonzero(mask)
        assert float(row["lesion_fraction"]) == pytest.approx(np.count_nonzero(mask) / mask.size)
        assert float(row["prob_benign"]) + float(row["prob_malignant"]) == pytest.approx(1.0, abs=1e-5)
    # nothing half-written is left behind
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["square_mask.png", "wide_mask.png"]

    saved = json.loads((out / "predictions.json").read_text())
    assert saved["classes"] == CLASSES and saved["predictions"][0]["mask_shape"] == [50, 70]
    with Image.open(out / "predictions_overlay.png") as fig:
        fig.verify()
    with Image.open(out / "predictions_overlay.png") as fig:
        assert fig.format == "PNG" and min(fig.size) > 100


def test_repeated_stems_do_not_clash(tmp_path):
    a = _png(tmp_path / "site_a" / "scan.png", (40, 40), (5, 15, 5, 15))
    b = _png(tmp_path / "site_b" / "scan.png", (40, 40), (20, 35, 22, 38))
    c = _png(tmp_path / "site_c" / "SCAN.png", (40, 40), (0, 10, 25, 40))
    names = []
    for run in ("first", "second"):
        out = tmp_path / run
        rows = _run([a, b, c], PredictionWriter(out, CLASSES), batch_size=3)
        masks = [r["mask"] for r in rows]
        assert len(set(masks)) == 3 and masks[0] == "masks/scan_mask.png"
        assert masks[1].startswith("masks/scan_") and masks[2].startswith("masks/SCAN_")
        for row, box in zip(rows, [(5, 15, 5, 15), (20, 35, 22, 38), (0, 10, 25, 40)], strict=True):
            _assert_rectangle(np.asarray(Image.open(out / row["mask"])), _box_mask((40, 40), box))
        names.append(masks)
    assert names[0] == names[1], "mask names must not depend on the run"


def test_classification_only_writes_no_masks(tmp_path):
    paths = [_png(tmp_path / "in" / f"{i}.png", (48, 40), (5, 20, 5, 20)) for i in range(3)]
    out = tmp_path / "out"
    rows = _run(paths, PredictionWriter(out, CLASSES), CLS_POSTPROCESSING, classification_only=True)
    assert list(rows[0]) == ["image", "prediction", "class_index", "prob_benign", "prob_malignant"]
    assert len(rows) == 3
    assert not (out / "masks").exists() and not (out / "predictions_overlay.png").exists()


def test_seg_key_none_ignores_segmentation(tmp_path):
    path = _png(tmp_path / "in" / "a.png", (48, 40), (5, 20, 5, 20))
    out = tmp_path / "out"
    rows = _run([path], PredictionWriter(out, CLASSES, seg_key=None, overlay=False))
    assert "mask" not in rows[0] and not (out / "masks").exists()


def test_forced_formats_and_mask_dir(tmp_path):
    png = _png(tmp_path / "in" / "a.png", (50, 70), (10, 30, 20, 50))
    masks = tmp_path / "elsewhere"
    rows = _run([png], PredictionWriter(tmp_path / "out", CLASSES, mask_dir=masks, mask_format="nifti", overlay=False))
    assert rows[0]["mask"] == str(masks / "a_mask.nii.gz")
    nii = nib.load(masks / "a_mask.nii.gz")
    assert nii.shape == (50, 70) and np.allclose(nii.affine, np.eye(4))
    _assert_rectangle(np.asarray(nii.dataobj), _box_mask((50, 70), (10, 30, 20, 50)))
    assert not (tmp_path / "out" / "predictions_overlay.png").exists()

    with pytest.raises(ValueError, match="mask_format"):
        PredictionWriter(tmp_path, CLASSES, mask_format="jpeg")


def test_write_error_names_the_image(tmp_path):
    path = _png(tmp_path / "in" / "broken_case.png", (40, 40), (5, 15, 5, 15))
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the mask folder should be")
    with pytest.raises(MaskWriteError, match=r"broken_case\.png"):
        _run([path], PredictionWriter(tmp_path / "out", CLASSES, mask_dir=blocker))


# ---------------------------------------------------------------- NIfTI and DICOM inputs


def test_nifti_masks_keep_the_input_grid_and_affine(tmp_path):
    # voxel axes permuted and flipped against RAS, so the reader reorients before slicing
    affine_2d = np.array([[0.0, 0.7, 0.0, 10.0], [-0.5, 0.0, 0.0, -4.0], [0.0, 0.0, 2.0, 3.0], [0.0, 0.0, 0.0, 1.0]])
    plane = np.zeros((40, 30), dtype=np.float32)
    plane[5:20, 8:26] = 1.0
    nib.save(nib.Nifti1Image(plane, affine_2d), tmp_path / "slice.nii.gz")

    affine_3d = np.array([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, -1.5, 2.0], [0.0, 0.0, 0.0, 3.0], [0, 0, 0, 1.0]])
    affine_3d[:3, :3] = [[0.0, -0.8, 0.0], [0.6, 0.0, 0.0], [0.0, 0.0, -1.5]]
    volume = np.zeros((24, 20, 6), dtype=np.float32)
    volume[4:16, 6:14, 2] = 1.0  # the middle axial slice: canonical index 3 of 6, flipped
    volume[0:10, 0:10, 0] = 1.0  # another slice: never read, so never segmented
    nib.save(nib.Nifti1Image(volume, affine_3d), tmp_path / "volume.nii")

    out = tmp_path / "out"
    rows = _run([tmp_path / "slice.nii.gz", tmp_path / "volume.nii"], PredictionWriter(out, CLASSES), batch_size=1)
    assert [r["mask"] for r in rows] == ["masks/slice_mask.nii.gz", "masks/volume_mask.nii.gz"]

    mask = nib.load(out / rows[0]["mask"])
    assert mask.shape == plane.shape and np.allclose(mask.affine, affine_2d)
    data = np.asarray(mask.dataobj)
    assert data.dtype == np.uint8 and set(np.unique(data)) == {0, 1}
    _assert_rectangle(data, plane > 0)
    # the slice as read: rows along RAS y (the file's first axis here), columns along x
    assert json.loads(rows[0]["mask_shape"]) == [40, 30]

    mask = nib.load(out / rows[1]["mask"])
    assert mask.shape == volume.shape and np.allclose(mask.affine, affine_3d)
    data = np.asarray(mask.dataobj)
    assert not np.delete(data, 2, axis=2).any()
    _assert_rectangle(data[:, :, 2], volume[:, :, 2] > 0, margin=1)
    assert int(rows[1]["lesion_pixels"]) == np.count_nonzero(data)


def test_nifti_input_forced_to_png(tmp_path):
    plane = np.zeros((40, 30), dtype=np.float32)
    plane[5:20, 8:26] = 1.0
    nib.save(nib.Nifti1Image(plane, np.diag([0.5, 0.5, 1.0, 1.0])), tmp_path / "slice.nii.gz")
    out = tmp_path / "out"
    rows = _run([tmp_path / "slice.nii.gz"], PredictionWriter(out, CLASSES, mask_format="png"))
    mask = np.asarray(Image.open(out / rows[0]["mask"]))
    # a PNG holds the slice as the network saw it (read_nifti's display orientation)
    assert mask.shape == (30, 40)
    _assert_rectangle(mask, (plane > 0).T[::-1, ::-1])


def _region_dicom(tmp_path):
    """An ultrasound DICOM (32 x 48, a bright lesion) with a burned-in bar outside its imaging region."""
    from pydicom import uid
    from pydicom.dataset import Dataset as DicomDataset
    from pydicom.dataset import FileMetaDataset

    frame = np.full((32, 48), 20, dtype=np.uint8)
    frame[0:4, :] = 255  # burned-in bar outside the imaging region: cropped away, so never segmented
    frame[8:16, 10:24] = 230
    ds = DicomDataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SOPClassUID = uid.UltrasoundImageStorage
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = (uid.generate_uid() for _ in range(3))
    # the patient and study modules a scanner writes (type 2: present, may be empty)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "", "", "", ""
    ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "", "", "", ""
    ds.Modality = "US"
    ds.set_pixel_data(frame, photometric_interpretation="MONOCHROME2", bits_stored=8)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    region = DicomDataset()
    region.RegionSpatialFormat, region.RegionDataType, region.RegionFlags = 1, 1, 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 4, 5
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = 30, 20
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3  # cm
    region.PhysicalDeltaX, region.PhysicalDeltaY = 0.01, 0.02
    ds.SequenceOfUltrasoundRegions = [region]
    path = tmp_path / "us.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_cropped_to_the_ultrasound_region(tmp_path):
    path = _region_dicom(tmp_path)
    out = tmp_path / "out"
    rows = _run([path], PredictionWriter(out, CLASSES), crop_to_region=True)
    row = rows[0]
    assert row["mask"] == "masks/us_mask.nii.gz"
    assert json.loads(row["mask_shape"]) == [16, 27] and json.loads(row["mask_region"]) == [4, 5, 30, 20]
    mask = nib.load(out / row["mask"])
    assert mask.shape == (16, 27)
    assert np.allclose(mask.affine, np.diag([0.2, 0.1, 1.0, 1.0]))
    _assert_rectangle(np.asarray(mask.dataobj), _box_mask((16, 27), (3, 11, 6, 20)), margin=1)


# ---------------------------------------------------------------- inputs as a hospital export holds them


def test_inputs_are_named_relative_to_the_input_root(tmp_path):
    # a folder named after a patient must not reach the results
    root = tmp_path / "exports"
    paths = [_png(root / "DOE^JANE" / "study1" / "a.png", (40, 40), (5, 20, 5, 20))]
    rows = _run(paths, PredictionWriter(tmp_path / "out", CLASSES, seg_key=None, input_root=root / "DOE^JANE"))
    assert rows[0]["image"] == "study1/a.png"
    text = (tmp_path / "out" / "predictions.csv").read_text() + (tmp_path / "out" / "predictions.json").read_text()
    assert "DOE" not in text and str(tmp_path) not in text


def test_skipped_inputs_are_listed_and_a_failed_one_fails_the_run_after_the_others_are_written(tmp_path):
    root = tmp_path / "in"
    good = _png(root / "good.png", (40, 40), (5, 20, 5, 20))
    skipped = [
        SkippedInput(str(root / "broken.png"), "cannot be read (truncated)", failed=True),
        SkippedInput(str(root / "good_mask.png"), "named as a mask", failed=False),
    ]
    writer = PredictionWriter(tmp_path / "out", CLASSES, seg_key=None, input_root=root, skipped=skipped)
    with pytest.raises(SkippedInputsError, match=r"1 input\(s\) got no prediction \(broken\.png: cannot be read"):
        _run([good], writer)
    with open(tmp_path / "out" / "predictions.csv", newline="") as f:
        assert [r["image"] for r in csv.DictReader(f)] == ["good.png"]
    with open(tmp_path / "out" / "skipped.csv", newline="") as f:
        assert list(csv.reader(f)) == [
            ["image", "status", "reason"],
            ["broken.png", "failed", "cannot be read (truncated)"],
            ["good_mask.png", "ignored", "named as a mask"],
        ]
    # only ignored files: listed, and the run succeeds; none: no stale list left from an earlier run
    _run([good], PredictionWriter(tmp_path / "out", CLASSES, seg_key=None, input_root=root, skipped=skipped[1:]))
    _run([good], PredictionWriter(tmp_path / "out", CLASSES, seg_key=None, input_root=root))
    assert not (tmp_path / "out" / "skipped.csv").exists()


def _dicom(path, modality: str):
    from pydicom.dataset import Dataset as DicomDataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = DicomDataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.Rows, ds.Columns = 32, 32
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.arange(32 * 32, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_pacs_export_folder_is_read_for_what_it_holds(tmp_path):
    import pydicom

    root = tmp_path / "export"
    _dicom(root / "series1" / "IM0001", "US")  # no suffix: recognised by its DICM marker
    _dicom(root / "series2" / "IM0001", "CT")  # another modality: refused for an ultrasound model
    _png(root / "case_mask.png", (40, 40), (5, 20, 5, 20))
    _png(root / "case.png", (40, 40), (5, 20, 5, 20))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (root / "notes.txt").write_text("reported by ...")
    (root / "DICOMDIR").write_bytes(b"\x00" * 128 + b"DICM")
    report = _dicom(root / "series3" / "SR0001", "SR")  # a structured report beside the images: not an input
    report_ds = pydicom.dcmread(report)
    del report_ds.Rows
    report_ds.save_as(report)
    (root / ".DS_Store").write_bytes(b"\x00")
    entries, ignored = scan_inputs(root)
    assert [Path(e["image"]).relative_to(root).as_posix() for e in entries] == [
        "broken.png",
        "case.png",
        "series1/IM0001",
        "series2/IM0001",
    ]
    assert {Path(s.path).name: s.reason.split(" ")[0] for s in ignored} == {
        "DICOMDIR": "DICOMDIR:",
        "case_mask.png": "named",
        "notes.txt": "not",
        "SR0001": "DICOM",
    }
    profile = get_profile("ultrasound", image_size=32)
    inputs = InferenceInputs(root, profile.preprocess(with_mask=False, keep_meta=True), modalities=("US",))
    assert [Path(e["image"]).name for e in inputs.data] == ["case.png", "IM0001"]
    failed = {Path(s.path).relative_to(root).as_posix(): s.reason for s in inputs.skipped if s.failed}
    assert set(failed) == {"broken.png", "series2/IM0001"}
    assert failed["broken.png"].startswith("cannot be read (") and "broken.png" in failed["broken.png"]
    assert failed["series2/IM0001"].startswith("DICOM modality CT, the model reads US images")
    assert inputs.root == root.resolve()
    # the SOP classes the exported model declares for Deploy: the Secondary Capture image is refused too
    declared = InferenceInputs(root, profile.preprocess(with_mask=False, keep_meta=True), modalities=("US",),
                               sop_classes=profile.dicom_sop_classes)  # fmt: skip
    assert [Path(e["image"]).name for e in declared.data] == ["case.png"]
    refused = {Path(s.path).relative_to(root).as_posix(): s.reason for s in declared.skipped if s.failed}
    assert refused["series1/IM0001"] == (
        "SOP class Secondary Capture Image Storage, the model reads Ultrasound Image Storage, Ultrasound Multi-frame "
        "Image Storage (set accept_sop_classes to [] to predict anyway)"
    )
    # the explicit override: every modality
    anything = InferenceInputs(root, profile.preprocess(with_mask=False, keep_meta=True), modalities=())
    assert len(anything.data) == 3
    with pytest.raises(FileNotFoundError, match=r"No readable input .* broken\.png: cannot be read"):
        InferenceInputs(root / "broken.png", profile.preprocess(with_mask=False, keep_meta=True))


def test_dicom_inputs_get_an_sr_and_a_seg_in_their_study(tmp_path):
    pytest.importorskip("highdicom", reason="the DICOM outputs need the 'dicom' extra (highdicom)")
    import pydicom
    from highdicom.seg import segread

    from monai_ssl_ext.deploy.dicom_results import DicomResultWriter, ModelDescription, read_classification_report

    path = _region_dicom(tmp_path)
    out = tmp_path / "out"
    model = ModelDescription("hermes_ultrasound", "0.3.0", "hermes", tuple(CLASSES))
    writer = PredictionWriter(out, CLASSES, result_sinks=[DicomResultWriter(out, model)])
    row = _run([path], writer, crop_to_region=True)[0]
    source = pydicom.dcmread(path)
    assert (row["study_uid"], row["series_uid"], row["sop_uid"]) == (
        source.StudyInstanceUID,
        source.SeriesInstanceUID,
        source.SOPInstanceUID,
    )
    report = read_classification_report(pydicom.dcmread(out / row["dicom_sr"]))
    assert report["finding"] == row["prediction"] and report["sop_uid"] == source.SOPInstanceUID
    assert report["probabilities"] == pytest.approx({c: float(row[f"prob_{c}"]) for c in CLASSES})
    # the SEG is the written mask, put back where the region crop took it from
    seg = segread(out / row["dicom_seg"])
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])[0, :, :, 0]
    assert pixels.shape == (32, 48)
    written = np.asarray(nib.load(out / row["mask"]).dataobj) > 0
    assert np.array_equal(pixels[5:21, 4:31] > 0, written) and not pixels[:5].any() and written.any()


def test_a_batch_mixing_cropped_and_uncropped_images_keeps_each_region(tmp_path):
    # collating a region-cropped DICOM with a PNG used to lose the region of both: the cropped image got no SR/SEG
    pytest.importorskip("highdicom", reason="the DICOM outputs need the 'dicom' extra (highdicom)")
    from monai_ssl_ext.deploy.dicom_results import DicomResultWriter, ModelDescription

    paths = [_region_dicom(tmp_path), _png(tmp_path / "plain.png", (40, 40), (5, 20, 5, 20))]
    out = tmp_path / "out"
    model = ModelDescription("hermes_ultrasound", "0.3.0", "hermes", tuple(CLASSES))
    writer = PredictionWriter(out, CLASSES, result_sinks=[DicomResultWriter(out, model)])
    region_row, plain_row = _run(paths, writer, batch_size=2, crop_to_region=True)
    assert json.loads(region_row["mask_region"]) == [4, 5, 30, 20] and json.loads(region_row["mask_shape"]) == [16, 27]
    assert region_row["dicom_sr"] and region_row["dicom_seg"]
    assert plain_row["mask_region"] == "" and plain_row["dicom_sr"] == ""


def test_a_mask_goes_back_to_the_stored_grid():
    from monai_ssl_ext.deploy.dicom_results import mask_on_source_grid

    mask = np.ones((3, 4), np.uint8)
    full = mask_on_source_grid(mask, 10, 12, region=[2, 5, 5, 7])
    assert full.sum() == 12 and full[5:8, 2:6].all()
    assert mask_on_source_grid(mask, 3, 4).all()
    with pytest.raises(ValueError, match="does not fit the region"):
        mask_on_source_grid(mask, 10, 12, region=[2, 5, 6, 7])
    with pytest.raises(ValueError, match="not on the image's 5 x 5 grid"):
        mask_on_source_grid(mask, 5, 5)


def test_an_image_without_study_uids_gets_no_dicom_result_and_a_warning(tmp_path, caplog):
    pytest.importorskip("highdicom", reason="the DICOM outputs need the 'dicom' extra (highdicom)")
    import pydicom

    from monai_ssl_ext.deploy.dicom_results import DicomResultWriter, ModelDescription

    path = _region_dicom(tmp_path)
    ds = pydicom.dcmread(path)
    del ds.StudyInstanceUID
    ds.save_as(path)
    writer = DicomResultWriter(tmp_path / "out", ModelDescription("b", "1", "a", tuple(CLASSES)))
    with caplog.at_level("WARNING"):
        assert writer(source=str(path), meta={"format": "dicom"}, probs=[0.4, 0.6]) == {}
    assert "us.dcm: no DICOM SR/SEG written, the file has no StudyInstanceUID" in caplog.text
    assert writer(source="a.png", meta={"format": "raster"}, probs=[0.4, 0.6]) == {}  # other inputs: nothing


def test_a_sink_adds_fields_to_each_row_and_rows_of_its_own_at_the_end(tmp_path):
    class Sink:
        def __init__(self):
            self.seen, self.resets = [], 0

        def reset(self):
            self.resets += 1

        def __call__(self, source, meta, probs, mask, region):
            self.seen.append((Path(source).name, mask is not None))
            return {"extra": len(self.seen)}

        def finish(self):
            return [(str(tmp_path / "in" / "a.png"), [0.25, 0.75], {"extra": "loop"})]

    sink = Sink()
    paths = [_png(tmp_path / "in" / n, (40, 40), (5, 20, 5, 20)) for n in ("a.png", "b.png")]
    rows = _run(paths, PredictionWriter(tmp_path / "out", CLASSES, input_root=tmp_path / "in", result_sinks=[sink]))
    assert sink.resets == 1 and sink.seen == [("a.png", True), ("b.png", True)]
    assert [(r["image"], r["extra"], r.get("frame", "")) for r in rows] == [
        ("a.png", "1", ""),
        ("b.png", "2", ""),
        ("a.png", "loop", "all"),
    ]
    assert rows[2]["prediction"] == "malignant" and float(rows[2]["prob_malignant"]) == 0.75
