"""SEMISE pieces: NT-Xent, healthy/anomaly margin, preference ranking, severity orders and severity metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_ssl_ext.data import (
    BUSI_SEVERITY,
    HAM10000_SEVERITY,
    SeverityOrder,
    get_severity_order,
)
from monai_ssl_ext.engines import ClassificationMetric
from monai_ssl_ext.losses import (
    HealthyAnomalyMarginLoss,
    NTXentLoss,
    PreferenceRankingLoss,
    healthy_reference,
    severity_representation_loss,
)
from monai_ssl_ext.metrics import classification_metrics, ordinal_mae, severity_metrics

pytestmark = pytest.mark.usefixtures("one_thread")

MANIFESTS = Path(__file__).resolve().parents[1] / "data_manifests"
R2 = 1 / math.sqrt(2)


def _softplus(x: float) -> float:
    return math.log(1 + math.exp(x))


# ---------------------------------------------------------------- NT-Xent


def _nt_xent_by_hand(cos: list[list[float]], positive: list[int], temperature: float) -> float:
    # l_k = -log(exp(c_kp / T) / sum_{a != k} exp(c_ka / T)), averaged over the anchors
    total = 0.0
    for k, p in enumerate(positive):
        denominator = sum(math.exp(cos[k][a] / temperature) for a in range(len(cos)) if a != k)
        total += -math.log(math.exp(cos[k][p] / temperature) / denominator)
    return total / len(positive)


def test_nt_xent_hand_value():
    # rows in order z1[0], z1[1], z2[0], z2[1]: unit (1,0), (0,1), (1,1)/sqrt2, (-1,1)/sqrt2
    z1 = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 1.0], [-3.0, 3.0]])
    cos = [
        [1.0, 0.0, R2, -R2],
        [0.0, 1.0, R2, R2],
        [R2, R2, 1.0, 0.0],
        [-R2, R2, 0.0, 1.0],
    ]
    for temperature in (1.0, 0.5):
        expected = _nt_xent_by_hand(cos, positive=[2, 3, 0, 1], temperature=temperature)
        loss = NTXentLoss(temperature)(z1, z2)
        assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_aligned_views_beat_swapped():
    torch.manual_seed(0)
    z1 = torch.randn(4, 8)
    z2 = z1 + 0.05 * torch.randn(4, 8)
    loss = NTXentLoss(0.5)
    assert loss(z1, z2).item() < loss(z1, z2.flip(0)).item()


def test_nt_xent_gradient_and_errors():
    z1 = torch.randn(3, 4, requires_grad=True)
    NTXentLoss()(z1, torch.randn(3, 4)).backward()
    assert torch.isfinite(z1.grad).all()
    with pytest.raises(ValueError, match="at least 2"):
        NTXentLoss()(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="differ"):
        NTXentLoss()(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(0.0)


# ---------------------------------------------------------------- healthy/anomaly margin


def test_margin_hand_value_three_embeddings():
    # healthy (1,0), healthy (1,1), anomaly (0,1); margin 1.5
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    is_healthy = torch.tensor([True, True, False])
    d_close = 1 - R2  # cosine distance of 45 degrees
    expected = (d_close**2 + (1.5 - 1.0) ** 2 + (1.5 - d_close) ** 2) / 3
    loss = HealthyAnomalyMarginLoss(margin=1.5)(embeddings, is_healthy)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_margin_zero_when_healthy_coincide_and_anomalies_beyond_margin():
    # two healthy along +x; anomalies at distance >= 1 > margin from them and 1 apart from each other:
    # the anomaly-anomaly pair is unconstrained, so its distance does not matter
    embeddings = torch.tensor([[2.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, -1.0]], requires_grad=True)
    is_healthy = torch.tensor([True, True, False, False])
    loss = HealthyAnomalyMarginLoss(margin=0.5)(embeddings, is_healthy)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    assert torch.isfinite(embeddings.grad).all()


def test_margin_anomaly_pairs_unconstrained_and_no_pair_case():
    loss = HealthyAnomalyMarginLoss(margin=0.5)
    healthy_anchor = torch.tensor([[1.0, 0.0]])
    far = torch.tensor([[-1.0, 0.0], [0.0, -1.0]])
    # one healthy, two anomalies: only the two healthy-anomaly pairs (both beyond the margin) count
    assert loss(torch.cat([healthy_anchor, far]), torch.tensor([True, False, False])).item() == pytest.approx(0.0)
    # only anomalies: nothing constrained, a graph-connected zero
    z = torch.randn(3, 2, requires_grad=True)
    out = loss(z, torch.zeros(3, dtype=torch.bool))
    assert out.item() == 0.0
    out.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_margin_weights():
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    is_healthy = torch.tensor([True, True, False])
    d_close = 1 - R2
    loss = HealthyAnomalyMarginLoss(margin=1.5)
    # weight 0 on the second healthy image leaves the (0, 2) pair alone
    assert loss(embeddings, is_healthy, torch.tensor([1.0, 0.0, 1.0])).item() == pytest.approx(0.25, rel=1e-6)
    # pair weights w_i w_j over the count of positive pair weights
    weighted = loss(embeddings, is_healthy, torch.tensor([1.0, 0.5, 1.0])).item()
    expected = (0.5 * d_close**2 + 0.25 + 0.5 * (1.5 - d_close) ** 2) / 3
    assert weighted == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="margin"):
        HealthyAnomalyMarginLoss(margin=0.0)
    with pytest.raises(ValueError, match="flags"):
        loss(embeddings, torch.tensor([True, False]))


# ---------------------------------------------------------------- preference ranking


def test_ranking_hand_value_and_order():
    reference = torch.tensor([1.0, 0.0])
    severe_far = torch.tensor([[0.0, 1.0], [1.0, 1.0]])  # severity 2 at 90 degrees, severity 1 at 45
    severities = torch.tensor([2, 1])
    for beta in (1.0, 4.0):
        loss = PreferenceRankingLoss(beta=beta)
        good = loss(severe_far, severities, reference).item()
        bad = loss(severe_far.flip(0), severities, reference).item()
        # -log sigmoid(beta (s_j - s_i)) with s_i = cos of the more severe image
        assert good == pytest.approx(-math.log(1 / (1 + math.exp(-beta * (R2 - 0.0)))), rel=1e-6)
        assert bad == pytest.approx(_softplus(beta * R2), rel=1e-6)
        assert good < bad


def test_ranking_all_ordered_pairs_and_ignore_index():
    reference = torch.tensor([1.0, 0.0])
    # cosines to the reference: 1, R2, 0, and an unlabeled row that must not count
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    severities = torch.tensor([0, 1, 2, -1])
    s = [1.0, R2, 0.0]
    pairs = [(1, 0), (2, 0), (2, 1)]  # (more severe, less severe)
    expected = sum(_softplus(s[i] - s[j]) for i, j in pairs) / 3
    assert PreferenceRankingLoss()(embeddings, severities, reference).item() == pytest.approx(expected, rel=1e-6)


def test_ranking_weights():
    reference = torch.tensor([1.0, 0.0])
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    severities = torch.tensor([0, 1, 2])
    s = [1.0, R2, 0.0]
    loss = PreferenceRankingLoss()
    weights = torch.tensor([1.0, 0.5, 1.0])
    expected = (0.5 * _softplus(s[1] - s[0]) + _softplus(s[2] - s[0]) + 0.5 * _softplus(s[2] - s[1])) / 3
    assert loss(embeddings, severities, reference, weights).item() == pytest.approx(expected, rel=1e-6)
    # a zero weight removes the sample from every pair
    dropped = loss(embeddings, severities, reference, torch.tensor([1.0, 0.0, 1.0])).item()
    assert dropped == pytest.approx(_softplus(s[2] - s[0]), rel=1e-6)


def test_ranking_zero_without_ordered_pair_and_errors():
    z = torch.randn(3, 4, requires_grad=True)
    out = PreferenceRankingLoss()(z, torch.tensor([1, 1, -1]), torch.randn(4))
    assert out.item() == 0.0
    out.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))
    with pytest.raises(ValueError, match="integer"):
        PreferenceRankingLoss()(z, torch.tensor([0.0, 1.0, 2.0]), torch.randn(4))
    with pytest.raises(ValueError, match="reference"):
        PreferenceRankingLoss()(z, torch.tensor([0, 1, 2]), torch.randn(3))
    with pytest.raises(ValueError, match="beta"):
        PreferenceRankingLoss(beta=0.0)


def test_ranking_gradient_descent_sorts_by_severity():
    torch.manual_seed(0)
    severities = torch.tensor([2, 0, 1, 3, 1, 0, 2, 3])
    reference = torch.zeros(8)
    reference[0] = 1.0
    embeddings = torch.randn(8, 8).requires_grad_(True)
    loss_fn = PreferenceRankingLoss(beta=4.0)
    optimizer = torch.optim.SGD([embeddings], lr=1.0)
    start = loss_fn(embeddings, severities, reference).item()
    for _ in range(200):
        optimizer.zero_grad()
        loss = loss_fn(embeddings, severities, reference)
        loss.backward()
        optimizer.step()
    assert loss.item() < start
    similarity = torch.nn.functional.cosine_similarity(embeddings.detach(), reference[None], dim=1)
    order = torch.argsort(similarity, descending=True)
    # closest to healthy first: the severities read in that order never decrease
    assert torch.all(torch.diff(severities[order]) >= 0), (severities[order], similarity[order])


def test_healthy_reference():
    embeddings = torch.tensor([[2.0, 0.0], [0.0, 3.0], [5.0, 5.0]])
    reference = healthy_reference(embeddings, torch.tensor([0, 0, 1]))
    assert torch.allclose(reference, torch.tensor([0.5, 0.5]))
    assert healthy_reference(embeddings, torch.tensor([1, 2, 1])) is None
    other_level = healthy_reference(embeddings, torch.tensor([1, 2, 1]), healthy_level=2)
    assert torch.allclose(other_level, torch.tensor([0.0, 1.0]))


# ---------------------------------------------------------------- combination


def test_alpha_combination_and_validation():
    a, b = torch.tensor(2.0), torch.tensor(6.0)
    assert severity_representation_loss(a, b, 0.25).item() == pytest.approx(0.25 * 2 + 0.75 * 6)
    assert severity_representation_loss(a, b, 1.0).item() == pytest.approx(2.0)
    for alpha in (-0.1, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            severity_representation_loss(a, b, alpha)


# ---------------------------------------------------------------- severity orders


def test_busi_and_ham10000_levels():
    assert [BUSI_SEVERITY.level(c) for c in ("normal", "benign", "malignant")] == [0, 1, 2]
    assert BUSI_SEVERITY.num_levels == 3 and BUSI_SEVERITY.healthy_level == 0
    assert HAM10000_SEVERITY.num_levels == 3
    assert {c: HAM10000_SEVERITY.level(c) for c in HAM10000_SEVERITY.classes} == {
        "nv": 0, "bkl": 0, "df": 0, "vasc": 0, "akiec": 1, "bcc": 2, "mel": 2,
    }  # fmt: skip
    assert get_severity_order("BUSI") is BUSI_SEVERITY
    assert get_severity_order("ham10000") is HAM10000_SEVERITY
    with pytest.raises(KeyError, match="isic"):
        get_severity_order("isic")


def test_levels_for_permuted_class_list():
    # the HAM10000 manifest lists its classes alphabetically, not by severity
    classes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert HAM10000_SEVERITY.levels_for(classes).tolist() == [1, 2, 0, 0, 2, 0, 0]
    levels = BUSI_SEVERITY.levels_for(["malignant", "normal", "benign"])
    assert levels.dtype == torch.long and levels.tolist() == [2, 0, 1]
    labels = torch.tensor([0, 1, 2, 1])
    assert levels[labels].tolist() == [2, 0, 1, 0]
    assert BUSI_SEVERITY.levels_for(["benign", "malignant"]).tolist() == [1, 2]  # binary BUSI: no healthy class


def test_severity_mapping_rejects_unknown_class():
    with pytest.raises(ValueError, match="'cyst'"):
        BUSI_SEVERITY.levels_for(["normal", "cyst", "malignant"])
    with pytest.raises(KeyError, match="known classes"):
        HAM10000_SEVERITY.level("melanoma")


def test_severity_orders_cover_the_manifests():
    for order, path in ((BUSI_SEVERITY, "busi/busi.json"), (HAM10000_SEVERITY, "ham10000/ham10000.json")):
        classes = json.loads((MANIFESTS / path).read_text())["classes"]
        assert len(order.levels_for(classes)) == len(classes)


def test_severity_order_construction():
    assert SeverityOrder({"a": 0, "b": 1, "c": 1}) == SeverityOrder([["a"], ["b", "c"]])
    assert SeverityOrder([["a"], ["b", "c"]]).groups == (("a",), ("b", "c"))
    assert "b" in SeverityOrder([["a"], ["b"]])
    with pytest.raises(ValueError, match="gaps"):
        SeverityOrder({"a": 0, "b": 2})
    with pytest.raises(ValueError, match="listed at levels"):
        SeverityOrder([["a"], ["a"]])
    with pytest.raises(ValueError, match="non-empty"):
        SeverityOrder([["a"], "bc"])
    with pytest.raises(ValueError, match="non-empty"):
        SeverityOrder([["a"], []])
    with pytest.raises(ValueError, match=">= 0"):
        SeverityOrder({"a": -1})


# ---------------------------------------------------------------- metrics


def test_ordinal_mae_hand_values():
    assert ordinal_mae([0, 2, 1], [2, 2, 0]) == pytest.approx((2 + 0 + 1) / 3)
    assert ordinal_mae(np.array([1]), np.array([1])) == 0.0


def test_severity_metrics_hand_values():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3], [0.0, 0.1, 0.9]])
    labels = np.array([0, 1, 2, 2])
    m = severity_metrics(probs, labels, [0, 1, 2])
    # predicted levels 0, 2, 1, 2 against 0, 1, 2, 2; expected levels 0.4, 1.5, 1.1, 1.9
    assert m["mae"] == pytest.approx(0.5)
    assert m["expected_level_mae"] == pytest.approx((0.4 + 0.5 + 0.9 + 0.1) / 4)
    assert m["level_accuracy"] == pytest.approx(0.5)
    assert m["num_samples"] == 4


def test_severity_metrics_shared_levels():
    # classes akiec, bcc, bkl, df with levels 1, 2, 0, 0: confusing bkl with df costs nothing
    probs = torch.tensor([[0.0, 0.0, 0.6, 0.4], [0.6, 0.0, 0.4, 0.0]])
    labels = torch.tensor([3, 1])
    levels = HAM10000_SEVERITY.levels_for(["akiec", "bcc", "bkl", "df"])
    m = severity_metrics(probs, labels, levels)
    assert m["mae"] == pytest.approx(0.5)
    assert m["expected_level_mae"] == pytest.approx((0.0 + abs(0.6 - 2)) / 2)
    assert m["level_accuracy"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="class_levels"):
        severity_metrics(probs, labels, [0, 1, 2])
    with pytest.raises(ValueError, match=">= 0"):
        severity_metrics(probs, labels, [0, 1, -1, 2])


def test_validation_metric_reports_severity_mae_over_the_epoch():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3], [0.0, 0.1, 0.9]])
    labels = torch.tensor([0, 1, 2, 2])
    metric = ClassificationMetric("severity_mae", output_transform=lambda o: o, class_levels=[0, 1, 2])
    # two batches, logits: the figure is over the whole epoch, as in the hand-computed case above
    metric.update((torch.log(probs[:2]), labels[:2]))
    metric.update((torch.log(probs[2:]), labels[2:]))
    assert metric.compute() == pytest.approx(0.5)
    accuracy = ClassificationMetric("severity_level_accuracy", output_transform=lambda o: o, class_levels=[0, 1, 2])
    accuracy.update((torch.log(probs), labels))
    assert accuracy.compute() == pytest.approx(0.5)
    without_levels = ClassificationMetric("severity_mae", output_transform=lambda o: o)
    without_levels.update((torch.log(probs), labels))
    with pytest.raises(KeyError, match="severity_mae"):
        without_levels.compute()


def test_per_class_recall_is_reported():
    m = classification_metrics(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), [0, 1, 1], ["normal", "malignant"])
    assert m["per_class"]["malignant"]["recall"] == pytest.approx(0.5)
