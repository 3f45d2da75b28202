"""Hermes: inter-task attention, saliency, the two-branch network and the algorithm's training step."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from monai_ssl_ext.algorithms import DualThreshold, FixMatch, Hermes, MeanTeacher, RampUp
from monai_ssl_ext.keys import DataKeys, OutputKeys
from monai_ssl_ext.networks import Classifier, HermesNet
from monai_ssl_ext.networks.attention import (
    ChannelAttention,
    InterTaskAttention,
    SaliencyPooling,
    SpatialAttention,
    lesion_saliency,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 64


def small_net(**kwargs) -> HermesNet:
    torch.manual_seed(0)
    args = {"num_classes": 2, "in_channels": 1, "backbone": "resnet10", "decoder_channels": (32, 16, 16, 8)}
    args.update(kwargs)
    return HermesNet(**args)


def batches(b_l: int = 4, b_u: int = 4, seed: int = 0) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(b_l, 1, SIZE, SIZE)
    mask[:, :, 20:44, 16:40] = 1.0
    labeled = {
        DataKeys.IMAGE: torch.rand(b_l, 1, SIZE, SIZE, generator=g) + mask,
        DataKeys.LABEL: torch.tensor([0, 1] * (b_l // 2)),
        DataKeys.MASK: mask,
    }
    weak = torch.rand(b_u, 1, SIZE, SIZE, generator=g)
    unlabeled = {
        DataKeys.IMAGE_WEAK: weak,
        DataKeys.IMAGE_STRONG: weak + 0.1 * torch.randn(weak.shape, generator=g),
        DataKeys.INDEX: torch.arange(b_u),
    }
    return labeled, unlabeled


def accept_all() -> DualThreshold:
    return DualThreshold(use_confidence=False, use_entropy=False)


# ---------------------------------------------------------------- attention and saliency
def test_channel_attention_reweights_classification_features_by_channel():
    torch.manual_seed(0)
    # evaluation mode: the fusion's batch normalisation then applies fixed statistics, so the gate's dependence on
    # each sample's own segmentation features is not diluted by the statistics of a two-sample batch
    att = ChannelAttention(8, reduction=1).eval()  # a wide gate: no chance of every hidden unit being off
    f_cls, f_seg = torch.rand(2, 8, 5, 7), torch.rand(2, 8, 5, 7)
    out = att(f_cls, f_seg)
    assert out.shape == f_cls.shape
    ratio = out / f_cls  # one weight in (0, 1) per sample and channel, the same at every position
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-5)
    assert bool(((ratio > 0) & (ratio < 1)).all())
    # the weights depend on the segmentation features
    assert not torch.allclose(att(f_cls, torch.zeros_like(f_seg)), out)


def test_spatial_attention_reweights_positions_not_channels():
    torch.manual_seed(0)
    att = SpatialAttention(kernel_size=3)
    x = torch.rand(2, 6, 9, 9) + 0.1
    ratio = att(x) / x
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-5)
    with pytest.raises(ValueError, match="odd"):
        SpatialAttention(kernel_size=4)


def test_attention_gates_stay_out_of_saturation_on_features_of_a_pretrained_encoders_scale():
    # features with a standard deviation of 8, as an ImageNet EfficientNet-Lite0's early stages give: the gates are
    # sigmoids of convolutions of them, which must be normalised or nearly every gate is 0 or 1 (no gradient). Without
    # it 79 % of the spatial gates saturated, and on the cpu profile the classifier of the Hermes network could not fit
    # even a fixed batch of 8 BUSI images (cross-entropy 0.81 -> 0.66 in 30 SGD steps; supervised-only stayed at chance)
    torch.manual_seed(0)
    f_cls, f_seg = 8.0 * torch.randn(4, 16, 8, 8), torch.rand(4, 32, 8, 8)
    att = InterTaskAttention(cls_channels=16, seg_channels=32)
    channel_gate = att.channel(f_cls, att.align(f_seg)) / f_cls
    spatial_gate = att.spatial(f_cls) / f_cls
    for gate in (channel_gate, spatial_gate):
        saturated = ((gate < 0.02) | (gate > 0.98)).float().mean().item()
        assert saturated < 0.2


def test_inter_task_attention_aligns_segmentation_features_of_other_shapes():
    torch.manual_seed(0)
    att = InterTaskAttention(cls_channels=16, seg_channels=32)
    out = att(torch.rand(2, 16, 8, 8), torch.rand(2, 32, 16, 16))
    assert out.shape == (2, 16, 8, 8)


def test_lesion_saliency_is_the_foreground_probability():
    logits = torch.tensor([[0.0, 0.0], [0.0, 2.0]]).T.reshape(1, 2, 1, 2)  # pixel 0: 50/50, pixel 1: lesion
    s = lesion_saliency(logits)
    assert s.shape == (1, 1, 1, 2)
    assert s[0, 0, 0, 0] == pytest.approx(0.5)
    assert s[0, 0, 0, 1] == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())


def test_saliency_pooling_counts_lesion_features_twice():
    f = torch.ones(1, 2, 4, 4)
    f[:, 1] = 2.0
    s = torch.zeros(1, 1, 8, 8)
    s[..., :4, :4] = 1.0  # a quarter of the image, a quarter of the feature map after area resizing
    pooled = SaliencyPooling(enabled=True)(f, s)
    assert torch.allclose(pooled, torch.tensor([[1.25, 2.5]]))
    assert torch.allclose(SaliencyPooling(enabled=False)(f, s), torch.tensor([[1.0, 2.0]]))
    assert torch.allclose(SaliencyPooling(enabled=True)(f, torch.zeros_like(s)), torch.tensor([[1.0, 2.0]]))


# ---------------------------------------------------------------- the network
def test_hermes_net_outputs_in_training_mode():
    net = small_net()
    out = net(torch.rand(3, 1, SIZE, SIZE))
    assert out[OutputKeys.CLASS].shape == (3, 2)
    assert out[OutputKeys.SEG].shape == (3, 2, SIZE, SIZE)
    assert out[OutputKeys.FEATURES].shape == (3, 512)
    assert out[OutputKeys.EMBEDDING].shape == (3, 128)
    assert out[OutputKeys.PIXEL_EMBEDDING].shape == (3, 64, SIZE // 4, SIZE // 4)
    assert out[OutputKeys.CONSISTENCY_CLS].shape == out[OutputKeys.CONSISTENCY_SEG].shape == (3, 256)


def test_hermes_net_prediction_and_classification_modes_are_scriptable():
    x = torch.rand(2, 1, SIZE, SIZE)
    predict = small_net(training_outputs=False).eval()
    scripted = torch.jit.script(predict)
    with torch.no_grad():
        eager, ts = predict(x), scripted(x)
    assert set(eager) == set(ts) == {OutputKeys.CLASS, OutputKeys.SEG}
    for key in eager:
        assert torch.allclose(eager[key], ts[key], atol=1e-5)
    classify = small_net(return_dict=False).eval()
    with torch.no_grad():
        logits = torch.jit.script(classify)(x)
    assert logits.shape == (2, 2)


def _grad_norm(module: nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


@pytest.mark.parametrize(
    ("attention", "saliency", "cls_reaches_seg"),
    [(True, True, True), (True, False, True), (False, True, True), (False, False, False)],
)
def test_shared_gradients_let_the_classification_loss_reach_the_segmenter_through_the_couplings(
    attention, saliency, cls_reaches_seg
):
    net = small_net(attention=attention, saliency=saliency, separate_task_gradients=False)
    out = net(torch.rand(2, 1, SIZE, SIZE))
    nn.functional.cross_entropy(out[OutputKeys.CLASS], torch.tensor([0, 1])).backward()
    assert _grad_norm(net.cls_encoder) > 0
    assert (_grad_norm(net.seg_encoder) > 0) == cls_reaches_seg
    assert (_grad_norm(net.attention) > 0) == attention


def _branch_grad(net: HermesNet, branch: str) -> float:
    return _grad_norm(net.branches()[branch])


def test_separate_task_gradients_keep_each_loss_in_its_own_branch():
    """The authors' routing: classification losses leave the segmenter's gradients at zero, segmentation and
    consistency losses the classifier's, though attention and saliency still couple the forward pass."""
    net = small_net()
    assert net.separate_task_gradients
    x = torch.rand(2, 1, SIZE, SIZE)
    out = net(x)
    cls_loss = nn.functional.cross_entropy(out[OutputKeys.CLASS], torch.tensor([0, 1]))
    cls_loss = cls_loss + out[OutputKeys.EMBEDDING].square().mean()
    cls_loss.backward()
    assert _branch_grad(net, "classifier") > 0 and _branch_grad(net, "segmenter") == 0
    assert _grad_norm(net.attention) > 0

    net.zero_grad(set_to_none=True)
    out = net(x)
    cos = nn.functional.cosine_similarity(out[OutputKeys.CONSISTENCY_CLS], out[OutputKeys.CONSISTENCY_SEG])
    seg_loss = out[OutputKeys.SEG].mean() + out[OutputKeys.PIXEL_EMBEDDING].square().mean() + (1 - cos).mean()
    seg_loss.backward()
    assert _branch_grad(net, "segmenter") > 0 and _branch_grad(net, "classifier") == 0

    # the segmenter still shapes the classifier's forward pass
    with torch.no_grad():
        before = net(x)[OutputKeys.CLASS]
        for p in net.decoder.parameters():
            p.mul_(1.5)
        after = net(x)[OutputKeys.CLASS]
    assert not torch.allclose(before, after)


