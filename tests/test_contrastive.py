"""Hermes' losses: supervised contrast (image and pixel level), inter-task consistency, masked Dice."""

from __future__ import annotations

import math

import pytest
import torch

from monai_ssl_ext.losses import (
    PixelContrastLoss,
    SupConLoss,
    inter_task_consistency,
    masked_dice_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- SupConLoss


def test_supcon_hand_value_single_view():
    # unit directions (1,0), (0,1), (-1,0) (the first given with norm 3: features are normalised inside)
    features = torch.tensor([[3.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    # anchor 1: positive 2 (cos 0), others {2 (cos 0), 3 (cos -1)}: -log(e^0 / (e^0 + e^(-1/T)))
    # anchor 2: positive 1 (cos 0), others {1 (cos 0), 3 (cos 0)}: -log(1 / 2)
    # anchor 3: no positive, left out of the mean
    for temperature in (1.0, 0.5):
        expected = (math.log(1 + math.exp(-1 / temperature)) + math.log(2)) / 2
        loss = SupConLoss(temperature=temperature)(features, labels)
        assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_supcon_hand_value_two_views():
    # sample 0 has views (1,0), (0,1); sample 1 has (-1,0), (0,-1): every anchor sees its other view at
    # cos 0 (the positive) and the other sample's views at cos 0 and cos -1
    features = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[-1.0, 0.0], [0.0, -1.0]]])
    loss = SupConLoss(temperature=1.0)(features, torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(math.log(2 + math.exp(-1)), rel=1e-6)


def test_supcon_base_temperature_scales():
    torch.manual_seed(0)
    features, labels = torch.randn(6, 2, 5), torch.tensor([0, 1, 0, 1, 2, 2])
    plain = SupConLoss(temperature=0.1)(features, labels)
    scaled = SupConLoss(temperature=0.1, base_temperature=0.2)(features, labels)
    assert scaled.item() == pytest.approx(0.5 * plain.item(), rel=1e-6)


def test_supcon_near_minimal_for_collapsed_classes():
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1])
    ideal = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]])
    loss = SupConLoss(temperature=0.07)(ideal, labels)
    # one positive at cos 1, two negatives at cos -1: log(1 + 2 e^(-2/T)), about 1e-12
    assert loss.item() == pytest.approx(math.log(1 + 2 * math.exp(-2 / 0.07)), abs=1e-6)
    assert loss.item() < 1e-6
    random_loss = SupConLoss(temperature=0.07)(torch.randn(4, 2), labels)
    assert random_loss.item() > 0.1


def test_supcon_weight_zero_samples_are_ignored():
    torch.manual_seed(0)
    features, labels = torch.randn(6, 2, 8), torch.tensor([0, 1, 0, 1, 2, 2])
    base = SupConLoss()(features, labels)
    for extra_label in (0, 1, 3):
        more = torch.cat([features, torch.randn(1, 2, 8)])
        weights = torch.tensor([1.0] * 6 + [0.0])
        loss = SupConLoss()(more, torch.cat([labels, torch.tensor([extra_label])]), weights)
        assert loss.item() == pytest.approx(base.item(), rel=1e-6)
    # soft weights scale the anchors' losses; the mean still runs over anchors with weight > 0
    half = SupConLoss()(features, labels, torch.full((6,), 0.5))
    assert half.item() == pytest.approx(0.5 * base.item(), rel=1e-6)


def test_supcon_gradients_flow():
    torch.manual_seed(0)
    features = torch.randn(5, 2, 4, requires_grad=True)
    loss = SupConLoss()(features, torch.tensor([0, 1, 0, 1, 1]), torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0]))
    loss.backward()
    assert torch.isfinite(features.grad).all()
    assert features.grad[[0, 1, 3, 4]].abs().sum() > 0
    assert features.grad[2].abs().sum() == 0  # a rejected sample gets no gradient


def test_supcon_degenerate_batches_are_finite():
    torch.manual_seed(0)
    # one class only: positives but no negatives
    single = torch.randn(4, 3, requires_grad=True)
    loss = SupConLoss()(single, torch.zeros(4, dtype=torch.long))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(single.grad).all()
    # no anchor has a positive, and no sample is accepted: a graph-connected zero
    for labels, weights in ((torch.tensor([0, 1, 2]), None), (torch.tensor([0, 0, 1]), torch.zeros(3))):
        features = torch.randn(3, 3, requires_grad=True)
        loss = SupConLoss()(features, labels, weights)
        loss.backward()
        assert loss.item() == 0.0 and torch.equal(features.grad, torch.zeros(3, 3))
    # an accepted sample whose only partner of its class was rejected has no positive left
    features = torch.randn(3, 3)
    loss = SupConLoss()(features, torch.tensor([0, 0, 1]), torch.tensor([1.0, 0.0, 1.0]))
    assert loss.item() == 0.0


