"""Supervised task loss, mask conversion and the masked (soft) cross-entropy of the unlabeled branch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from monai_ssl_ext.keys import DataKeys, OutputKeys
from monai_ssl_ext.losses import TaskLoss, mask_to_index, masked_cross_entropy


def _class_batch():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 2])
    return logits, labels


def _seg_batch():
    seg = torch.tensor(
        [
            [[[2.0, -1.0], [0.0, 1.0]], [[-1.0, 2.0], [0.5, 0.0]]],
            [[[0.0, 0.0], [1.0, -2.0]], [[1.0, 0.0], [0.0, 2.0]]],
        ],
        requires_grad=True,
    )
    mask = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]], [[[1.0, 1.0], [0.0, 1.0]]]])  # (B, 1, H, W)
    return seg, mask


def _dice_ce_by_hand(seg, index):
    """Mean over batch and classes of soft Dice loss (smooth 1e-5) plus pixel-mean cross-entropy."""
    probs = F.softmax(seg, dim=1)
    onehot = F.one_hot(index, seg.shape[1]).permute(0, 3, 1, 2).float()
    inter = (probs * onehot).sum(dim=(2, 3))
    denom = probs.sum(dim=(2, 3)) + onehot.sum(dim=(2, 3))
    dice = (1.0 - (2.0 * inter + 1e-5) / (denom + 1e-5)).mean()
    return dice + F.cross_entropy(seg, index)


# ---------------------------------------------------------------- TaskLoss


def test_task_loss_class_only():
    logits, labels = _class_batch()
    total, terms = TaskLoss()({OutputKeys.CLASS: logits}, {DataKeys.LABEL: labels})
    expected = (-math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-1))) - math.log(1 / (2 * math.exp(0.5) + 1))) / 2
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert terms == {}
    total.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_task_loss_class_accepts_list_and_column_labels():
    logits, labels = _class_batch()
    ref, _ = TaskLoss()({OutputKeys.CLASS: logits}, {DataKeys.LABEL: labels})
    as_list, _ = TaskLoss()({OutputKeys.CLASS: logits}, {DataKeys.LABEL: [0, 2]})
    as_column, _ = TaskLoss()({OutputKeys.CLASS: logits}, {DataKeys.LABEL: labels.view(2, 1)})
    assert as_list.item() == pytest.approx(ref.item())
    assert as_column.item() == pytest.approx(ref.item())


def test_task_loss_label_smoothing():
    logits, labels = _class_batch()
    total, _ = TaskLoss(label_smoothing=0.1)({OutputKeys.CLASS: logits}, {DataKeys.LABEL: labels})
    assert total.item() == pytest.approx(F.cross_entropy(logits, labels, label_smoothing=0.1).item(), rel=1e-6)
    assert total.item() != pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-3)


def test_task_loss_seg_only():
    seg, mask = _seg_batch()
    total, terms = TaskLoss()({OutputKeys.SEG: seg}, {DataKeys.MASK: mask, DataKeys.LABEL: torch.tensor([0, 1])})
    expected = _dice_ce_by_hand(seg, mask[:, 0].long())
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms == {}
    total.backward()
    assert seg.grad.abs().sum() > 0


def test_task_loss_both_tasks_reports_terms_and_applies_weights():
    logits, labels = _class_batch()
    seg, mask = _seg_batch()
    outputs = {OutputKeys.CLASS: logits, OutputKeys.SEG: seg, OutputKeys.FEATURES: torch.zeros(2, 4)}
    batch = {DataKeys.LABEL: labels, DataKeys.MASK: mask}
    cls = F.cross_entropy(logits, labels).item()
    seg_expected = _dice_ce_by_hand(seg, mask[:, 0].long()).item()

    total, terms = TaskLoss()(outputs, batch)
    assert set(terms) == {"loss_sup_cls", "loss_sup_seg"}
    assert terms["loss_sup_cls"].item() == pytest.approx(cls, rel=1e-6)
    assert terms["loss_sup_seg"].item() == pytest.approx(seg_expected, rel=1e-5)
    assert total.item() == pytest.approx(cls + seg_expected, rel=1e-5)

    weighted, wterms = TaskLoss(class_weight=0.25, seg_weight=3.0)(outputs, batch)
    assert weighted.item() == pytest.approx(0.25 * cls + 3.0 * seg_expected, rel=1e-5)
    # the reported terms are unweighted
    assert wterms["loss_sup_cls"].item() == pytest.approx(cls, rel=1e-6)
    assert wterms["loss_sup_seg"].item() == pytest.approx(seg_expected, rel=1e-5)


def test_task_loss_weight_of_single_task():
    logits, labels = _class_batch()
    total, _ = TaskLoss(class_weight=0.5)({OutputKeys.CLASS: logits}, {DataKeys.LABEL: labels})
    assert total.item() == pytest.approx(0.5 * F.cross_entropy(logits, labels).item(), rel=1e-6)


@pytest.mark.parametrize("mask", [None, "absent"])
def test_task_loss_seg_output_without_masks_supervises_class_only(mask):
    logits, labels = _class_batch()
    seg, _ = _seg_batch()
    batch = {DataKeys.LABEL: labels}
    if mask is None:
        batch[DataKeys.MASK] = None
    total, terms = TaskLoss()({OutputKeys.CLASS: logits, OutputKeys.SEG: seg}, batch)
    assert terms == {}
    assert total.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)


def test_task_loss_without_matching_target_raises():
    logits, _ = _class_batch()
    _, mask = _seg_batch()
    with pytest.raises(ValueError) as info:
        TaskLoss()({OutputKeys.CLASS: logits}, {DataKeys.MASK: mask, DataKeys.IMAGE: torch.zeros(2, 1, 2, 2)})
    assert "class" in str(info.value)
    assert "image" in str(info.value) and "mask" in str(info.value)


# ---------------------------------------------------------------- mask_to_index


def test_mask_to_index_float_channel_mask():
    mask = torch.tensor([[[[0.0, 0.4], [0.6, 1.0]]]])
    out = mask_to_index(mask)
    assert out.dtype == torch.long
    assert tuple(out.shape) == (1, 2, 2)
    assert torch.equal(out, torch.tensor([[[0, 0], [1, 1]]]))


def test_mask_to_index_integer_labels_kept():
    mask = torch.tensor([[[[0, 2], [1, 3]]]], dtype=torch.uint8)
    assert torch.equal(mask_to_index(mask), torch.tensor([[[0, 2], [1, 3]]]))
    no_channel = torch.tensor([[[0, 2], [1, 0]]], dtype=torch.int32)
    out = mask_to_index(no_channel)
    assert out.dtype == torch.long and tuple(out.shape) == (1, 2, 2)
    assert torch.equal(mask_to_index(torch.tensor([[[True, False]]])), torch.tensor([[[1, 0]]]))


def test_mask_to_index_keeps_multichannel_shape():
    mask = torch.rand(2, 3, 4, 4)
    assert tuple(mask_to_index(mask).shape) == (2, 3, 4, 4)


# ---------------------------------------------------------------- masked_cross_entropy


def test_masked_cross_entropy_soft_targets_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(2.0), 0.0]])  # softmax [1/4, 3/4], [2/3, 1/3]
    target = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    first = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    second = -(0.9 * math.log(2 / 3) + 0.1 * math.log(1 / 3))
    assert masked_cross_entropy(logits, target).item() == pytest.approx((first + second) / 2, rel=1e-6)
    mask = torch.tensor([0.0, 0.5])
    assert masked_cross_entropy(logits, target, mask).item() == pytest.approx(0.5 * second / 2, rel=1e-6)


def test_masked_cross_entropy_one_hot_soft_equals_hard():
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    hard = torch.tensor([0, 2, 1, 2])
    soft = F.one_hot(hard, 3).float()
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0])
    assert masked_cross_entropy(logits, soft, mask).item() == pytest.approx(
        masked_cross_entropy(logits, hard, mask).item(), rel=1e-6
    )
    assert masked_cross_entropy(logits, hard.int(), mask).item() == pytest.approx(
        masked_cross_entropy(logits, hard, mask).item(), rel=1e-6
    )


def test_masked_cross_entropy_zero_mask_is_zero():
    logits = torch.randn(3, 4, 5, 5, requires_grad=True)
    target = torch.randint(0, 4, (3, 5, 5))
    loss = masked_cross_entropy(logits, target, torch.zeros(3, 5, 5))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_masked_cross_entropy_normalises_by_all_elements():
    logits = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    target = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(2, 4, 4)
    mask[0, 1, 2] = 1.0
    mask[1, 3, 0] = 1.0
    per_pixel = F.cross_entropy(logits, target, reduction="none")
    accepted = per_pixel[0, 1, 2] + per_pixel[1, 3, 0]
    loss = masked_cross_entropy(logits, target, mask)
    assert loss.item() == pytest.approx(accepted.item() / 32, rel=1e-6)
    assert loss.item() != pytest.approx(accepted.item() / 2, rel=1e-3)