def test_one_backward_of_the_summed_loss_gives_each_branch_the_gradient_of_its_own_loss():
    """Equivalent to the authors' two backward passes with the segmenter's gradients zeroed in between."""
    net = small_net().train()
    x = torch.rand(4, 1, SIZE, SIZE)

    def losses():
        torch.manual_seed(1)  # the same dropout / batch statistics in each forward
        out = net(x)
        cls = nn.functional.cross_entropy(out[OutputKeys.CLASS], torch.tensor([0, 1, 0, 1]))
        cos = nn.functional.cosine_similarity(out[OutputKeys.CONSISTENCY_CLS], out[OutputKeys.CONSISTENCY_SEG])
        seg = out[OutputKeys.SEG].square().mean() + (1 - cos).mean()
        return cls, seg

    cls, seg = losses()
    (cls + seg).backward()
    summed = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    net.zero_grad(set_to_none=True)
    cls, seg = losses()
    cls.backward(retain_graph=True)
    reference = {n: p.grad.clone() for n, p in net.branches()["classifier"].named_parameters() if p.grad is not None}
    net.zero_grad(set_to_none=True)
    seg.backward()
    reference.update(
        {n: p.grad.clone() for n, p in net.branches()["segmenter"].named_parameters() if p.grad is not None}
    )
    names = dict(net.named_parameters())
    branch_names = {id(p): n for part in net.branches().values() for n, p in part.named_parameters()}
    summed = {branch_names[id(names[n])]: g for n, g in summed.items()}
    assert summed.keys() == reference.keys()
    for name, grad in reference.items():
        assert torch.allclose(summed[name], grad, atol=1e-6), name


