"""MONAI Deploy applications: DICOM selection, the exported model's in-memory pipeline, the application folder,
and the SDK applications end to end on CPU over DICOM made from real BUSI images and real ultrasound files, their
SR and SEG read back and compared with what ``monai-ssl predict`` writes."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from conftest import shared_data
from monai.bundle import ConfigParser
from monai.transforms import Compose
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset

from monai_ssl_ext.cli import main
from monai_ssl_ext.deploy.selection import DicomSelection, load_instances
from monai_ssl_ext.io.dicom_writer import write_ultrasound_instance
from monai_ssl_ext.transforms import get_profile

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
SMALL = {"image_size": 32, "backbone": "resnet10"}
US_CLASSES = ("1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.3.1")
needs_sdk = pytest.mark.skipif(
    importlib.util.find_spec("monai.deploy") is None,
    reason="the MONAI Deploy App SDK is not installed: pip install -e '.[dicom,deploy]'",
)


# ---------------------------------------------------------------- DICOM made for the tests
def _image_dicom(path: Path, pixels: np.ndarray, study: str, series: str, number: int, **attributes) -> Path:
    return write_ultrasound_instance(path, pixels, study, series, number, **attributes)


def _report(path: Path, study: str) -> Path:
    """A Basic Text SR in ``study``: no pixels, not an image."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = uid.BasicTextSRStorage, uid.generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, uid.generate_uid(), "SR"
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _busi(name: str) -> np.ndarray:
    return np.asarray(Image.open(shared_data("busi", name.split(" ")[0], name)).convert("L"))


@pytest.fixture(scope="module")
def scanner_export(tmp_path_factory) -> Path:
    """A folder as a scanner exports it: BUSI images as one ultrasound study (files without a suffix), the real
    ultrasound files, and a CT and a text report that the applications pass over."""
    root = tmp_path_factory.mktemp("export") / "PATIENT^DOE"
    study, series = uid.generate_uid(), uid.generate_uid()
    for n, name in enumerate(["benign (1).png", "benign (10).png", "malignant (1).png"], start=1):
        _image_dicom(root / "busi" / f"IM{n:04d}", _busi(name), study, series, n)
    for name in ("US1_UNCR.dcm", "OBXXXX1A.dcm", "CT_small.dcm"):  # RGB; palette with a region; a CT
        shutil.copy(shared_data("dicom", name), root / name)
    _report(root / "busi" / "SR0001", study)
    return root


# ---------------------------------------------------------------- selection at the door
def test_only_the_declared_modality_and_sop_class_are_read_and_everything_else_has_its_reason(tmp_path):
    root = tmp_path / "study"
    study, series = uid.generate_uid(), uid.generate_uid()
    frame = np.tile(np.arange(48, dtype=np.uint8), (40, 1)) * 5
    _image_dicom(root / "IM0001", frame, study, series, 1)
    _image_dicom(root / "IM0002", frame, study, series, 2, SOPClassUID=uid.SecondaryCaptureImageStorage)
    _image_dicom(root / "IM0003", frame, study, series, 3, Modality="CT")
    no_pixels = _image_dicom(root / "IM0004", frame, study, series, 4)
    ds = pydicom.dcmread(no_pixels)
    del ds.PixelData
    ds.save_as(no_pixels)
    _image_dicom(root / "IM0005", frame, "", series, 5)  # no study: a result could not be filed
    _report(root / "SR0001", study)
    Image.fromarray(frame).save(root / "photo.png")
    selection = DicomSelection(("us",), US_CLASSES)
    reader = Compose(get_profile("ultrasound", image_size=32).read(False))

    items, skipped = load_instances(root, selection, reader)

    assert [Path(item["image"].meta["filename_or_obj"]).name for item in items] == ["IM0001"]
    assert tuple(items[0]["image"].shape) == (1, 40, 48)
    reasons = {Path(s.path).name: (s.reason, s.failed) for s in skipped}
    assert reasons["IM0002"] == (
        "SOP class Secondary Capture Image Storage, the model reads Ultrasound Image Storage, "
        "Ultrasound Multi-frame Image Storage",
        False,
    )
    assert reasons["IM0003"] == ("DICOM modality CT, the model reads US images", False)
    reason, failed = reasons["IM0004"]  # an image whose pixel data is missing: selected, then unreadable
    assert failed and reason.startswith("cannot be read (") and "no pixel data" in reason
    assert reasons["IM0005"] == ("no StudyInstanceUID: a result could not reference the image", False)
    assert reasons["SR0001"] == ("DICOM SR object, not an image", False)
    assert reasons["photo.png"] == ("not a DICOM file: results are written into DICOM studies", False)
    assert len(skipped) == 6
    # what the metadata declares reads back; a model that declares nothing reads any image
    assert DicomSelection.from_metadata(selection.to_metadata()) == selection
    assert DicomSelection.from_metadata(None).refusal(pydicom.dcmread(root / "IM0002")) is None


