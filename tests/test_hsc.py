"""HSC and its parts: memory bank, neighbourhood calibration, class prototypes, the calibration losses."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from conftest import check_resumes_exactly, checkpoint_round_trip, run_two_ranks, three_class_batches, train_steps
from torch import nn

from monai_ssl_ext.algorithms import (
    HSC,
    ClassPrototypes,
    FeatureMemoryBank,
    NeighbourhoodCalibration,
    compactness_weight,
)
from monai_ssl_ext.algorithms.hsc import pool_evidence
from monai_ssl_ext.losses import prototype_alignment_loss, weighted_soft_cross_entropy
from monai_ssl_ext.networks import Classifier

E0, E1 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])


def _cluster(centre: torch.Tensor, n: int, seed: int, spread: float = 0.05) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(centre + spread * torch.randn(n, centre.numel(), generator=g), dim=1)


def _two_cluster_bank(confidence: float = 0.95) -> FeatureMemoryBank:
    """20 entries around E0 predicted class 0, 20 around E1 predicted class 1, both with ``confidence``."""
    bank = FeatureMemoryBank(size=64, dim=3, num_classes=2)
    p0 = torch.tensor([confidence, 1 - confidence]).repeat(20, 1)
    bank.enqueue(_cluster(E0, 20, 0), p0)
    bank.enqueue(_cluster(E1, 20, 1), p0.flip(1))
    return bank


class _Given(nn.Module):
    """A network whose outputs are read off its input: ``x[:, :K]`` are the logits, ``x[:, K:]`` the embedding.

    The scale parameter makes both depend on a weight, so the losses have a gradient.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.k = num_classes
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = x.flatten(1) * self.scale
        return {"class": x[:, : self.k], "embedding": x[:, self.k :]}


def _inputs(logits: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
    return torch.cat([logits, embedding], dim=1)[:, :, None, None]


# ---------------------------------------------------------------- memory bank
def test_bank_is_a_ring_that_keeps_the_newest_entries():
    bank = FeatureMemoryBank(size=4, dim=2, num_classes=2)
    assert len(bank) == 0
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    bank.enqueue(rows, torch.tensor([[1.0, 0.0]] * 3))
    assert len(bank) == 3 and int(bank.pointer) == 3
    bank.enqueue(torch.tensor([[2.0, 0.0], [0.0, 3.0]]), torch.tensor([[0.0, 1.0]] * 2))
    assert len(bank) == 4 and int(bank.pointer) == 1
    # the oldest row [1, 0] was replaced by [0, 3] (normalised); stored embeddings are unit vectors
    assert torch.allclose(bank.features[0], torch.tensor([0.0, 1.0]))
    assert torch.allclose(bank.features.norm(dim=1), torch.ones(4))
    assert bank.probs[0].tolist() == [0.0, 1.0] and bank.probs[1].tolist() == [1.0, 0.0]
    # a batch larger than the bank keeps its newest rows
    big = torch.arange(12.0).reshape(6, 2) + 1
    bank.enqueue(big, torch.tensor([[1.0, 0.0]] * 6))
    assert torch.allclose(torch.sort(bank.features, dim=0).values, torch.sort(F.normalize(big[2:]), dim=0).values)


def test_bank_neighbours_are_the_most_similar_valid_entries():
    bank = _two_cluster_bank()
    similarity, probs = bank.neighbours(E0[None], k=5)
    assert similarity.shape == (1, 5) and probs.shape == (1, 5, 2)
    assert torch.all(similarity[:, :-1] >= similarity[:, 1:])
    assert torch.all(probs[0, :, 0] == 0.95)  # all from the class-0 cluster
    with pytest.raises(ValueError, match="valid entries"):
        FeatureMemoryBank(8, 3, 2).neighbours(E0[None], k=1)


def test_bank_round_trips_through_a_checkpoint():
    bank = _two_cluster_bank()
    restored = FeatureMemoryBank(size=64, dim=3, num_classes=2)
    restored.load_state_dict(checkpoint_round_trip(bank.state_dict()))
    assert len(restored) == len(bank) and int(restored.pointer) == int(bank.pointer)
    query = _cluster(E1, 3, 7)
    for a, b in zip(restored.neighbours(query, 4), bank.neighbours(query, 4), strict=True):
        assert torch.equal(a, b)
    # the next write lands where it would have in the original
    row, p = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.5]])
    restored.enqueue(row, p)
    bank.enqueue(row, p)
    assert torch.equal(restored.features, bank.features)


