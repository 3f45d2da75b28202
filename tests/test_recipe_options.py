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


# ---------------------------------------------------------------- class balance and distribution alignment switches
COUNTS = [3, 1]
LOGITS = torch.tensor([[2.0, 0.5], [0.0, 1.0], [1.0, 1.5], [0.5, 0.0]])
TARGET = torch.tensor([0, 1, 1, 0])


def _algorithm_classes():
    from monai_ssl_ext.algorithms import (
        SEMISE,
        FixMatch,
        FlexMatch,
        FreeMatch,
        Hermes,
        MeanTeacher,
        SoftMatch,
        Supervised,
    )

    return {
        Supervised: {},
        MeanTeacher: {},
        FixMatch: {},
        FlexMatch: {},
        FreeMatch: {},
        SoftMatch: {},
        Hermes: {},
        SEMISE: {"class_levels": [0, 1]},
    }


ALGORITHMS = list(_algorithm_classes().items())
IDS = [cls.__name__ for cls, _ in ALGORITHMS]


def _class_loss(algorithm) -> torch.Tensor:
    from monai_ssl_ext.keys import OutputKeys

    total, _ = algorithm.supervised_loss({OutputKeys.CLASS: LOGITS}, {DataKeys.LABEL: TARGET})
    return total


def test_class_balance_options():
    from monai_ssl_ext.losses import ClassBalance

    off = ClassBalance(class_counts=[3, 1])
    assert not off.active and off.loss_options() == {}
    assert not ClassBalance(logit_adjustment_tau=0).active
    on = ClassBalance(class_weights=[1, 2], class_counts=[3, 1])
    assert on.active and on.loss_options() == {
        "class_weights": (1.0, 2.0),
        "class_counts": (3, 1),
        "logit_adjustment_tau": 0.0,
    }
    assert ClassBalance(logit_adjustment_tau=1, class_counts=COUNTS).active
    with pytest.raises(AttributeError):
        on.logit_adjustment_tau = 1.0  # frozen


@pytest.mark.parametrize(("cls", "kwargs"), ALGORITHMS, ids=IDS)
def test_switches_off_leave_every_algorithm_as_it_was(cls, kwargs):
    from monai_ssl_ext.losses import ClassBalance

    torch.manual_seed(0)
    plain = cls(2, **kwargs)
    torch.manual_seed(0)
    off = cls(2, **kwargs, class_balance=None, distribution_alignment=None)
    torch.manual_seed(0)
    inactive = cls(2, **kwargs, class_balance=ClassBalance(class_counts=COUNTS))
    reference = plain.state_dict()
    for algorithm in (off, inactive):
        state = algorithm.state_dict()
        assert list(state) == list(reference)
        assert all(torch.equal(state[k], reference[k]) for k in reference)
        assert algorithm.distribution_alignment is None
        assert "distribution_alignment" not in dict(algorithm.named_modules())
        assert algorithm.supervised_loss.ce_weights is None and algorithm.supervised_loss.logit_offset is None
        assert torch.equal(_class_loss(algorithm), _class_loss(plain))


@pytest.mark.parametrize(("cls", "kwargs"), ALGORITHMS, ids=IDS)
def test_class_balance_reaches_the_supervised_loss_of_every_algorithm(cls, kwargs):
    from monai_ssl_ext.losses import ClassBalance, TaskLoss

    balance = ClassBalance(class_weights="inverse_frequency", class_counts=COUNTS)
    algorithm = cls(2, **kwargs, class_balance=balance)
    assert algorithm.class_balance is balance
    # the algorithm's own loss settings are kept (Hermes: task weights 1.1 and 0.5)
    task = {"class_weight": 1.1, "seg_weight": 0.5} if cls.__name__ == "Hermes" else {}
    weighted = TaskLoss(**task, class_weights="inverse_frequency", class_counts=COUNTS)
    expected = weighted({"class": LOGITS}, {DataKeys.LABEL: TARGET})[0]
    assert torch.equal(_class_loss(algorithm), expected)
    assert not torch.allclose(_class_loss(algorithm), _class_loss(cls(2, **kwargs)))
    # the options configure the default loss: with an explicit loss they are an error, not ignored
    with pytest.raises(ValueError, match="exclude each other"):
        cls(2, **kwargs, supervised_loss=TaskLoss(), class_balance=balance)
    explicit = TaskLoss()
    assert cls(2, **kwargs, supervised_loss=explicit, class_balance=ClassBalance()).supervised_loss is explicit


