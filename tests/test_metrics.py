"""Metrics against hand-computed values and brute-force references; figures render to valid PNGs."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from monai_ssl_ext.metrics import (
    binary_auc,
    calibration_bins,
    classification_metrics,
    confusion_matrix,
    dice_per_image,
    expected_calibration_error,
    iou_per_image,
    one_vs_rest_auc,
    ordinal_mae,
    plot_confusion_matrix,
    plot_mask_overlays,
    plot_reliability_diagram,
    plot_training_curves,
    reliability_data,
    segmentation_metrics,
)

# ---------------------------------------------------------------- binary hand-computed example
# labels: 3 positives then 5 negatives; scores of the positive class give predictions
# [1, 1, 0, 0, 0, 0, 1, 1] -> TP 2, FN 1, TN 3, FP 2
LABELS = np.array([1, 1, 1, 0, 0, 0, 0, 0])
P1 = np.array([0.9, 0.8, 0.4, 0.3, 0.2, 0.1, 0.7, 0.6])
PROBS = np.stack([1 - P1, P1], axis=1)


def _brute_auc(scores: np.ndarray, targets: np.ndarray) -> float:
    pos, neg = scores[targets], scores[~targets]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (pos.size * neg.size)


def _guo_ece(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    # loop form of the reference implementation of Guo et al. 2017
    edges = np.linspace(0, 1, n_bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return ece


def test_binary_hand_computed():
    m = classification_metrics(PROBS, LABELS, class_names=["benign", "malignant"])
    assert m["confusion_matrix"] == [[3, 2], [1, 2]]
    assert m["num_samples"] == 8
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(3 / 5)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 3 / 5) / 2)
    # F1 benign: P 3/4, R 3/5 -> 2/3; malignant: P 1/2, R 2/3 -> 4/7
    assert m["macro_f1"] == pytest.approx((2 / 3 + 4 / 7) / 2)
    assert m["per_class"]["malignant"] == pytest.approx({"precision": 0.5, "recall": 2 / 3, "f1": 4 / 7, "support": 3})
    assert m["per_class"]["benign"] == pytest.approx({"precision": 0.75, "recall": 0.6, "f1": 2 / 3, "support": 5})
    # pairs (positive, negative) ranked correctly: 0.9 and 0.8 beat all 5, 0.4 beats 3 -> 13 / 15
    assert m["auc"] == pytest.approx(13 / 15)
    assert set(m) == {
        "num_samples", "accuracy", "balanced_accuracy", "macro_f1", "auc", "sensitivity", "specificity",
        "ece", "per_class", "confusion_matrix",
    }  # fmt: skip
    json.dumps(m)  # plain Python types only


def test_binary_positive_class_zero_swaps_sensitivity_and_auc():
    m = classification_metrics(PROBS, LABELS, positive_class=0)
    assert m["sensitivity"] == pytest.approx(3 / 5)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["auc"] == pytest.approx(13 / 15)  # AUC of 1 - p for the other class is the same ranking
    assert list(m["per_class"]) == ["0", "1"]


def assert_close(a, b, rel=1e-6):
    """Recursive comparison of metric dicts: floats approximately (NaN equals NaN), the rest exactly."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (a, b)
        for k in a:
            assert_close(a[k], b[k], rel)
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_close(x, y, rel)
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=rel, abs=1e-9, nan_ok=True)
    else:
        assert a == b


def test_torch_inputs_and_1d_binary_probs_match_numpy():
    ref = classification_metrics(PROBS, LABELS)
    assert_close(classification_metrics(torch.tensor(PROBS, dtype=torch.float32), torch.tensor(LABELS)), ref)
    assert_close(classification_metrics(P1, LABELS), ref)
    assert_close(classification_metrics(PROBS, LABELS.astype(np.float32)[:, None]), ref)


def test_sensitivity_nan_without_positives():
    m = classification_metrics(PROBS[3:], LABELS[3:])
    assert math.isnan(m["sensitivity"]) and math.isnan(m["auc"])
    assert m["specificity"] == pytest.approx(3 / 5)


def test_multiclass_absent_and_unpredicted_classes():
    # class 2 never occurs in the labels but is predicted once
    probs = np.array([[0.8, 0.1, 0.1], [0.3, 0.2, 0.5], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1]])
    labels = np.array([0, 0, 1, 1])
    m = classification_metrics(probs, labels, class_names=["a", "b", "c"])
    assert m["confusion_matrix"] == [[1, 0, 1], [0, 2, 0], [0, 0, 0]]
    assert m["balanced_accuracy"] == pytest.approx(0.75)  # mean recall over classes present in the labels
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)  # classes present in labels or predictions
    assert "sensitivity" not in m and "specificity" not in m
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    macro, per_class = one_vs_rest_auc(probs, labels)
    assert math.isnan(per_class[2])
    assert m["auc"] == pytest.approx(macro)
    assert macro == pytest.approx((_brute_auc(probs[:, 0], labels == 0) + _brute_auc(probs[:, 1], labels == 1)) / 2)


