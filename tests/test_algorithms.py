"""Baseline algorithms: every unlabeled loss is live (non-zero, and moves the student), teachers follow EMA,
pseudo-label masks follow their thresholds."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from monai_ssl_ext.algorithms import (
    EMATeacher,
    FixedThreshold,
    FixMatch,
    FlexMatch,
    FlexMatchThreshold,
    MeanTeacher,
    RampUp,
    Supervised,
    choose,
    sigmoid_rampup,
)
from monai_ssl_ext.keys import DataKeys
from monai_ssl_ext.losses import masked_cross_entropy, softmax_mse

NUM_CLASSES = 3
ALGORITHMS = {"supervised": Supervised, "mean_teacher": MeanTeacher, "fixmatch": FixMatch, "flexmatch": FlexMatch}


class TinyNet(nn.Module):
    """A 2-layer classifier with batch norm (so EMA buffers matter) on 8x8 single-channel images."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def make_batches(n_l: int = 6, n_u: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labeled = {DataKeys.IMAGE: torch.randn(n_l, 1, 8, 8, generator=g), DataKeys.LABEL: torch.arange(n_l) % NUM_CLASSES}
    weak = torch.randn(n_u, 1, 8, 8, generator=g)
    strong = weak + 0.5 * torch.randn(n_u, 1, 8, 8, generator=g)
    unlabeled = {DataKeys.IMAGE_WEAK: weak, DataKeys.IMAGE_STRONG: strong, DataKeys.INDEX: torch.arange(n_u)}
    return labeled, unlabeled


@pytest.mark.parametrize("name", ["mean_teacher", "fixmatch", "flexmatch"])
def test_unlabeled_loss_is_nonzero_and_changes_student(name):
    torch.manual_seed(0)
    net = TinyNet()
    kwargs = {"num_classes": NUM_CLASSES}
    if name in ("fixmatch", "flexmatch"):
        kwargs["threshold"] = 0.0  # every pseudo label passes: the loss must then be strictly positive
    algorithm = ALGORITHMS[name](**kwargs)
    algorithm.setup(net, total_steps=10, num_unlabeled=8)
    labeled, unlabeled = make_batches()
    out = algorithm.train_step(net, labeled, unlabeled, step=9)
    unsup_key = "loss_consistency" if name == "mean_teacher" else "loss_unsup"
    assert out.terms[unsup_key].item() > 1e-6, f"{name}: unlabeled loss is zero on a batch where it must not be"
    # the gradient of the total loss must differ from that of the supervised part alone
    out.loss.backward()
    grad_total = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    sup, _ = algorithm.supervised_loss(algorithm.forward_views(net, [labeled[DataKeys.IMAGE]])[0], labeled)
    sup.backward()
    grad_sup = [p.grad.clone() for p in net.parameters()]
    difference = sum((a - b).norm() for a, b in zip(grad_total, grad_sup, strict=True))
    assert difference > 1e-6, f"{name}: the unlabeled term does not reach the student's weights"


@pytest.mark.parametrize("name", ["supervised", "mean_teacher", "fixmatch", "flexmatch"])
def test_one_optimizer_step_changes_weights(name):
    torch.manual_seed(1)
    net = TinyNet()
    algorithm = ALGORITHMS[name](num_classes=NUM_CLASSES)
    algorithm.setup(net, total_steps=4, num_unlabeled=8)
    labeled, unlabeled = make_batches()
    before = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    out = algorithm.train_step(net, labeled, unlabeled if algorithm.uses_unlabeled else None, step=3)
    out.loss.backward()
    opt.step()
    algorithm.after_optimizer_step(net, 3)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    assert torch.isfinite(out.loss)


def test_mean_teacher_consistency_uses_two_different_views():
    """The shipped-library bug: consistency between a view and itself is identically zero."""
    torch.manual_seed(0)
    net = TinyNet()
    algorithm = MeanTeacher(NUM_CLASSES, consistency=RampUp(max_value=1.0, length=0))
    algorithm.setup(net, total_steps=1)
    labeled, unlabeled = make_batches()
    same = dict(unlabeled, image_strong=unlabeled[DataKeys.IMAGE_WEAK])
    net.eval()  # no batch-norm difference between teacher and student: only the inputs differ
    algorithm.eval()
    assert algorithm.train_step(net, labeled, same, 0).terms["loss_consistency"].item() == pytest.approx(0.0, abs=1e-10)
    assert algorithm.train_step(net, labeled, unlabeled, 0).terms["loss_consistency"].item() > 1e-6


