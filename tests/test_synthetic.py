"""Tests of the synthetic ultrasound data set: determinism, masks, class-dependent features, files on disk."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.morphology import convex_hull_image

from monai_ssl_ext.data import synthetic
from monai_ssl_ext.data.manifest import SPLITS, Manifest, ManifestError
from monai_ssl_ext.data.synthetic import (
    CLASSES,
    MANIFEST_NAME,
    ensure_synthetic_dataset,
    generate_synthetic_ultrasound,
    render_synthetic_case,
    write_synthetic_dataset,
)

FEATURE_NAMES = ("log_aspect", "solidity", "posterior", "log_echo_ratio")


@pytest.fixture(scope="module")
def cases() -> list[synthetic.SyntheticCase]:
    # one generation shared by the statistical tests: 240 images of 128 px take a few seconds
    return generate_synthetic_ultrasound(num_images=240, image_size=128, seed=3)


def lesion_features(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Hand-crafted BI-RADS-like features of one case, used to check that the classes differ.

    ``log_aspect``: log(height / width) of the mask's box (taller than wide > 0); ``solidity``: mask area over
    its convex hull (spiculated and lobulated margins < 1); ``posterior``: log brightness of a band below the
    lesion's central columns over the same rows away from the lesion (shadow < 0 < enhancement);
    ``log_echo_ratio``: log mean brightness inside the lesion over a ring around it.
    """
    m = mask > 0
    img = image.astype(float)
    rows, cols = np.nonzero(m)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    solidity = m.sum() / convex_hull_image(m).sum()
    band = slice(rows.max() + 3, min(img.shape[0], rows.max() + 3 + max(height, 8)))
    central = slice(cols.min() + width // 4, cols.max() - width // 4 + 1)
    away = np.ones(img.shape[1], dtype=bool)
    away[max(0, cols.min() - 3) : cols.max() + 4] = False
    posterior = np.log((img[band, central].mean() + 1) / (img[band][:, away].mean() + 1))
    ring = ndimage.binary_dilation(m, iterations=6) & ~ndimage.binary_dilation(m, iterations=2)
    echo = np.log((img[m].mean() + 1) / (img[ring].mean() + 1))
    return np.array([np.log(height / width), solidity, posterior, echo])


@pytest.fixture(scope="module")
def features(cases) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, groups)``: the feature rows, labels and patient ids of ``cases``."""
    x = np.stack([lesion_features(c.image, c.mask) for c in cases])
    y = np.array([c.label for c in cases])
    groups = np.array([c.group for c in cases])
    return x, y, groups


# ------------------------------------------------------------------------------------------ in memory
def test_same_seed_gives_identical_images_and_other_seed_differs():
    a = generate_synthetic_ultrasound(num_images=6, image_size=64, seed=11)
    b = generate_synthetic_ultrasound(num_images=6, image_size=64, seed=11)
    c = generate_synthetic_ultrasound(num_images=6, image_size=64, seed=12)
    for x, y in zip(a, b, strict=True):
        assert x.image.tobytes() == y.image.tobytes()
        assert x.mask.tobytes() == y.mask.tobytes()
        assert (x.label, x.group) == (y.label, y.group)
    assert all(not np.array_equal(x.image, z.image) for x, z in zip(a, c, strict=True))


def test_an_image_does_not_depend_on_how_many_are_generated():
    # each case is seeded by (seed, patient, view), not by a generator advanced by the earlier cases
    short = generate_synthetic_ultrasound(num_images=3, image_size=64, seed=5)
    long = generate_synthetic_ultrasound(num_images=9, image_size=64, seed=5)
    for x, y in zip(short, long[:3], strict=True):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask)


def test_render_case_is_the_element_of_the_generated_list():
    cases = generate_synthetic_ultrasound(num_images=4, image_size=64, seed=2)
    patient = int(cases[-1].group.split("_")[1])
    views = [c for c in cases if c.group == cases[-1].group]
    rendered = render_synthetic_case(seed=2, patient=patient, view=len(views) - 1, image_size=64)
    assert np.array_equal(rendered.image, cases[-1].image)
    assert np.array_equal(rendered.mask, cases[-1].mask)


def test_format_of_images_masks_labels_and_groups(cases):
    assert len(cases) == 240
    for c in cases:
        assert c.image.shape == c.mask.shape == (128, 128)
        assert c.image.dtype == c.mask.dtype == np.uint8
        assert set(np.unique(c.mask)) == {0, 255}
        assert c.label in (0, 1)
        assert c.group.startswith("patient_")
    # the lesion never touches the image border, so its outline and posterior region are visible
    assert all(not (c.mask[0].any() or c.mask[-1].any() or c.mask[:, 0].any() or c.mask[:, -1].any()) for c in cases)
    areas = np.array([(c.mask > 0).mean() for c in cases])
    assert areas.min() > 0.005 and areas.max() < 0.4
    # a scanner-like grey scale: dark and bright pixels in every image
    assert all(c.image.min() < 30 and c.image.max() > 200 for c in cases)


def test_both_classes_present_with_the_intended_prevalence(cases):
    counts = Counter(c.label for c in cases)
    assert set(counts) == {0, 1}
    assert 0.3 < counts[1] / len(cases) < 0.5  # malignant prevalence 0.4, as in clinical series


def test_two_views_share_patient_label_and_lesion_but_not_pixels(cases):
    by_group: dict[str, list] = {}
    for c in cases:
        by_group.setdefault(c.group, []).append(c)
    pairs = [v for v in by_group.values() if len(v) == 2]
    assert len(by_group) < len(cases)
    assert 0.1 < len(pairs) / len(by_group) < 0.4  # about a quarter of the patients have two views
    for first, second in pairs:
        assert first.label == second.label
        # the same lesion, shifted by the probe: identical area, different speckle and gain
        assert (first.mask > 0).sum() == (second.mask > 0).sum()
        assert not np.array_equal(first.image, second.image)


def test_lesion_is_darker_than_its_surroundings(features):
    x, _, _ = features
    echo = x[:, FEATURE_NAMES.index("log_echo_ratio")]
    # hypoechoic lesions: darker than the tissue around them in nearly all images, clearly on average
    assert np.mean(echo < 0) > 0.9
    assert np.median(echo) < -0.4


def test_class_dependent_features_differ_in_the_documented_direction(features):
    x, y, _ = features
    benign, malignant = x[y == 0].mean(axis=0), x[y == 1].mean(axis=0)
    spread = x.std(axis=0)
    aspect, solidity, posterior = (FEATURE_NAMES.index(n) for n in ("log_aspect", "solidity", "posterior"))
    # malignant: taller than wide more often, less solid margin, posterior shadow; each by a clear margin
    assert malignant[aspect] - benign[aspect] > 0.5 * spread[aspect]
    assert benign[solidity] - malignant[solidity] > 0.5 * spread[solidity]
    assert benign[posterior] - malignant[posterior] > 0.5 * spread[posterior]
    # but the distributions overlap: some benign lesions are less solid than the average malignant one
    assert np.mean(x[y == 0, solidity] < malignant[solidity]) > 0.02
    assert np.mean(x[y == 1, posterior] > benign[posterior]) > 0.1


def nearest_centroid_accuracy(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """``(accuracy, chance)`` of a nearest centroid on standardised features, fitted on half of the patients
    and scored on the others."""
    patients = np.unique(groups)
    fit_patients = set(np.random.default_rng(0).permutation(patients)[: len(patients) // 2])
    fit = np.array([g in fit_patients for g in groups])
    mean, std = x[fit].mean(axis=0), x[fit].std(axis=0)
    z = (x - mean) / std
    centroids = np.stack([z[fit & (y == k)].mean(axis=0) for k in (0, 1)])
    predicted = np.argmin(((z[:, None, :] - centroids[None]) ** 2).sum(axis=-1), axis=1)
    accuracy = float(np.mean(predicted[~fit] == y[~fit]))
    return accuracy, float(max(np.mean(y[~fit]), 1 - np.mean(y[~fit])))


def test_hand_features_separate_the_classes_above_chance_but_not_perfectly(features):
    accuracy, chance = nearest_centroid_accuracy(*features)
    assert accuracy > chance + 0.15
    assert accuracy < 0.97


def test_textbook_lesions_separate_the_classes_better_than_overlapping_ones(features):
    textbook = generate_synthetic_ultrasound(num_images=240, image_size=128, seed=3, overlap=0.0)
    x = np.stack([lesion_features(c.image, c.mask) for c in textbook])
    y, groups = np.array([c.label for c in textbook]), np.array([c.group for c in textbook])
    # the same patients and labels: only the features moved to their class's side
    assert np.array_equal(y, features[1])
    realistic, _ = nearest_centroid_accuracy(*features)
    separated, _ = nearest_centroid_accuracy(x, y, groups)
    assert separated > realistic + 0.05
    posterior = x[:, FEATURE_NAMES.index("posterior")]
    # textbook malignant lesions shadow, textbook benign ones enhance
    assert np.mean(posterior[y == 1] < 0) > 0.9 and np.mean(posterior[y == 0] > 0) > 0.9


def test_overlap_one_and_scale_one_leave_the_images_as_they_were():
    default = render_synthetic_case(5, 2, 0, 64)
    explicit = render_synthetic_case(5, 2, 0, 64, overlap=1.0, lesion_scale=1.0)
    assert np.array_equal(default.image, explicit.image)
    # a share of textbook lesions draws once more per patient: other pixels, same label
    mixed = render_synthetic_case(5, 2, 0, 64, overlap=0.5)
    assert mixed.label == default.label


def test_lesion_scale_enlarges_the_lesions():
    areas = {
        scale: np.mean([(c.mask > 0).sum() for c in generate_synthetic_ultrasound(40, 64, seed=2, lesion_scale=scale)])
        for scale in (1.0, 1.6)
    }
    # area grows with the square of the size, less where a lesion is shrunk to fit the image
    assert areas[1.6] > 1.8 * areas[1.0]


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="image_size"):
        generate_synthetic_ultrasound(num_images=2, image_size=16)
    with pytest.raises(ValueError, match="num_images"):
        generate_synthetic_ultrasound(num_images=0)
    with pytest.raises(ValueError, match="overlap"):
        generate_synthetic_ultrasound(num_images=2, overlap=1.5)
    with pytest.raises(ValueError, match="lesion_scale"):
        generate_synthetic_ultrasound(num_images=2, lesion_scale=0)


def test_bad_arguments_leave_an_existing_data_set_intact(tmp_path):
    path = ensure_synthetic_dataset(tmp_path, num_images=4, image_size=40)
    with pytest.raises(ValueError, match="image_size"):
        ensure_synthetic_dataset(tmp_path, num_images=4, image_size=8)
    assert Manifest.load(path).source["image_size"] == 40


# ------------------------------------------------------------------------------------------ on disk
def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*.png")}


def test_ensure_writes_a_valid_group_disjoint_manifest_with_its_files(tmp_path):
    path = ensure_synthetic_dataset(tmp_path / "synth", num_images=24, image_size=48, seed=4)
    assert path == tmp_path / "synth" / MANIFEST_NAME
    manifest = Manifest.load(path)  # checks labels, masks and group leakage
    assert manifest.name == "synthetic_ultrasound"
    assert manifest.classes == list(CLASSES)
    assert "malignant" in manifest.description and "shadow" in manifest.description
    assert manifest.source == {
        "builder": "synthetic_ultrasound",
        "version": synthetic.SYNTHETIC_VERSION,
        "num_images": 24,
        "image_size": 48,
        "seed": 4,
        "overlap": 1.0,
        "lesion_scale": 1.0,
        "split_fractions": [0.7, 0.1, 0.2],
    }
    entries = [e for s in SPLITS for e in manifest.split(s)]
    assert len(entries) == 24
    assert [len(manifest.split(s)) for s in SPLITS] == pytest.approx([0.7 * 24, 0.1 * 24, 0.2 * 24], abs=2)
    split_groups = [{e["group"] for e in manifest.split(s)} for s in SPLITS]
    assert all(not (a & b) for i, a in enumerate(split_groups) for b in split_groups[i + 1 :])
    assert {e["image"] for e in entries} == {f"images/case_{i:04d}.png" for i in range(1, 25)}
    assert _files(path.parent) == {e["image"] for e in entries} | {e["mask"] for e in entries}
    manifest.resolve(path.parent)  # every listed file exists

    # the PNGs hold exactly the in-memory cases, in case order
    cases = generate_synthetic_ultrasound(num_images=24, image_size=48, seed=4)
    by_image = {e["image"]: e for e in entries}
    for i, case in enumerate(cases, start=1):
        entry = by_image[f"images/case_{i:04d}.png"]
        assert entry["mask"] == f"masks/case_{i:04d}_mask.png"
        assert (entry["label"], entry["group"]) == (case.label, case.group)
        with Image.open(path.parent / entry["image"]) as im:
            assert im.mode == "L" and np.array_equal(np.asarray(im), case.image)
        with Image.open(path.parent / entry["mask"]) as im:
            assert np.array_equal(np.asarray(im), case.mask)


def test_ensure_reuses_an_identical_data_set_and_regenerates_a_different_one(tmp_path):
    root = tmp_path / "synth"
    path = ensure_synthetic_dataset(root, num_images=12, image_size=48, seed=0)
    image = root / "images" / "case_0001.png"
    stamps = (path.stat().st_mtime_ns, image.stat().st_mtime_ns)

    assert ensure_synthetic_dataset(root, num_images=12, image_size=48, seed=0) == path
    assert (path.stat().st_mtime_ns, image.stat().st_mtime_ns) == stamps

    # other parameters: regenerated, and the cases of the larger generation are gone
    ensure_synthetic_dataset(root, num_images=8, image_size=40, seed=0)
    manifest = Manifest.load(path)
    assert manifest.source["num_images"] == 8 and manifest.source["image_size"] == 40
    assert len(_files(root)) == 16
    with Image.open(image) as im:
        assert im.size == (40, 40)
    # another share of textbook lesions is another data set too
    ensure_synthetic_dataset(root, num_images=8, image_size=40, seed=0, overlap=0.5)
    assert Manifest.load(path).source["overlap"] == 0.5

    # a deleted file makes the data set incomplete: regenerated
    (root / "masks" / "case_0003_mask.png").unlink()
    ensure_synthetic_dataset(root, num_images=8, image_size=40, seed=0)
    assert (root / "masks" / "case_0003_mask.png").is_file()


def test_an_interrupted_generation_leaves_no_manifest(tmp_path, monkeypatch):
    root = tmp_path / "synth"
    ensure_synthetic_dataset(root, num_images=6, image_size=40, seed=0)
    real = synthetic.render_synthetic_case
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render_synthetic_case", failing)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_dataset(root, num_images=6, image_size=40, seed=1)
    # the old manifest no longer describes the folder, and no new one claims it is complete
    assert not (root / MANIFEST_NAME).exists()
    monkeypatch.undo()
    ensure_synthetic_dataset(root, num_images=6, image_size=40, seed=1)
    assert Manifest.load(root / MANIFEST_NAME).source["seed"] == 1


def test_never_overwrites_a_manifest_of_another_data_set(tmp_path):
    other = {"name": "mine", "classes": ["a", "b"], "source": {"builder": "busi"}, "training": []}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(other))
    with pytest.raises(ManifestError, match=f"{MANIFEST_NAME}.*not written by"):
        ensure_synthetic_dataset(tmp_path, num_images=4, image_size=40)
    with pytest.raises(ManifestError, match="not written by"):
        write_synthetic_dataset(str(tmp_path), num_images=4, image_size=40, force=True)
    assert json.loads((tmp_path / MANIFEST_NAME).read_text()) == other
    assert not (tmp_path / "images").exists()


def test_write_synthetic_dataset_reuses_unless_forced(tmp_path):
    out = write_synthetic_dataset(str(tmp_path / "d"), num_images=6, image_size=40, seed=0)
    assert isinstance(out, str) and Path(out).name == MANIFEST_NAME
    first = os.stat(out).st_mtime_ns
    assert write_synthetic_dataset(str(tmp_path / "d"), num_images=6, image_size=40, seed=0) == out
    assert os.stat(out).st_mtime_ns == first
    image_bytes = (tmp_path / "d" / "images" / "case_0001.png").read_bytes()
    write_synthetic_dataset(str(tmp_path / "d"), num_images=6, image_size=40, seed=0, force=True)
    assert os.stat(out).st_mtime_ns != first
    # regenerated byte for byte
    assert (tmp_path / "d" / "images" / "case_0001.png").read_bytes() == image_bytes
