"""Recipe options shared by every algorithm: weight decay groups and the unlabeled stream's contents."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from monai_ssl_ext.data import split_label_budget
from monai_ssl_ext.engines import parameter_groups
from monai_ssl_ext.keys import DataKeys
from monai_ssl_ext.networks import Classifier

pytestmark = pytest.mark.usefixtures("one_thread")


def test_one_decayed_group_is_the_plain_optimiser():
    net = Classifier(2, depth=10)
    (group,) = parameter_groups(net, 5e-4)
    assert group["weight_decay"] == 5e-4
    assert [id(p) for p in group["params"]] == [id(p) for p in net.parameters()]


def test_norm_layers_and_biases_are_not_decayed_when_asked():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    net(torch.rand(1, 1, 8, 8))
    net[0].weight.requires_grad_(False)  # frozen parameters are left out
    decayed, undecayed = parameter_groups(net, 1e-3, decay_norm_and_bias=False)
    assert decayed["weight_decay"] == 1e-3 and undecayed["weight_decay"] == 0.0
    assert [id(p) for p in decayed["params"]] == [id(net[3].weight)]
    assert {id(p) for p in undecayed["params"]} == {
        id(net[0].bias),
        id(net[1].weight),
        id(net[1].bias),
        id(net[3].bias),
    }
    # the optimiser takes them as they are
    torch.optim.SGD([decayed, undecayed], lr=0.1, weight_decay=1e-3)


def test_the_unlabeled_stream_may_include_the_labeled_images_without_their_labels():
    entries = [{DataKeys.IMAGE: f"{i}.png", DataKeys.LABEL: i % 2} for i in range(20)]
    split = split_label_budget(entries, 6, seed=0, hide_labels=True)
    assert split.unlabeled_stream() is split.unlabeled
    stream = split.unlabeled_stream(include_labeled=True)
    assert len(stream) == 20 and all(DataKeys.LABEL not in e for e in stream)
    assert sorted(e[DataKeys.HIDDEN_LABEL] for e in stream) == sorted(e[DataKeys.LABEL] for e in entries)
    assert all(DataKeys.LABEL in e for e in split.labeled)  # the labeled entries themselves are untouched
    plain = split_label_budget(entries, 6, seed=0)
    assert all(DataKeys.HIDDEN_LABEL not in e for e in plain.unlabeled_stream(include_labeled=True))


def _joint_batches(affine: torch.Tensor | None):
    g = torch.Generator().manual_seed(0)
    labeled = {
        DataKeys.IMAGE: torch.rand(2, 1, 32, 32, generator=g),
        DataKeys.LABEL: torch.tensor([0, 1]),
        DataKeys.MASK: (torch.rand(2, 1, 32, 32, generator=g) > 0.5).float(),
    }
    weak = torch.rand(2, 1, 32, 32, generator=g)
    unlabeled = {DataKeys.IMAGE_WEAK: weak, DataKeys.IMAGE_STRONG: weak.clone(), DataKeys.INDEX: torch.tensor([0, 1])}
    if affine is not None:
        unlabeled[DataKeys.STRONG_AFFINE] = affine.expand(2, 2, 3)
    return labeled, unlabeled


def test_pixel_pseudo_labels_follow_a_geometric_strong_view():
    from monai_ssl_ext.algorithms import FixMatch
    from monai_ssl_ext.networks import JointClassSegNet

    torch.manual_seed(0)
    net = JointClassSegNet(2, depth=10)
    algorithm = FixMatch(2, seg_threshold=0.0)  # every pixel confident: the mask is the geometry alone
    algorithm.setup(net, total_steps=10)
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    out = algorithm.train_step(net, *_joint_batches(identity), step=0)
    assert out.logs["mask_rate_seg"] == 1.0
    # a strong view shifted by a whole width has no pixel in common with the weak view: no pixel target
    shifted = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])
    out = algorithm.train_step(net, *_joint_batches(shifted), step=1)
    assert out.logs["mask_rate_seg"] == 0.0 and out.terms["loss_unsup_seg"] == 0.0


def test_mean_teacher_refuses_pixel_consistency_across_geometries():
    from monai_ssl_ext.algorithms import MeanTeacher
    from monai_ssl_ext.networks import JointClassSegNet

    net = JointClassSegNet(2, depth=10)
    algorithm = MeanTeacher(2)
    algorithm.setup(net, total_steps=10)
    with pytest.raises(ValueError, match="strong_view='photometric'"):
        algorithm.train_step(net, *_joint_batches(torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]])), step=0)