def test_ema_teacher_follows_exact_formula_and_differs_after_step():
    torch.manual_seed(0)
    student = TinyNet()
    teacher = EMATeacher(student, decay=0.9, warmup=False)
    for t, s in zip(teacher.network.parameters(), student.parameters(), strict=True):
        assert torch.equal(t, s)
    old_teacher = [p.clone() for p in teacher.network.parameters()]
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    labeled, _ = make_batches()
    nn.functional.cross_entropy(student(labeled[DataKeys.IMAGE]), labeled[DataKeys.LABEL]).backward()
    opt.step()
    a = teacher.update(student, step=0)
    assert a == 0.9
    for t, t_old, s in zip(teacher.network.parameters(), old_teacher, student.parameters(), strict=True):
        torch.testing.assert_close(t, 0.9 * t_old + 0.1 * s, rtol=0, atol=1e-7)
    assert any(not torch.equal(t, s) for t, s in zip(teacher.network.parameters(), student.parameters(), strict=True))
    # buffers (batch-norm statistics) are copied, not averaged
    for t, s in zip(teacher.network.buffers(), student.buffers(), strict=True):
        assert torch.equal(t, s)
    assert not any(p.requires_grad for p in teacher.network.parameters())


def test_ema_warmup_decay():
    teacher = EMATeacher(TinyNet(), decay=0.99, warmup=True)
    assert teacher.decay_at(0) == pytest.approx(1 / 10)
    assert teacher.decay_at(8) == pytest.approx(9 / 18)
    assert teacher.decay_at(10_000) == 0.99


def test_mean_teacher_updates_teacher_only_after_optimizer_step():
    torch.manual_seed(0)
    net = TinyNet()
    algorithm = MeanTeacher(NUM_CLASSES, ema_decay=0.5)
    algorithm.setup(net, total_steps=4)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    labeled, unlabeled = make_batches()
    algorithm.train_step(net, labeled, unlabeled, 0).loss.backward()
    opt.step()
    before = [p.clone() for p in algorithm.teacher.network.parameters()]
    algorithm.after_optimizer_step(net, 0)
    assert any(not torch.equal(a, b) for a, b in zip(before, algorithm.teacher.network.parameters(), strict=True))
    assert "teacher.network.fc.weight" in algorithm.state_dict()


def test_sigmoid_rampup_values():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(100, 100) == 1.0
    assert sigmoid_rampup(500, 100) == 1.0
    ramp = RampUp(max_value=4.0, fraction=0.5)
    with pytest.raises(RuntimeError):
        ramp(1)
    ramp.set_total_steps(200)
    assert ramp(100) == pytest.approx(4.0)
    assert ramp(50) == pytest.approx(4.0 * math.exp(-5 * 0.25))


def test_a_ramp_with_a_late_start_is_zero_until_its_start_then_ramps_from_there():
    ramp = RampUp(max_value=2.0, fraction=0.25, start_fraction=0.5)
    with pytest.raises(RuntimeError, match="start is a fraction"):
        ramp(1)
    ramp.set_total_steps(200)
    assert ramp(0) == 0.0 and ramp(99.9) == 0.0
    assert ramp(100) == pytest.approx(2.0 * math.exp(-5))  # the ramp's own first value, at its start
    assert ramp(125) == pytest.approx(2.0 * math.exp(-5 * 0.25))
    assert ramp(150) == ramp(199) == pytest.approx(2.0)
    assert "start_fraction=0.5" in repr(ramp)
    with pytest.raises(ValueError, match="start_fraction"):
        RampUp(start_fraction=1.0)


