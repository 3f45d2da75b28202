"""Images nobody labelled: a manifest's ``unlabeled`` list, from the builders to the training's unlabeled stream."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from bundle_helpers import bundle_parser, train_in_process
from test_builders_clinical import _dicom

from monai_ssl_ext.data import Manifest, ManifestError
from monai_ssl_ext.data.builders import build_manifest
from monai_ssl_ext.data.label_budget import UNKNOWN_LABEL, split_label_budget
from monai_ssl_ext.engines.pseudo_label_accuracy import pseudo_label_accuracy
from monai_ssl_ext.keys import DataKeys

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
_CLASSES = ["benign", "malignant"]


def _manifest(**extra) -> dict:
    return {
        "name": "site",
        "classes": _CLASSES,
        "training": [{"image": f"t{i}.png", "label": i % 2, "group": f"p{i}"} for i in range(6)],
        "validation": [{"image": "v0.png", "label": 0, "group": "pv"}],
        "test": [{"image": "x0.png", "label": 1, "group": "px"}],
        **extra,
    }


def _with_archive(data: Path, work: Path, keep_labeled: int) -> Path:
    """A copy of the generated manifest ``data`` whose training split keeps ``keep_labeled`` images; the other
    training images are listed under ``unlabeled``, without label or mask, as an archive nobody labelled."""
    raw = json.loads(data.read_text())
    archive = [{"image": e["image"]} for e in raw["training"][keep_labeled:]]
    raw["training"] = raw["training"][:keep_labeled]
    raw["unlabeled"] = archive
    path = work / "with_archive.json"
    path.write_text(json.dumps(raw))
    return path


# ---------------------------------------------------------------------------------------------- the manifest


def test_unlabeled_list_round_trips_and_is_written_only_when_present():
    manifest = Manifest.from_dict(_manifest(unlabeled=[{"image": "u0.png", "group": "p0"}, {"image": "u1.dcm"}]))
    assert [e["image"] for e in manifest.unlabeled] == ["u0.png", "u1.dcm"]
    assert Manifest.from_dict(manifest.to_dict()).unlabeled == manifest.unlabeled
    assert "unlabeled" in manifest.summary()
    assert "unlabeled" not in Manifest.from_dict(_manifest()).to_dict()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"image": "u0.png", "label": 1}, "has a 'label': unlabeled images have none; move it to 'training'"),
        ({"image": "u0.png", "mask": "u0_mask.png"}, "has a 'mask'"),
        ({"path": "u0.png"}, "must be an object with an 'image' path"),
    ],
)
def test_unlabeled_entries_with_a_label_or_mask_or_no_image_are_refused_naming_the_entry(entry, message):
    with pytest.raises(ManifestError, match=r"unlabeled\[1\]") as err:
        Manifest.from_dict(_manifest(unlabeled=[{"image": "ok.png"}, entry]))
    assert message in str(err.value)


def test_an_unlabeled_image_of_a_test_patient_is_a_leak_but_one_of_a_training_patient_is_not():
    Manifest.from_dict(_manifest(unlabeled=[{"image": "u0.png", "group": "p3"}]))  # more images of a training patient
    with pytest.raises(ManifestError, match="group 'px' appears in both 'test' and 'unlabeled'"):
        Manifest.from_dict(_manifest(unlabeled=[{"image": "u0.png", "group": "px"}]))


def test_missing_unlabeled_files_are_named_when_the_manifest_is_resolved(tmp_path):
    for name in ("t0", "t1", "t2", "t3", "t4", "t5", "v0", "x0"):
        (tmp_path / f"{name}.png").write_bytes(b"x")
    manifest = Manifest.from_dict(_manifest(unlabeled=[{"image": "archive/u9.png"}]))
    with pytest.raises(FileNotFoundError, match=r"unlabeled: image .*archive/u9\.png"):
        manifest.resolve(tmp_path)


# ---------------------------------------------------------------------------------------------- the label budget


def test_the_budget_is_drawn_from_training_and_the_unlabeled_list_joins_the_unlabeled_rest():
    manifest = Manifest.from_dict(_manifest(unlabeled=[{"image": "u0.png"}, {"image": "u1.png"}]))
    split = manifest.label_split(4, seed=0)
    assert len(split.labeled) == 4 and all(e["image"].startswith("t") for e in split.labeled)
    assert sorted(e["image"] for e in split.unlabeled if e["image"].startswith("u")) == ["u0.png", "u1.png"]
    assert len(split.unlabeled) == 2 + 2 and not any(DataKeys.LABEL in e for e in split.unlabeled)
    # the same draw as without the list: the archive does not move which training images are labeled
    assert split.labeled == Manifest.from_dict(_manifest()).label_split(4, seed=0).labeled


def test_benchmark_mode_gives_images_nobody_labelled_the_unknown_hidden_label():
    entries = [{"image": f"t{i}.png", "label": i % 2} for i in range(4)]
    split = split_label_budget(entries, 2, hide_labels=True, extra_unlabeled=[{"image": "u0.png"}])
    hidden = {e["image"]: e[DataKeys.HIDDEN_LABEL] for e in split.unlabeled}
    assert hidden["u0.png"] == UNKNOWN_LABEL == -1
    assert {v for k, v in hidden.items() if k != "u0.png"} <= {0, 1}


def test_pseudo_label_accuracy_leaves_out_images_of_unknown_label():
    pseudo = torch.tensor([1, 0, 1, 1])
    truth = torch.tensor([1, 1, UNKNOWN_LABEL, UNKNOWN_LABEL])
    used = torch.tensor([1.0, 1.0, 1.0, 0.0])
    acc = pseudo_label_accuracy(pseudo, used, truth)
    assert acc == {"pseudo_label_acc_all": 0.5, "pseudo_label_acc": 0.5}
    none_known = pseudo_label_accuracy(pseudo, used, torch.full((4,), UNKNOWN_LABEL))
    assert math.isnan(none_known["pseudo_label_acc_all"]) and math.isnan(none_known["pseudo_label_acc"])


# ---------------------------------------------------------------------------------------------- building


def _class_folders(root: Path, count: int = 5) -> None:
    for cls in _CLASSES:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (root / cls / f"{cls}{i}.png").write_bytes(b"png")


def test_build_manifest_lists_a_folder_of_unlabeled_images_once_and_leaves_masks_and_other_files_out(tmp_path):
    root = tmp_path / "data" / "labelled"  # the class folders; the archive lies beside them
    _class_folders(root)
    archive = tmp_path / "data" / "archive" / "2024"
    archive.mkdir(parents=True)
    for name in ("a1.png", "a2.jpg", "a2_mask.png", "notes.txt"):
        (archive / name).write_bytes(b"x")
    _dicom(archive / "IM0000", "PX-1", "1.2.3.4")  # a PACS export names its files without a suffix
    _dicom(archive / "SR0000", "PX-1", "1.2.3.5", pixels=False)  # a structured report: not an image
    (archive / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM")
    out = tmp_path / "m.json"
    report = tmp_path / "report.csv"
    manifest = build_manifest("folder", root, out, unlabeled="../archive", on_error="skip", report=report)
    images = sorted(e["image"] for e in manifest.unlabeled)
    assert images == ["../archive/2024/IM0000", "../archive/2024/a1.png", "../archive/2024/a2.jpg"]
    assert sorted(e["image"] for e in Manifest.load(out).unlabeled) == images
    # the paths resolve against the data root like the others
    resolved = Manifest.load(out).resolve(root, check_files=False)
    assert all(Path(e["image"]).is_file() for e in resolved.unlabeled)
    text = report.read_text()
    assert all(name in text for name in ("a2_mask.png", "notes.txt", "SR0000", "DICOMDIR"))


def test_an_unlabeled_folder_that_holds_the_labelled_images_adds_only_the_others(tmp_path):
    root = tmp_path / "data"
    _class_folders(root)
    shutil.copy(root / "benign" / "benign0.png", root / "benign" / "copy.png")  # not listed: the builder ran first
    manifest = build_manifest("folder", root, tmp_path / "m.json", unlabeled=str(root / "benign"))
    labelled = {e["image"] for s in ("training", "validation", "test") for e in manifest.split(s)}
    assert "benign/copy.png" in labelled and not labelled & {e["image"] for e in manifest.unlabeled}


def test_build_manifest_refuses_a_missing_unlabeled_folder_before_writing(tmp_path):
    root = tmp_path / "data"
    _class_folders(root)
    with pytest.raises(FileNotFoundError, match="unlabeled folder 'archive' does not exist"):
        build_manifest("folder", root, tmp_path / "m.json", unlabeled="archive")
    assert not (tmp_path / "m.json").exists()


# ---------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize(
    ("bundle", "algorithm"), [("baselines_ultrasound", "fixmatch"), ("hermes_ultrasound", "hermes")]
)
def test_training_draws_the_unlabeled_stream_from_the_archive_too(tmp_path, small_data, bundle, algorithm):
    # 8 labelled training images; the rest of the generated training split is an archive without labels or masks;
    # benchmark mode keeps the hidden labels it has, so pseudo-label accuracy covers the images with one
    data = _with_archive(small_data, tmp_path, keep_labeled=8)
    archive = {e["image"] for e in json.loads(data.read_text())["unlabeled"]}
    parser = bundle_parser(
        BUNDLES / bundle,
        data=data,
        data_root=str(small_data.parent),
        algorithm_name=algorithm,
        label_budget=6,
        num_iterations=3,
        val_interval=3,
        benchmark_mode=True,
    )
    stream = parser.get_parsed_content("label_split").unlabeled_stream()
    assert {Path(e["image"]).name for e in stream} >= {Path(p).name for p in archive}
    history = train_in_process(parser, tmp_path)
    assert history["iteration"][-1] == 3 and math.isfinite(history["scalars"]["loss"][-1])
    # a batch mixes images with a hidden label and images with none: accuracy counts the first (nan: none of them)
    assert all(math.isnan(a) or 0.0 <= a <= 1.0 for a in history["scalars"]["pseudo_label_acc_all"])


def test_all_labels_the_whole_training_split_from_the_bundle_and_the_command_line():
    from monai_ssl_ext.cli import _label_budget

    manifest = Manifest.from_dict(_manifest(unlabeled=[{"image": "u0.png"}]))
    split = manifest.label_split("all", seed=0)
    assert len(split.labeled) == 6 and [e["image"] for e in split.unlabeled] == ["u0.png"]
    assert _label_budget("all") == "all" and _label_budget("1") == 1 and _label_budget("0.5") == 0.5


def test_verify_reads_the_unlabeled_images_too_and_skips_an_unreadable_one(tmp_path):
    import numpy as np
    from PIL import Image

    root = tmp_path / "data" / "labelled"
    for cls in _CLASSES:
        (root / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(root / cls / f"{cls}{i}.png")
    archive = tmp_path / "data" / "archive"
    archive.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(archive / "good.png")
    (archive / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    report = tmp_path / "report.csv"
    manifest = build_manifest(
        "folder", root, tmp_path / "m.json", unlabeled="../archive", verify=True, on_error="skip", report=report
    )
    assert [e["image"] for e in manifest.unlabeled] == ["../archive/good.png"]
    assert "truncated.png" in report.read_text()