# ---------------------------------------------------------------- neighbourhood calibration
def test_a_mislabelled_point_among_confident_neighbours_is_corrected():
    bank = _two_cluster_bank()
    calibration = NeighbourhoodCalibration(k=8, temperature=0.1)
    # the sample sits in the class-0 cluster but the model calls it class 1
    z = _cluster(E0, 1, 3)
    p = torch.tensor([[0.4, 0.6]])
    q_nb, kappa = calibration(bank, z)
    assert q_nb[0].argmax() == 0 and q_nb[0, 0] == pytest.approx(0.95)
    assert kappa.item() > 0.9  # a tight neighbourhood
    q = pool_evidence(p, q_nb, 0.3)
    assert q.argmax(1).item() == 0


def test_agreeing_context_raises_the_confidence_and_disagreeing_context_lowers_it():
    p = torch.tensor([[0.90, 0.05, 0.05]])
    agree, disagree = torch.tensor([[0.8, 0.1, 0.1]]), torch.tensor([[0.1, 0.8, 0.1]])
    assert pool_evidence(p, agree, 0.5)[0, 0] > 0.95 > p[0, 0]  # FixMatch's bar, passed with the context's support
    assert pool_evidence(p, disagree, 0.5)[0, 0] < p[0, 0]
    assert torch.equal(pool_evidence(p, agree, 0.0), p)
    # a linear mixture never exceeds the larger maximum: with these numbers it stays below the bar
    assert (0.5 * p + 0.5 * agree).max() < 0.95
    by_hand = p * agree.sqrt() / (p * agree.sqrt()).sum()
    assert torch.allclose(pool_evidence(p, agree, 0.5), by_hand)


def test_smoothing_bounds_how_far_a_unanimous_one_hot_vote_moves_the_prediction():
    p = torch.tensor([[0.60, 0.27] + [0.13 / 5] * 5])
    vote = F.one_hot(torch.tensor([1]), 7).float()  # every neighbour a labeled image of class 1
    unsmoothed = pool_evidence(p, vote, 0.3)
    assert unsmoothed.argmax(1).item() == 1 and unsmoothed.max() > 0.95  # the vote alone passes FixMatch's bar
    for smoothing in (0.05, 0.1, 0.3):
        q = pool_evidence(p, vote, 0.3, smoothing)
        assert q.argmax(1).item() == 1 and q.max() < 0.95  # the class follows the vote, the confidence does not
        bound = 0.3 * math.log(1 + 7 * (1 - smoothing) / smoothing)
        shift = (q.log() - p.log())[0, 1] - (q.log() - p.log())[0, 0]
        assert shift == pytest.approx(bound, rel=1e-5)  # the largest move between two classes
    assert pool_evidence(p, vote, 0.3, 0.1)[0, 1] > pool_evidence(p, vote, 0.3, 0.3)[0, 1]
    with pytest.raises(ValueError, match="context_smoothing"):
        HSC(7, embed_dim=3, context_smoothing=1.0)