class _Shift(nn.Module):
    """Images are the class logits ``(B, 2)``: the test sets the weak-view predictions directly."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(2))

    def forward(self, x):
        return x + self.bias


def _skewed_batches():
    # weak-view probabilities of class 0: most samples lean to it, the mean over the batch is ~0.66
    p0 = torch.tensor([0.9, 0.85, 0.8, 0.7, 0.65, 0.6, 0.55, 0.2])
    weak = torch.stack([p0.log(), (1 - p0).log()], dim=1)
    labeled = {DataKeys.IMAGE: torch.tensor([[1.0, 0.0], [0.0, 1.0]]), DataKeys.LABEL: torch.tensor([0, 1])}
    unlabeled = {DataKeys.IMAGE_WEAK: weak, DataKeys.IMAGE_STRONG: weak.flip(1), DataKeys.INDEX: torch.arange(8)}
    return labeled, unlabeled


@pytest.mark.parametrize("name", ["FixMatch", "FlexMatch", "FreeMatch", "SoftMatch"])
def test_distribution_alignment_moves_pseudo_labels_towards_the_target(name):
    import monai_ssl_ext.algorithms as algorithms
    from monai_ssl_ext.algorithms import DistributionAlignment

    cls = getattr(algorithms, name)
    labeled, unlabeled = _skewed_batches()
    probs = torch.softmax(unlabeled[DataKeys.IMAGE_WEAK], dim=1)
    pseudo = {}
    for aligned in (False, True):
        net = _Shift()
        algorithm = cls(2, distribution_alignment=DistributionAlignment(2) if aligned else None)
        algorithm.setup(net, total_steps=10, num_unlabeled=8)
        pseudo[aligned] = algorithm.train_step(net, labeled, unlabeled, step=0).pseudo_label
    assert torch.equal(pseudo[False], probs.argmax(dim=1))
    # aligned to uniform with the batch mean (the first batch sets it): the minority class gains labels
    torch.testing.assert_close(algorithm.distribution_alignment.p_model, probs.mean(dim=0))
    assert torch.equal(pseudo[True], DistributionAlignment(2)(probs).argmax(dim=1))
    changed = pseudo[True] != pseudo[False]
    assert int(changed.sum()) >= 2 and bool((pseudo[True][changed] == 1).all())
    # the running mean is part of the checkpoint
    assert {"distribution_alignment.p_model", "distribution_alignment.p_target"} <= set(algorithm.state_dict())


def test_hermes_aligns_its_image_class_probabilities_once_before_its_selector():
    from monai_ssl_ext.algorithms import DistributionAlignment, DualThreshold, Hermes
    from monai_ssl_ext.networks import HermesNet

    calls = []

    class Recording(DistributionAlignment):
        def forward(self, probs, update=None):
            out = super().forward(probs, update)
            calls.append((probs.clone(), out))
            return out

    torch.manual_seed(0)
    net = HermesNet(2, in_channels=1, backbone="resnet10", decoder_channels=(16, 8, 8, 8))
    accept_all = DualThreshold(use_confidence=False, use_entropy=False)
    algorithm = Hermes(2, selector=accept_all, distribution_alignment=Recording(2))
    algorithm.setup(net, total_steps=10)
    g = torch.Generator().manual_seed(0)
    labeled = {
        DataKeys.IMAGE: torch.rand(2, 1, 32, 32, generator=g),
        DataKeys.LABEL: torch.tensor([0, 1]),
        DataKeys.MASK: (torch.rand(2, 1, 32, 32, generator=g) > 0.5).float(),
    }
    weak = torch.rand(4, 1, 32, 32, generator=g)
    unlabeled = {DataKeys.IMAGE_WEAK: weak, DataKeys.IMAGE_STRONG: weak.clone(), DataKeys.INDEX: torch.arange(4)}
    out = algorithm.train_step(net, labeled, unlabeled, step=0)
    ((probs, aligned),) = calls  # once, on the image-class probabilities (not the pixel maps)
    assert probs.shape == (4, 2)
    assert torch.equal(out.pseudo_label, aligned.argmax(dim=1))


def test_semise_refuses_distribution_alignment():
    from monai_ssl_ext.algorithms import SEMISE, DistributionAlignment

    with pytest.raises(ValueError, match="SEMISE"):
        SEMISE(2, class_levels=[0, 1], distribution_alignment=DistributionAlignment(2))


def test_distribution_alignment_must_match_the_classes():
    from monai_ssl_ext.algorithms import DistributionAlignment, FixMatch

    with pytest.raises(ValueError, match="3 classes"):
        FixMatch(2, distribution_alignment=DistributionAlignment(3))


def test_choose_hands_the_switches_that_are_on_to_the_constructor():
    import functools

    from monai_ssl_ext.algorithms import DistributionAlignment, FixMatch, choose
    from monai_ssl_ext.losses import ClassBalance

    balance = ClassBalance(logit_adjustment_tau=1.0, class_counts=COUNTS)
    align = DistributionAlignment(2)
    entries = {"fixmatch": functools.partial(FixMatch, num_classes=2, threshold=0.5)}
    algorithm = choose(entries, "fixmatch", class_balance=balance, distribution_alignment=align)
    assert isinstance(algorithm, FixMatch) and algorithm.threshold == 0.5
    assert algorithm.class_balance is balance and algorithm.distribution_alignment is align
    assert algorithm.supervised_loss.logit_offset is not None

    # switches that are off are not passed: the entry is called as without them
    calls = []

    def entry(**kw):
        calls.append(kw)
        return FixMatch(2)

    choose({"x": entry}, "x", class_balance=ClassBalance(), distribution_alignment=None)
    assert calls == [{}]

    built = FixMatch(2)
    assert choose({"fixmatch": built}, "fixmatch", class_balance=ClassBalance(), distribution_alignment=None) is built
    with pytest.raises(ValueError, match="distribution_alignment"):
        choose({"fixmatch": built}, "fixmatch", distribution_alignment=align)


def test_bundle_settings_build_the_switches(tmp_path):
    from pathlib import Path

    from monai.bundle import ConfigParser

    from monai_ssl_ext.algorithms import DistributionAlignment
    from monai_ssl_ext.data.synthetic import ensure_synthetic_dataset
    from monai_ssl_ext.losses import class_prior, inverse_frequency_weights

    bundle = Path(__file__).resolve().parents[1] / "bundles" / "baselines_ultrasound"
    data = ensure_synthetic_dataset(tmp_path / "data", num_images=40, image_size=32)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser.update(
        {
            "bundle_root": str(bundle),
            "datalist": str(data),
            "data_root": str(data.parent),
            "device": "$torch.device('cpu')",
            "image_size": 32,
            "backbone": "resnet10",
            "num_workers": 0,
        }
    )
    parser.parse()
    default = parser.get_parsed_content("algorithm")
    assert parser.get_parsed_content("distribution_alignment") is None
    assert default.distribution_alignment is None and default.class_balance is None
    assert default.supervised_loss.ce_weights is None and default.supervised_loss.logit_offset is None
    assert not any(k.startswith("distribution_alignment") for k in default.state_dict())

    parser["class_weights"] = "inverse_frequency"
    parser["distribution_alignment_target"] = "labeled"
    for name in ("fixmatch", "supervised", "softmatch"):
        parser["algorithm_name"] = name
        parser.parse()
        algorithm = parser.get_parsed_content("algorithm")
        split = parser.get_parsed_content("label_split")
        counts = [split.per_class[c] for c in parser.get_parsed_content("class_names")]  # the manifest order
        assert parser.get_parsed_content("class_counts") == counts and sum(counts) == len(split.labeled)
        assert algorithm.class_balance.class_weights == "inverse_frequency"
        torch.testing.assert_close(algorithm.supervised_loss.ce_weights, inverse_frequency_weights(counts))
        assert isinstance(algorithm.distribution_alignment, DistributionAlignment)
        torch.testing.assert_close(algorithm.distribution_alignment.p_target, class_prior(counts))