def test_branches_hold_every_parameter_exactly_once():
    net = small_net()
    owned = [id(p) for part in net.branches().values() for p in part.parameters()]
    assert len(owned) == len(set(owned))
    assert set(owned) == {id(p) for p in net.parameters()}


# ---------------------------------------------------------------- the algorithm
class _NoSupervision(nn.Module):
    """A supervised loss of zero, so a test sees the gradient of the unlabeled terms alone."""

    def forward(self, outputs, batch):
        return outputs[OutputKeys.CLASS].sum() * 0.0, {}


def _hermes(**kwargs) -> Hermes:
    args = {"num_classes": 2, "selector": accept_all(), "seg_selector": accept_all(), "contrast_warmup": 0.0}
    args.update(kwargs)
    algorithm = Hermes(**args)
    return algorithm


def test_hermes_step_reports_every_term_and_finite_loss():
    net = small_net()
    algorithm = _hermes()
    algorithm.setup(net, total_steps=100)
    labeled, unlabeled = batches()
    out = algorithm.train_step(net, labeled, unlabeled, step=50)
    assert torch.isfinite(out.loss)
    for term in ("loss_unsup_cls", "loss_unsup_seg", "loss_supcon", "loss_pixel_contrast", "loss_consistency"):
        assert float(out.terms[term]) > 0, term
    assert out.pseudo_label.shape == out.pseudo_mask.shape == (4,)
    assert set(out.labeled_outputs) == {OutputKeys.CLASS, OutputKeys.SEG}
    assert out.logs["mask_rate"] == 1.0 and out.logs["mask_rate_seg"] == 1.0
    assert out.logs["consistency_weight"] == pytest.approx(math.exp(-5.0 * (1 - 50 / (100 * 4 / 3)) ** 2))