def test_hsc_pseudo_label_follows_the_neighbourhood_and_plain_fixmatch_does_not():
    net = _Given(2)
    logits = torch.log(torch.tensor([[0.4, 0.6]]))  # model says class 1 ...
    z = _cluster(E0, 1, 3)  # ... for a sample in the class-0 cluster
    labeled = {"image": _inputs(torch.zeros(2, 2), torch.stack([E0, E1])), "label": torch.tensor([0, 1])}
    unlabeled = {"image_weak": _inputs(logits, z), "image_strong": _inputs(logits, z), "index": torch.tensor([0])}
    pseudo = {}
    for name, switches in {"hsc": {}, "none": dict(use_neighbourhood=False, use_prototypes=False)}.items():
        hsc = HSC(2, embed_dim=3, bank_size=64, k=8, alpha=0.5, threshold=0.0, rampup_fraction=0.0, **switches)
        hsc.setup(net, total_steps=10, num_unlabeled=1)
        hsc.bank.load_state_dict(_two_cluster_bank().state_dict())
        out = hsc.train_step(net, labeled, unlabeled, step=0)
        pseudo[name] = out.pseudo_label.item()
        assert torch.isfinite(out.loss)
    assert pseudo == {"hsc": 0, "none": 1}


def test_before_the_calibration_starts_the_pseudo_label_is_the_model_s_own():
    net = _Given(2)
    logits = torch.log(torch.tensor([[0.4, 0.6]]))  # the model says class 1 for a sample of the class-0 cluster
    z = _cluster(E0, 1, 3)
    labeled = {"image": _inputs(torch.zeros(2, 2), torch.stack([E0, E1])), "label": torch.tensor([0, 1])}
    unlabeled = {"image_weak": _inputs(logits, z), "image_strong": _inputs(logits, z), "index": torch.tensor([0])}
    hsc = HSC(2, embed_dim=3, bank_size=64, k=8, alpha=0.5, threshold=0.0, rampup_fraction=0.0, calibration_start=0.5)
    hsc.setup(net, total_steps=10, num_unlabeled=1)
    hsc.bank.load_state_dict(_two_cluster_bank().state_dict())
    hsc.prototypes.update(torch.stack([E0, E1]), torch.tensor([0, 1]), torch.ones(2))  # both classes have one
    early = hsc.train_step(net, labeled, unlabeled, step=4)
    assert early.logs["calibration_ramp"] == 0.0 and early.pseudo_label.item() == 1  # uncalibrated
    terms = early.terms
    assert terms["loss_prototype"] > 0 and terms["loss_consistency"] > 0  # computed, but weighted 0 until the start
    unramped = terms["loss_sup"] + terms["loss_unsup"] + hsc.lambda_s * terms["loss_prototype_labeled"]
    assert torch.isclose(early.loss.detach(), unramped)
    hsc.bank.load_state_dict(_two_cluster_bank().state_dict())  # the same context as before the first step
    late = hsc.train_step(net, labeled, unlabeled, step=5)
    assert late.logs["calibration_ramp"] == 1.0 and late.pseudo_label.item() == 0  # the neighbours' class


# ---------------------------------------------------------------- prototypes
def test_prototypes_follow_the_momentum_update():
    protos = ClassPrototypes(num_classes=3, dim=2, momentum=0.9)
    assert not protos.seen.any()
    protos.update(torch.tensor([[2.0, 0.0], [0.0, 5.0], [1.0, 1.0]]), torch.tensor([0, 1, 1]))
    # first sight: the normalised mean of the normalised members
    assert torch.allclose(protos.prototypes[0], torch.tensor([1.0, 0.0]))
    mean1 = (torch.tensor([0.0, 1.0]) + F.normalize(torch.tensor([1.0, 1.0]), dim=0)) / 2
    assert torch.allclose(protos.prototypes[1], F.normalize(mean1, dim=0))
    assert protos.seen.tolist() == [True, True, False]
    # second update of class 0 only, with a zero-weight row of class 2 that must not count
    before = protos.prototypes.clone()
    protos.update(torch.tensor([[0.0, 1.0], [3.0, 3.0]]), torch.tensor([0, 2]), torch.tensor([1.0, 0.0]))
    expected = F.normalize(0.9 * before[0] + 0.1 * torch.tensor([0.0, 1.0]), dim=0)
    assert torch.allclose(protos.prototypes[0], expected)
    assert torch.equal(protos.prototypes[1], before[1])
    assert protos.seen.tolist() == [True, True, False]


