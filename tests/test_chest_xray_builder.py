"""The chest X-ray (Kermany) builder on a small synthetic copy of the layout: official test kept, the official
train split into training/validation by patient, duplicates dropped, hashed patient ids, errors and the skip
report; and the committed manifest rebuilt from the real folder."""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, shared_data
from PIL import Image

from monai_ssl_ext.data import Manifest, ManifestError
from monai_ssl_ext.data.anonymise import SALT_ENV, hash_identifier
from monai_ssl_ext.data.builders import BUILDERS, CHEST_XRAY_CLASSES, BuildReport, build_chest_xray, build_manifest
from monai_ssl_ext.keys import DataKeys

SPLITS = ("training", "validation", "test")
COMMITTED = REPO_ROOT / "data_manifests" / "chest_xray" / "kermany_pneumonia128.json"
HEADER = ["path", "label", "group", "split", "subtype", "source_path", "source_md5", "duplicate_of"]


@pytest.fixture(autouse=True)
def _public_salt(monkeypatch):
    # the committed manifest uses the public default salt; a salt set in the environment would change the groups
    monkeypatch.delenv(SALT_ENV, raising=False)


def _image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value % 256, dtype=np.uint8)).save(path)


def _write_labels(root: Path, rows: list[dict]) -> None:
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=HEADER)
        writer.writeheader()
        writer.writerows({k: row.get(k, "") for k in HEADER} for row in rows)


def _row(split: str, label: str, patient: str, image: int, subtype: str, suffix: str = ".jpg", dup: str = "") -> dict:
    name = f"{patient}_{subtype}_{image}{suffix}" if label == "PNEUMONIA" else f"{patient}-{image:04d}{suffix}"
    return {
        "path": f"images/{split}/{label}/{name}",
        "label": label,
        "group": f"{split}/{patient}",
        "split": split,
        "subtype": subtype,
        "duplicate_of": dup,
    }


@pytest.fixture
def cxr(tmp_path) -> tuple[Path, list[dict]]:
    """A copy of the layout: 30 normal and 30 pneumonia train patients (1-3 images), 6 + 6 test patients.

    Person numbers recur in train and test (separate numberings); one train and one test image are
    byte-identical copies of another image of the same patient (``duplicate_of``).
    """
    root = tmp_path / "kermany_small"
    rows = []
    for p in range(30):
        rows += [_row("train", "NORMAL", f"IM-{p:04d}", i, "normal") for i in range(1 + p % 2)]
        subtype = "bacteria" if p % 3 else "virus"
        rows += [_row("train", "PNEUMONIA", f"person{p}", i, subtype, ".png") for i in range(1 + p % 3)]
    for p in range(6):
        rows.append(_row("test", "NORMAL", f"IM-{100 + p:04d}", 0, "normal"))
        rows += [_row("test", "PNEUMONIA", f"person{p}", i, "virus" if p % 2 else "bacteria") for i in range(2)]
    train_original = _row("train", "PNEUMONIA", "person2", 0, "bacteria", ".png")["path"]
    test_original = _row("test", "PNEUMONIA", "person1", 0, "virus")["path"]
    rows.append(_row("train", "PNEUMONIA", "person2", 9, "bacteria", ".png", dup=train_original))
    rows.append(_row("test", "PNEUMONIA", "person1", 9, "virus", dup=test_original))
    for i, row in enumerate(rows):
        source = next((r for r in rows if r["path"] == row["duplicate_of"]), None)
        _image(root / row["path"], value=rows.index(source) if source else i)  # a copy has its original's pixels
    _write_labels(root, rows)
    return root, rows


def _all(manifest: Manifest) -> list[dict]:
    return [e for split in SPLITS for e in manifest.split(split)]


def _paths(entries: list[dict]) -> set[str]:
    return {e[DataKeys.IMAGE] for e in entries}


def test_official_test_split_is_kept_without_duplicates(cxr):
    root, rows = cxr
    manifest = build_chest_xray(root)
    official_test = {r["path"] for r in rows if r["split"] == "test" and not r["duplicate_of"]}
    assert _paths(manifest.test) == official_test
    assert manifest.source["test"] == "official test split"
    manifest.resolve(root)  # every path exists under the data root


