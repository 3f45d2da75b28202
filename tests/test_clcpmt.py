"""CLCP-MT and CAPR: class-adaptive thresholds, the SDE contrast of two views, state in checkpoints and across ranks."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from conftest import check_resumes_exactly, checkpoint_round_trip, run_two_ranks, three_class_batches, train_steps

from monai_ssl_ext.algorithms import CLCPMT, ClassAdaptiveThreshold, FixedThreshold
from monai_ssl_ext.networks import Classifier


def _predicted(confidences: list[tuple[int, float]], num_classes: int = 3) -> torch.Tensor:
    """Probabilities ``(B, C)`` whose argmax is the given class with the given confidence."""
    rows = []
    for cls, conf in confidences:
        row = torch.full((num_classes,), (1 - conf) / (num_classes - 1))
        row[cls] = conf
        rows.append(row)
    return torch.stack(rows)


def _ready(**kwargs) -> ClassAdaptiveThreshold:
    capr = ClassAdaptiveThreshold(3, **{"rampup_fraction": 0.0, **kwargs})
    capr.set_total_steps(100)
    return capr


# ---------------------------------------------------------------- CAPR
def test_progress_follows_the_momentum_update():
    capr = _ready(momentum=0.9)
    capr(_predicted([(0, 0.9), (0, 0.7), (2, 0.6)]))
    expected = torch.tensor([0.9 / 3 + 0.1 * 0.8, 1 / 3, 0.9 / 3 + 0.1 * 0.6])
    assert torch.allclose(capr.progress, expected)


def test_threshold_falls_for_a_lagging_class_and_rises_once_it_is_learnt():
    capr = _ready(momentum=0.8, threshold=0.95, min_threshold=0.5)
    # class 0 is learnt (confident predictions), class 1 lags (hesitant ones)
    for _ in range(30):
        capr(_predicted([(0, 0.97), (0, 0.96), (1, 0.45)]))
    lagging = capr.thresholds()
    beta = 0.45 / 0.965
    assert lagging[0].item() == pytest.approx(0.95, abs=1e-3)
    assert lagging[1].item() == pytest.approx(max(0.5, 0.95 * beta / (2 - beta)), abs=1e-3)
    assert lagging[1] < lagging[0] - 0.3
    # a hesitant class-1 prediction that a fixed 0.95 bar would reject is accepted
    _, mask = capr(_predicted([(1, 0.6)]))
    assert mask.tolist() == [1.0]
    # class 1 is learnt: its bar rises back towards tau
    for _ in range(30):
        capr(_predicted([(0, 0.97), (1, 0.97)]))
    learnt = capr.thresholds()
    assert learnt[1] > lagging[1] + 0.3
    assert learnt[1].item() == pytest.approx(0.95, abs=0.01)


def test_the_confident_share_lowers_the_bar_of_a_rare_class_that_the_mean_confidence_raises():
    # class 0 is common and predicted at 0.96 half of the time; class 2 is rare, predicted seldom but at 0.99
    batch = _predicted([(0, 0.96), (0, 0.8), (1, 0.97), (1, 0.7)] * 3 + [(2, 0.99)])
    by_confidence, by_share = _ready(momentum=0.5), _ready(momentum=0.5, progress_measure="confident_share")
    assert torch.equal(by_share.thresholds(), torch.full((3,), 0.95))  # nothing confident yet: every bar is tau
    for _ in range(20):
        by_confidence(batch)
        by_share(batch)
    assert torch.allclose(by_share.progress, torch.tensor([3.0, 3.0, 1.0]) / 13, atol=1e-4)
    share = by_share.thresholds()
    assert share[2] < share[0] - 0.3  # the rare class gets the low bar ...
    assert by_confidence.thresholds()[2] == pytest.approx(0.95, abs=1e-3)  # ... where its confidence gave the highest
    beta = 1 / 3
    assert share[2].item() == pytest.approx(max(0.5, 0.95 * beta / (2 - beta)), abs=1e-3)
    # a class-2 prediction at 0.6 passes the rare class's bar, one of class 0 at the same confidence does not
    _, mask = by_share(_predicted([(2, 0.6), (0, 0.6)]))
    assert mask.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="progress_measure"):
        ClassAdaptiveThreshold(3, progress_measure="entropy")


def test_thresholds_start_equal_and_become_adaptive_along_the_ramp():
    capr = ClassAdaptiveThreshold(3, threshold=0.95, min_threshold=0.5, momentum=0.5, rampup_fraction=0.5)
    capr.set_total_steps(100)
    for _ in range(10):
        capr(_predicted([(0, 0.97), (1, 0.4)]))
    capr.set_step(0)
    start = capr.thresholds()
    assert torch.all((start - 0.95).abs() < 0.01)  # r(0) = exp(-5): the bars are all still near tau
    capr.set_step(50)
    assert capr.thresholds()[1] < start[1] - 0.3


def test_capr_state_round_trips_through_a_checkpoint():
    capr = _ready(momentum=0.7)
    for _ in range(5):
        capr(_predicted([(0, 0.9), (1, 0.5), (2, 0.7)]))
    capr.set_step(42)
    restored = _ready(momentum=0.7)
    restored.load_state_dict(checkpoint_round_trip(capr.state_dict()))
    assert int(restored.current_step) == 42
    assert torch.equal(restored.thresholds(), capr.thresholds())
    batch = _predicted([(1, 0.6), (2, 0.65)])
    assert [t.tolist() for t in restored(batch)] == [t.tolist() for t in capr(batch)]


# ---------------------------------------------------------------- SDE: SupCon over student and teacher views
def test_sde_contrast_of_two_views_equals_the_hand_computed_value():
    # two labeled images of different classes, each seen by the student and (detached) by the teacher
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    alg = CLCPMT(2, sde_temperature=0.5)
    loss = alg.sde_loss(torch.stack([student, teacher], dim=1), torch.tensor([0, 1]))
    # rows in sample-major order: s0, t0, s1, t1; each anchor's only positive is its other view
    z = torch.stack([student[0], teacher[0], student[1], teacher[1]])
    sim = (z @ z.T / 0.5).tolist()
    by_hand = 0.0
    for anchor, positive in ((0, 1), (1, 0), (2, 3), (3, 2)):
        others = [a for a in range(4) if a != anchor]
        by_hand += -(sim[anchor][positive] - math.log(sum(math.exp(sim[anchor][a]) for a in others)))
    assert loss.item() == pytest.approx(by_hand / 4, rel=1e-5)


# ---------------------------------------------------------------- the algorithm
def _network() -> Classifier:
    return Classifier(3, in_channels=3, backbone="resnet10", return_dict=True, embed_dim=8)


def test_clcpmt_trains_every_term_and_resumes_exactly():
    torch.manual_seed(0)
    net = _network()
    new_clcpmt = partial(CLCPMT, 3, threshold_rampup=0.0)
    alg = new_clcpmt()
    alg.setup(net, total_steps=10, num_unlabeled=6)
    train_steps(alg, net, range(2))
    out = alg.train_step(net, *three_class_batches(2), 2)
    assert {"loss_sup", "loss_consistency", "loss_capr", "loss_sde"} <= set(out.terms)
    assert {"threshold_mean", "threshold_min", "mask_rate"} <= set(out.logs)
    net.zero_grad()
    out.loss.backward()
    assert net.projection.net[0].weight.grad.abs().sum() > 0  # SDE trains the projection head

    resumed = check_resumes_exactly(alg, net, new_clcpmt, _network, range(3, 5))
    assert torch.equal(resumed.selector.progress, alg.selector.progress)


def test_ablations_switch_their_component_off():
    torch.manual_seed(0)
    no_capr = CLCPMT(3, use_capr=False, threshold=0.9)
    assert isinstance(no_capr.selector, FixedThreshold) and no_capr.selector.threshold == 0.9
    # without SDE a network without a projection head trains
    net = Classifier(3, in_channels=3, backbone="resnet10", return_dict=True)
    no_sde = CLCPMT(3, use_sde=False)
    no_sde.setup(net, total_steps=10, num_unlabeled=6)
    out = no_sde.train_step(net, *three_class_batches(0), 0)
    assert "loss_sde" not in out.terms and torch.isfinite(out.loss)
    with_sde = CLCPMT(3)
    with_sde.setup(net, total_steps=10, num_unlabeled=6)
    with pytest.raises(KeyError, match="embedding"):
        with_sde.train_step(net, *three_class_batches(0), 0)


# ---------------------------------------------------------------- two ranks (gloo, CPU)
_WORKER = r"""
import json, sys
import torch, torch.distributed as dist
from monai_ssl_ext.algorithms import ClassAdaptiveThreshold

rank, out = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[3], rank=rank, world_size=2)
capr = ClassAdaptiveThreshold(2, momentum=0.5, rampup_fraction=0.0)
capr.set_total_steps(10)
# rank 0 predicts class 0 confidently, rank 1 class 1 hesitantly (and class 0 once)
probs = torch.tensor([[0.9, 0.1], [0.95, 0.05]]) if rank == 0 else torch.tensor([[0.4, 0.6], [0.7, 0.3]])
_, mask = capr(probs)
json.dump({"progress": capr.progress.tolist(), "thresholds": capr.thresholds().tolist(), "mask": mask.tolist()},
          open(out + f"/rank{rank}.json", "w"))
dist.destroy_process_group()
"""


@pytest.mark.slow  # two fresh interpreters importing torch
def test_two_ranks_share_the_class_progress(tmp_path):
    results = run_two_ranks(_WORKER, tmp_path)
    assert results[0]["progress"] == results[1]["progress"]
    assert results[0]["thresholds"] == results[1]["thresholds"]
    # class 0 over both ranks: 0.9, 0.95, 0.7 -> mean 0.85; class 1: 0.6
    assert results[0]["progress"] == pytest.approx([0.25 + 0.5 * 0.85, 0.25 + 0.5 * 0.6])
