"""DSRPGC and its parts: entropy weights, the meta step, the pseudo-label guided contrast, MedFuseNet."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from conftest import check_resumes_exactly, three_class_batches, train_steps
from torch import nn

from monai_ssl_ext.algorithms import DSRPGC, MetaReweighting, entropy_weights
from monai_ssl_ext.losses import pseudo_label_contrast, softmax_mse
from monai_ssl_ext.networks import MedFuseNet


# ---------------------------------------------------------------- DSR
def test_entropy_weights_are_monotone_in_confidence():
    confidence = torch.linspace(1 / 3, 1.0, 50)
    probs = torch.stack([confidence, (1 - confidence) / 2, (1 - confidence) / 2], dim=1)
    w = entropy_weights(probs)
    assert torch.all(w[1:] > w[:-1])
    assert w[0].item() == pytest.approx(0.0, abs=1e-6) and w[-1].item() == pytest.approx(1.0)
    # H = ln 2 of a two-way tie among three classes: 1 - ln 2 / ln 3
    assert entropy_weights(torch.tensor([[0.5, 0.5, 0.0]])).item() == pytest.approx(1 - math.log(2) / math.log(3))


class _Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.zero_()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"class": self.fc(x)}


def test_meta_step_moves_weight_to_the_sample_that_helps_the_labeled_batch():
    net = _Linear()
    # the labeled meta batch: input e1 is class 0
    x_l, y_l = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    # two unlabeled copies of e1: A's target says class 0 (agrees with the labels), B's says class 1
    x_u = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    target = torch.tensor([[0.9, 0.1], [0.1, 0.9]]).log()

    def unlabeled_loss(forward, w):
        return softmax_mse(forward(x_u)["class"], target, w)

    def meta_loss(forward):
        return F.cross_entropy(forward(x_l)["class"], y_l)

    before = {k: v.clone() for k, v in net.state_dict().items()}
    refined, g = MetaReweighting(lookahead_lr=1.0, step_size=0.25).refine(
        net, torch.tensor([0.5, 0.5]), unlabeled_loss, meta_loss
    )
    assert g[0] < 0 < g[1]
    assert refined.tolist() == pytest.approx([0.75, 0.25])
    # the look-ahead left the network as it was
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert net.fc.weight.grad is None


def test_meta_step_leaves_batch_norm_statistics_alone():
    net = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    stats = net[1].running_mean.clone()
    x = torch.randn(6, 2)
    MetaReweighting().refine(
        net,
        torch.full((6,), 0.5),
        lambda forward, w: (w * forward(x).square().mean(dim=1)).mean(),
        lambda forward: forward(x).mean(),
    )
    assert torch.equal(net[1].running_mean, stats)


# ---------------------------------------------------------------- PGC
def test_pseudo_label_contrast_by_hand():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    loss = pseudo_label_contrast(
        queries, torch.tensor([0, 1]), keys, torch.tensor([0, 1, 1]), torch.tensor([1.0, 0.5]), temperature=0.5
    )
    sim = (F.normalize(queries.detach()) @ keys.T / 0.5).tolist()

    def term(i, positives):
        denominator = math.log(sum(math.exp(s) for s in sim[i]))
        return -sum(sim[i][p] - denominator for p in positives) / len(positives)

    expected = (1.0 * term(0, [0]) + 0.5 * term(1, [1, 2])) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert queries.grad.abs().sum() > 0
    none = pseudo_label_contrast(queries, torch.tensor([2, 2]), keys, torch.tensor([0, 1, 1]))
    assert none.item() == 0 and none.requires_grad


# ---------------------------------------------------------------- MedFuseNet
def test_medfusenet_shapes_and_gradients_reach_both_levels():
    torch.manual_seed(0)
    net = MedFuseNet(5, in_channels=3, backbone="resnet10", channels=32, embed_dim=8, return_dict=True)
    out = net(torch.rand(2, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"class": (2, 5), "features": (2, 32), "embedding": (2, 8)}
    out["class"].sum().backward()
    assert net.fusion.conv_p.weight.grad.abs().sum() > 0  # the low level
    assert net.fusion.conv_q.weight.grad.abs().sum() > 0  # the high level
    # both input maps of the fusion receive a gradient from the fused features
    low = torch.rand(2, 128, 8, 8, requires_grad=True)
    high = torch.rand(2, 512, 2, 2, requires_grad=True)
    grad_low, grad_high = torch.autograd.grad(net.fusion(low, high).sum(), [low, high])
    assert grad_low.abs().sum() > 0 and grad_high.abs().sum() > 0

    plain = MedFuseNet(5, in_channels=3, backbone="resnet10", channels=32, fuse=False, return_dict=True)
    plain(torch.rand(2, 3, 64, 64))["class"].sum().backward()
    assert plain.fusion.conv_p.weight.grad is None  # the ablation has no low-level path


def test_similarity_fusion_is_a_weighted_mean_of_low_level_positions():
    net = MedFuseNet(2, in_channels=3, backbone="resnet10", channels=4)
    fusion = net.fusion
    low, high = torch.rand(1, 128, 8, 8), torch.rand(1, 512, 2, 2)
    fused = fusion(low, high)
    p = fusion.project_low(low).flatten(2)
    q = fusion.project_high(high)
    weighted = fused - q  # P~ at each high-level position
    # each column lies inside the range of P's values (a convex combination of low-level positions)
    assert torch.all(weighted.flatten(2) <= p.max(dim=2, keepdim=True).values + 1e-5)
    assert torch.all(weighted.flatten(2) >= p.min(dim=2, keepdim=True).values - 1e-5)


def test_similarity_fusion_keeps_the_fused_scale_whatever_the_scale_of_its_inputs():
    # an ImageNet encoder's early stages come out ten times larger than its last: without the normalisation of P
    # and Q the low level swamped the fused features and SGD diverged on the dermoscopy bundle's cpu profile
    torch.manual_seed(0)
    fusion = MedFuseNet(2, in_channels=3, backbone="resnet10", channels=16).fusion
    high = torch.randn(4, 512, 2, 2)
    for scale in (1.0, 100.0):
        fused = fusion(scale * torch.randn(4, 128, 8, 8), high)
        assert 0.3 < fused.std().item() < 3.0, scale


@pytest.mark.parametrize("fuse", [True, False])
def test_medfusenet_torchscript_matches_eager(fuse):
    torch.manual_seed(0)
    net = MedFuseNet(3, in_channels=3, backbone="resnet10", channels=16, embed_dim=8, fuse=fuse).eval()
    scripted = torch.jit.script(net)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))
    assert not any(k.startswith("projection") for k in MedFuseNet(3, backbone="resnet10").state_dict())


# ---------------------------------------------------------------- the algorithm
def _network() -> MedFuseNet:
    return MedFuseNet(3, in_channels=3, backbone="resnet10", channels=16, embed_dim=8, return_dict=True)


def test_dsrpgc_trains_every_term_fills_its_queue_and_resumes_exactly():
    torch.manual_seed(0)
    net = _network()
    new_dsrpgc = partial(DSRPGC, 3, embed_dim=8, queue_size=16, meta_interval=2)
    alg = new_dsrpgc()
    alg.setup(net, total_steps=10, num_unlabeled=6)
    train_steps(alg, net, range(2))
    out = alg.train_step(net, *three_class_batches(2), 2)
    assert {"loss_sup", "loss_consistency", "loss_pgc"} <= set(out.terms)
    assert {"entropy_weight_mean", "meta_grad_abs_mean", "weight_mean"} <= set(out.logs)
    # the weights are refined every 2nd step only
    assert "meta_grad_abs_mean" not in alg.train_step(net, *three_class_batches(3), 3).logs
    # the queue is a ring of the teacher's keys with one-hot pseudo labels: 4 steps x 6 keys in 16 slots
    assert len(alg.queue) == 16 and int(alg.queue.pointer) == 24 % 16
    assert torch.all(alg.queue.probs.sum(dim=1) == 1) and set(alg.queue.probs.unique().tolist()) <= {0.0, 1.0}

    resumed = check_resumes_exactly(alg, net, new_dsrpgc, _network, range(4, 6))
    assert torch.equal(resumed.queue.features, alg.queue.features)


def test_each_component_switches_off():
    torch.manual_seed(0)
    net = _network()
    no_dsr = DSRPGC(3, embed_dim=8, use_dsr=False)
    no_dsr.setup(net, total_steps=10, num_unlabeled=6)
    out = no_dsr.train_step(net, *three_class_batches(0), 0)
    assert torch.all(out.pseudo_mask == 1) and "meta_grad_abs_mean" not in out.logs
    no_meta = DSRPGC(3, embed_dim=8, use_meta=False)
    no_meta.setup(net, total_steps=10, num_unlabeled=6)
    out = no_meta.train_step(net, *three_class_batches(0), 0)
    assert out.logs["weight_mean"] == out.logs["entropy_weight_mean"] and "meta_grad_abs_mean" not in out.logs
    # without PGC a network without a projection head trains
    plain = MedFuseNet(3, in_channels=3, backbone="resnet10", channels=16, return_dict=True)
    no_pgc = DSRPGC(3, embed_dim=8, use_pgc=False)
    no_pgc.setup(plain, total_steps=10, num_unlabeled=6)
    out = no_pgc.train_step(plain, *three_class_batches(0), 0)
    assert "loss_pgc" not in out.terms and torch.isfinite(out.loss)
    with_pgc = DSRPGC(3, embed_dim=8)
    with_pgc.setup(plain, total_steps=10, num_unlabeled=6)
    with pytest.raises(KeyError, match="embedding"):
        with_pgc.train_step(plain, *three_class_batches(0), 0)