def test_prototype_distribution_covers_the_seen_classes_only():
    protos = ClassPrototypes(num_classes=3, dim=2)
    uniform = protos.assign(torch.tensor([[1.0, 0.0]]), temperature=0.1)
    assert torch.allclose(uniform, torch.full((1, 3), 1 / 3))
    protos.update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]))
    a = protos.assign(torch.tensor([[1.0, 0.1]], requires_grad=True), temperature=0.1)
    assert a[0, 2] == 0 and a[0, 0] > 0.9 and a.requires_grad


# ---------------------------------------------------------------- compactness and losses
@pytest.mark.parametrize("power", [0.5, 1.0, 2.0])
def test_compactness_weight_is_monotone(power):
    kappa = torch.linspace(-1, 1, 201)
    w = compactness_weight(kappa, power)
    assert torch.all(w[1:] >= w[:-1])
    assert w[0] == 0 and w[-1] == 1
    inside = (kappa > 0) & (kappa < 1)
    assert torch.all(w[inside][1:] > w[inside][:-1])  # strictly where the neighbourhood is closer than orthogonal


def test_prototype_alignment_loss_by_hand():
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    loss = prototype_alignment_loss(features, torch.tensor([0, 0, 1]), torch.tensor([1.0, 1.0, 0.0]), prototypes)
    # class 0: centroid of [1, 0] and [0, 1] is [0.5, 0.5], cosine to [1, 0] is 1/sqrt(2); class 1 has no weight
    assert loss.item() == pytest.approx(1 - 2**-0.5)
    loss.backward()
    assert features.grad[2].abs().sum() == 0
    zero = prototype_alignment_loss(features, torch.tensor([0, 0, 1]), torch.zeros(3), prototypes)
    assert zero.item() == 0 and zero.requires_grad


def test_weighted_soft_cross_entropy_by_hand():
    target = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    probs = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
    loss = weighted_soft_cross_entropy(target, probs, torch.tensor([1.0, 0.5]))
    expected = (-torch.log(torch.tensor(0.5)) + 0.5 * -(0.5 * torch.log(torch.tensor(0.25 * 0.75)))) / 2
    assert loss.item() == pytest.approx(expected.item())


# ---------------------------------------------------------------- the algorithm
def test_hsc_trains_every_term_and_resumes_exactly():
    torch.manual_seed(0)
    new_network = partial(Classifier, 3, in_channels=3, backbone="resnet10", return_dict=True, embed_dim=8)
    new_hsc = partial(HSC, 3, embed_dim=8, bank_size=32, k=4, threshold=0.0, rampup_fraction=0.0)
    net = new_network()
    hsc = new_hsc()
    hsc.setup(net, total_steps=10, num_unlabeled=6)
    train_steps(hsc, net, range(3))
    out = hsc.train_step(net, *three_class_batches(3), 3)
    assert {"loss_sup", "loss_unsup", "loss_prototype", "loss_consistency"} <= set(out.terms)
    assert {"neighbour_agreement", "compactness", "mask_rate", "calibration_changed"} <= set(out.logs)
    net.zero_grad()
    out.loss.backward()
    assert net.projection.net[0].weight.grad.abs().sum() > 0  # the embedding head is trained
    assert len(hsc.bank) == 32  # 4 steps x (4 labeled + 6 unlabeled), a full ring

    # a checkpoint of the algorithm's state (and the network's) continues as an uninterrupted run does
    resumed = check_resumes_exactly(hsc, net, new_hsc, new_network, range(4, 6))
    assert torch.equal(resumed.prototypes.prototypes, hsc.prototypes.prototypes)
    assert torch.equal(resumed.bank.features, hsc.bank.features)


