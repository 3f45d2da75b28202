"""Builders for HAM10000, NCT-CRC-HE, class folders, CSV lists and DICOM directories: entries, splits that keep
groups whole, determinism, errors that name the file, the skip report, hashed ids, and the committed manifests."""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import logging
import random
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, shared_data
from PIL import Image

from monai_ssl_ext.data import Manifest, ManifestError
from monai_ssl_ext.data.anonymise import DEFAULT_SALT, SALT_ENV, hash_identifier, resolve_salt
from monai_ssl_ext.data.builders import (
    BUILDERS,
    HAM10000_CLASSES,
    NCT_CLASSES,
    BuildReport,
    build_csv_list,
    build_dicom_dir,
    build_folder,
    build_ham10000,
    build_manifest,
    build_nct_crc,
    default_report_path,
)
from monai_ssl_ext.keys import DataKeys

SPLITS = ("training", "validation", "test")
MANIFESTS = REPO_ROOT / "data_manifests"


@pytest.fixture(autouse=True)
def _public_salt(monkeypatch):
    # the committed manifests use the public default salt; a salt set in the environment would change the groups
    monkeypatch.delenv(SALT_ENV, raising=False)


def _image(path: Path, value: int = 128, size: tuple[int, int] = (8, 6), mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = size[::-1] if mode == "L" else (*size[::-1], 3)
    Image.fromarray(np.full(shape, value % 256, dtype=np.uint8)).save(path)
    return path


def _write_csv(path: Path, header: list[str], rows: list[list], delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _all(manifest: Manifest) -> list[dict]:
    return [e for split in SPLITS for e in manifest.split(split)]


def _split_of(manifest: Manifest) -> dict[str, str]:
    return {e[DataKeys.IMAGE]: split for split in SPLITS for e in manifest.split(split)}


def _assert_groups_whole(manifest: Manifest, group_of: dict[str, str]) -> None:
    """Every group (given as image -> raw group id) lies in one split."""
    splits = defaultdict(set)
    for image, split in _split_of(manifest).items():
        splits[group_of[image]].add(split)
    crossing = {g: s for g, s in splits.items() if len(s) > 1}
    assert not crossing, f"groups in several splits: {crossing}"


# ---------------------------------------------------------------------------------------------------- anonymise
def test_hash_identifier_is_a_truncated_hmac_of_the_salt():
    expected = hmac.new(DEFAULT_SALT.encode(), b"HAM_0000118", hashlib.sha256).hexdigest()[:16]
    assert hash_identifier("HAM_0000118") == expected
    assert hash_identifier(" HAM_0000118 ") == expected  # padded DICOM strings and CSV cells hash alike
    assert hash_identifier("HAM_0000118", salt="secret") != expected
    assert len(hash_identifier(12345, length=32)) == 32
    with pytest.raises(ValueError, match="empty identifier"):
        hash_identifier("  ")


def test_salt_comes_from_the_argument_then_the_environment_then_the_default(monkeypatch):
    assert resolve_salt() == DEFAULT_SALT.encode()
    monkeypatch.setenv(SALT_ENV, "site-secret")
    assert resolve_salt() == b"site-secret"
    assert resolve_salt("arg") == b"arg"
    assert hash_identifier("P1") == hash_identifier("P1", salt="site-secret")


# ---------------------------------------------------------------------------------------------------- HAM10000
# (dx, images per lesion) for each lesion; 59 images of 41 lesions
_HAM_LESIONS = (
    [("nv", 1)] * 8 + [("nv", 2)] * 6 + [("nv", 3)] * 2 + [("mel", 1)] * 4 + [("mel", 2)] * 3 + [("bkl", 2)] * 5
    + [("bcc", 1)] * 5 + [("akiec", 1)] * 3 + [("vasc", 1)] * 3 + [("df", 1)] * 2
)  # fmt: skip


def _ham_rows() -> list[list[str]]:
    rows, n = [], 0
    for i, (dx, k) in enumerate(_HAM_LESIONS):
        for _ in range(k):
            rows.append([f"HAM_{i:07d}", f"ISIC_{n:07d}", dx, "histo", "50.0", "male", "back"])
            n += 1
    return rows


@pytest.fixture
def ham_folder(tmp_path) -> Path:
    """A HAM10000-like folder: metadata table, images/*.jpg and masks/*_segmentation.png (the last image has none)."""
    root = tmp_path / "HAM10000"
    rows = _ham_rows()
    _write_csv(
        root / "HAM10000_metadata.csv", ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"], rows
    )
    for i, row in enumerate(rows):
        _image(root / "images" / f"{row[1]}.jpg", value=i, size=(8, 6), mode="RGB")
        if i < len(rows) - 1:
            _image(root / "masks" / f"{row[1]}_segmentation.png", value=255, size=(24, 18))
    return root


def test_ham10000_builder_lists_images_masks_and_hashed_lesions(ham_folder):
    manifest = build_ham10000(ham_folder)
    entries = _all(manifest)
    assert manifest.name == "ham10000"
    assert manifest.classes == list(HAM10000_CLASSES) == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    rows = _ham_rows()
    assert len(entries) == len(rows) == 59
    counts = Counter(manifest.classes[e[DataKeys.LABEL]] for e in entries)
    assert counts == Counter(r[2] for r in rows)
    first = next(e for e in entries if e[DataKeys.IMAGE] == "images/ISIC_0000000.jpg")
    assert first[DataKeys.MASK] == "masks/ISIC_0000000_segmentation.png"
    assert first[DataKeys.GROUP] == hash_identifier("HAM_0000000")
    last = next(e for e in entries if e[DataKeys.IMAGE] == f"images/{rows[-1][1]}.jpg")
    assert DataKeys.MASK not in last  # masks are optional unless require_masks
    _assert_groups_whole(manifest, {f"images/{r[1]}.jpg": r[0] for r in rows})
    text = json.dumps(manifest.to_dict())
    assert "HAM_0000" not in text  # lesion ids only as salted hashes
    assert manifest.source["id_hash"] == {"method": "hmac-sha256", "hex_length": 16, "salt": "default"}
    manifest.resolve(ham_folder)
    # 70/10/20 of 64 images, stratified, with whole lesions: within a few images of the targets
    sizes = [len(manifest.split(s)) for s in SPLITS]
    assert abs(sizes[0] - 0.7 * 59) <= 4 and abs(sizes[2] - 0.2 * 59) <= 4


def test_ham10000_builder_is_deterministic_and_independent_of_row_order(ham_folder):
    a, b = build_ham10000(ham_folder, seed=1), build_ham10000(ham_folder, seed=1)
    assert a.to_dict() == b.to_dict()
    assert _split_of(a) != _split_of(build_ham10000(ham_folder, seed=2))
    rows = _ham_rows()
    random.Random(0).shuffle(rows)
    header = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
    _write_csv(ham_folder / "HAM10000_metadata.csv", header, rows)
    assert build_ham10000(ham_folder, seed=1).to_dict() == a.to_dict()


def test_ham10000_class_subset_keeps_each_image_in_its_split(ham_folder):
    full = build_ham10000(ham_folder, seed=3)
    sub = build_ham10000(ham_folder, classes=["mel", "nv"], seed=3)
    assert sub.classes == ["mel", "nv"] and sub.name == "ham10000_mel_nv"
    where = _split_of(full)
    assert all(where[image] == split for image, split in _split_of(sub).items())
    assert len(_all(sub)) == sum(k for dx, k in _HAM_LESIONS if dx in ("mel", "nv")) == 36
    with pytest.raises(ManifestError, match=r"\['melanoma'\] are not HAM10000 dx codes"):
        build_ham10000(ham_folder, classes=["melanoma"])


def test_ham10000_reads_the_dataverse_layout(ham_folder):
    """Tab-separated ``HAM10000_metadata.tab`` and images split over two part folders."""
    fields, rows = ["lesion_id", "image_id", "dx"], [r[:3] for r in _ham_rows()]
    (ham_folder / "HAM10000_metadata.csv").unlink()
    _write_csv(ham_folder / "HAM10000_metadata.tab", fields, rows, delimiter="\t")
    for i, path in enumerate(sorted((ham_folder / "images").iterdir())):
        part = ham_folder / f"HAM10000_images_part_{1 + i % 2}"
        part.mkdir(exist_ok=True)
        path.rename(part / path.name)
    manifest = build_ham10000(ham_folder)
    assert len(_all(manifest)) == 59
    assert manifest.source["metadata"] == "HAM10000_metadata.tab"
    assert {Path(e[DataKeys.IMAGE]).parent.name for e in _all(manifest)} == {
        "HAM10000_images_part_1",
        "HAM10000_images_part_2",
    }


def _edit_rows(root: Path, edit) -> None:
    header = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
    rows = _ham_rows()
    edit(root, rows)
    _write_csv(root / "HAM10000_metadata.csv", header, rows)


def _missing_image(root, rows):
    (root / "images" / "ISIC_0000005.jpg").unlink()


def _unknown_dx(root, rows):
    rows[5][2] = "scc"


def _duplicate_id(root, rows):
    rows[6][1] = rows[5][1]


def _empty_lesion(root, rows):
    rows[5][0] = ""


@pytest.mark.parametrize(
    ("damage", "kind", "message"),
    [
        (_missing_image, "missing_image", r"HAM10000_metadata.csv:7: image ISIC_0000005 not found under"),
        (_unknown_dx, "unknown_class", r"HAM10000_metadata.csv:7: ISIC_0000005 has dx 'scc', not one of akiec"),
        (
            _duplicate_id,
            "duplicate_id",
            r"HAM10000_metadata.csv:8: image_id ISIC_0000005 is repeated \(first on line 7\)",
        ),
        (_empty_lesion, "missing_group", r"HAM10000_metadata.csv:7: ISIC_0000005 has an empty lesion_id"),
    ],
    ids=["missing-image", "unknown-dx", "duplicate-id", "empty-lesion"],
)
def test_ham10000_problems_name_the_row_or_are_skipped_and_reported(ham_folder, damage, kind, message):
    _edit_rows(ham_folder, damage)
    with pytest.raises(ManifestError, match=message):
        build_ham10000(ham_folder)
    report = BuildReport()
    manifest = build_ham10000(ham_folder, on_error="skip", report=report)
    assert [s.kind for s in report.problems] == [kind]
    assert report.problems[0].path.startswith("HAM10000_metadata.csv:")  # relative to the data root
    assert len(_all(manifest)) == 58
    assert manifest.source["skipped"][kind] == 1


def test_ham10000_require_masks_and_unlisted_images(ham_folder):
    with pytest.raises(ManifestError, match=r"ISIC_0000058\.jpg: no mask ISIC_0000058_segmentation\.png"):
        build_ham10000(ham_folder, require_masks=True)
    _image(ham_folder / "images" / "ISIC_0099999.jpg")
    report = BuildReport()
    manifest = build_ham10000(ham_folder, report=report)  # an image without a row is left out, never an error
    assert len(_all(manifest)) == 59
    assert [(s.path, s.kind, s.problem) for s in report.skipped] == [("images/ISIC_0099999.jpg", "unlabeled", False)]


def test_ham10000_missing_folder_metadata_and_columns(tmp_path, ham_folder):
    with pytest.raises(FileNotFoundError, match="HAM10000 folder not found"):
        build_ham10000(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no HAM10000 metadata file"):
        build_ham10000(tmp_path / "empty")
    _write_csv(ham_folder / "HAM10000_metadata.csv", ["lesion", "image_id", "dx"], [["a", "b", "nv"]])
    with pytest.raises(ManifestError, match=r"HAM10000_metadata\.csv: no lesion_id column"):
        build_ham10000(ham_folder)


def test_ham10000_salt_changes_the_group_ids_not_the_split(ham_folder, monkeypatch):
    public = build_ham10000(ham_folder)
    monkeypatch.setenv(SALT_ENV, "site-secret")
    private = build_ham10000(ham_folder)
    assert _split_of(private) == _split_of(public)
    groups = {e[DataKeys.GROUP] for e in _all(private)}
    assert groups.isdisjoint({e[DataKeys.GROUP] for e in _all(public)})
    assert hash_identifier("HAM_0000000", salt="site-secret") in groups
    assert private.source["id_hash"]["salt"] == "env"
    assert "site-secret" not in json.dumps(private.to_dict())


# ---------------------------------------------------------------------------------------------------- NCT-CRC-HE
def _nct_files(root: Path, per_class: int = 5, folders: bool = False) -> list[str]:
    names = []
    for c, cls in enumerate(NCT_CLASSES):
        for i in range(per_class):
            name = f"{cls}-{'ABCDEFGH'[i % 8]}{c}{i:03d}.tif"
            path = root / cls / name if folders else root / name
            _image(path, value=20 * c + i, size=(6, 6), mode="RGB")
            names.append(path.relative_to(root).as_posix())
    return names


def test_nct_crc_prefix_layout(tmp_path):
    root = tmp_path / "nct"
    names = _nct_files(root, per_class=5)
    (root / "README.txt").write_text("patches")
    report = BuildReport()
    manifest = build_nct_crc(root, report=report)
    assert manifest.classes == list(NCT_CLASSES)
    assert manifest.source["layout"] == "prefix"
    assert sorted(e[DataKeys.IMAGE] for e in _all(manifest)) == sorted(names)
    for split, n in zip(SPLITS, (4, 0, 1), strict=True):  # 70/10/20 of 5 per class: 3.5/0.5/1 -> 4/0/1
        assert manifest.class_counts(split) == dict.fromkeys(NCT_CLASSES, n), split
    assert all(NCT_CLASSES[e[DataKeys.LABEL]] == e[DataKeys.IMAGE].split("-")[0] for e in _all(manifest))
    assert [(s.path, s.kind) for s in report.skipped] == [("README.txt", "not_image")]
    assert build_nct_crc(root, seed=0).to_dict() == manifest.to_dict()


def test_nct_crc_one_image_per_class_stays_in_training_and_says_so(tmp_path):
    root = tmp_path / "samples"
    _nct_files(root, per_class=1)
    manifest = build_nct_crc(root)
    assert len(manifest.training) == 9 and not manifest.validation and not manifest.test
    assert manifest.source["classes_missing_from"] == {"validation": list(NCT_CLASSES), "test": list(NCT_CLASSES)}
    assert "Too few images or groups to fill every split" in manifest.description


def test_nct_crc_folder_layout_checks_names_against_folders(tmp_path):
    root = tmp_path / "NCT-CRC-HE-100K"
    _nct_files(root, per_class=4, folders=True)
    (root / "ADI" / "Thumbs.db").write_bytes(b"x")
    report = BuildReport()
    manifest = build_nct_crc(root, classes=["TUM", "NORM"], report=report)
    assert manifest.source["layout"] == "folders"
    assert manifest.classes == ["TUM", "NORM"] and len(_all(manifest)) == 8
    assert [s.kind for s in report.skipped] == ["not_image"]
    _image(root / "MUS" / "STR-WRONG001.tif", mode="RGB")
    with pytest.raises(ManifestError, match=r"MUS/STR-WRONG001\.tif: labelled MUS but its name says STR"):
        build_nct_crc(root)
    (root / "OTHER").mkdir()
    report = BuildReport()
    build_nct_crc(root, on_error="skip", report=report)
    assert Counter(s.kind for s in report.problems) == {"label_mismatch": 1, "unknown_class": 1}


def test_nct_crc_unknown_prefix_names_the_file(tmp_path):
    root = tmp_path / "nct"
    _nct_files(root, per_class=2)
    _image(root / "CANCER-XYZ.tif", mode="RGB")
    with pytest.raises(ManifestError, match=r"CANCER-XYZ\.tif: the name does not start with a class code"):
        build_nct_crc(root)
    with pytest.raises(ManifestError, match=r"\['CANCER'\] are not NCT-CRC-HE classes"):
        build_nct_crc(root, classes=["CANCER"])


def test_nct_crc_labels_csv_with_group_by_source(tmp_path):
    root = tmp_path / "crc"
    names = _nct_files(root / "images", per_class=6, folders=True)
    rows = [[f"images/{n}", n.split("/")[0], f"centre-{i % 3}"] for i, n in enumerate(names)]
    _write_csv(root / "labels.csv", ["filename", "label", "source_dataset"], rows)
    plain = build_nct_crc(root)
    assert plain.source["layout"] == "csv" and plain.source["labels"] == "labels.csv"
    assert DataKeys.GROUP not in plain.training[0]
    grouped = build_nct_crc(root, group_by="source_dataset")
    assert {e[DataKeys.GROUP] for e in _all(grouped)} == {hash_identifier(f"centre-{i}") for i in range(3)}
    _assert_groups_whole(grouped, {r[0]: r[2] for r in rows})
    assert "centre-" not in json.dumps(grouped.to_dict())
    with pytest.raises(ManifestError, match=r"labels\.csv: no group column"):
        build_nct_crc(root, group_by="slide")
    with pytest.raises(ManifestError, match="group_by='source_dataset' needs a labels CSV"):
        build_nct_crc(root / "images", group_by="source_dataset")
    rows[3][1] = "MUS"
    _write_csv(root / "labels.csv", ["filename", "label", "source_dataset"], rows)
    with pytest.raises(
        ManifestError, match=r"labels.csv:5: images/ADI/ADI-D0003\.tif: labelled MUS but its name says ADI"
    ):
        build_nct_crc(root)


def _confounded_pool(root: Path, per_class: int = 20) -> dict[str, str]:
    """Patches whose class is confounded with their source, as in crc_he_9class_samples: image -> source."""
    names = _nct_files(root / "images", per_class=per_class, folders=True)
    source = {}
    for n in names:
        cls, index = n.split("/")[0], int(n[-7:-4])
        # MUS, NORM and STR half from a second centre, the six other classes from one centre only
        source[f"images/{n}"] = "centre-B" if cls in ("MUS", "NORM", "STR") and index % 2 else "centre-A"
    _write_csv(
        root / "labels.csv",
        ["filename", "label", "source_dataset"],
        [[p, p.split("/")[1], s] for p, s in source.items()],
    )
    return source


def test_nct_crc_stratify_by_source_puts_every_class_and_source_in_every_split(tmp_path):
    root = tmp_path / "pool"
    source = _confounded_pool(root)
    manifest = build_nct_crc(root, stratify_by="source_dataset")
    assert manifest.source["stratify_by"] == "source_dataset" and manifest.source["id_hash"]["salt"] == "default"
    assert "stratified by class and by source_dataset" in manifest.description
    assert "classes_missing_from" not in manifest.source
    cells = Counter((e[DataKeys.LABEL], source[e[DataKeys.IMAGE]]) for e in _all(manifest))
    for split, share in zip(SPLITS, (0.7, 0.1, 0.2), strict=True):
        counts = Counter((e[DataKeys.LABEL], source[e[DataKeys.IMAGE]]) for e in manifest.split(split))
        # each (class, source) cell is dealt 70/10/20 on its own: 10 patches -> 7/1/2, 20 -> 14/2/4
        assert counts == {cell: round(share * n) for cell, n in cells.items()}, split
    # the source is kept as a salted hash, like a group, and is no group: it spans the splits on purpose
    assert {e[DataKeys.STRATUM] for e in _all(manifest)} == {hash_identifier("centre-A"), hash_identifier("centre-B")}
    assert "centre-" not in json.dumps(manifest.to_dict()) and DataKeys.GROUP not in manifest.training[0]
    manifest.check_group_leakage()
    assert build_nct_crc(root, stratify_by="source_dataset").to_dict() == manifest.to_dict()  # a pure function
    # grouping by the source instead keeps each centre whole, and a class only one centre has lands in one split
    grouped = build_nct_crc(root, group_by="source_dataset")
    assert sum(1 for split in SPLITS if grouped.split(split)) <= 2


def test_nct_crc_stratify_by_names_what_is_wrong(tmp_path):
    root = tmp_path / "pool"
    source = _confounded_pool(root, per_class=4)
    with pytest.raises(ManifestError, match=r"labels\.csv: no stratum column \(looked for centre"):
        build_nct_crc(root, stratify_by="centre")
    with pytest.raises(ManifestError, match="stratify_by='source_dataset' needs a labels CSV"):
        build_nct_crc(root / "images", stratify_by="source_dataset")
    rows = [[p, p.split("/")[1], s] for p, s in source.items()]
    rows[2][2] = ""
    _write_csv(root / "labels.csv", ["filename", "label", "source_dataset"], rows)
    with pytest.raises(ManifestError, match=r"labels\.csv:4: images/ADI/ADI-C0002\.tif has an empty 'source_dataset'"):
        build_nct_crc(root, stratify_by="source_dataset")
    report = BuildReport()
    manifest = build_nct_crc(root, stratify_by="source_dataset", on_error="skip", report=report)
    assert [s.kind for s in report.problems] == ["missing_stratum"] and len(_all(manifest)) == len(rows) - 1
    # a group must stay whole, so it cannot straddle two strata
    rows[2][2] = "centre-A"
    _write_csv(root / "labels.csv", ["filename", "label", "source_dataset", "slide"], [[*r, "slide-1"] for r in rows])
    with pytest.raises(ValueError, match=r"group '[0-9a-f]+' lies in two 'stratum' strata"):
        build_nct_crc(root, stratify_by="source_dataset", group_by="slide")


# ---------------------------------------------------------------------------------------------------- class folders
@pytest.fixture
def class_folder(tmp_path) -> Path:
    """Two classes, one folder per patient inside each; masks beside the images; other image types and a text file."""
    root = tmp_path / "study"
    for cls, patients in (("benign", 6), ("malignant", 4)):
        for p in range(patients):
            for k in range(2):
                _image(root / cls / f"p{p:02d}{cls[0]}" / f"img{k}.png", value=p * 10 + k)
                _image(root / cls / f"p{p:02d}{cls[0]}" / f"img{k}_mask.png", value=255)
    (root / "malignant" / "p00m" / "vol.nii.gz").write_bytes(b"\x1f\x8b fake")
    (root / "malignant" / "p01m" / "scan.dcm").write_bytes(b"fake dicom")
    (root / "benign" / "notes.txt").write_text("n")
    (root / "empty_class").mkdir()
    return root


def test_folder_builder_finds_images_masks_and_patient_groups(class_folder):
    report = BuildReport()
    manifest = build_folder(class_folder, group_pattern=r"^(p\d+\w)/", report=report)
    assert manifest.classes == ["benign", "malignant"]
    entries = _all(manifest)
    assert len(entries) == 6 * 2 + 4 * 2 + 2
    first = next(e for e in entries if e[DataKeys.IMAGE] == "benign/p00b/img0.png")
    assert first[DataKeys.MASK] == "benign/p00b/img0_mask.png"
    assert first[DataKeys.GROUP] == hash_identifier("p00b")
    assert {e[DataKeys.IMAGE] for e in entries} >= {"malignant/p00m/vol.nii.gz", "malignant/p01m/scan.dcm"}
    _assert_groups_whole(manifest, {e[DataKeys.IMAGE]: e[DataKeys.IMAGE].split("/")[1] for e in entries})
    assert Counter((s.kind, s.path) for s in report.skipped) == {
        ("not_image", "benign/notes.txt"): 1,
        ("empty_folder", "empty_class"): 1,
    }
    assert build_folder(class_folder, group_pattern=r"^(p\d+\w)/").to_dict() == manifest.to_dict()
    manifest.resolve(class_folder)


def test_folder_builder_class_subset_and_errors(class_folder):
    full = build_folder(class_folder, seed=4)
    sub = build_folder(class_folder, classes=["malignant"], seed=4)
    assert sub.classes == ["malignant"]
    assert all(_split_of(full)[i] == s for i, s in _split_of(sub).items())
    with pytest.raises(ManifestError, match=r"no folder for class\(es\) \['cyst'\]"):
        build_folder(class_folder, classes=["cyst"])
    with pytest.raises(ManifestError, match=r"benign/p00b/img0\.png: group pattern 'x\(\\d\)' does not match"):
        build_folder(class_folder, group_pattern=r"x(\d)")
    (class_folder / "benign" / "p01b" / "img0.png").unlink()
    with pytest.raises(ManifestError, match=r"benign/p01b/img0_mask\.png: mask without an image 'img0\.\*'"):
        build_folder(class_folder)
    (class_folder / "benign" / "p02b" / "img1.png").write_bytes(b"")
    report = BuildReport()
    manifest = build_folder(class_folder, on_error="skip", report=report)
    assert Counter(s.kind for s in report.problems) == {"orphan_mask": 1, "empty_file": 1}
    assert len(_all(manifest)) == 22 - 2


# ---------------------------------------------------------------------------------------------------- CSV lists
@pytest.fixture
def csv_listing(tmp_path) -> Path:
    root = tmp_path / "listed"
    rows = []
    for i in range(20):
        label = ("grade10", "grade2", "grade3")[i % 3]
        _image(root / "scans" / f"s{i:02d}.png", value=i)
        masks = []
        for k in range(1 + (i == 4)):
            masks.append(f"masks/s{i:02d}_{k}.png")
            _image(root / masks[-1], value=255)
        rows.append([f"scans/s{i:02d}.png", label, ";".join(masks), f"patient-{i // 2}"])
    _write_csv(root / "list.csv", ["path", "label", "mask", "group"], rows)
    return root / "list.csv"


def test_csv_builder_reads_paths_labels_masks_and_groups(csv_listing):
    manifest = build_csv_list(csv_listing)
    assert manifest.classes == ["grade2", "grade3", "grade10"]  # natural order
    assert manifest.name == "list"
    entries = {e[DataKeys.IMAGE]: e for e in _all(manifest)}
    assert len(entries) == 20
    assert entries["scans/s04.png"][DataKeys.MASK] == ["masks/s04_0.png", "masks/s04_1.png"]
    assert entries["scans/s05.png"][DataKeys.MASK] == "masks/s05_0.png"
    assert entries["scans/s05.png"][DataKeys.GROUP] == hash_identifier("patient-2")
    _assert_groups_whole(manifest, {f"scans/s{i:02d}.png": str(i // 2) for i in range(20)})
    assert "patient-" not in json.dumps(manifest.to_dict())
    manifest.resolve(csv_listing.parent)
    given = build_csv_list(csv_listing, classes=["grade2", "grade3", "grade10", "grade1"])
    assert given.classes[-1] == "grade1"


def test_csv_builder_paths_relative_to_a_given_root(csv_listing, tmp_path):
    moved = _write_csv(
        tmp_path / "elsewhere" / "l.csv", ["image", "class"], [["scans/s01.png", "a"], ["scans/s02.png", "b"]]
    )
    manifest = build_csv_list(moved, root=csv_listing.parent)
    assert {e[DataKeys.IMAGE] for e in _all(manifest)} == {"scans/s01.png", "scans/s02.png"}
    with pytest.raises(ManifestError, match=r"l\.csv:2: .*scans/s01\.png is not found"):
        build_csv_list(moved)


@pytest.mark.parametrize(
    ("row", "kind", "message"),
    [
        (
            ["scans/s01.png", "grade9", "", "x"],
            "unknown_class",
            r"list.csv:22: scans/s01.png: label 'grade9' is not one",
        ),
        (["scans/none.png", "grade2", "", "x"], "missing_image", r"list.csv:22: .*scans/none.png is not found"),
        (["scans/s01.png", "grade2", "", "x"], "duplicate", r"list.csv:22: scans/s01.png is listed twice \(first at"),
        (["scans/s01b.png", "", "", "x"], "missing_label", r"list.csv:22: scans/s01b.png has an empty 'label' cell"),
    ],
    ids=["unknown-label", "missing-file", "duplicate", "empty-label"],
)
def test_csv_builder_problems_name_the_row(csv_listing, row, kind, message):
    with open(csv_listing, "a", newline="") as f:
        csv.writer(f).writerow(row)
    classes = ["grade2", "grade3", "grade10"]
    with pytest.raises(ManifestError, match=message):
        build_csv_list(csv_listing, classes=classes)
    report = BuildReport()
    manifest = build_csv_list(csv_listing, classes=classes, on_error="skip", report=report)
    assert [(s.path, s.kind) for s in report.skipped] == [("list.csv:22", kind)]
    assert len(_all(manifest)) == 20


# ---------------------------------------------------------------------------------------------------- DICOM
def _dicom(path: Path, patient: str, sop: str, accession: str = "", study: str = "", pixels: bool = True) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage if pixels else BasicTextSRStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, sop
    ds.PatientID, ds.PatientName = patient, f"DOE^{patient.replace('-', '')}" if patient else ""
    ds.StudyInstanceUID = study or generate_uid(entropy_srcs=[patient, accession])
    ds.AccessionNumber, ds.Modality = accession, "OT"
    if pixels:
        ds.Rows = ds.Columns = 4
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.SamplesPerPixel, ds.PixelRepresentation = 7, 1, 0
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = bytes(16)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _uid(*parts) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(p) for p in parts])


@pytest.fixture
def dicom_folder(tmp_path) -> tuple[Path, Path]:
    """12 patients x 2 images (one study each) in nested folders, an SR, a text file; labels by SOP Instance UID."""
    root = tmp_path / "export"
    rows = []
    for p in range(12):
        label = "malignant" if p % 3 == 0 else "benign"
        for k in range(2):
            sop = _uid("sop", p, k)
            _dicom(root / f"study{p:02d}" / f"IM{k:04d}", f"PX-{p:04d}", sop, accession=f"ACC{p:05d}")
            if (p, k) != (11, 1):  # one image without a label row
                rows.append([sop, label])
    _dicom(root / "study00" / "SR0001", "PX-0000", _uid("sr"), pixels=False)
    (root / "study01" / "notes.txt").write_text("not dicom")
    labels = _write_csv(tmp_path / "labels.csv", ["sop_instance_uid", "label"], rows)
    return root, labels


def test_dicom_builder_labels_by_sop_uid_and_groups_by_hashed_patient(dicom_folder, caplog):
    root, labels = dicom_folder
    report = BuildReport()
    with caplog.at_level(logging.DEBUG):
        manifest = build_dicom_dir(root, labels, report=report)
    assert manifest.classes == ["benign", "malignant"]
    entries = _all(manifest)
    assert len(entries) == 23
    assert Counter(manifest.classes[e[DataKeys.LABEL]] for e in entries) == {"benign": 15, "malignant": 8}
    assert {e[DataKeys.GROUP] for e in entries} == {hash_identifier(f"PX-{p:04d}") for p in range(12)}
    _assert_groups_whole(manifest, {e[DataKeys.IMAGE]: e[DataKeys.IMAGE].split("/")[0] for e in entries})
    assert {(s.path, s.kind, s.problem) for s in report.skipped} == {
        ("study00/SR0001", "no_pixel_data", False),
        ("study01/notes.txt", "not_dicom", False),
        ("study11/IM0001", "unlabeled", False),
    }
    text = json.dumps(manifest.to_dict()) + json.dumps(report.to_dict()) + caplog.text
    for secret in ("PX-0", "DOE^", "ACC0", _uid("sop", 0, 0)):
        assert secret not in text
    assert build_dicom_dir(root, labels).to_dict() == manifest.to_dict()
    manifest.resolve(root)


def test_dicom_builder_by_accession_and_by_study(dicom_folder, tmp_path):
    root, _ = dicom_folder
    rows = [[f"ACC{p:05d}", "malignant" if p % 3 == 0 else "benign"] for p in range(12)]
    by_accession = _write_csv(tmp_path / "acc.csv", ["accession_number", "label"], rows)
    manifest = build_dicom_dir(root, by_accession, key="accession", group_by="study")
    assert len(_all(manifest)) == 24  # every image of a labelled study
    assert manifest.source["key"] == "AccessionNumber" and manifest.source["group"] == "StudyInstanceUID"
    with pytest.raises(ManifestError, match=r"bad.csv: no AccessionNumber key column"):
        build_dicom_dir(root, _write_csv(tmp_path / "bad.csv", ["acc", "label"], rows), key="accession")
    with pytest.raises(ValueError, match="key must be one of"):
        build_dicom_dir(root, by_accession, key="mrn")
    with pytest.raises(ValueError, match="needs labels="):
        build_dicom_dir(root)


def test_dicom_builder_keep_unlabeled_lists_them_outside_the_splits(dicom_folder):
    root, labels = dicom_folder
    _dicom(root / "study20" / "IM0000", "PX-0020", _uid("sop", 20, 0))
    manifest = build_dicom_dir(root, labels, keep_unlabeled=True)
    pool = manifest.unlabeled
    held_out = {e[DataKeys.GROUP] for s in SPLITS[1:] for e in manifest.split(s)}
    assert {"image": "study20/IM0000", "group": hash_identifier("PX-0020")} in pool
    assert all(e[DataKeys.GROUP] not in held_out for e in pool)
    assert len(_all(manifest)) == 23


def _duplicate_sop(root, labels):
    _dicom(root / "zcopy" / "IM0000", "PX-0003", _uid("sop", 3, 0))


def _no_patient(root, labels):
    sop = _uid("anon")
    _dicom(root / "zanon" / "IM0000", "", sop)
    with open(labels, "a", newline="") as f:
        csv.writer(f).writerow([sop, "benign"])


def _id_in_path(root, labels):
    sop = _uid("named")
    _dicom(root / "zPX-0099" / "IM0000", "PX-0099", sop)
    with open(labels, "a", newline="") as f:
        csv.writer(f).writerow([sop, "benign"])


def _unreadable(root, labels):
    data = (root / "study00" / "IM0000").read_bytes()
    (root / "zbroken").mkdir()
    (root / "zbroken" / "IM0000").write_bytes(data[:200])


@pytest.mark.parametrize(
    ("damage", "kind", "message"),
    [
        (_duplicate_sop, "duplicate", r"zcopy/IM0000: the same SOP Instance UID as study03/IM0000"),
        (_no_patient, "missing_group", r"zanon/IM0000: no PatientID"),
        (_id_in_path, "identifier_in_path", r"z<PatientID>/IM0000: the path contains the patient's name or id"),
        (_unreadable, "unreadable", r"zbroken/IM0000: empty or truncated DICOM header"),
    ],
    ids=["duplicate-sop", "no-patient-id", "id-in-path", "truncated"],
)
def test_dicom_builder_problems_name_the_file_or_are_reported(dicom_folder, damage, kind, message):
    root, labels = dicom_folder
    damage(root, labels)
    with pytest.raises(ManifestError, match=message) as err:
        build_dicom_dir(root, labels)
    assert "PX-0099" not in str(err.value)  # neither the reason nor the path shows an id
    report = BuildReport()
    manifest = build_dicom_dir(root, labels, on_error="skip", report=report)
    assert [s.kind for s in report.problems] == [kind]
    assert "PX-0099" not in json.dumps(report.to_dict())
    assert len(_all(manifest)) == 23


def test_dicom_builder_label_rows_are_checked(dicom_folder):
    root, labels = dicom_folder
    with open(labels, "a", newline="") as f:
        csv.writer(f).writerows([[_uid("sop", 11, 1), "cyst"], ["1.2.3.4", "benign"]])
    with pytest.raises(ManifestError, match=r"labels.csv:25: label 'cyst' is not one of the classes"):
        build_dicom_dir(root, labels, classes=["benign", "malignant"])
    report = BuildReport()
    build_dicom_dir(root, labels, classes=["benign", "malignant"], on_error="skip", report=report)
    kinds = {s.kind: s.path for s in report.skipped}
    assert kinds["unknown_class"].endswith("labels.csv:25")
    assert kinds["unmatched_label"].endswith("labels.csv:26")
    assert kinds["rejected_label"] == "study11/IM0001"


# ---------------------------------------------------------------------------------------------------- build_manifest
def test_build_manifest_writes_the_manifest_and_the_report(class_folder, tmp_path):
    assert {"busi", "medmnist", "ham10000", "nct_crc", "folder", "csv", "dicom"} <= set(BUILDERS)
    (class_folder / "benign" / "p02b" / "img1.png").write_bytes(b"")
    out = tmp_path / "out" / "study.json"
    with pytest.raises(ManifestError, match=r"img1\.png: empty file"):
        build_manifest("folder", class_folder, out)
    assert not out.exists()
    manifest = build_manifest("folder", class_folder, out, classes="benign,malignant", seed=2, on_error="skip")
    assert Manifest.load(out).to_dict() == manifest.to_dict()
    report_path = default_report_path(out)
    assert report_path.name == "study.skipped.csv"
    rows = _read_csv(report_path)
    assert {(r["path"], r["kind"], r["problem"]) for r in rows} == {
        ("benign/p02b/img1.png", "empty_file", "True"),
        ("benign/notes.txt", "not_image", "False"),
        ("empty_class", "empty_folder", "False"),
    }
    build_manifest("folder", class_folder, out, on_error="skip", report=tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["builder"] == "folder" and data["counts"] == {"empty_file": 1, "empty_folder": 1, "not_image": 1}


def test_build_manifest_rejects_unknown_sources_and_options(class_folder, tmp_path):
    with pytest.raises(KeyError, match="unknown manifest source 'isic'"):
        build_manifest("isic", class_folder, tmp_path / "m.json")
    with pytest.raises(ValueError, match=r"does not take \['labels'\]"):
        build_manifest("folder", class_folder, tmp_path / "m.json", labels="x.csv")
    with pytest.raises(ValueError, match="on_error must be one of"):
        build_manifest("folder", class_folder, tmp_path / "m.json", on_error="ignore")


def test_build_manifest_passes_options_to_the_dicom_builder(dicom_folder, tmp_path):
    root, labels = dicom_folder
    out = tmp_path / "dicom.json"
    manifest = build_manifest("dicom", root, out, labels=labels, key="sop", name="dicom_test")
    assert manifest.name == "dicom_test" and len(_all(manifest)) == 23
    # files left out in any mode (SR, text file, unlabeled image) are reported even with on_error="raise"
    assert default_report_path(out).is_file()


def test_build_manifest_still_runs_busi_and_medmnist(tmp_path):
    busi = tmp_path / "BUSI"
    for cls, n in (("benign", 5), ("malignant", 5), ("normal", 5)):
        for i in range(1, n + 1):
            _image(busi / cls / f"{cls} ({i}).png", value=i)
            _image(busi / cls / f"{cls} ({i})_mask.png", value=255)
    (busi / "benign" / "benign (2)_mask.png").unlink()
    with pytest.raises(ManifestError, match=r"benign \(2\)\.png: no mask found"):
        build_manifest("busi", busi, tmp_path / "busi.json")
    manifest = build_manifest("busi", busi, tmp_path / "busi.json", classes=["benign", "malignant"], on_error="skip")
    assert manifest.classes == ["benign", "malignant"] and len(_all(manifest)) == 9
    assert [r["kind"] for r in _read_csv(tmp_path / "busi.skipped.csv")] == ["missing_mask"]
    arrays = {}
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        arrays[f"{split}_images"] = np.zeros((n, 8, 8), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1)
    np.savez(tmp_path / "breastmnist.npz", **arrays)
    out = tmp_path / "mnist" / "datalist.json"
    medmnist = build_manifest("medmnist", tmp_path / "breastmnist.npz", out)
    assert [len(medmnist.split(s)) for s in SPLITS] == [6, 2, 2]
    medmnist.resolve(out.parent)


# ---------------------------------------------------------------------------------------------------- real data
@pytest.mark.real_data
def test_committed_ham10000_manifest_is_what_the_builder_makes_from_the_release():
    root = shared_data("ham10000")
    built = build_ham10000(root, seed=0)
    committed = json.loads((MANIFESTS / "ham10000" / "ham10000.json").read_text())
    assert built.to_dict() == committed
    metadata = _read_csv(root / "HAM10000_metadata.csv")
    lesion = {f"images/{r['image_id']}.jpg": r["lesion_id"] for r in metadata}
    assert len(_all(built)) == len(metadata) == 10015
    _assert_groups_whole(built, lesion)  # no lesion in two splits
    assert len({e[DataKeys.GROUP] for e in _all(built)}) == len(set(lesion.values())) == 7470
    totals = Counter(r["dx"] for r in metadata)
    for split, share in zip(SPLITS, (0.7, 0.1, 0.2), strict=True):
        for cls, n in built.class_counts(split).items():
            assert abs(n - share * totals[cls]) <= max(3, 0.01 * totals[cls]), (split, cls)
    for split in SPLITS:
        for entry in built.split(split)[:3]:
            assert (root / entry[DataKeys.MASK]).is_file() and (root / entry[DataKeys.IMAGE]).is_file()
    assert "HAM_" not in (MANIFESTS / "ham10000" / "ham10000.json").read_text()


@pytest.mark.real_data
def test_committed_nct_samples_manifest_is_what_the_builder_makes():
    root = shared_data("nct_crc_he_samples")
    built = build_nct_crc(root, seed=0)
    committed = json.loads((MANIFESTS / "nct_crc_he" / "nct_crc_he_samples.json").read_text())
    assert built.to_dict() == committed
    assert built.class_counts("training") == dict.fromkeys(NCT_CLASSES, 1)
    built.resolve(root)


@pytest.mark.real_data
def test_nct_builder_reads_the_crc_he_labels_csv_grouped_by_source():
    root = shared_data("histology", "crc_he_9class_samples")
    manifest = build_nct_crc(root, group_by="source_dataset")
    assert len(_all(manifest)) == 338 and manifest.source["layout"] == "csv"
    rows = _read_csv(root / "labels.csv")
    _assert_groups_whole(manifest, {r["filename"]: r["source_dataset"] for r in rows})
    by_patch = build_nct_crc(root)
    assert all(len(by_patch.split(s)) > 0 for s in SPLITS)


@pytest.mark.real_data
def test_committed_crc_he_9class_manifest_is_what_the_builder_makes_stratified_by_source():
    root = shared_data("histology", "crc_he_9class_samples")
    built = build_nct_crc(root, stratify_by="source_dataset", seed=0)
    committed = json.loads((MANIFESTS / "nct_crc_he" / "crc_he_9class_samples.json").read_text())
    assert built.to_dict() == committed
    source = {r["filename"]: r["source_dataset"] for r in _read_csv(root / "labels.csv")}
    assert len(_all(built)) == len(source) == 338
    cells = {(e[DataKeys.LABEL], source[e[DataKeys.IMAGE]]) for e in _all(built)}
    assert len(cells) == 12  # the six one-centre classes, and MUS, NORM, STR from both centres
    for split in SPLITS:
        # every class from every centre that has it, in every split: the centre cannot stand in for the class
        assert {(e[DataKeys.LABEL], source[e[DataKeys.IMAGE]]) for e in built.split(split)} == cells, split
    built.resolve(root)


@pytest.mark.real_data
def test_dicom_builder_on_real_files_hashes_patient_ids(tmp_path):
    import pydicom

    source = shared_data("dicom")
    root = tmp_path / "dicom"
    root.mkdir()
    headers = {}
    for path in sorted(source.glob("*.dcm")):
        (root / path.name).symlink_to(path)  # the real files stay in the shared folder
        headers[path.name] = pydicom.dcmread(path, stop_before_pixels=True)
    rows, seen = [], set()
    for ds in headers.values():
        if ds.SOPInstanceUID not in seen:
            seen.add(ds.SOPInstanceUID)
            rows.append([ds.SOPInstanceUID, "us" if ds.Modality == "US" else "other"])
    labels = _write_csv(tmp_path / "labels.csv", ["sop_instance_uid", "label"], rows)
    with pytest.raises(ManifestError, match=r"emri_small\.dcm: no PatientID"):
        build_dicom_dir(root, labels)
    # pydicom's test files reuse one SOP Instance UID in three files: the later ones name the first
    with pytest.raises(ManifestError, match=r"OBXXXX1A\.dcm: the same SOP Instance UID as examples_palette\.dcm"):
        build_dicom_dir(root, labels, group_by="study")
    out = tmp_path / "out" / "dicom.json"
    manifest = build_manifest("dicom", root, out, labels=labels, on_error="skip")
    report = {r["path"]: r["kind"] for r in _read_csv(default_report_path(out))}
    assert report == {
        "OBXXXX1A.dcm": "duplicate",
        "OBXXXX1A_2frame.dcm": "duplicate",
        "emri_small.dcm": "missing_group",
    }
    kept = {e[DataKeys.IMAGE] for e in _all(manifest)}
    assert len(kept) == 8
    assert {e[DataKeys.GROUP] for e in _all(manifest)} == {hash_identifier(headers[i].PatientID) for i in kept}
    text = out.read_text() + default_report_path(out).read_text()
    for ds in headers.values():
        for value in (str(ds.PatientID), str(ds.PatientName)):
            if value:
                assert f'"{value}"' not in text and (len(value) < 5 or value not in text), value
    _assert_groups_whole(manifest, {name: str(headers[name].PatientID) for name in kept})
