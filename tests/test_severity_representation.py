"""Does a representation order images by severity: Spearman's correlation of the distance to healthy and level."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from monai_ssl_ext.engines import EvaluationReport, SeverityRankCorrelation
from monai_ssl_ext.metrics import severity_rank_correlation, spearman
from monai_ssl_ext.metrics.report import headline_metrics

LEVELS = [0, 1, 2]  # class k at level k


def _at_angles(angles_deg, noise=0.0, seed=0):
    """Unit vectors in the plane at the given angles from the healthy direction (1, 0), plus a third axis."""
    rng = np.random.default_rng(seed)
    a = np.radians(np.asarray(angles_deg, dtype=np.float64))
    z = np.stack([np.cos(a), np.sin(a), np.zeros_like(a)], axis=1)
    return z + noise * rng.standard_normal(z.shape)


def test_spearman_matches_scipy_with_ties_and_is_nan_without_a_ranking():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 4, 30), rng.normal(size=30)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])) and math.isnan(spearman([1], [2]))
    with pytest.raises(ValueError, match="one length"):
        spearman([1, 2], [1, 2, 3])


def test_images_further_from_healthy_the_more_severe_correlate_positively():
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    z = _at_angles([0, 5, -5, 40, 45, 50, 80, 85, 90])
    rho = severity_rank_correlation(z, labels, LEVELS)
    # by hand: the distances rank the three levels in order, ties only within levels
    distance = 1 - np.cos(np.radians([0, 5, 5, 40, 45, 50, 80, 85, 90]))
    assert rho == pytest.approx(spearmanr(distance, labels).statistic, abs=0.05) and rho > 0.9
    # the two anomaly levels out of order (malignant between healthy and benign): ranked worse
    swapped = severity_rank_correlation(z, np.array([0, 0, 0, 2, 2, 2, 1, 1, 1]), LEVELS)
    assert swapped == pytest.approx(0.5, abs=0.05)
    # a representation that ignores severity: near zero
    noise = severity_rank_correlation(np.random.default_rng(1).normal(size=(300, 8)), np.arange(300) % 3, LEVELS)
    assert abs(noise) < 0.15


def test_the_reference_leaves_each_healthy_image_out():
    # healthy at 0, 10 and 30 degrees, benign at 12 and 28; each healthy image is measured from the mean of
    # the other two (bisectors at 20, 15 and 5 degrees), the benign ones from the mean of all three (13.3)
    z = _at_angles([0, 10, 30, 12, 28])
    labels = np.array([0, 0, 0, 1, 1])
    by_hand = [20, 5, 25, 1.3, 14.7]  # angles to the reference: their order is the distances' order
    rho = severity_rank_correlation(z, labels, [0, 1])
    assert rho == pytest.approx(spearman(by_hand, labels))
    with_own_image = [13.3, 3.3, 16.7, 1.3, 14.7]
    assert spearman(with_own_image, labels) != pytest.approx(rho)
    assert severity_rank_correlation(z, labels, [0, 5]) == pytest.approx(rho)  # levels need not be consecutive


def test_no_ranking_without_two_levels_or_two_reference_images():
    z = _at_angles([0, 10, 20])
    assert math.isnan(severity_rank_correlation(z, np.array([1, 1, 1]), LEVELS))
    assert math.isnan(severity_rank_correlation(z, np.array([0, 1, 2]), LEVELS))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        severity_rank_correlation(np.zeros(3), np.array([0, 1, 2]), LEVELS)


def test_validation_metric_gathers_the_epoch_and_reads_the_chosen_representation():
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    z = torch.as_tensor(_at_angles([0, 5, -5, 40, 45, 50, 80, 85, 90]), dtype=torch.float32)
    metric = SeverityRankCorrelation(LEVELS)
    metric.reset()
    # one decollated batch and one batched dict
    metric.update(([{"class": torch.zeros(3), "features": f} for f in z[:4]], list(labels[:4])))
    metric.update(({"class": torch.zeros(5, 3), "features": z[4:]}, labels[4:]))
    assert metric.compute() == pytest.approx(severity_rank_correlation(z.numpy(), labels.numpy(), LEVELS))
    with pytest.raises(KeyError, match="embedding"):
        SeverityRankCorrelation(LEVELS, representation="embedding").update(({"class": torch.zeros(1, 3)}, labels[:1]))


def test_evaluation_report_adds_the_rank_correlation_when_the_network_returns_features(tmp_path):
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    z = torch.as_tensor(_at_angles([0, 5, -5, 40, 45, 50, 80, 85, 90]), dtype=torch.float32)
    report = EvaluationReport(tmp_path, ["normal", "benign", "malignant"], plots=False, class_levels=LEVELS)
    report.collect({"pred": {"class": torch.randn(9, 3), "features": z}, "label": labels})
    result = report.complete()
    expected = severity_rank_correlation(z.numpy(), labels.numpy(), LEVELS)
    assert result["severity"]["rank_correlation"] == pytest.approx(expected)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert headline_metrics(written)["severity_rank_correlation"] == pytest.approx(expected)
    # no features (an exported model's class and seg outputs): no figure
    plain = EvaluationReport(tmp_path / "plain", ["normal", "benign", "malignant"], plots=False, class_levels=LEVELS)
    plain.collect({"pred": {"class": torch.randn(9, 3)}, "label": labels})
    assert "rank_correlation" not in plain.complete()["severity"]
