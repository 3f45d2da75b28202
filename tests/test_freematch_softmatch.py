"""FreeMatch's self-adaptive thresholds and fairness loss, SoftMatch's truncated Gaussian weights and uniform
alignment: hand-computed values, a training step on a small classifier, exact resume from ``state_dict``."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import monai_ssl_ext.algorithms as algorithms
from monai_ssl_ext.algorithms import (
    FixMatch,
    FreeMatch,
    FreeMatchThreshold,
    SoftMatch,
    SoftMatchWeighting,
    freematch_fairness_loss,
)
from monai_ssl_ext.keys import DataKeys
from monai_ssl_ext.networks import Classifier

pytestmark = pytest.mark.usefixtures("one_thread")

# four weak-view predictions over three classes: argmax 0, 1, 0, 2; confidences 0.7, 0.6, 0.45, 0.6
Q = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.45, 0.35, 0.2], [0.2, 0.2, 0.6]])


def _freematch_by_hand(m: float = 0.5):
    """tau, p~, h after one EMA step from 1/3 on Q, the class thresholds and the mask, written out."""
    tau = m / 3 + (1 - m) * (0.7 + 0.6 + 0.45 + 0.6) / 4  # 0.4604
    mean_prob = [(0.7 + 0.1 + 0.45 + 0.2) / 4, (0.2 + 0.6 + 0.35 + 0.2) / 4, (0.1 + 0.3 + 0.2 + 0.6) / 4]
    p_model = [m / 3 + (1 - m) * v for v in mean_prob]  # 0.3479, 0.3354, 0.3167
    hist = [m / 3 + (1 - m) * v for v in (2 / 4, 1 / 4, 1 / 4)]
    thresholds = [v / max(p_model) * tau for v in p_model]  # 0.4604, 0.4439, 0.4191
    mask = [float(c >= thresholds[k]) for c, k in zip((0.7, 0.6, 0.45, 0.6), (0, 1, 0, 2), strict=True)]
    return tau, p_model, hist, thresholds, mask


# ---------------------------------------------------------------- FreeMatch
def test_freematch_starts_at_one_over_c():
    sat = FreeMatchThreshold(3)
    assert float(sat.global_threshold) == pytest.approx(1 / 3)
    torch.testing.assert_close(sat.thresholds(), torch.full((3,), 1 / 3))
    torch.testing.assert_close(sat.label_hist, torch.full((3,), 1 / 3))


def test_freematch_thresholds_and_mask_after_one_update():
    tau, p_model, hist, thresholds, mask = _freematch_by_hand()
    assert mask == [1.0, 1.0, 0.0, 1.0]  # the third sample misses the bar of its class (0.45 < 0.4604)
    sat = FreeMatchThreshold(3, momentum=0.5)
    pseudo, got_mask = sat(Q)
    assert pseudo.tolist() == [0, 1, 0, 2]
    assert got_mask.dtype == Q.dtype and got_mask.tolist() == mask
    assert float(sat.global_threshold) == pytest.approx(tau, abs=1e-6)
    torch.testing.assert_close(sat.p_model, torch.tensor(p_model))
    torch.testing.assert_close(sat.label_hist, torch.tensor(hist))
    # MaxNorm: the most predicted class keeps the global threshold, the others scale down with p~
    torch.testing.assert_close(sat.thresholds(), torch.tensor(thresholds))
    assert float(sat.thresholds()[0]) == pytest.approx(tau, abs=1e-6)


def test_freematch_default_momentum_moves_the_state_by_one_thousandth():
    sat = FreeMatchThreshold(3)
    sat(Q)
    assert float(sat.global_threshold) == pytest.approx(0.999 / 3 + 0.001 * 2.35 / 4, abs=1e-7)


def test_freematch_fairness_loss_by_hand():
    p_model = torch.tensor([0.4, 0.35, 0.25])
    label_hist = torch.tensor([0.5, 0.25, 0.25])
    # strong-view predictions; the third sample is masked out
    probs_s = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.5, 0.2, 0.3]])
    logits_s = probs_s.log().requires_grad_(True)
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0])
    # masked samples predict 0, 1, 0: h_bar = (2/3, 1/3, 0), so class 2 gets weight 0 (1/0 -> 0)
    mean_s = [(0.6 + 0.2 + 0.5) / 3, (0.3 + 0.7 + 0.2) / 3, (0.1 + 0.1 + 0.3) / 3]
    mod_s = [mean_s[0] / (2 / 3), mean_s[1] / (1 / 3), 0.0]
    mod_s = [v / sum(mod_s) for v in mod_s]
    target = [0.4 / 0.5, 0.35 / 0.25, 0.25 / 0.25]
    target = [v / sum(target) for v in target]
    expected = sum(t * math.log(s + 1e-12) for t, s in zip(target, mod_s, strict=True))
    loss = freematch_fairness_loss(logits_s, mask, p_model, label_hist)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.equal(logits_s.grad[2], torch.zeros(3))  # the masked-out sample gets no gradient
    assert logits_s.grad[[0, 1, 3]].abs().sum() > 0
    # no masked sample: a graph-connected zero
    zero = freematch_fairness_loss(logits_s, torch.zeros(4), p_model, label_hist)
    assert zero.item() == 0.0 and zero.requires_grad


def test_freematch_rejects_pixel_maps_and_wrong_class_count():
    with pytest.raises(ValueError, match="image-level"):
        FreeMatchThreshold(2)(torch.rand(2, 2, 4, 4).softmax(dim=1))
    with pytest.raises(ValueError, match="image-level"):
        FreeMatchThreshold(2)(Q)


# ---------------------------------------------------------------- SoftMatch
# two-class predictions: confidences 0.9, 0.6, 0.7, 0.8 (mean 0.75, unbiased variance 0.05 / 3)
P = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2]])


def test_softmatch_weights_are_one_above_mu_and_gaussian_below():
    sel = SoftMatchWeighting(2, n_sigma=1.0)
    sel.mu.fill_(0.7)
    sel.sigma2.fill_(0.01)
    conf = torch.tensor([0.9, 0.7, 0.6, 0.5])
    expected = [1.0, 1.0, math.exp(-(0.1**2) / (2 * 0.01)), math.exp(-(0.2**2) / (2 * 0.01))]
    torch.testing.assert_close(sel.weights(conf), torch.tensor(expected))
    # n_sigma = 2 (the default of the official code) divides the variance by 4
    sel2 = SoftMatchWeighting(2)
    sel2.mu.fill_(0.7)
    sel2.sigma2.fill_(0.01)
    expected2 = [1.0, 1.0, math.exp(-(0.1**2) / (2 * 0.01 / 4)), math.exp(-(0.2**2) / (2 * 0.01 / 4))]
    torch.testing.assert_close(sel2.weights(conf), torch.tensor(expected2))


def test_softmatch_ema_updates_of_mu_sigma_and_p_model():
    sel = SoftMatchWeighting(2, momentum=0.5, n_sigma=1.0, dist_align=False)
    assert float(sel.mu) == pytest.approx(0.5) and float(sel.sigma2) == 1.0
    pseudo, weights = sel(P)
    mu = 0.5 * 0.5 + 0.5 * 0.75
    var = ((0.9 - 0.75) ** 2 + (0.6 - 0.75) ** 2 + (0.7 - 0.75) ** 2 + (0.8 - 0.75) ** 2) / 3
    sigma2 = 0.5 * 1.0 + 0.5 * var
    assert float(sel.mu) == pytest.approx(mu, abs=1e-6)
    assert float(sel.sigma2) == pytest.approx(sigma2, abs=1e-6)
    torch.testing.assert_close(sel.p_model, torch.tensor([0.25 + 0.5 * 2.6 / 4, 0.25 + 0.5 * 1.4 / 4]))
    assert pseudo.tolist() == [0, 0, 1, 0]
    # the weights use the updated mu and sigma2: only the 0.6 sample (below mu = 0.625) is down-weighted
    expected = [1.0, math.exp(-((0.6 - mu) ** 2) / (2 * sigma2)), 1.0, 1.0]
    torch.testing.assert_close(weights, torch.tensor(expected))
    assert weights.dtype == P.dtype


def test_softmatch_variance_needs_two_samples():
    sel = SoftMatchWeighting(2, momentum=0.5)
    sel(P[:1])
    assert float(sel.sigma2) == 1.0
    assert float(sel.mu) == pytest.approx(0.25 + 0.45)


def test_uniform_alignment_makes_the_mean_prediction_uniform():
    sel = SoftMatchWeighting(3)
    skewed = torch.tensor([0.6, 0.3, 0.1])
    sel.p_model.copy_(skewed)
    # a batch that predicts exactly p_model everywhere is aligned to the uniform distribution
    aligned = sel.align(skewed.expand(4, 3))
    torch.testing.assert_close(aligned, torch.full((4, 3), 1 / 3))
    # hand value: p * (1/3) / p_model, renormalised
    row = torch.tensor([[0.8, 0.15, 0.05]])
    ratio = [0.8 / 0.6, 0.15 / 0.3, 0.05 / 0.1]
    torch.testing.assert_close(sel.align(row), torch.tensor([[r / sum(ratio) for r in ratio]]))
    # a varied batch with mean p_model: the aligned mean is much closer to uniform
    batch = torch.tensor([[0.8, 0.15, 0.05], [0.4, 0.45, 0.15]])
    torch.testing.assert_close(batch.mean(dim=0), skewed)
    before = (batch.mean(dim=0) - 1 / 3).abs().max()
    after = (sel.align(batch).mean(dim=0) - 1 / 3).abs().max()
    assert after < 0.5 * before
    torch.testing.assert_close(sel.align(batch).sum(dim=1), torch.ones(2))


def test_softmatch_alignment_changes_weights_not_pseudo_labels():
    sel = SoftMatchWeighting(2, momentum=0.0, n_sigma=1.0)  # momentum 0: the state is the batch's
    probs = torch.tensor([[0.95, 0.05], [0.9, 0.1], [0.85, 0.15], [0.55, 0.45]])
    pseudo, weights = sel(probs)
    assert pseudo.tolist() == [0, 0, 0, 0]  # the argmax of the unaligned prediction
    p_model = probs.mean(dim=0)
    torch.testing.assert_close(sel.p_model, p_model)
    aligned = probs * (0.5 / p_model)
    aligned = aligned / aligned.sum(dim=1, keepdim=True)
    assert aligned[3].argmax().item() == 1  # alignment would flip the last sample's class
    conf = aligned.max(dim=1).values
    mu, var = probs.max(dim=1).values.mean(), probs.max(dim=1).values.var()
    expected = torch.exp(-((conf - mu).clamp(max=0.0) ** 2) / (2 * var))
    torch.testing.assert_close(weights, expected)
    off = SoftMatchWeighting(2, momentum=0.0, n_sigma=1.0, dist_align=False)
    _, plain = off(probs)
    conf_plain = probs.max(dim=1).values
    torch.testing.assert_close(plain, torch.exp(-((conf_plain - mu).clamp(max=0.0) ** 2) / (2 * var)))


# ---------------------------------------------------------------- distributed statistics
def _add_other_rank(module, monkeypatch, selector, other: torch.Tensor) -> None:
    """Make ``module.all_reduce_sum`` add the statistics that another rank holding ``other`` contributes."""
    captured: list[torch.Tensor] = []
    monkeypatch.setattr(module, "all_reduce_sum", lambda t: captured.append(t) or t)
    type(selector)(selector.num_classes).update(other)
    remote = captured[0].clone()
    monkeypatch.setattr(module, "all_reduce_sum", lambda t: t + remote)


@pytest.mark.parametrize("cls", [FreeMatchThreshold, SoftMatchWeighting])
def test_two_rank_statistics_equal_one_rank_on_the_whole_batch(cls, monkeypatch):
    import monai_ssl_ext.algorithms.freematch as freematch_module
    import monai_ssl_ext.algorithms.softmatch as softmatch_module

    module = freematch_module if cls is FreeMatchThreshold else softmatch_module
    whole = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.45, 0.35, 0.2], [0.2, 0.2, 0.6], [0.3, 0.3, 0.4]])
    single = cls(3, momentum=0.5)
    single.update(whole)
    split = cls(3, momentum=0.5)
    _add_other_rank(module, monkeypatch, split, whole[3:])  # this rank holds 3 samples, the other 2
    split.update(whole[:3])
    for (name, a), (_, b) in zip(single.named_buffers(), split.named_buffers(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


# ---------------------------------------------------------------- algorithms
def _batches(n_l: int = 4, n_u: int = 6, size: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labeled = {DataKeys.IMAGE: torch.rand(n_l, 1, size, size, generator=g), DataKeys.LABEL: torch.arange(n_l) % 2}
    weak = torch.rand(n_u, 1, size, size, generator=g)
    strong = (weak + 0.3 * torch.randn(n_u, 1, size, size, generator=g)).clamp(0, 1)
    unlabeled = {DataKeys.IMAGE_WEAK: weak, DataKeys.IMAGE_STRONG: strong, DataKeys.INDEX: torch.arange(n_u)}
    return labeled, unlabeled


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return Classifier(2, depth=10, return_dict=True).train()


@pytest.mark.parametrize("cls", [FreeMatch, SoftMatch])
def test_train_step_on_a_small_classifier(cls, classifier):
    net = classifier
    net.zero_grad(set_to_none=True)
    algorithm = cls(2)
    algorithm.setup(net, total_steps=10, num_unlabeled=6)
    labeled, unlabeled = _batches()
    out = algorithm.train_step(net, labeled, unlabeled, 0)
    assert torch.isfinite(out.loss) and out.loss.requires_grad
    assert out.terms["loss_unsup"].item() > 0
    out.loss.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    assert out.pseudo_label.shape == (6,) and out.pseudo_mask.shape == (6,)
    assert out.pseudo_label.dtype == torch.long
    assert 0.0 <= out.logs["mask_rate"] <= 1.0
    if cls is FreeMatch:
        assert set(out.pseudo_mask.unique().tolist()) <= {0.0, 1.0}
        assert {"global_threshold", "threshold_mean", "threshold_min"} <= set(out.logs)
        assert math.isfinite(out.terms["loss_fairness"].item())
        assert out.logs["global_threshold"] == pytest.approx(float(algorithm.sat.global_threshold))
    else:
        assert (out.pseudo_mask > 0).all() and (out.pseudo_mask <= 1).all()
        assert {"mu", "sigma", "full_weight_rate"} <= set(out.logs)
        assert out.logs["mu"] == pytest.approx(float(algorithm.weighting.mu))


def test_freematch_fairness_term_reaches_the_network(classifier):
    net = classifier
    labeled, unlabeled = _batches(seed=1)
    grads = []
    for lambda_f in (0.0, 1.0):
        net.zero_grad(set_to_none=True)
        algorithm = FreeMatch(2, lambda_f=lambda_f)
        algorithm.setup(net, total_steps=1)
        out = algorithm.train_step(net, labeled, unlabeled, 0)
        assert out.logs["mask_rate"] > 0  # at 1/C thresholds a two-class prediction passes
        out.loss.backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    assert sum((a - b).abs().sum() for a, b in zip(*grads, strict=True)) > 0


@pytest.mark.parametrize("cls", [FreeMatch, SoftMatch])
def test_segmentation_outputs_use_the_fixed_pixel_threshold(cls):
    class JointTiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.seg = nn.Conv2d(1, 2, 1)
            self.cls = nn.Linear(1, 2)

        def forward(self, x):
            return {"class": self.cls(x.mean(dim=(1, 2, 3))[:, None]), "seg": self.seg(x)}

    torch.manual_seed(0)
    net = JointTiny()
    algorithm = cls(2, seg_threshold=0.0)
    algorithm.setup(net, total_steps=1)
    labeled, unlabeled = _batches(size=8)
    labeled[DataKeys.MASK] = (labeled[DataKeys.IMAGE] > 0.5).float()
    out = algorithm.train_step(net, labeled, unlabeled, 0)
    assert out.logs["mask_rate_seg"] == 1.0
    assert out.terms["loss_unsup_seg"].item() > 0
    assert out.pseudo_label.shape == (6,)
    out.loss.backward()
    assert net.seg.weight.grad is not None and net.cls.weight.grad is not None


@pytest.mark.parametrize("cls", [FreeMatch, SoftMatch])
def test_state_dict_round_trip_resumes_exactly(cls):
    g = torch.Generator().manual_seed(0)
    a = cls(3)
    for _ in range(5):
        a.selector(torch.rand(8, 3, generator=g).softmax(dim=1))
    state = a.state_dict()
    names = ("global_threshold", "p_model", "label_hist") if cls is FreeMatch else ("mu", "sigma2", "p_model")
    for name in names:
        assert f"selector.{name}" in state
    b = cls(3)
    b.load_state_dict(state)
    for (name, x), (_, y) in zip(a.named_buffers(), b.named_buffers(), strict=True):
        assert torch.equal(x, y), name
    nxt = torch.rand(8, 3, generator=g).softmax(dim=1)
    out_a, out_b = a.selector(nxt), b.selector(nxt)
    assert torch.equal(out_a[0], out_b[0]) and torch.equal(out_a[1], out_b[1])
    for (name, x), (_, y) in zip(a.named_buffers(), b.named_buffers(), strict=True):
        assert torch.equal(x, y), name
    # and the state moved away from its initial value
    assert not torch.equal(state[f"selector.{names[0]}"], cls(3).state_dict()[f"selector.{names[0]}"])


def test_exports_defaults_and_find_unused_parameters():
    assert {"FreeMatch", "FreeMatchThreshold", "SoftMatch", "SoftMatchWeighting"} <= set(algorithms.__all__)
    assert FreeMatch.find_unused_parameters is FixMatch.find_unused_parameters is True
    assert SoftMatch.find_unused_parameters is True
    free = FreeMatch(4)
    assert (free.lambda_u, free.lambda_f, free.momentum, free.sat.momentum) == (1.0, 0.01, 0.999, 0.999)
    soft = SoftMatch(4)
    w = soft.weighting
    assert (soft.lambda_u, w.momentum, w.n_sigma, w.dist_align) == (1.0, 0.999, 2.0, True)
    assert free.seg_selector.threshold == soft.seg_selector.threshold == 0.95
    with pytest.raises(ValueError, match="unlabeled batch"):
        free.train_step(nn.Linear(1, 4), *_batches()[:1], None, 0)