# ---------------------------------------------------------------- the exported model, in memory
def _checkpoint(bundle: str, folder: Path, seg_images: list[np.ndarray] | None = None) -> Path:
    """A randomly initialised network of ``bundle`` at 32 px with its trained configuration beside it. With
    ``seg_images`` the lesion bias is set so that about half of their pixels are lesion: masks worth comparing."""
    root = REPO / "bundles" / bundle
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser.update({"bundle_root": str(root), **SMALL})
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def").eval()
    if seg_images:
        batch = torch.stack([_resized(a) for a in seg_images])  # as the network sees them: [0, 1], 32 px
        with torch.no_grad():
            seg = network(batch)["seg"]
            network.seg_head.bias[1] -= float((seg[:, 1] - seg[:, 0]).median())
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), folder / "model.pt")
    trained = {**parser.get("fallback"), **SMALL, "in_channels": 1}
    (folder / "train_config.json").write_text(json.dumps(trained))
    return folder / "model.pt"


def _resized(array: np.ndarray) -> torch.Tensor:
    image = torch.as_tensor(np.array(array), dtype=torch.float32)[None, None] / 255.0
    return torch.nn.functional.interpolate(image, size=(32, 32), mode="area")[0]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("baselines")
    main(["export", str(_checkpoint("baselines_ultrasound", folder)), str(folder / "model.ts"), "--bundle",
          str(REPO / "bundles" / "baselines_ultrasound")])  # fmt: skip
    return folder / "model.ts"


def test_the_export_declares_what_it_reads_and_embeds_a_pipeline_without_file_loaders(classifier):
    from monai_ssl_ext.deploy.runtime import DeployedModel

    model = DeployedModel(classifier.parent)  # a folder holding model.ts, as -m may name it
    retired = ("1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.5.1.4.1.1.3")
    assert model.selection == DicomSelection(("US",), (*US_CLASSES, *retired))
    assert (model.bundle, model.algorithm, model.class_names, model.segments) == (
        "baselines_ultrasound", "fixmatch", ["benign", "malignant"], False
    )  # fmt: skip
    names = [type(t).__name__ for t in model.preprocessing.transforms]
    assert not any(n.startswith(("Read", "Load")) for n in names), names
    assert [type(t).__name__ for t in model.reader.transforms] == ["ReadImaged"]
    # reader + in-memory preprocessing = the bundle's preprocessing from the file, value for value
    path = shared_data("dicom", "OBXXXX1A.dcm")
    item, output = model.predict(model.reader({"image": str(path)}))
    expected = get_profile("ultrasound", image_size=32).preprocess(keep_meta=True)({"image": str(path)})["image"]
    assert torch.equal(item["image"].as_tensor(), expected.as_tensor())
    assert item["image"].meta["cropped"] and item["image"].meta["spatial_shape"] == (459, 680)
    assert output["probs"].shape == (2,) and float(output["probs"].sum()) == pytest.approx(1.0)
    # a model exported without the Deploy entries is named, with the way out
    raw = classifier.parent / "raw.ts"
    torch.jit.save(torch.jit.load(str(classifier)), str(raw))
    with pytest.raises(ValueError, match=r"raw\.ts: its embedded configuration has no 'deploy_reader'.*export"):
        DeployedModel(raw)


def test_a_hospital_widens_the_sop_classes_a_model_reads_at_export(tmp_path, classifier):
    from monai_ssl_ext.deploy.runtime import DeployedModel

    secondary_capture = "1.2.840.10008.5.1.4.1.1.7"
    bundle = str(REPO / "bundles" / "baselines_ultrasound")
    main(["export", str(classifier.parent / "model.pt"), str(tmp_path / "model.ts"), "--bundle", bundle,
          "--accept_sop_classes", f"['{secondary_capture}']"])  # fmt: skip
    assert DeployedModel(tmp_path / "model.ts").selection == DicomSelection(("US",), (secondary_capture,))


