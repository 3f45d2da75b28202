"""EMA evaluation network: the average by hand, the decay rule, exact resume, and its place in training."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedEvaluator
from torch import nn

from monai_ssl_ext.algorithms import FixMatch
from monai_ssl_ext.data import SeededTransformDataset, SemiSupervisedLoader
from monai_ssl_ext.engines import (
    AtomicCheckpointSaver,
    ClassificationMetric,
    EvaluationEMA,
    ResumeCheckpointLoader,
    SemiSupervisedTrainer,
    ema_decay_for,
    find_latest_checkpoint,
)
from monai_ssl_ext.keys import DataKeys
from monai_ssl_ext.networks import Classifier
from monai_ssl_ext.transforms import get_profile

SIZE = 16
pytestmark = pytest.mark.usefixtures("one_thread")


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)
        self.bn = nn.BatchNorm1d(1)

    def forward(self, x):
        return self.bn(self.linear(x))


def _set(net: _Tiny, value: float) -> None:
    with torch.no_grad():
        net.linear.weight.fill_(value)
        net.linear.bias.fill_(-value)
        net.bn.running_mean.fill_(10 * value)
        net.bn.num_batches_tracked.fill_(int(value * 10))


def test_average_after_k_updates_equals_the_hand_computed_value():
    student = _Tiny()
    _set(student, 1.0)
    ema = EvaluationEMA(student, decay=0.9)
    values = [2.0, 0.5, -1.0, 3.0]
    expected_w, expected_mean = 1.0, 10.0
    for v in values:
        _set(student, v)
        assert ema.update(student) == 0.9
        expected_w = 0.9 * expected_w + 0.1 * v
        expected_mean = 0.9 * expected_mean + 0.1 * 10 * v
    assert ema.num_updates == len(values)
    torch.testing.assert_close(ema.module.linear.weight, torch.full((1, 2), expected_w))
    torch.testing.assert_close(ema.module.linear.bias, torch.full((1,), -expected_w))
    # default: batch-norm statistics are the student's
    assert float(ema.module.bn.running_mean) == 30.0
    # the student's parameters are untouched and the average takes no gradients
    assert float(student.linear.weight.detach()[0, 0]) == 3.0
    assert not any(p.requires_grad for p in ema.module.parameters())

    _set(student, 1.0)
    averaged = EvaluationEMA(student, decay=0.9, buffers="average")
    for v in values:
        _set(student, v)
        averaged.update(student)
    torch.testing.assert_close(averaged.module.bn.running_mean, torch.full((1,), expected_mean))
    assert int(averaged.module.bn.num_batches_tracked) == 30  # integer buffers are copied


def test_warmup_follows_the_ema_teacher_schedule():
    student = _Tiny()
    ema = EvaluationEMA(student, decay=0.99, warmup=True)
    used = [ema.update(student) for _ in range(3)]
    assert used == pytest.approx([1 / 10, 2 / 11, 3 / 12])


def test_decay_rule_and_run_length_from_the_trainer():
    assert ema_decay_for(1500) == pytest.approx(1 - 1 / 150)
    assert ema_decay_for(3000) == pytest.approx(1 - 1 / 300)
    assert ema_decay_for(50) == 0.9
    assert ema_decay_for(10**6) == 0.999
    # why: the initialisation keeps decay^T of every averaged weight
    assert math.isclose(0.999**1500, 0.223, abs_tol=1e-3)
    assert ema_decay_for(1500) ** 1500 < 1e-4
    assert EvaluationEMA(_Tiny(), num_iterations=1500).decay == pytest.approx(1 - 1 / 150)

    trainer, *_ = _make_trainer(epochs=5, epoch_length=40)
    ema = EvaluationEMA(trainer.network)
    assert ema.decay is None
    with pytest.raises(RuntimeError, match="no decay"):
        ema.update(trainer.network)
    ema.attach(trainer)
    assert ema.decay == pytest.approx(ema_decay_for(200))


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    student = _Tiny()
    steps = [torch.randn(1, 2) for _ in range(6)]
    ref = EvaluationEMA(student, decay=0.7, warmup=True)
    for w in steps:
        student.linear.weight.data.copy_(w)
        ref.update(student)

    torch.manual_seed(0)
    student = _Tiny()
    first = EvaluationEMA(student, decay=0.7, warmup=True)
    for w in steps[:3]:
        student.linear.weight.data.copy_(w)
        first.update(student)
    state = {k: v.clone() for k, v in first.state_dict().items()}
    resumed = EvaluationEMA(_Tiny(), decay=0.7, warmup=True)  # other initial weights
    resumed.load_state_dict(state)
    assert resumed.num_updates == 3
    for w in steps[3:]:
        student.linear.weight.data.copy_(w)
        resumed.update(student)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0)


def test_unwraps_data_parallel():
    net = _Tiny()
    ema = EvaluationEMA(nn.DataParallel(net), decay=0.5)
    assert type(ema.module) is _Tiny
    assert set(ema.module.state_dict()) == set(net.state_dict())
    ema.update(nn.DataParallel(net))


# ---------------------------------------------------------------- in a training run
def _make_trainer(epochs=2, epoch_length=3, handlers=None, net_seed=0):
    profile = get_profile("ultrasound", image_size=SIZE)
    g = torch.Generator().manual_seed(0)
    lab = [
        {DataKeys.IMAGE: torch.rand(1, SIZE, SIZE, generator=g) * 0.5 + 0.4 * (i % 2), DataKeys.LABEL: i % 2}
        for i in range(8)
    ]
    unl = [{DataKeys.IMAGE: torch.rand(1, SIZE, SIZE, generator=g) * 0.5 + 0.4 * (i % 2)} for i in range(16)]
    loader = SemiSupervisedLoader(
        SeededTransformDataset(lab, profile.labeled_transforms()),
        SeededTransformDataset(unl, profile.unlabeled_transforms()),
        labeled_batch_size=4,
        unlabeled_batch_size=8,
        seed=0,
    )
    torch.manual_seed(net_seed)
    net = Classifier(2, depth=10, return_dict=True, dropout=0.2)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    algorithm = FixMatch(num_classes=2, threshold=0.6)
    trainer = SemiSupervisedTrainer(
        "cpu", epochs, loader, net, opt, algorithm, epoch_length=epoch_length, seed=0, train_handlers=handlers
    )
    return trainer, net, opt, algorithm, lab


def _logits(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        return net(images)["class"]


def test_evaluated_network_differs_from_the_student_and_equals_it_with_decay_zero():
    reference, ref_net, *_ = _make_trainer()
    reference.run()

    trainer, net, _, _, lab = _make_trainer()
    ema = EvaluationEMA(net, decay=0.9)
    ema.attach(trainer)
    trainer.run()
    assert ema.num_updates == 6
    # the handler does not change training
    for k, v in ref_net.state_dict().items():
        torch.testing.assert_close(net.state_dict()[k], v, rtol=0, atol=0)
    images = torch.stack([e[DataKeys.IMAGE] for e in lab])
    assert not torch.allclose(_logits(ema.module, images), _logits(net, images))

    # the validator evaluates the average
    evaluator = SupervisedEvaluator(
        "cpu",
        [{DataKeys.IMAGE: images, DataKeys.LABEL: torch.tensor([e[DataKeys.LABEL] for e in lab])}],
        ema.module,
        key_val_metric={"val_auc": ClassificationMetric(metric="auc")},
    )
    evaluator.run()
    assert "val_auc" in evaluator.state.metrics

    trainer, net, _, _, _ = _make_trainer()
    ema = EvaluationEMA(net, decay=0.0)
    ema.attach(trainer)
    trainer.run()
    torch.testing.assert_close(_logits(ema.module, images), _logits(net, images), rtol=0, atol=0)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(ema.module.state_dict()[k], v, rtol=0, atol=0)


def test_average_starts_from_weights_loaded_after_it_was_built():
    trainer, net, *_ = _make_trainer(epochs=1, epoch_length=1)
    ema = EvaluationEMA(net, decay=1.0)  # decay 1: the average stays at its starting point
    ema.attach(trainer)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    trainer.run()
    for k, v in ema.module.named_parameters():
        torch.testing.assert_close(v, start[k], rtol=0, atol=0)


def test_resume_from_checkpoint_continues_the_same_average(tmp_path):
    ref, ref_net, *_ = _make_trainer(epochs=4, epoch_length=2)
    ref_ema = EvaluationEMA(ref_net, decay=0.8)
    ref_ema.attach(ref)
    ref.run()

    first, net, opt, alg, _ = _make_trainer(epochs=4, epoch_length=2)
    ema = EvaluationEMA(net, decay=0.8)
    ema.attach(first)
    AtomicCheckpointSaver(
        str(tmp_path),
        {"network": net, "optimizer": opt, "algorithm": alg, "trainer": first, "evaluation_ema": ema},
        save_interval=1,
        n_saved=1,
    ).attach(first)
    first.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda engine: engine.terminate())
    first.run()
    ckpt = find_latest_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.name == "checkpoint_epoch=2.pt"

    second, net2, opt2, alg2, _ = _make_trainer(epochs=4, epoch_length=2, net_seed=123)
    ema2 = EvaluationEMA(net2, decay=0.8)
    ema2.attach(second)
    ResumeCheckpointLoader(
        "latest",
        {"network": net2, "optimizer": opt2, "algorithm": alg2, "trainer": second, "evaluation_ema": ema2},
        ckpt_dir=tmp_path,
    ).attach(second)
    second.run()
    assert ema2.num_updates == 8
    for k, v in ref_ema.state_dict().items():
        torch.testing.assert_close(ema2.state_dict()[k], v, rtol=0, atol=0, msg=f"{k} differs after resume")


def test_invalid_arguments():
    with pytest.raises(ValueError):
        EvaluationEMA(_Tiny(), decay=1.5)
    with pytest.raises(ValueError):
        EvaluationEMA(_Tiny(), decay=0.9, buffers="mean")
    with pytest.raises(ValueError):
        ema_decay_for(0)