def test_fixed_threshold_mask_follows_threshold():
    probs = torch.tensor([[0.96, 0.02, 0.02], [0.5, 0.3, 0.2], [0.01, 0.95, 0.04], [0.1, 0.1, 0.8]])
    pseudo, mask = FixedThreshold(0.95)(probs)
    assert pseudo.tolist() == [0, 0, 1, 2]
    assert mask.tolist() == [1.0, 0.0, 1.0, 0.0]
    # pixel-level: (B, C, H, W) probabilities give (B, H, W) labels and masks
    pix = probs.T.reshape(1, 3, 2, 2)
    pseudo_px, mask_px = FixedThreshold(0.95)(pix)
    assert pseudo_px.shape == (1, 2, 2) and mask_px.flatten().tolist() == [1.0, 0.0, 1.0, 0.0]


def test_flexmatch_thresholds_move_with_class_learning_status():
    sel = FlexMatchThreshold(num_classes=2, num_unlabeled=10, threshold=0.9, warmup=False)
    # no confident prediction yet: thresholds are 0 (everything passes), as in the paper's first steps
    assert sel.thresholds().tolist() == [0.0, 0.0]
    confident_0 = torch.tensor([[0.95, 0.05]] * 4)
    sel(confident_0, torch.arange(4))
    # class 0 learnt (beta=1 -> M=1 -> T=tau), class 1 unseen (beta=0 -> T=0)
    torch.testing.assert_close(sel.thresholds(), torch.tensor([0.9, 0.0]))
    sel(torch.tensor([[0.05, 0.95]] * 2), torch.tensor([4, 5]))
    beta1 = 2 / 4
    torch.testing.assert_close(sel.thresholds(), torch.tensor([0.9, 0.9 * beta1 / (2 - beta1)]))
    # a class-1 prediction at 0.5 confidence passes its lowered bar; class 0 at 0.85 does not pass 0.9
    pseudo, mask = sel(torch.tensor([[0.15, 0.85], [0.85, 0.15]]), torch.tensor([6, 7]))
    assert pseudo.tolist() == [1, 0] and mask.tolist() == [1.0, 0.0]


def test_flexmatch_warmup_counts_unused_samples():
    sel = FlexMatchThreshold(num_classes=2, num_unlabeled=10, threshold=0.9, warmup=True)
    sel(torch.tensor([[0.95, 0.05]] * 2), torch.tensor([0, 1]))
    # 2 samples of class 0 learnt, 8 unused: beta_0 = 2 / max(2, 8)
    torch.testing.assert_close(sel.class_status, torch.tensor([0.25, 0.0]))


def test_flexmatch_state_travels_in_state_dict():
    net = TinyNet()
    a = FlexMatch(NUM_CLASSES, threshold=0.0)
    a.setup(net, total_steps=2, num_unlabeled=8)
    labeled, unlabeled = make_batches()
    a.train_step(net, labeled, unlabeled, 0)
    b = FlexMatch(NUM_CLASSES, threshold=0.0)
    b.setup(TinyNet(), total_steps=2, num_unlabeled=8)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.selector.selected_label, b.selector.selected_label)
    assert (a.selector.selected_label >= 0).any()


def test_fixmatch_loss_matches_hand_computation():
    logits_s = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    pseudo = torch.tensor([0, 0, 1])
    mask = torch.tensor([1.0, 0.0, 1.0])
    expected = (math.log(1 + math.exp(-2.0)) + math.log(2.0)) / 3
    assert masked_cross_entropy(logits_s, pseudo, mask).item() == pytest.approx(expected, rel=1e-6)


def test_softmax_mse_hand_computation():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])  # softmax -> [0.75, 0.25]
    assert softmax_mse(s, t).item() == pytest.approx(((0.5 - 0.75) ** 2 + (0.5 - 0.25) ** 2) / 2)