# ---------------------------------------------------------------- PixelContrastLoss


def _two_class_labels(batch: int = 2, size: int = 8) -> torch.Tensor:
    labels = torch.zeros(batch, size, size, dtype=torch.long)
    labels[:, :, size // 2 :] = 1
    return labels


def test_pixel_contrast_zero_for_one_class():
    emb = torch.randn(2, 4, 8, 8, requires_grad=True)
    labels = torch.ones(2, 8, 8, dtype=torch.long)
    labels[0, :2] = -1
    loss = PixelContrastLoss()(emb, labels)
    loss.backward()
    assert loss.item() == 0.0 and emb.grad is not None
    assert PixelContrastLoss()(emb, torch.full((2, 8, 8), -1)).item() == 0.0


def test_pixel_contrast_lower_for_separated_embeddings():
    torch.manual_seed(0)
    labels = _two_class_labels()
    direction = torch.nn.functional.one_hot(labels, 8).permute(0, 3, 1, 2).float()
    separated = direction + 0.1 * torch.randn(2, 8, 8, 8)
    random = torch.randn(2, 8, 8, 8)
    loss_fn = PixelContrastLoss(max_pixels_per_class=64)
    assert loss_fn(separated, labels).item() < 0.5 * loss_fn(random, labels).item()


def test_pixel_contrast_equals_supcon_on_all_valid_pixels():
    torch.manual_seed(0)
    emb, labels = torch.randn(1, 3, 4, 4), _two_class_labels(1, 4)
    labels[0, 0, 0] = -1
    loss = PixelContrastLoss(temperature=0.1, max_pixels_per_class=100)(emb, labels)
    valid = labels.reshape(-1) >= 0
    flat = emb.permute(0, 2, 3, 1).reshape(16, 3)[valid]
    expected = SupConLoss(temperature=0.1)(flat, labels.reshape(-1)[valid])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_pixel_contrast_ignores_rejected_pixels():
    torch.manual_seed(0)
    labels = _two_class_labels()
    labels[:, :2] = -1  # rejected rows
    emb = torch.randn(2, 6, 8, 8)
    loss_fn = PixelContrastLoss(max_pixels_per_class=1000)  # covers every valid pixel: no random draw
    base = loss_fn(emb, labels)
    adversarial = emb.clone()
    # rejected pixels made to look exactly like the other class, or huge noise
    adversarial[:, :, :2, :4] = emb[:, :, 4:6, 4:]
    adversarial[:, :, :2, 4:] = 100 * torch.randn(2, 6, 2, 4)
    assert loss_fn(adversarial, labels).item() == pytest.approx(base.item(), rel=1e-6)


def test_pixel_contrast_resizes_labels_with_nearest():
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (2, 8, 8))
    emb = torch.randn(2, 5, 4, 4)
    loss_fn = PixelContrastLoss(max_pixels_per_class=1000)
    # nearest down-sampling by 2 keeps the pixels at even coordinates
    assert loss_fn(emb, labels).item() == pytest.approx(loss_fn(emb, labels[:, ::2, ::2]).item(), rel=1e-6)


def test_pixel_contrast_sampling_cap_and_determinism():
    labels = _two_class_labels(1, 64)
    labels[0, :10] = -1
    loss_fn = PixelContrastLoss(max_pixels_per_class=16)
    index = loss_fn.sample(labels.reshape(-1))
    assert index.numel() == 32
    picked = labels.reshape(-1)[index]
    assert (picked == 0).sum() == 16 and (picked == 1).sum() == 16
    assert index.unique().numel() == 32  # drawn without replacement
    small = _two_class_labels(1, 4)  # 8 pixels per class, under the cap: all kept
    assert loss_fn.sample(small.reshape(-1)).numel() == 16

    emb = torch.randn(1, 4, 64, 64, requires_grad=True)
    torch.manual_seed(3)
    first = loss_fn(emb, labels)
    torch.manual_seed(3)
    second = loss_fn(emb, labels)
    assert first.item() == second.item()
    with_gen = [loss_fn(emb, labels, generator=torch.Generator().manual_seed(5)).item() for _ in range(2)]
    assert with_gen[0] == with_gen[1]
    assert loss_fn(emb, labels, generator=torch.Generator().manual_seed(6)).item() != with_gen[0]
    first.backward()
    assert torch.isfinite(emb.grad).all()
    assert (emb.grad.abs().sum(dim=1) > 0).sum() == 32  # only the sampled pixels get gradient