def test_official_train_split_goes_to_training_and_validation_by_patient(cxr):
    root, rows = cxr
    manifest = build_chest_xray(root, seed=0)
    official_train = {r["path"] for r in rows if r["split"] == "train" and not r["duplicate_of"]}
    assert _paths(manifest.training) | _paths(manifest.validation) == official_train
    assert not _paths(manifest.training) & _paths(manifest.validation)
    patient = {r["path"]: r["group"] for r in rows}
    sides = defaultdict(set)
    for split in SPLITS:
        for e in manifest.split(split):
            sides[patient[e[DataKeys.IMAGE]]].add(split)
    assert all(len(s) == 1 for s in sides.values()), {g: s for g, s in sides.items() if len(s) > 1}
    # about 10 % of the train images, both classes in validation
    assert 0.05 <= len(manifest.validation) / len(official_train) <= 0.15
    assert all(n > 0 for n in manifest.class_counts("validation").values())
    assert manifest.source["split_fractions"] == [0.9, 0.1, 0.0] and manifest.source["split_seed"] == 0


def test_split_is_a_pure_function_of_the_seed(cxr):
    root, rows = cxr
    a, b, c = build_chest_xray(root, seed=1), build_chest_xray(root, seed=1), build_chest_xray(root, seed=2)
    assert a.to_dict() == b.to_dict()
    assert _paths(a.validation) != _paths(c.validation)
    assert a.test == c.test  # the official test split does not depend on the seed
    # nor does the split depend on the order of the rows
    _write_labels(root, list(reversed(rows)))
    assert build_chest_xray(root, seed=1).to_dict() == a.to_dict()


def test_duplicates_are_left_out_of_every_split_and_reported(cxr):
    root, rows = cxr
    report = BuildReport()
    manifest = build_chest_xray(root, report=report)
    copies = {r["path"] for r in rows if r["duplicate_of"]}
    originals = {r["duplicate_of"] for r in rows if r["duplicate_of"]}
    assert len(copies) == 2
    assert not copies & _paths(_all(manifest))
    assert originals <= _paths(_all(manifest))  # the first copy stays
    assert {s.path for s in report.skipped} == copies
    assert {(s.kind, s.problem) for s in report.skipped} == {("duplicate", False)}
    assert manifest.source["skipped"] == {"duplicate": 2} and manifest.source["duplicates_dropped"] == 2


def test_classes_counts_and_subtypes(cxr):
    root, rows = cxr
    manifest = build_chest_xray(root)
    assert manifest.classes == list(CHEST_XRAY_CLASSES) == ["normal", "pneumonia"]
    kept = [r for r in rows if not r["duplicate_of"]]
    expected = Counter(r["label"].lower() for r in kept)
    total = Counter()
    for split in SPLITS:
        total.update(manifest.class_counts(split))
    assert total == expected == {"normal": 51, "pneumonia": 72}
    assert manifest.class_counts("test") == {"normal": 6, "pneumonia": 12}
    row_of = {r["path"]: r for r in rows}
    for e in _all(manifest):
        row = row_of[e[DataKeys.IMAGE]]
        assert manifest.classes[e[DataKeys.LABEL]] == row["label"].lower()
        assert e["subtype"] == row["subtype"]
    assert {e["subtype"] for e in _all(manifest)} == {"normal", "bacteria", "virus"}


def test_patient_ids_are_stored_as_salted_hashes(cxr, tmp_path):
    root, rows = cxr
    manifest = build_chest_xray(root)
    row_of = {r["path"]: r for r in rows}
    for e in _all(manifest):
        assert e[DataKeys.GROUP] == hash_identifier(row_of[e[DataKeys.IMAGE]]["group"])
        assert len(e[DataKeys.GROUP]) == 16
    # the same person number in train and test is two patients (the groups carry the split)
    train_p0 = hash_identifier("train/person0")
    test_p0 = hash_identifier("test/person0")
    groups = {e[DataKeys.GROUP] for e in _all(manifest)}
    assert {train_p0, test_p0} <= groups
    assert manifest.source["id_hash"]["salt"] == "default"
    text = json.dumps(manifest.to_dict())
    assert "train/person" not in text and "test/IM-" not in text
    other = build_chest_xray(root, salt="a private salt")
    assert not groups & {e[DataKeys.GROUP] for e in _all(other)}


def test_images_without_a_row_are_reported_not_built(cxr):
    root, _ = cxr
    _image(root / "images" / "train" / "NORMAL" / "stray.png", value=3)
    report = BuildReport()
    manifest = build_chest_xray(root, report=report)
    assert "images/train/NORMAL/stray.png" not in _paths(_all(manifest))
    assert ("images/train/NORMAL/stray.png", "unlabeled", False) in {
        (s.path, s.kind, s.problem) for s in report.skipped
    }


