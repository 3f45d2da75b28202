"""Class imbalance switches: class-balanced labeled sampling, weighted / logit-adjusted loss, distribution alignment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import CacheDataset

from monai_ssl_ext.algorithms import DistributionAlignment
from monai_ssl_ext.data import (
    ClassBalancedBatchSampler,
    IterationBatchSampler,
    SeededTransformDataset,
    SemiSupervisedLoader,
    dataset_labels,
)
from monai_ssl_ext.keys import DataKeys, OutputKeys
from monai_ssl_ext.losses import TaskLoss, class_prior, inverse_frequency_weights

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- labeled sampling
def _items(n, labels=None):
    g = torch.Generator().manual_seed(0)
    out = [{DataKeys.IMAGE: torch.rand(1, 4, 4, generator=g)} for _ in range(n)]
    if labels is not None:
        for item, y in zip(out, labels, strict=True):
            item[DataKeys.LABEL] = y
    return out


def test_default_labeled_stream_is_unchanged():
    # batches recorded before class-balanced sampling was added (seed 7, 5 labeled, batch 2)
    sampler = IterationBatchSampler(5, 2, seed=7, stream=1, rank=0, world_size=1)
    assert [sampler.batch_at(t) for t in range(3)] == [
        [(2, 3142400891), (4, 2538839475)],
        [(0, 3106243313), (3, 1616417272)],
        [(1, 1524323754), (1, 962451599)],
    ]
    for sampling in ({}, {"labeled_sampling": "uniform"}):
        loader = SemiSupervisedLoader(
            SeededTransformDataset(_items(5, [i % 2 for i in range(5)])),
            SeededTransformDataset(_items(9)),
            labeled_batch_size=2,
            unlabeled_batch_size=4,
            seed=7,
            **sampling,
        )
        it = iter(loader)
        indices = [next(it)[DataKeys.LABELED][DataKeys.INDEX].tolist() for _ in range(6)]
        assert indices == [[2, 4], [0, 3], [1, 1], [2, 4], [3, 0], [2, 4]]


def test_class_balanced_draws_are_balanced_over_many_steps():
    labels = [0] * 90 + [1] * 9 + [2] * 1
    sampler = ClassBalancedBatchSampler(labels, batch_size=8, seed=3, rank=0, world_size=1)
    drawn = np.array([i for t in range(2000) for i, _ in sampler.batch_at(t)])
    shares = np.bincount(np.asarray(labels)[drawn], minlength=3) / drawn.size
    np.testing.assert_allclose(shares, [1 / 3] * 3, atol=0.02)
    # uniform within a class: every image of the frequent class appears
    assert set(drawn[np.asarray(labels)[drawn] == 0]) == set(range(90))
    # uniform sampling keeps the imbalance
    uniform = IterationBatchSampler(100, 8, seed=3, rank=0, world_size=1)
    u = np.array([i for t in range(200) for i, _ in uniform.batch_at(t)])
    assert np.bincount(np.asarray(labels)[u], minlength=3)[0] / u.size == pytest.approx(0.9, abs=0.01)


def test_class_balanced_batches_are_a_function_of_seed_and_step():
    labels = [0, 0, 0, 0, 1, 1, 2]
    a = ClassBalancedBatchSampler(labels, 3, seed=1, rank=0, world_size=1)
    b = ClassBalancedBatchSampler(labels, 3, seed=1, rank=0, world_size=1, start_step=5)
    sequence = [next(x) for x in [iter(a)] for _ in range(8)]
    assert next(iter(b)) == sequence[5] == a.batch_at(5)
    assert ClassBalancedBatchSampler(labels, 3, seed=2, rank=0, world_size=1).batch_at(5) != sequence[5]
    # ranks take slices of the global batch: their union is the single-process batch
    single = ClassBalancedBatchSampler(labels, 8, seed=0, rank=0, world_size=1)
    shards = [ClassBalancedBatchSampler(labels, 4, seed=0, rank=r, world_size=2) for r in range(2)]
    for step in range(6):
        assert shards[0].batch_at(step) + shards[1].batch_at(step) == single.batch_at(step)
        assert shards[0].batch_at(step) != shards[1].batch_at(step)


def test_loader_reads_labels_from_the_entries_or_takes_them():
    labels = [0, 0, 0, 0, 0, 1]
    entries = _items(6, labels)
    cached = SeededTransformDataset(CacheDataset(entries, transform=None, progress=False))
    assert dataset_labels(cached) == labels
    loader = SemiSupervisedLoader(cached, None, labeled_batch_size=4, seed=5, labeled_sampling="class_balanced")
    reference = ClassBalancedBatchSampler(labels, 4, seed=5, stream=1, rank=0, world_size=1)
    it = iter(loader)
    for step in range(3):
        assert next(it)[DataKeys.LABELED][DataKeys.INDEX].tolist() == [i for i, _ in reference.batch_at(step)]
    loader.start_step = 2
    assert next(iter(loader))[DataKeys.LABELED][DataKeys.INDEX].tolist() == [i for i, _ in reference.batch_at(2)]

    given = SemiSupervisedLoader(
        SeededTransformDataset(_items(6)),
        None,
        labeled_batch_size=4,
        seed=5,
        labeled_sampling="class_balanced",
        labeled_labels=labels,
    )
    assert next(iter(given))[DataKeys.LABELED][DataKeys.INDEX].tolist() == [i for i, _ in reference.batch_at(0)]


def test_labeled_sampling_errors():
    ds = SeededTransformDataset(_items(4))
    with pytest.raises(ValueError, match="labeled_sampling"):
        SemiSupervisedLoader(ds, None, 2, labeled_sampling="balanced")
    with pytest.raises(ValueError, match="labeled_labels"):
        SemiSupervisedLoader(ds, None, 2, labeled_sampling="class_balanced")  # no labels in the entries
    with pytest.raises(ValueError, match="3 labeled_labels"):
        SemiSupervisedLoader(ds, None, 2, labeled_sampling="class_balanced", labeled_labels=[0, 1, 1])
    with pytest.raises(ValueError):
        ClassBalancedBatchSampler([0, -1], 2)


# ---------------------------------------------------------------- supervised loss
LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 3.0], [0.5, 0.0, 0.0]])
TARGET = torch.tensor([0, 1, 2, 0])
COUNTS = [6, 3, 1]


def _ce_by_hand(logits, target, weights=None, offset=None):
    num, den = 0.0, 0.0
    for row, y in zip(logits.tolist(), target.tolist(), strict=True):
        if offset is not None:
            row = [z + o for z, o in zip(row, offset, strict=True)]
        loss = -(row[y] - math.log(sum(math.exp(z) for z in row)))
        w = 1.0 if weights is None else weights[y]
        num, den = num + w * loss, den + w
    return num / den


def _loss(**options):
    total, _ = TaskLoss(**options)({OutputKeys.CLASS: LOGITS}, {DataKeys.LABEL: TARGET})
    return float(total)


def test_default_task_loss_is_unchanged():
    loss = TaskLoss()
    assert _loss() == pytest.approx(_ce_by_hand(LOGITS, TARGET), rel=1e-6)
    assert torch.equal(
        loss({OutputKeys.CLASS: LOGITS}, {DataKeys.LABEL: TARGET})[0], torch.nn.functional.cross_entropy(LOGITS, TARGET)
    )
    # the new options add nothing to the state dict (algorithm checkpoints keep their keys)
    weighted = TaskLoss(class_weights="inverse_frequency", class_counts=COUNTS, logit_adjustment_tau=1.0)
    assert set(weighted.state_dict()) == set(loss.state_dict())


def test_class_weights_list_and_inverse_frequency():
    assert _loss(class_weights=[1.0, 2.0, 4.0]) == pytest.approx(_ce_by_hand(LOGITS, TARGET, [1.0, 2.0, 4.0]), rel=1e-6)
    # w_c = N / (C n_c) = 10 / (3 * [6, 3, 1])
    expected = [10 / 18, 10 / 9, 10 / 3]
    torch.testing.assert_close(inverse_frequency_weights(COUNTS), torch.tensor(expected))
    assert _loss(class_weights="inverse_frequency", class_counts=COUNTS) == pytest.approx(
        _ce_by_hand(LOGITS, TARGET, expected), rel=1e-6
    )


def test_logit_adjustment_adds_tau_log_prior():
    torch.testing.assert_close(class_prior(COUNTS), torch.tensor([0.6, 0.3, 0.1]))
    for tau in (1.0, 0.5):
        offset = [tau * math.log(p) for p in (0.6, 0.3, 0.1)]
        assert _loss(logit_adjustment_tau=tau, class_counts=COUNTS) == pytest.approx(
            _ce_by_hand(LOGITS, TARGET, offset=offset), rel=1e-6
        )
    # both together
    offset = [math.log(p) for p in (0.6, 0.3, 0.1)]
    assert _loss(logit_adjustment_tau=1.0, class_counts=COUNTS, class_weights=[1.0, 2.0, 4.0]) == pytest.approx(
        _ce_by_hand(LOGITS, TARGET, [1.0, 2.0, 4.0], offset), rel=1e-6
    )


def test_task_loss_imbalance_errors():
    with pytest.raises(ValueError, match="class_counts"):
        TaskLoss(logit_adjustment_tau=1.0)
    with pytest.raises(ValueError, match="class_counts"):
        TaskLoss(class_weights="inverse_frequency")
    with pytest.raises(ValueError):
        TaskLoss(class_weights="balanced", class_counts=COUNTS)
    with pytest.raises(ValueError, match="2 classes"):
        _loss(class_weights=[1.0, 2.0])


# ---------------------------------------------------------------- distribution alignment
def _normalise(rows):
    return [[v / sum(r) for v in r] for r in rows]


def test_distribution_alignment_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]])
    da = DistributionAlignment(3, momentum=0.9)
    aligned = da(probs)
    mean = [0.6, 0.25, 0.15]  # the first batch sets the running mean
    torch.testing.assert_close(da.p_model, torch.tensor(mean))
    expected = _normalise([[p / m for p, m in zip(row, mean, strict=True)] for row in probs.tolist()])
    torch.testing.assert_close(aligned, torch.tensor(expected), atol=1e-5, rtol=0)
    torch.testing.assert_close(aligned.sum(dim=1), torch.ones(2))

    second = torch.tensor([[0.2, 0.2, 0.6], [0.2, 0.2, 0.6]])
    aligned = da(second)
    mean = [0.9 * a + 0.1 * b for a, b in zip(mean, [0.2, 0.2, 0.6], strict=True)]
    torch.testing.assert_close(da.p_model, torch.tensor(mean))
    expected = _normalise([[p / m for p, m in zip(row, mean, strict=True)] for row in second.tolist()])
    torch.testing.assert_close(aligned, torch.tensor(expected), atol=1e-5, rtol=0)

    # no update in eval mode or when asked not to
    da.eval()
    da(probs)
    da.train()
    da(probs, update=False)
    torch.testing.assert_close(da.p_model, torch.tensor(mean))


def test_distribution_alignment_targets_maps_and_state():
    probs = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    labeled = DistributionAlignment(2, target="labeled", class_counts=[3, 1])
    torch.testing.assert_close(labeled.p_target, torch.tensor([0.75, 0.25]))
    aligned = labeled(probs)  # p_model = [0.7, 0.3]
    expected = _normalise([[0.5 * 0.75 / 0.7, 0.5 * 0.25 / 0.3], [0.9 * 0.75 / 0.7, 0.1 * 0.25 / 0.3]])
    torch.testing.assert_close(aligned, torch.tensor(expected), atol=1e-5, rtol=0)
    explicit = DistributionAlignment(2, target=[6, 2])
    torch.testing.assert_close(explicit.p_target, torch.tensor([0.75, 0.25]))

    # segmentation maps: the mean is over every position, alignment along dimension 1
    maps = torch.softmax(torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    da = DistributionAlignment(3)
    out = da(maps)
    torch.testing.assert_close(da.p_model, maps.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(out.sum(dim=1), torch.ones(2, 4, 4))

    # checkpoint round trip
    restored = DistributionAlignment(3)
    restored.load_state_dict(da.state_dict())
    torch.testing.assert_close(restored(maps), da(maps), rtol=0, atol=0)
    torch.testing.assert_close(restored.p_model, da.p_model, rtol=0, atol=0)


def test_distribution_alignment_errors():
    with pytest.raises(ValueError):
        DistributionAlignment(3, target="labeled")
    with pytest.raises(ValueError):
        DistributionAlignment(3, target=[1.0, 2.0])
    with pytest.raises(ValueError):
        DistributionAlignment(3, momentum=1.5)
    with pytest.raises(ValueError):
        DistributionAlignment(3)(torch.ones(2, 2) / 2)


# ---------------------------------------------------------------- two ranks (gloo, CPU)
_WORKER = r"""
import json, sys
import torch, torch.distributed as dist
from monai_ssl_ext.algorithms import DistributionAlignment

rank, out = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[3], rank=rank, world_size=2)
# rank 0 has three samples, rank 1 one: the mean is over all four
probs = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.8, 0.2]]) if rank == 0 else torch.tensor([[0.2, 0.8]])
da = DistributionAlignment(2)
da(probs)
json.dump({"p_model": da.p_model.tolist()}, open(out + f"/rank{rank}.json", "w"))
dist.destroy_process_group()
"""


@pytest.mark.slow  # two fresh interpreters importing torch
def test_two_ranks_share_the_running_mean(tmp_path):
    from conftest import run_two_ranks

    for result in run_two_ranks(_WORKER, tmp_path):
        assert result["p_model"] == pytest.approx([0.65, 0.35])
