"""Data set builders: BUSI folders and MedMNIST files become manifests that load, split and reproduce."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, shared_data
from PIL import Image

from monai_ssl_ext.data import ManifestError
from monai_ssl_ext.data.builders import build_busi, build_medmnist
from monai_ssl_ext.keys import DataKeys

MANIFESTS = REPO_ROOT / "data_manifests" / "busi"


def _png(path: Path, value: int = 128, size: tuple[int, int] = (12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, dtype=np.uint8)).save(path)


@pytest.fixture
def busi_folder(tmp_path) -> Path:
    """A BUSI-like folder: 10 benign, 6 malignant, 4 normal; 'benign (2)' has two lesion masks."""
    root = tmp_path / "BUSI"
    for cls, n in (("benign", 10), ("malignant", 6), ("normal", 4)):
        for i in range(1, n + 1):
            _png(root / cls / f"{cls} ({i}).png", value=10 * i)
            _png(root / cls / f"{cls} ({i})_mask.png", value=0 if cls == "normal" else 255)
    _png(root / "benign" / "benign (2)_mask_1.png", value=255)
    return root


def _all(manifest) -> list[dict]:
    return [e for split in ("training", "validation", "test") for e in manifest.split(split)]


def test_busi_builder_finds_every_image_with_its_masks(busi_folder):
    manifest = build_busi(busi_folder)
    entries = _all(manifest)
    assert manifest.classes == ["normal", "benign", "malignant"]  # severity order
    assert len(entries) == 20
    assert Counter(e[DataKeys.LABEL] for e in entries) == {0: 4, 1: 10, 2: 6}
    two = next(e for e in entries if e[DataKeys.IMAGE] == "benign/benign (2).png")
    assert two[DataKeys.MASK] == ["benign/benign (2)_mask.png", "benign/benign (2)_mask_1.png"]
    # natural order: "benign (10)" after "benign (9)"
    assert sorted(len(manifest.split(s)) for s in ("training", "validation", "test")) == [2, 4, 14]
    manifest.resolve(busi_folder)  # every path exists under the data root


def test_busi_builder_class_subset_keeps_the_same_split(busi_folder):
    full = build_busi(busi_folder, seed=3)
    binary = build_busi(busi_folder, classes=["benign", "malignant"], seed=3)
    assert binary.classes == ["benign", "malignant"]
    assert binary.name == "busi_benign_malignant"
    for split in ("training", "validation", "test"):
        kept = {e[DataKeys.IMAGE] for e in full.split(split) if not e[DataKeys.IMAGE].startswith("normal/")}
        assert {e[DataKeys.IMAGE] for e in binary.split(split)} == kept
    assert {e[DataKeys.LABEL] for e in _all(binary)} == {0, 1}


def test_busi_builder_is_deterministic_per_seed(busi_folder):
    a, b, c = build_busi(busi_folder, seed=1), build_busi(busi_folder, seed=1), build_busi(busi_folder, seed=2)
    assert a.to_dict() == b.to_dict()
    assert a.split("test") != c.split("test")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda root: (root / "benign" / "benign (3)_mask.png").unlink(), "benign (3).png: no mask found"),
        (lambda root: (root / "malignant" / "malignant (1).png").unlink(), "mask(s) without an image"),
    ],
    ids=["image-without-mask", "mask-without-image"],
)
def test_busi_builder_names_the_broken_file(busi_folder, damage, message):
    damage(busi_folder)
    with pytest.raises(ManifestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_busi(busi_folder)


def test_busi_builder_rejects_unknown_class_and_missing_folder(busi_folder, tmp_path):
    with pytest.raises(ManifestError, match=r"'cyst'.*not found"):
        build_busi(busi_folder, classes=["benign", "cyst"])
    with pytest.raises(FileNotFoundError, match="BUSI folder not found"):
        build_busi(tmp_path / "nowhere")
    with pytest.raises(ManifestError, match="no BUSI class folder"):
        build_busi(tmp_path)


def test_near_duplicate_captures_are_grouped_and_kept_in_one_split(tmp_path):
    from PIL import Image

    from monai_ssl_ext.data.near_duplicates import near_duplicate_groups

    rng = np.random.default_rng(0)
    scene = (rng.random((60, 80)) * 255).astype(np.uint8)
    twin = scene.copy()
    twin[50:58, 5:30] = 255  # a caption burnt in: the same capture otherwise
    files = []
    for name, pixels in [("a", scene), ("b", (rng.random((60, 80)) * 255).astype(np.uint8)), ("c", twin)]:
        Image.fromarray(pixels).save(tmp_path / f"{name}.png")
        files.append(tmp_path / f"{name}.png")
    assert near_duplicate_groups(files, max_bits=32) == [0, 1, 0]
    assert near_duplicate_groups(files, max_bits=0) == [0, 1, 2]
    # in a BUSI folder, a malignant image's twin lands in the same split whatever the seed
    root = tmp_path / "BUSI"
    for cls, n in (("benign", 10), ("malignant", 6)):
        (root / cls).mkdir(parents=True)
        for i in range(1, n + 1):
            Image.fromarray((rng.random((40, 48)) * 255).astype(np.uint8)).save(root / cls / f"{cls} ({i}).png")
            _png(root / cls / f"{cls} ({i})_mask.png", value=255)
    (root / "malignant" / "malignant (6).png").write_bytes((root / "malignant" / "malignant (1).png").read_bytes())
    for seed in range(4):
        built = build_busi(root, seed=seed, near_duplicate_bits=32)
        where = {e[DataKeys.IMAGE]: split for split in ("training", "validation", "test") for e in built.split(split)}
        assert where["malignant/malignant (1).png"] == where["malignant/malignant (6).png"]
        assert "near-duplicate" in built.source["group"]


@pytest.mark.real_data
@pytest.mark.parametrize(
    ("name", "classes", "bits"),
    [
        ("busi.json", None, None),
        ("busi_binary.json", ["benign", "malignant"], None),
        ("busi_grouped.json", None, 32),
        ("busi_binary_grouped.json", ["benign", "malignant"], 32),
    ],
)
def test_committed_busi_manifests_are_what_the_builder_makes_from_the_release(name, classes, bits):
    root = shared_data("busi")
    built = build_busi(root, classes=classes, seed=0, name=Path(name).stem, near_duplicate_bits=bits)
    committed = json.loads((MANIFESTS / name).read_text())
    for split in ("training", "validation", "test"):
        assert built.to_dict()[split] == committed[split], f"{name}: {split} differs from a fresh build"
    counts = Counter(e[DataKeys.LABEL] for e in _all(built))
    expected = {"benign": 437, "malignant": 210, "normal": 133}
    assert {built.classes[k]: v for k, v in counts.items()} == {c: expected[c] for c in built.classes}
    # 70/10/20, stratified: every class keeps its share in each split (within rounding)
    for split, share in (("training", 0.7), ("validation", 0.1), ("test", 0.2)):
        per_class = Counter(e[DataKeys.LABEL] for e in built.split(split))
        for label, total in counts.items():
            assert abs(per_class[label] - share * total) <= 1.5, (split, built.classes[label])


def _medmnist_npz(path: Path, size: int = 28, colour: bool = False, counts=(30, 6, 9), classes: int = 3) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts, strict=True):
        shape = (n, size, size, 3) if colour else (n, size, size)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % classes).reshape(n, 1)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(("size", "colour"), [(28, False), (64, True)])
def test_medmnist_builder_keeps_official_splits_and_pixels(tmp_path, size, colour):
    npz = _medmnist_npz(tmp_path / f"pathmnist_{size}.npz", size=size, colour=colour)
    manifest = build_medmnist(npz, tmp_path / "out")
    assert [len(manifest.split(s)) for s in ("training", "validation", "test")] == [30, 6, 9]
    assert manifest.classes[:3] == ["ADI", "BACK", "DEB"]  # PathMNIST's names, from the file name
    first = manifest.split("validation")[4]
    assert first[DataKeys.LABEL] == 4 % 3
    written = np.asarray(Image.open(tmp_path / "out" / first[DataKeys.IMAGE]))
    with np.load(npz) as data:
        np.testing.assert_array_equal(written, data["val_images"][4])
    manifest.resolve(tmp_path / "out")


def test_medmnist_builder_rejects_wrong_files(tmp_path):
    np.savez(tmp_path / "odd.npz", images=np.zeros((2, 4, 4)))
    with pytest.raises(ManifestError, match=r"arrays .* are missing"):
        build_medmnist(tmp_path / "odd.npz", tmp_path / "out")
    npz = _medmnist_npz(tmp_path / "breastmnist.npz", classes=3)
    with pytest.raises(ManifestError, match="label 2 has no name"):
        build_medmnist(npz, tmp_path / "out")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(ManifestError, match=r"broken\.npz: not a readable"):
        build_medmnist(tmp_path / "broken.npz", tmp_path / "out")


@pytest.mark.real_data
def test_medmnist_builder_reads_the_released_breastmnist_64(tmp_path):
    npz = shared_data("medmnist", "breastmnist_64.npz")
    manifest = build_medmnist(npz, tmp_path)
    assert manifest.classes == ["malignant", "normal_or_benign"]
    assert [len(manifest.split(s)) for s in ("training", "validation", "test")] == [546, 78, 156]
    image = Image.open(tmp_path / manifest.split("test")[0][DataKeys.IMAGE])
    assert image.size == (64, 64) and image.mode == "L"