def test_an_application_folder_holds_what_the_packager_needs(tmp_path, classifier):
    yaml = pytest.importorskip("yaml", reason="reading app.yaml back needs PyYAML")

    with pytest.raises(ValueError, match="does not segment"):
        main(["deploy_app", str(tmp_path / "no"), "--model", str(classifier), "--kind", "segmentation", "--debug"])
    main(["deploy_app", str(tmp_path / "app"), "--model", str(classifier)])
    app = tmp_path / "app"
    assert "from monai_ssl_ext.deploy.app import ClassificationApp as App" in (app / "app.py").read_text()
    assert "from app import App" in (app / "__main__.py").read_text()
    config = yaml.safe_load((app / "app.yaml").read_text())
    assert config["application"]["title"] == "baselines-ultrasound classification"
    assert config["application"]["version"] == "0.1.0" and config["resources"]["memory"] == "4Gi"
    requirements = (app / "requirements.txt").read_text().splitlines()
    assert {"highdicom>=0.22", "pydicom>=2.4", "monai>=1.5"} <= set(requirements)
    assert not any("deploy-app-sdk" in r or "pytest" in r for r in requirements)  # the packager installs the SDK
    assert (app / "monai_ssl_ext" / "deploy" / "app.py").is_file()
    assert not list(app.rglob("__pycache__"))
    assert "monai-deploy package" in (app / "README.md").read_text()