def test_multiclass_ovr_auc_constructed():
    # class 0 and 1 perfectly separated from the rest, class 2's score is constant -> AUCs 1, 1, 0.5
    probs = np.array(
        [[0.7, 0.1, 0.2], [0.6, 0.2, 0.2], [0.1, 0.7, 0.2], [0.2, 0.6, 0.2], [0.4, 0.4, 0.2], [0.5, 0.3, 0.2]]
    )
    labels = np.array([0, 0, 1, 1, 2, 2])
    macro, per_class = one_vs_rest_auc(probs, labels)
    np.testing.assert_allclose(per_class, [1.0, 1.0, 0.5])
    assert macro == pytest.approx(2.5 / 3)
    assert classification_metrics(probs, labels)["auc"] == pytest.approx(2.5 / 3)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_auc_equals_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 200
    scores = rng.integers(0, 6, n) / 5.0  # six distinct values: many ties
    targets = rng.random(n) < 0.3
    assert binary_auc(scores, targets) == pytest.approx(_brute_auc(scores, targets), abs=1e-12)
    cont = rng.random(n)
    assert binary_auc(cont, targets) == pytest.approx(_brute_auc(cont, targets), abs=1e-12)


def test_auc_limits():
    targets = np.array([0, 0, 0, 1, 1], dtype=bool)
    assert binary_auc([0.1, 0.2, 0.3, 0.8, 0.9], targets) == 1.0
    assert binary_auc([0.9, 0.8, 0.7, 0.2, 0.1], targets) == 0.0
    assert binary_auc(np.full(5, 0.4), targets) == 0.5
    assert math.isnan(binary_auc([0.1, 0.2], [True, True]))


def test_confusion_matrix_and_ordinal_mae():
    cm = confusion_matrix([0, 1, 2, 2, 1], [0, 2, 2, 1, 1], 3)
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 1, 1], [0, 1, 1]])
    assert ordinal_mae([0, 2, 0, 3], [0, 1, 2, 3]) == pytest.approx(0.75)
    assert ordinal_mae(torch.tensor([1, 1]), np.array([1, 1])) == 0.0


def test_invalid_inputs_raise():
    with pytest.raises(ValueError, match="apply softmax"):
        classification_metrics(np.array([[2.0, -1.0], [0.5, 0.5]]), [0, 1])
    with pytest.raises(ValueError, match="sum to 1"):
        classification_metrics(np.array([[0.2, 0.2], [0.5, 0.5]]), [0, 1])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        classification_metrics(PROBS, LABELS + 1)
    with pytest.raises(ValueError, match="class names"):
        classification_metrics(PROBS, LABELS, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="5 samples but probs has 8"):
        classification_metrics(PROBS, LABELS[:5])
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics(np.full((2, 2), np.nan), [0, 1])


# ---------------------------------------------------------------- calibration
def test_ece_zero_when_bins_are_calibrated():
    # 10 samples at confidence 0.7 with 7 correct, 20 at 0.95 with 19 correct
    probs = np.array([[0.3, 0.7]] * 10 + [[0.95, 0.05]] * 20)
    labels = np.array([1] * 7 + [0] * 3 + [0] * 19 + [1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)
    assert classification_metrics(probs, labels)["ece"] == pytest.approx(0.0, abs=1e-12)


def test_ece_hand_computed():
    # 4 samples at 0.9 with 3 correct (gap 0.15), 2 at 0.55 both correct (gap 0.45)
    probs = np.array([[0.1, 0.9]] * 4 + [[0.55, 0.45]] * 2)
    labels = np.array([1, 1, 1, 0, 0, 0])
    assert expected_calibration_error(probs, labels) == pytest.approx(4 / 6 * 0.15 + 2 / 6 * 0.45)
    bins = reliability_data(probs, labels)
    assert bins["count"].sum() == 6 and bins["count"].size == 15
    k09, k055 = 13, 8  # 0.9 in (13/15, 14/15], 0.55 in (8/15, 9/15]
    assert bins["count"][k09] == 4 and bins["count"][k055] == 2
    assert bins["accuracy"][k09] == pytest.approx(0.75) and bins["confidence"][k055] == pytest.approx(0.55)
    assert np.isnan(bins["accuracy"][0])


def test_ece_matches_reference_loop_on_random_data():
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(500, 4)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 4, 500)
    conf, correct = probs.max(1), probs.argmax(1) == labels
    assert expected_calibration_error(probs, labels) == pytest.approx(_guo_ece(conf, correct), abs=1e-12)


def test_calibration_bins_edges_are_right_closed():
    bins = calibration_bins([0.0, 0.5, 1.0], [True, False, True], n_bins=2)
    np.testing.assert_array_equal(bins["count"], [2, 1])  # 0.5 belongs to (0, 0.5]
    with pytest.raises(ValueError):
        calibration_bins([1.5], [True])