@pytest.mark.parametrize(
    ("index", "change", "kind", "message"),
    [
        (0, {"label": "COVID"}, "unknown_class", r"label 'COVID' is not NORMAL or PNEUMONIA"),
        (0, {"split": "holdout"}, "unknown_split", r"split 'holdout' is not train or test"),
        (0, {"group": ""}, "missing_group", r"empty 'group' cell"),
        (0, {"path": "images/train/NORMAL/gone.jpg"}, "missing_image", r"gone\.jpg is not found"),
        (0, {"path": "../outside.jpg"}, "outside_root", r"not a path inside the data root"),
        (0, {"duplicate_of": "images/nowhere.jpg"}, "unknown_duplicate", r"duplicate_of 'images/nowhere\.jpg'"),
        # the first official test row (a normal patient) given a patient of the official train split
        (105, {"group": "train/IM-0000"}, "group_in_both_splits", r"also has images in the official train split"),
    ],
)
def test_bad_rows_name_the_line_or_are_skipped(cxr, index, change, kind, message):
    root, rows = cxr
    assert rows[index]["label"] == "NORMAL" and rows[index]["split"] == ("test" if index else "train")
    rows[index].update(change)
    _write_labels(root, rows)
    with pytest.raises(ManifestError, match=rf"labels\.csv:{index + 2}: .*" + message):
        build_chest_xray(root)
    report = BuildReport()
    manifest = build_chest_xray(root, on_error="skip", report=report)
    assert [s.kind for s in report.problems] == [kind]
    assert len(_all(manifest)) == 122


def test_missing_folder_table_or_columns(cxr, tmp_path):
    root, _ = cxr
    with pytest.raises(FileNotFoundError, match="chest X-ray folder not found"):
        build_chest_xray(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="label table not found"):
        build_chest_xray(root, labels="other.csv")
    (root / "labels.csv").write_text("path,label,split\na.png,NORMAL,train\n")
    with pytest.raises(ManifestError, match="no group"):
        build_chest_xray(root)
    with pytest.raises(ManifestError, match="must be distinct names"):
        build_chest_xray(root, classes=["normal", "covid"])


def test_registered_as_chest_xray_and_writes_the_skip_report(cxr, tmp_path):
    root, _ = cxr
    assert BUILDERS["chest_xray"] is build_chest_xray
    out = tmp_path / "out" / "cxr.json"
    manifest = build_manifest("chest_xray", root, out, seed=0)
    assert Manifest.load(out).to_dict() == manifest.to_dict() == build_chest_xray(root, seed=0).to_dict()
    assert manifest.name == "kermany_small"
    report = (tmp_path / "out" / "cxr.skipped.csv").read_text().splitlines()
    assert len(report) == 3 and all(",duplicate,False," in line for line in report[1:])
    pneumonia = build_manifest("chest_xray", root, tmp_path / "p.json", classes="pneumonia")
    assert pneumonia.classes == ["pneumonia"] and pneumonia.name == "kermany_small_pneumonia"
    assert _paths(pneumonia.validation) <= _paths(manifest.validation)  # cut from the same split


# ---------------------------------------------------------------------------------------------------- real data
@pytest.mark.real_data
def test_committed_chest_xray_manifest_is_what_the_builder_makes_from_the_data():
    root = shared_data("chest_xray", "kermany_pneumonia128")
    built = build_chest_xray(root, seed=0)
    committed = json.loads(COMMITTED.read_text())
    assert built.to_dict() == committed
    with open(root / "labels.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5840 and sum(bool(r["duplicate_of"]) for r in rows) == 32
    assert {split: built.class_counts(split) for split in SPLITS} == {
        "training": {"normal": 1206, "pneumonia": 3464},
        "validation": {"normal": 134, "pneumonia": 386},
        "test": {"normal": 231, "pneumonia": 387},
    }
    row_of = {r["path"]: r for r in rows}
    assert {e[DataKeys.IMAGE] for e in built.test} == {r["path"] for r in rows if r["split"] == "test"} - {
        r["path"] for r in rows if r["duplicate_of"]
    }
    sides = defaultdict(set)
    for split in SPLITS:
        for e in built.split(split):
            row = row_of[e[DataKeys.IMAGE]]
            assert not row["duplicate_of"]
            assert (split == "test") == (row["split"] == "test")
            sides[row["group"]].add(split)
    assert all(len(s) == 1 for s in sides.values())  # no patient in two splits
    assert "train/person" not in COMMITTED.read_text()