def test_the_package_imports_without_the_sdk():
    code = (
        "import sys; sys.modules['monai.deploy'] = None\n"
        "import monai_ssl_ext, monai_ssl_ext.deploy, monai_ssl_ext.deploy.runtime, monai_ssl_ext.deploy.app_package\n"
        "try:\n    import monai_ssl_ext.deploy.app\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert "need the MONAI Deploy App SDK: pip install 'monai-ssl-ext[dicom,deploy]'" in out.stdout


# ---------------------------------------------------------------- the SDK applications end to end
def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _app(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def _read_instances(root: Path) -> dict[str, Dataset]:
    """The image instances of the export, by SOP Instance UID."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(root.rglob("*")) if p.is_file()]
    return {str(h.SOPInstanceUID): h for h in headers if h.Modality == "US"}


@needs_sdk
@pytest.mark.slow
@pytest.mark.real_data
def test_the_segmentation_app_writes_an_sr_and_a_seg_per_image_as_predict_does(tmp_path, scanner_export):
    hd = pytest.importorskip("highdicom", reason="the DICOM results need the 'dicom' extra (highdicom)")
    from monai_ssl_ext.deploy.dicom_results import RESEARCH_USE, read_classification_report

    bundle = REPO / "bundles" / "hermes_ultrasound"
    ckpt = _checkpoint("hermes_ultrasound", tmp_path / "models", [_busi("benign (1).png"), _busi("malignant (1).png")])
    main(["export", str(ckpt), str(tmp_path / "model.ts"), "--bundle", str(bundle)])

    log = _app([sys.executable, "-m", "monai_ssl_ext.deploy.app", "-i", str(scanner_export), "-o",
                str(tmp_path / "app"), "-m", str(tmp_path / "model.ts")], tmp_path)  # fmt: skip
    assert "ClassificationSegmentationApp" in log
    assert "CT_small.dcm: skipped, DICOM modality CT, the model reads US images" in log
    skipped = {r["image"]: r["reason"] for r in _rows(tmp_path / "app" / "skipped.csv")}
    assert skipped == {
        "CT_small.dcm": "DICOM modality CT, the model reads US images",
        "busi/SR0001": "DICOM SR object, not an image",
    }
    # monai-ssl predict on the same folder and checkpoint, masks as PNG at the image's size after reading
    with pytest.raises(SystemExit):  # the CT fails predict's run (exit status 2), after the others are written
        main(["predict", str(scanner_export), "--bundle", str(bundle), "--checkpoint", str(ckpt), "--output",
              str(tmp_path / "predict"), "--mask_format", "png"])  # fmt: skip
    predicted = {r["sop_uid"]: r for r in _rows(tmp_path / "predict" / "predictions.csv")}

    rows = _rows(tmp_path / "app" / "predictions.csv")
    instances = _read_instances(scanner_export)
    assert {r["sop_uid"] for r in rows} == set(instances) == set(predicted)  # one result per image read, no other
    assert len(list((tmp_path / "app" / "dicom").glob("SR_*.dcm"))) == len(instances) == 5
    lesion_images = 0
    for row in rows:
        source = instances[row["sop_uid"]]
        sr = pydicom.dcmread(tmp_path / "app" / row["dicom_sr"])
        assert sr.SeriesDescription.startswith(RESEARCH_USE) and sr.StudyInstanceUID == source.StudyInstanceUID
        report = read_classification_report(sr)
        assert (report["study_uid"], report["series_uid"], report["sop_uid"]) == (
            source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID
        )  # fmt: skip
        assert report["algorithm"] == "hermes_ultrasound hermes"
        assert set(report["probabilities"]) == {"benign", "malignant"}
        assert sum(report["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert report["finding"] == max(report["probabilities"], key=report["probabilities"].get) == row["prediction"]
        expected = predicted[row["sop_uid"]]
        for name in ("benign", "malignant"):
            assert report["probabilities"][name] == pytest.approx(float(expected[f"prob_{name}"]), abs=1e-5)
        # the SEG on the stored grid; inside the ultrasound region it is predict's PNG mask, outside it is empty
        seg = hd.seg.segread(tmp_path / "app" / row["dicom_seg"])
        assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.SeriesDescription.startswith(RESEARCH_USE)
        grid = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])[0, :, :, 0] > 0
        assert grid.shape == (source.Rows, source.Columns)
        assert row["mask_region"] == expected["mask_region"]
        region = json.loads(row["mask_region"]) if row["mask_region"] else None
        x0, y0, x1, y1 = region or (0, 0, source.Columns - 1, source.Rows - 1)
        inside = grid[y0 : y1 + 1, x0 : x1 + 1]
        assert int(inside.sum()) == int(grid.sum())  # nothing outside the region
        own = np.asarray(nib.load(tmp_path / "app" / row["mask"]).dataobj) > 0
        assert np.array_equal(inside, own), row["image"]  # the SEG is the application's mask, put back exactly
        # and predict's: the same up to pixels on the lesion's edge, where the eager network on a batch and the
        # TorchScript one on a single image may round the two classes' probabilities the other way
        png = np.asarray(Image.open(tmp_path / "predict" / expected["mask"])) > 0
        assert inside.shape == png.shape and np.count_nonzero(inside != png) <= max(2, png.size // 10_000), row["image"]
        lesion_images += bool(0 < png.sum() < png.size)
    assert lesion_images >= 2  # masks with lesion and background: the comparison says something
    assert any(r["mask_region"] for r in rows)  # OBXXXX1A: cropped to its region, put back on its grid


@needs_sdk
@pytest.mark.slow
@pytest.mark.real_data
def test_the_classification_app_runs_from_its_application_folder_and_writes_srs_only(
    tmp_path, classifier, scanner_export
):
    pytest.importorskip("highdicom", reason="the DICOM results need the 'dicom' extra (highdicom)")
    from monai_ssl_ext.deploy.dicom_results import read_classification_report

    main(["deploy_app", str(tmp_path / "app"), "--model", str(classifier)])
    # as the package runs it: the folder itself, its copy of the package first on the path
    _app([sys.executable, str(tmp_path / "app"), "-i", str(scanner_export), "-o", str(tmp_path / "out"), "-m",
          str(classifier.parent)], tmp_path)  # fmt: skip
    rows = _rows(tmp_path / "out" / "predictions.csv")
    instances = _read_instances(scanner_export)
    assert {r["sop_uid"] for r in rows} == set(instances)
    assert sorted(p.name for p in (tmp_path / "out" / "dicom").iterdir()) == [f"SR_{n:05d}.dcm" for n in range(1, 6)]
    for row in rows:
        report = read_classification_report(pydicom.dcmread(tmp_path / "out" / row["dicom_sr"]))
        assert report["sop_uid"] == row["sop_uid"] and report["finding"] == row["prediction"]
        assert report["algorithm"] == "baselines_ultrasound fixmatch"
        assert report["probabilities"]["malignant"] == pytest.approx(float(row["prob_malignant"]), abs=1e-6)
    assert "CT_small.dcm" in (tmp_path / "out" / "skipped.csv").read_text()