@pytest.mark.parametrize(
    ("switch", "absent"),
    [
        ("use_neighbourhood", {"neighbour_agreement"}),
        ("use_prototypes", {"loss_prototype"}),
        ("use_consistency", {"loss_consistency"}),
    ],
)
def test_each_component_switches_off(switch, absent):
    torch.manual_seed(0)
    net = Classifier(3, in_channels=3, backbone="resnet10", return_dict=True, embed_dim=8)
    hsc = HSC(3, embed_dim=8, bank_size=32, k=4, threshold=0.0, rampup_fraction=0.0, **{switch: False})
    hsc.setup(net, total_steps=10, num_unlabeled=6)
    train_steps(hsc, net, range(2))
    out = hsc.train_step(net, *three_class_batches(2), 2)
    present = set(out.terms) | set(out.logs)
    assert not absent & present
    assert {"loss_sup", "loss_unsup"} <= present


def test_hsc_refuses_a_network_without_embeddings():
    hsc = HSC(3, embed_dim=4)
    net = Classifier(3, in_channels=3, backbone="resnet10", return_dict=False)
    with pytest.raises(KeyError, match="embedding"):
        hsc.train_step(net, *three_class_batches(0), 0)
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        hsc.train_step(
            Classifier(3, in_channels=3, backbone="resnet10", return_dict=True, embed_dim=8), *three_class_batches(0), 0
        )


# ---------------------------------------------------------------- two ranks (gloo, CPU)
_WORKER = r"""
import json, sys
import torch, torch.distributed as dist
from monai_ssl_ext.algorithms import ClassPrototypes, FeatureMemoryBank

rank, out = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[3], rank=rank, world_size=2)
bank = FeatureMemoryBank(size=6, dim=2, num_classes=2)
protos = ClassPrototypes(num_classes=2, dim=2, momentum=0.5)
# each rank sees other rows: rank 0 two of class 0, rank 1 two of class 1
rows = torch.tensor([[1.0, 0.0], [1.0, 0.2]]) if rank == 0 else torch.tensor([[0.0, 1.0], [0.2, 1.0]])
labels = torch.tensor([0, 0]) if rank == 0 else torch.tensor([1, 1])
for step in range(2):
    bank.enqueue(rows + step, torch.nn.functional.one_hot(labels, 2).float())
    protos.update(rows + step, labels)
json.dump({"features": bank.features.tolist(), "probs": bank.probs.tolist(), "pointer": int(bank.pointer),
           "prototypes": protos.prototypes.tolist(), "seen": protos.seen.tolist()},
          open(out + f"/rank{rank}.json", "w"))
dist.destroy_process_group()
"""