def test_default_consistency_weight_follows_the_authors_ramp():
    """Theirs: ``sigmoid_rampup(step // 100, 40)`` in a 3000-step run, i.e. 4/3 of the run, towards 1.0."""
    algorithm = Hermes(num_classes=2)
    algorithm.setup(small_net(), total_steps=3000)
    assert algorithm.consistency(0) == pytest.approx(math.exp(-5.0))
    assert algorithm.consistency(2000) == pytest.approx(math.exp(-5.0 * (1 - 20 / 40) ** 2))
    assert algorithm.consistency(3000) == pytest.approx(math.exp(-5.0 / 16))
    assert algorithm.consistency_views == ("strong",)
    assert algorithm.seg_selector.combine == "or" and algorithm.selector.combine == "and"


@pytest.mark.parametrize("views", [("strong",), ("labeled", "weak", "strong")])
def test_consistency_term_aligns_the_lesion_features_of_the_chosen_views(views):
    net = small_net().eval()  # per-sample outputs: the views can be recomputed one by one
    algorithm = _hermes(consistency_views=views)
    algorithm.setup(net, total_steps=100)
    labeled, unlabeled = batches()
    out = algorithm.train_step(net, labeled, unlabeled, step=50)
    images = {"labeled": labeled[DataKeys.IMAGE], "weak": unlabeled[DataKeys.IMAGE_WEAK]}
    images["strong"] = unlabeled[DataKeys.IMAGE_STRONG]
    with torch.no_grad():
        per_view = [net(images[v]) for v in views]
    z_cls = torch.cat([o[OutputKeys.CONSISTENCY_CLS] for o in per_view])
    z_seg = torch.cat([o[OutputKeys.CONSISTENCY_SEG] for o in per_view])
    expected = 1 - nn.functional.cosine_similarity(z_cls, z_seg).mean()
    assert float(out.terms["loss_consistency"]) == pytest.approx(float(expected), abs=1e-5)


def test_unknown_consistency_view_is_refused():
    with pytest.raises(ValueError, match="consistency_views"):
        Hermes(num_classes=2, consistency_views=("teacher",))


