"""Manifests and label budgets: the format's checks, and labeled subsets that are deterministic,
stratified, group-aware and disjoint from the other splits."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from monai_ssl_ext.data import (
    LabelBudgetError,
    Manifest,
    ManifestError,
    load_manifest,
    resolve_budget,
    split_label_budget,
    stratified_group_split,
)
from monai_ssl_ext.keys import DataKeys


def make_entries(counts: dict[int, int], group_size: int = 1, prefix: str = "img") -> list[dict]:
    """Entries with ``counts[c]`` images of class ``c``, in groups (patients) of ``group_size`` images."""
    entries = []
    for label, n in counts.items():
        for i in range(n):
            entry = {DataKeys.IMAGE: f"{prefix}_{label}_{i}.png", DataKeys.LABEL: label}
            if group_size > 1:
                entry[DataKeys.GROUP] = f"p{label}_{i // group_size}"
            entries.append(entry)
    return entries


def make_manifest(train: list[dict], val: list[dict] | None = None, test: list[dict] | None = None) -> Manifest:
    return Manifest.from_dict(
        {
            "name": "toy",
            "classes": ["benign", "malignant", "normal"],
            "training": train,
            "validation": val or [],
            "test": test or [],
        }
    )


# ---------------------------------------------------------------------------- budgets
@pytest.mark.parametrize(
    ("budget", "expected"), [(216, 216), (0.2, 60), ("20%", 60), ("0.5", 150), ("12", 12), (1, 1), (1.0, 300)]
)
def test_resolve_budget_counts_and_fractions(budget, expected):
    assert resolve_budget(budget, 300) == expected


@pytest.mark.parametrize("budget", [301, 0, 1.5, -0.1, "many", None, True])
def test_resolve_budget_rejects_impossible_budgets(budget):
    with pytest.raises(LabelBudgetError):
        resolve_budget(budget, 300)


def test_split_is_deterministic_for_a_seed_and_differs_across_seeds():
    entries = make_entries({0: 120, 1: 60, 2: 20})
    a = split_label_budget(entries, 40, seed=3)
    b = split_label_budget(entries, 40, seed=3)
    c = split_label_budget(entries, 40, seed=4)
    names = lambda s: [e[DataKeys.IMAGE] for e in s.labeled]  # noqa: E731
    assert names(a) == names(b)
    assert names(a) != names(c)


def test_split_is_stratified_by_class():
    entries = make_entries({0: 120, 1: 60, 2: 20})
    split = split_label_budget(entries, 40, seed=0, classes=["benign", "malignant", "normal"])
    assert split.per_class == {"benign": 24, "malignant": 12, "normal": 4}
    assert Counter(e[DataKeys.LABEL] for e in split.labeled) == {0: 24, 1: 12, 2: 4}


def test_every_present_class_gets_a_labeled_image_even_when_rare():
    entries = make_entries({0: 200, 1: 3})
    split = split_label_budget(entries, 10, seed=0)
    assert split.per_class["1"] >= 1 and split.budget == 10


def test_labeled_and_unlabeled_partition_the_training_split_without_labels_leaking():
    entries = make_entries({0: 50, 1: 30})
    split = split_label_budget(entries, 20, seed=1)
    labeled = {e[DataKeys.IMAGE] for e in split.labeled}
    unlabeled = {e[DataKeys.IMAGE] for e in split.unlabeled}
    assert not labeled & unlabeled
    assert labeled | unlabeled == {e[DataKeys.IMAGE] for e in entries}
    assert all(DataKeys.LABEL not in e and DataKeys.HIDDEN_LABEL not in e for e in split.unlabeled)


def test_benchmark_mode_keeps_true_labels_under_hidden_label_only():
    entries = make_entries({0: 10, 1: 10})
    split = split_label_budget(entries, 4, seed=0, hide_labels=True)
    truth = {e[DataKeys.IMAGE]: e[DataKeys.LABEL] for e in entries}
    for e in split.unlabeled:
        assert DataKeys.LABEL not in e
        assert e[DataKeys.HIDDEN_LABEL] == truth[e[DataKeys.IMAGE]]


def test_split_keeps_each_group_on_one_side():
    entries = make_entries({0: 60, 1: 30}, group_size=3)
    for seed in range(5):
        split = split_label_budget(entries, 30, seed=seed)
        labeled_groups = {e[DataKeys.GROUP] for e in split.labeled}
        unlabeled_groups = {e[DataKeys.GROUP] for e in split.unlabeled}
        assert not labeled_groups & unlabeled_groups
        assert split.budget == 30  # groups of 3 fill a budget of 30 exactly


def test_split_leaves_the_input_entries_untouched():
    entries = make_entries({0: 10, 1: 10})
    before = json.dumps(entries)
    split_label_budget(entries, 6, seed=0, hide_labels=True)
    assert json.dumps(entries) == before


def test_manifest_label_split_is_disjoint_from_validation_and_test():
    train, val, test = (
        make_entries({0: 40, 1: 20}),
        make_entries({0: 5, 1: 5}, prefix="v"),
        make_entries({0: 5, 1: 5}, prefix="t"),
    )
    manifest = make_manifest(train, val, test)
    split = manifest.label_split(12, seed=0)
    held_out = {e[DataKeys.IMAGE] for e in manifest.validation + manifest.test}
    assert not {e[DataKeys.IMAGE] for e in split.labeled + split.unlabeled} & held_out


def test_budget_larger_than_training_split_is_rejected_with_its_size():
    with pytest.raises(LabelBudgetError, match=r"larger than the training split \(30 images\)"):
        split_label_budget(make_entries({0: 20, 1: 10}), 31)


def test_budget_below_number_of_classes_is_rejected():
    with pytest.raises(LabelBudgetError, match="smaller than the number of classes"):
        split_label_budget(make_entries({0: 20, 1: 10, 2: 5}), 2)


def test_class_left_without_labels_by_large_groups_is_rejected_before_training():
    # the only malignant patient has 5 images: a budget of 3 cannot label it without breaking the group
    entries = make_entries({0: 30}, group_size=1) + [
        {DataKeys.IMAGE: f"m{i}.png", DataKeys.LABEL: 1, DataKeys.GROUP: "patient-m"} for i in range(5)
    ]
    with pytest.raises(LabelBudgetError, match=r"class\(es\) \['malignant'\] have no labeled image"):
        split_label_budget(entries, 3, seed=0, classes=["benign", "malignant"], source="toy.json")


def test_stratified_group_split_fractions_strata_and_groups():
    entries = make_entries({0: 200, 1: 100}, group_size=2)
    parts = stratified_group_split(entries, (0.7, 0.1, 0.2), seed=0)
    assert [len(p) for p in parts] == [210, 30, 60]
    for part, share in zip(parts, (0.7, 0.1, 0.2), strict=True):
        counts = Counter(e[DataKeys.LABEL] for e in part)
        assert counts[0] == pytest.approx(200 * share, abs=2) and counts[1] == pytest.approx(100 * share, abs=2)
    groups = [{e[DataKeys.GROUP] for e in p} for p in parts]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    again = stratified_group_split(entries, (0.7, 0.1, 0.2), seed=0)
    assert [[e[DataKeys.IMAGE] for e in p] for p in parts] == [[e[DataKeys.IMAGE] for e in p] for p in again]


# ---------------------------------------------------------------------------- the manifest format
def test_manifest_accepts_class_names_as_labels_and_round_trips(tmp_path):
    manifest = make_manifest([{DataKeys.IMAGE: "a.png", DataKeys.LABEL: "malignant"}])
    assert manifest.training[0][DataKeys.LABEL] == 1
    path = manifest.save(tmp_path / "m.json")
    again = Manifest.load(path)
    assert again.training == manifest.training and again.classes == manifest.classes


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"training": [{"image": "a.png", "label": "cyst"}]}, "label 'cyst' is not one of the classes"),
        ({"training": [{"image": "a.png", "label": 7}]}, "label 7 is outside"),
        ({"training": [{"image": "a.png"}]}, "has no 'label'"),
        ({"training": []}, "'training' split is empty"),
        ({"classes": []}, "'classes' must be a non-empty list"),
        ({"classes": ["a", "a"]}, "more than once"),
        ({"trainig": []}, "unknown top-level keys"),
        (
            {
                "training": [{"image": "a.png", "label": 0, "group": "p1"}],
                "test": [{"image": "b.png", "label": 0, "group": "p1"}],
            },
            "group 'p1' appears in both 'training' and 'test'",
        ),
    ],
    ids=[
        "unknown-class",
        "index-out-of-range",
        "no-label",
        "empty-training",
        "no-classes",
        "duplicate-class",
        "key-typo",
        "group-leak",
    ],
)
def test_manifest_errors_name_the_problem_and_the_file(tmp_path, change, message):
    data = {"name": "toy", "classes": ["benign", "malignant"], "training": [{"image": "a.png", "label": 0}]}
    data.update(change)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=message) as err:
        Manifest.load(path)
    assert str(path) in str(err.value)


def test_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"classes": ["a"],\n "training": [}')
    with pytest.raises(ManifestError, match=r"not valid JSON .* line 2"):
        Manifest.load(path)


def test_missing_data_root_and_missing_files_are_reported_before_anything_runs(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.png").write_bytes(b"")
    manifest = make_manifest(
        [
            {DataKeys.IMAGE: "a.png", DataKeys.LABEL: 0},
            {DataKeys.IMAGE: "gone.png", DataKeys.LABEL: 1, DataKeys.MASK: ["gone_mask.png"]},
        ]
    )
    with pytest.raises(FileNotFoundError, match="Data root '/nonexistent/busi' does not exist"):
        load_manifest(manifest, "/nonexistent/busi")
    with pytest.raises(FileNotFoundError, match=r"2 file.* missing") as err:
        load_manifest(manifest, tmp_path / "data")
    assert "gone.png" in str(err.value) and "gone_mask.png" in str(err.value)


def test_resolve_joins_relative_paths_and_keeps_absolute_ones(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    absolute = tmp_path / "b.png"
    absolute.write_bytes(b"")
    manifest = make_manifest(
        [{DataKeys.IMAGE: "a.png", DataKeys.LABEL: 0}, {DataKeys.IMAGE: str(absolute), DataKeys.LABEL: 1}]
    )
    resolved = load_manifest(manifest, tmp_path)
    assert [e[DataKeys.IMAGE] for e in resolved.training] == [str(tmp_path / "a.png"), str(absolute)]
    assert manifest.training[0][DataKeys.IMAGE] == "a.png"  # the original is not modified


def test_with_classes_reindexes_labels_and_drops_other_classes():
    manifest = make_manifest(make_entries({0: 3, 1: 2, 2: 4}))
    binary = manifest.with_classes(["malignant", "benign"])
    assert binary.classes == ["malignant", "benign"]
    assert Counter(e[DataKeys.LABEL] for e in binary.training) == {0: 2, 1: 3}
    with pytest.raises(ManifestError, match=r"cannot keep classes \['cyst'\]"):
        manifest.with_classes(["cyst"])


@pytest.mark.parametrize("budget", [216, 144, 72])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_committed_label_budget_splits_are_reproduced_by_the_code(budget, seed):
    root = Path(__file__).resolve().parents[1] / "data_manifests" / "busi"
    committed = json.loads((root / "splits" / f"busi_binary_labels{budget}_seed{seed}.json").read_text())
    split = Manifest.load(root / "busi_binary.json").label_split(budget, seed=seed)
    assert committed == {"manifest": "busi_binary.json", **split.to_dict()}
    # 306:147 in the training split, kept in proportion by largest-remainder rounding
    expected = {
        216: {"benign": 146, "malignant": 70},
        144: {"benign": 97, "malignant": 47},
        72: {"benign": 49, "malignant": 23},
    }
    assert committed["per_class"] == expected[budget]


def test_stratified_group_split_does_not_sort_groups_by_size_into_parts():
    # 300 single-image patients and 100 three-image patients of one class: each part should hold both kinds
    entries = [{"image": f"s{i}.png", "label": 0, "group": f"s{i}"} for i in range(300)]
    entries += [{"image": f"m{i}_{v}.png", "label": 0, "group": f"m{i}"} for i in range(100) for v in range(3)]
    parts = stratified_group_split(entries, (0.7, 0.1, 0.2), seed=0)
    for part in parts:
        share_multi = sum(e["group"].startswith("m") for e in part) / len(part)
        assert 0.3 < share_multi < 0.7, f"{len(part)} images, {share_multi:.2f} from three-image patients"
    assert [len(p) for p in parts] == pytest.approx([420, 60, 120], abs=3)