@pytest.mark.slow  # two fresh interpreters importing torch
def test_two_ranks_hold_the_same_bank_and_prototypes(tmp_path):
    results = run_two_ranks(_WORKER, tmp_path)
    assert results[0] == results[1]
    # what one process would hold after seeing both ranks' rows, rank 0's first
    bank = FeatureMemoryBank(size=6, dim=2, num_classes=2)
    protos = ClassPrototypes(num_classes=2, dim=2, momentum=0.5)
    r0, r1 = torch.tensor([[1.0, 0.0], [1.0, 0.2]]), torch.tensor([[0.0, 1.0], [0.2, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    for step in range(2):
        rows = torch.cat([r0 + step, r1 + step])
        bank.enqueue(rows, F.one_hot(labels, 2).float())
        protos.update(rows, labels)
    assert torch.allclose(torch.tensor(results[0]["features"]), bank.features)
    assert torch.equal(torch.tensor(results[0]["probs"]), bank.probs)
    assert results[0]["pointer"] == int(bank.pointer) == 2
    assert torch.allclose(torch.tensor(results[0]["prototypes"]), protos.prototypes)
    assert results[0]["seen"] == [True, True]


# ---------------------------------------------------------------- labeled prototype classification
class _Linear(nn.Module):
    """Logits and a 2-d embedding, both linear in a flat input: ``embedding = W x`` starts nearly one line."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Linear(2, 2, bias=False)
        self.embed = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.logits.weight.zero_()
            # both inputs map close to (1, 0): the two classes' embeddings start at cosine 0.995
            self.embed.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.1]]))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = x.flatten(1)
        return {"class": self.logits(x), "embedding": self.embed(x)}


def _two_class_batches() -> tuple[dict, dict]:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).repeat(2, 1)[:, :, None, None]
    labeled = {"image": x, "label": torch.tensor([0, 1, 0, 1])}
    unlabeled = {"image_weak": x.clone(), "image_strong": x.clone(), "index": torch.arange(4)}
    return labeled, unlabeled


def _prototype_cosine_after_training(lambda_s: float) -> float:
    """Cosine between the two prototypes after 60 steps in which no pseudo label is accepted (frozen, uniform
    logits) and the consistency term is off: what the embedding learns then comes from ``L_S`` alone."""
    net = _Linear()
    net.logits.weight.requires_grad_(False)
    hsc = HSC(2, embed_dim=2, bank_size=16, k=2, rampup_fraction=0.0, lambda_s=lambda_s, use_consistency=False)
    hsc.setup(net, total_steps=60, num_unlabeled=4)
    opt = torch.optim.SGD(net.embed.parameters(), lr=0.5)
    for step in range(60):
        out = hsc.train_step(net, *_two_class_batches(), step)
        assert out.logs["mask_rate"] == 0.0
        opt.zero_grad()
        if out.loss.requires_grad:
            out.loss.backward()
        opt.step()
    c = hsc.prototypes.prototypes
    return float(F.cosine_similarity(c[0], c[1], dim=0))


def test_labeled_prototype_term_separates_the_prototypes_the_other_terms_leave_together():
    # the collapse seen on HAM10000: while no pseudo label is accepted, prototypes that start together stay
    # together without L_S, so the prototype distribution stays near uniform and a 0.95 threshold on the
    # calibrated distribution keeps accepting nothing
    assert _prototype_cosine_after_training(0.0) > 0.99
    assert _prototype_cosine_after_training(1.0) < 0.5


def test_labeled_prototype_term_by_hand():
    net = _Given(2)
    hsc = HSC(2, embed_dim=2, bank_size=16, k=2, rampup_fraction=0.0, use_neighbourhood=False, use_consistency=False)
    hsc.setup(net, total_steps=10, num_unlabeled=2)
    hsc.prototypes.update(torch.stack([E0[:2], E1[:2]]), torch.tensor([0, 1]))  # prototypes (1, 0) and (0, 1)
    z = torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, 1.0]])
    labeled = {"image": _inputs(torch.zeros(3, 2), z), "label": torch.tensor([0, 0, 1])}
    weak, strong = _inputs(torch.zeros(2, 2), z[:2]), _inputs(torch.zeros(2, 2), z[:2])
    unlabeled = {"image_weak": weak, "image_strong": strong, "index": torch.arange(2)}
    out = hsc.train_step(net, labeled, unlabeled, 0)
    expected = F.cross_entropy(F.normalize(z, dim=1) @ torch.eye(2) / 0.1, labeled["label"])
    assert out.terms["loss_prototype_labeled"].item() == pytest.approx(expected.item(), rel=1e-5)
    off = HSC(2, embed_dim=2, rampup_fraction=0.0, lambda_s=0.0, use_neighbourhood=False, use_consistency=False)
    off.setup(net, total_steps=10, num_unlabeled=2)
    off.prototypes.update(torch.stack([E0[:2], E1[:2]]), torch.tensor([0, 1]))
    assert "loss_prototype_labeled" not in off.train_step(net, labeled, unlabeled, 0).terms