# ---------------------------------------------------------------- segmentation
def _masks() -> tuple[np.ndarray, np.ndarray]:
    true = np.zeros((4, 4, 4), dtype=bool)
    pred = np.zeros((4, 4, 4), dtype=bool)
    true[0, :2, :2] = True  # 4 pixels
    pred[0, :1, :2] = True  # 2 of them: Dice 4/6, IoU 2/4
    # image 1: both empty -> 1.0 by convention
    pred[2, 3, 3] = True  # image 2: empty truth, 1 false-positive pixel -> 0
    true[3, 0, :2] = True  # image 3: lesion missed -> 0
    return pred, true


def test_dice_iou_hand_computed_with_empty_convention():
    pred, true = _masks()
    np.testing.assert_allclose(dice_per_image(pred, true), [2 / 3, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(iou_per_image(pred, true), [0.5, 1.0, 0.0, 0.0])
    m = segmentation_metrics(pred, true)
    assert m["dice"] == pytest.approx((2 / 3 + 1) / 4)
    assert m["iou"] == pytest.approx(1.5 / 4)
    assert m["dice_nonempty"] == pytest.approx(1 / 3)  # images 0 and 3
    assert m["iou_nonempty"] == pytest.approx(0.25)
    assert m["num_images"] == 4 and m["num_nonempty"] == 2
    assert m["empty_false_positive_rate"] == pytest.approx(0.5)
    json.dumps(m)


def test_segmentation_layouts():
    pred, true = _masks()
    ref = segmentation_metrics(pred, true)
    assert segmentation_metrics(torch.from_numpy(pred[:, None]).float(), torch.from_numpy(true[:, None])) == ref
    assert segmentation_metrics(list(pred.astype(np.uint8)), list(true)) == ref
    # images of different sizes as sequences
    m = segmentation_metrics([np.ones((2, 3)), np.zeros((5, 5))], [np.ones((2, 3)), np.zeros((5, 5))])
    assert m["dice"] == 1.0 and math.isnan(m["dice_nonempty"]) is False
    assert math.isnan(segmentation_metrics([np.zeros((2, 2))], [np.zeros((2, 2))])["dice_nonempty"])
    with pytest.raises(ValueError, match="binary"):
        segmentation_metrics(np.full((1, 2, 2), 0.7), true[:1, :2, :2])
    with pytest.raises(ValueError, match="differs"):
        dice_per_image([np.zeros((2, 2))], [np.zeros((2, 3))])


# ---------------------------------------------------------------- figures
def _assert_png(path, min_size=(100, 100)):
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
        im.verify()


def test_plots_write_valid_pngs(tmp_path):
    rng = np.random.default_rng(0)
    plot_confusion_matrix([[5, 1, 0], [2, 7, 1], [0, 0, 0]], ["benign", "malignant", "normal"], tmp_path / "cm.png")
    plot_confusion_matrix([[5, 1], [2, 7]], ["a", "b"], tmp_path / "cm_counts.png", normalize=False)
    logits = rng.normal(size=(200, 3)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    plot_reliability_diagram(probs, rng.integers(0, 3, 200), tmp_path / "rel.png")
    images = rng.random((5, 1, 32, 32))
    true = np.zeros((5, 32, 32), dtype=bool)
    true[:4, 8:20, 8:20] = True  # the last image has an empty truth
    pred = np.roll(true, 3, axis=2)
    plot_mask_overlays(images, true, pred, tmp_path / "ov.png")
    plot_mask_overlays(rng.random((2, 3, 16, 16)), true[:2, :16, :16], pred[:2, :16, :16], tmp_path / "ov_rgb.png")
    for name in ("cm.png", "cm_counts.png", "rel.png", "ov.png", "ov_rgb.png"):
        _assert_png(tmp_path / name)
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_training_curves_skip_nan(tmp_path):
    nan = float("nan")
    history = {
        "iteration": [10, 20, 30, 40],
        "scalars": {
            "loss": [1.0, 0.8, nan, 0.5],
            "loss_sup": [0.9, nan, 0.6, 0.4],
            "loss_unsup": [nan, nan, nan, nan],
            "mask_rate": [0.1, 0.4, 0.6, nan],
            "pseudo_label_acc": [nan, 0.7, 0.8, 0.85],
            "lr": [0.03, 0.03, 0.029, 0.028],
        },
        "validation": {"epoch": [1, 2], "iteration": [20, 40], "metrics": {"auc": [0.7, nan], "accuracy": [0.6, 0.7]}},
    }
    plot_training_curves(history, tmp_path / "curves.png")
    _assert_png(tmp_path / "curves.png", (400, 300))
    # only NaN, or no validation at all, still renders
    plot_training_curves({"iteration": [1], "scalars": {"loss": [nan]}, "validation": {}}, tmp_path / "empty.png")
    _assert_png(tmp_path / "empty.png")