# ---------------------------------------------------------------- inter-task consistency


def test_inter_task_consistency_values():
    z_cls = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    z_seg = torch.tensor([[2.0, 0.0], [-3.0, 0.0], [0.0, 0.5]])  # identical direction, opposite, orthogonal
    per_sample = [0.0, 2.0, 1.0]
    for i, d in enumerate(per_sample):
        assert inter_task_consistency(z_cls[i : i + 1], z_seg[i : i + 1]).item() == pytest.approx(d, abs=1e-6)
    loss = inter_task_consistency(z_cls, z_seg)
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert z_cls.grad is not None
    # weights: sum_i w_i d_i over the count of positive weights
    assert inter_task_consistency(z_cls, z_seg, torch.tensor([1.0, 0.0, 1.0])).item() == pytest.approx(0.5)
    assert inter_task_consistency(z_cls, z_seg, torch.tensor([0.0, 0.5, 1.0])).item() == pytest.approx(1.0)
    zero = inter_task_consistency(z_cls, z_seg, torch.zeros(3))
    assert zero.item() == 0.0 and zero.requires_grad
    with pytest.raises(ValueError):
        inter_task_consistency(z_cls, z_seg[:2])


# ---------------------------------------------------------------- masked Dice


def _dice_case():
    # class-1 logit ln 3, 0, 0, -ln 3 against class 0 at 0: p1 = 3/4, 1/2, 1/2, 1/4
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1] = torch.tensor([[math.log(3), 0.0], [0.0, -math.log(3)]])
    target = torch.tensor([[[1, 1], [0, 0]]])
    mask = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    return logits, target, mask


def test_masked_dice_hand_value():
    logits, target, mask = _dice_case()
    s = 1e-5
    # foreground on accepted pixels (0,0), (1,0), (1,1): inter 3/4, sum p 3/4 + 1/2 + 1/4, sum t 1
    dice1 = (2 * 0.75 + s) / (1.5 + 1.0 + s)
    assert masked_dice_loss(logits, target, mask).item() == pytest.approx(1 - dice1, rel=1e-6)
    # background: p0 = 1/4, 1/2, 3/4 on the accepted pixels, t0 = 0, 1, 1
    dice0 = (2 * (0.5 + 0.75) + s) / (1.5 + 2.0 + s)
    loss = masked_dice_loss(logits, target, mask, include_background=True)
    assert loss.item() == pytest.approx(1 - (dice0 + dice1) / 2, rel=1e-6)


def test_masked_dice_pools_over_the_batch():
    logits, target, mask = _dice_case()
    # second image: p1 = 1/2 everywhere, no foreground, all accepted
    logits = torch.cat([logits, torch.zeros(1, 2, 2, 2)])
    target = torch.cat([target, torch.zeros(1, 2, 2, dtype=torch.long)])
    mask = torch.cat([mask, torch.ones(1, 2, 2)])
    s = 1e-5
    pooled = (2 * 0.75 + s) / (1.5 + 2.0 + 1.0 + s)
    assert masked_dice_loss(logits, target, mask).item() == pytest.approx(1 - pooled, rel=1e-6)


def test_masked_dice_no_accepted_pixel_is_zero():
    logits, target, _ = _dice_case()
    logits.requires_grad_(True)
    loss = masked_dice_loss(logits, target, torch.zeros(1, 2, 2))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))
    assert masked_dice_loss(logits, torch.full((1, 2, 2), -1), None).item() == 0.0


def test_masked_dice_perfect_on_accepted_pixels():
    target = torch.tensor([[[1, 0, 2], [0, 2, 1]]])
    mask = torch.tensor([[[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]])
    logits = 20.0 * torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    wrong = torch.tensor([[[1, 0, 2], [0, 0, 0]]])  # rejected pixels predicted as something else
    logits_wrong = 20.0 * torch.nn.functional.one_hot(wrong, 3).permute(0, 3, 1, 2).float()
    for lg in (logits, logits_wrong):
        assert masked_dice_loss(lg, target, mask).item() == pytest.approx(0.0, abs=1e-6)
        assert masked_dice_loss(lg, target, mask, include_background=True).item() == pytest.approx(0.0, abs=1e-6)
    # an ignore index in the target counts as rejected; a (B, 1, H, W) target is accepted
    ignored = target.clone()
    ignored[0, 1, 1:] = -1
    assert masked_dice_loss(logits_wrong, ignored.unsqueeze(1), None).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_dice_loss(logits_wrong, target, None).item() > 0.1