@pytest.mark.parametrize(
    "only",
    ["use_pseudo_labels", "use_supcon", "use_pixel_contrast", "use_consistency"],
)
def test_each_unlabeled_term_alone_changes_the_weights(only):
    switches = {name: name == only for name in ("use_pseudo_labels", "use_supcon", "use_pixel_contrast")}
    switches["use_consistency"] = only == "use_consistency"
    consistency = RampUp(max_value=1.0, length=0, shape="constant")
    algorithm = _hermes(supervised_loss=_NoSupervision(), consistency=consistency, **switches)
    net = small_net()
    algorithm.setup(net, total_steps=10)
    labeled, unlabeled = batches()
    out = algorithm.train_step(net, labeled, unlabeled, step=5)
    assert float(out.loss) > 0
    out.loss.backward()
    assert _grad_norm(net) > 0
    before = [p.detach().clone() for p in net.parameters()]
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    assert any(not torch.equal(b, p) for b, p in zip(before, net.parameters(), strict=True))


def test_contrastive_terms_wait_for_the_warm_up():
    net = small_net()
    algorithm = _hermes(contrast_warmup=0.5)
    algorithm.setup(net, total_steps=100)
    labeled, unlabeled = batches()
    early = algorithm.train_step(net, labeled, unlabeled, step=10)
    assert float(early.terms["loss_supcon"]) == 0.0 and float(early.terms["loss_pixel_contrast"]) == 0.0
    late = algorithm.train_step(net, labeled, unlabeled, step=60)
    assert float(late.terms["loss_supcon"]) > 0.0 and float(late.terms["loss_pixel_contrast"]) > 0.0


def test_switched_off_terms_are_zero():
    net = small_net()
    algorithm = _hermes(use_pseudo_labels=False, use_supcon=False, use_pixel_contrast=False, use_consistency=False)
    algorithm.setup(net, total_steps=10)
    labeled, unlabeled = batches()
    out = algorithm.train_step(net, labeled, unlabeled, step=5)
    assert all(float(out.terms[t]) == 0.0 for t in ("loss_unsup_cls", "loss_unsup_seg", "loss_supcon"))
    assert float(out.loss) == pytest.approx(float(out.terms["loss_sup"]))
    assert "use_supcon=False" in repr(algorithm)


def test_dual_threshold_rejections_reach_the_step_logs():
    net = small_net()
    algorithm = Hermes(num_classes=2)  # the paper's filter: a random network is not confident enough
    algorithm.setup(net, total_steps=100)
    labeled, unlabeled = batches()
    out = algorithm.train_step(net, labeled, unlabeled, step=0)
    assert 0.0 <= out.logs["mask_rate"] < 1.0
    expected = (0.75 + 0.25 * math.exp(-5.0)) * math.log(2)  # sigmoid_rampup(0) = exp(-5)
    assert out.logs["entropy_threshold"] == pytest.approx(expected, rel=1e-6)
    assert "threshold_0" in out.logs and "threshold_1" in out.logs


def test_hermes_needs_a_segmentation_output_and_unlabeled_data():
    algorithm = _hermes()
    classifier = Classifier(num_classes=2, in_channels=1, depth=10, return_dict=True)
    algorithm.setup(classifier, total_steps=10)
    labeled, unlabeled = batches()
    with pytest.raises(ValueError, match="class and segmentation outputs"):
        algorithm.train_step(classifier, labeled, unlabeled, step=0)
    with pytest.raises(ValueError, match="unlabeled batch"):
        algorithm.train_step(small_net(), labeled, None, step=0)
    with pytest.raises(ValueError, match="contrast_warmup"):
        Hermes(num_classes=2, contrast_warmup=1.5)


@pytest.mark.parametrize("baseline", [FixMatch, MeanTeacher])
def test_baselines_train_the_same_two_branch_network(baseline):
    net = small_net()
    algorithm = baseline(num_classes=2)
    algorithm.setup(net, total_steps=10, num_unlabeled=4)
    labeled, unlabeled = batches()
    out = algorithm.train_step(net, labeled, unlabeled, step=5)
    assert torch.isfinite(out.loss)
    assert "loss_sup_seg" in out.terms  # the labeled masks train the segmenter of the shared network