def test_pixel_level_pseudo_labels_for_segmentation_outputs():
    class JointTiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.seg = nn.Conv2d(1, 2, 1)
            self.cls = nn.Linear(1, NUM_CLASSES)

        def forward(self, x):
            return {"class": self.cls(x.mean(dim=(1, 2, 3))[:, None]), "seg": self.seg(x)}

    torch.manual_seed(0)
    net = JointTiny()
    algorithm = FixMatch(NUM_CLASSES, threshold=0.0, seg_threshold=0.0)
    algorithm.setup(net, total_steps=1)
    labeled, unlabeled = make_batches()
    labeled[DataKeys.MASK] = (labeled[DataKeys.IMAGE] > 0).float()
    out = algorithm.train_step(net, labeled, unlabeled, 0)
    assert out.terms["loss_unsup_seg"].item() > 0 and out.terms["loss_sup_seg"].item() > 0
    assert out.logs["mask_rate_seg"] == 1.0


def test_supervised_does_not_use_unlabeled_data():
    assert Supervised.uses_unlabeled is False
    net = TinyNet()
    algorithm = Supervised(NUM_CLASSES)
    labeled, _ = make_batches()
    out = algorithm.train_step(net, labeled, None, 0)
    expected = nn.functional.cross_entropy(net(labeled[DataKeys.IMAGE]), labeled[DataKeys.LABEL])
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_choose_names_the_choices():
    with pytest.raises(KeyError, match="fixmatch"):
        choose({"fixmatch": object()}, "fixmach")


def test_algorithm_without_setup_fails_clearly():
    with pytest.raises(RuntimeError, match="setup"):
        MeanTeacher(2).train_step(TinyNet(2), *make_batches(), 0)
    with pytest.raises(ValueError, match="unlabeled set"):
        FlexMatch(2).setup(TinyNet(2), total_steps=1, num_unlabeled=None)


def test_find_unused_parameters_declares_which_methods_leave_parameters_without_gradient():
    from monai_ssl_ext.algorithms import SEMISE, Hermes, SemiSupervisedAlgorithm
    from monai_ssl_ext.networks import JointClassSegNet

    # what multi-GPU configs pass to DistributedDataParallel ("$@algorithm.find_unused_parameters")
    assert SemiSupervisedAlgorithm.find_unused_parameters is True  # the safe default
    assert SEMISE.find_unused_parameters is False
    assert Hermes.find_unused_parameters is True
    assert all(cls.find_unused_parameters is True for cls in (Supervised, MeanTeacher, FixMatch, FlexMatch))
    assert FixMatch(NUM_CLASSES).find_unused_parameters is True and "find_unused" not in FixMatch(2).state_dict()

    # on the SEMISE bundle's network (with a projection head for the embedding)
    torch.manual_seed(0)
    net = JointClassSegNet(NUM_CLASSES, depth=10, decoder_channels=(16, 8, 8, 8), embed_dim=8).train()
    g = torch.Generator().manual_seed(0)
    labeled = {
        DataKeys.IMAGE: torch.rand(3, 1, 32, 32, generator=g),
        DataKeys.LABEL: torch.arange(3),
        DataKeys.MASK: (torch.rand(3, 1, 32, 32, generator=g) > 0.5).float(),
    }
    weak = torch.rand(4, 1, 32, 32, generator=g)
    unlabeled = {DataKeys.IMAGE_WEAK: weak, DataKeys.IMAGE_STRONG: weak.flip(-1), DataKeys.INDEX: torch.arange(4)}
    # SEMISE's contrastive views (two independent crops in a bundle)
    unlabeled.update({DataKeys.IMAGE_VIEW1: weak, DataKeys.IMAGE_VIEW2: weak.flip(-2)})

    def no_gradient(algorithm, step):
        net.zero_grad(set_to_none=True)
        algorithm.train_step(net, labeled, unlabeled, step).loss.backward()
        return {name.split(".")[0] for name, p in net.named_parameters() if p.grad is None}

    # a baseline reads only the class and seg outputs: the projection head gets no gradient
    fixmatch = FixMatch(NUM_CLASSES, threshold=0.0)
    fixmatch.setup(net, total_steps=4)
    assert no_gradient(fixmatch, 0) == {"projection"}
    # SEMISE reaches every parameter in each of its three phases (steps 0, 5 and 12 of 20)
    semise = SEMISE(NUM_CLASSES, class_levels=[0, 1, 2])
    semise.setup(net, total_steps=20)
    assert [no_gradient(semise, step) for step in (0, 5, 12)] == [set(), set(), set()]
