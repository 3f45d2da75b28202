"""Hermes' dual-threshold pseudo-label filter: class-adaptive confidence AND (OR, for pixels) a ramped entropy bound."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import run_two_ranks
from torch import nn

from monai_ssl_ext.algorithms import DualThreshold, SemiSupervisedAlgorithm
from monai_ssl_ext.utils.distributed import all_reduce_sum

pytestmark = pytest.mark.usefixtures("one_thread")

# four weak-view predictions over two classes: three are class 0, one is class 1
PROBS = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.8, 0.2], [0.35, 0.65]])
RAMP = 100


def _entropy(*p: float) -> float:
    return -sum(q * math.log(q) for q in p)


def _by_hand(step: int) -> tuple[list[float], list[bool], list[bool]]:
    """tau per class, the confidence test and the entropy test of PROBS, written out."""
    r0, r1 = 3 / 4, 1 / 4
    tau = [0.95 - 0.45 * (1 - r0), 0.95 - 0.45 * (1 - r1)]  # 0.8375, 0.6125
    pseudo = [0, 0, 0, 1]
    conf = [0.9, 0.7, 0.8, 0.65]
    passes_conf = [c >= tau[k] for c, k in zip(conf, pseudo, strict=True)]
    ramp = math.exp(-5 * (1 - min(step / RAMP, 1.0)) ** 2)
    bound = (0.75 + 0.25 * ramp) * math.log(2)
    passes_entropy = [_entropy(*row) < bound for row in PROBS.tolist()]
    return tau, passes_conf, passes_entropy


def test_hand_values_at_start_and_end_of_ramp():
    sel = DualThreshold(ramp_steps=RAMP)
    tau, conf_ok, ent_ok = _by_hand(0)
    # the example is built so that each test rejects something different
    assert conf_ok == [True, False, False, True]
    assert ent_ok == [True, False, True, False]  # bound 0.521: H = 0.325, 0.611, 0.500, 0.647

    sel.set_step(0)
    pseudo, mask = sel(PROBS)
    assert pseudo.tolist() == [0, 0, 0, 1]
    assert mask.dtype == PROBS.dtype
    assert mask.tolist() == [1.0, 0.0, 0.0, 0.0]
    torch.testing.assert_close(sel.thresholds(), torch.tensor(tau))
    assert sel.entropy_threshold() == pytest.approx((0.75 + 0.25 * math.exp(-5)) * math.log(2))

    sel.set_step(RAMP)
    _, end_conf_ok, end_ent_ok = _by_hand(RAMP)
    assert end_ent_ok == [True, True, True, True]  # bound ln 2 = 0.693 admits all four
    _, mask = sel(PROBS)
    assert mask.tolist() == [float(a and b) for a, b in zip(end_conf_ok, end_ent_ok, strict=True)]
    assert mask.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert sel.entropy_threshold() == pytest.approx(math.log(2))
    sel.set_step(10 * RAMP)  # past the ramp the bound stays at ln C
    assert sel.entropy_threshold() == pytest.approx(math.log(2))


def test_or_rule_ignores_only_what_is_neither_confident_nor_certain():
    """The authors' pixel rule, ``ignore = (1 - high_conf) * uncertain``, at the hand values of step 0."""
    _, conf_ok, ent_ok = _by_hand(0)
    sel = DualThreshold(ramp_steps=RAMP, combine="or")
    _, mask = sel(PROBS)
    assert mask.tolist() == [float(a or b) for a, b in zip(conf_ok, ent_ok, strict=True)]
    assert mask.tolist() == [1.0, 0.0, 1.0, 1.0]  # only the second is both under-confident and uncertain
    assert DualThreshold(ramp_steps=RAMP, combine="and")(PROBS)[1].tolist() == [1.0, 0.0, 0.0, 0.0]
    # with one test off the rule has nothing to combine
    assert DualThreshold(ramp_steps=RAMP, combine="or", use_entropy=False)(PROBS)[1].tolist() == [
        float(v) for v in conf_ok
    ]
    with pytest.raises(ValueError, match="combine"):
        DualThreshold(combine="xor")


def test_switches_leave_the_other_test_alone():
    _, conf_ok, ent_ok = _by_hand(0)
    only_entropy = DualThreshold(ramp_steps=RAMP, use_confidence=False)
    only_conf = DualThreshold(ramp_steps=RAMP, use_entropy=False)
    neither = DualThreshold(use_confidence=False, use_entropy=False)  # needs no ramp length
    assert only_entropy(PROBS)[1].tolist() == [float(v) for v in ent_ok]
    assert only_conf(PROBS)[1].tolist() == [float(v) for v in conf_ok]
    assert neither(PROBS)[1].tolist() == [1.0] * 4
    assert only_entropy.thresholds() is None


def test_pixel_maps_give_pixel_masks_with_batch_wide_shares():
    # the same four predictions as pixels: one 2x2 image, then two 1x2 images (shares span the batch)
    sel = DualThreshold(ramp_steps=RAMP)
    _, flat = sel(PROBS)
    one_image = PROBS.T.reshape(1, 2, 2, 2)
    pseudo, mask = sel(one_image)
    assert pseudo.shape == (1, 2, 2) and mask.shape == (1, 2, 2)
    assert mask.flatten().tolist() == flat.tolist()
    two_images = PROBS.reshape(2, 1, 2, 2).permute(0, 3, 1, 2)  # (B=2, C=2, 1, 2)
    assert torch.equal(two_images.permute(0, 2, 3, 1).reshape(4, 2), PROBS)
    pseudo, mask = sel(two_images)
    assert mask.shape == (2, 1, 2) and mask.flatten().tolist() == flat.tolist()
    torch.testing.assert_close(sel.thresholds(), torch.tensor(_by_hand(0)[0]))


def test_rare_class_gets_the_lower_bar():
    probs = torch.tensor([[0.9, 0.05, 0.05]] * 6 + [[0.1, 0.8, 0.1]] * 2)
    sel = DualThreshold(num_classes=3, use_entropy=False)
    sel(probs)
    tau = sel.thresholds()
    assert tau[1] < tau[0]
    # an absent class falls to high - span; a class holding everything would keep high
    torch.testing.assert_close(tau, torch.tensor([0.95 - 0.45 * 0.25, 0.95 - 0.45 * 0.75, 0.5]))
    sel(torch.tensor([[0.9, 0.05, 0.05]] * 3))
    assert sel.thresholds()[0].item() == pytest.approx(0.95)
    with pytest.raises(ValueError, match="expected 3 classes"):
        sel(PROBS)


def test_one_hot_prediction_has_zero_entropy_and_passes():
    sel = DualThreshold(ramp_steps=RAMP)
    _, mask = sel(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert mask.tolist() == [1.0, 1.0]


def test_step_buffer_travels_in_state_dict():
    a = DualThreshold(ramp_steps=RAMP)
    a.set_step(37)
    state = a.state_dict()
    assert int(state["current_step"]) == 37
    b = DualThreshold(ramp_steps=RAMP)
    b.load_state_dict(state)
    assert int(b.current_step) == 37
    assert b.entropy_threshold(2) == pytest.approx(a.entropy_threshold(2))
    assert b.entropy_threshold(2) == pytest.approx((0.75 + 0.25 * math.exp(-5 * 0.63**2)) * math.log(2))


def test_ramp_length_defaults_to_the_run_and_setup_provides_it():
    sel = DualThreshold()
    with pytest.raises(RuntimeError, match="set_total_steps"):
        sel(PROBS)
    sel.set_total_steps(200)
    sel.set_step(100)
    assert sel.entropy_threshold(2) == pytest.approx((0.75 + 0.25 * math.exp(-5 * 0.25)) * math.log(2))
    # the algorithm base class hands its total steps to the filter's ramp
    algorithm = SemiSupervisedAlgorithm(num_classes=2)
    algorithm.selector = DualThreshold()
    algorithm.setup(nn.Linear(2, 2), total_steps=40)
    algorithm.selector.set_step(40)
    assert algorithm.selector.entropy_threshold(2) == pytest.approx(math.log(2))


def test_invalid_arguments():
    with pytest.raises(ValueError):
        DualThreshold(high=0.4, span=0.45)
    with pytest.raises(ValueError):
        DualThreshold(num_classes=1)
    with pytest.raises(ValueError):
        DualThreshold(ramp_steps=5)(torch.ones(4, 1))


def test_all_reduce_sum_is_identity_without_dist():
    counts = torch.tensor([3, 1])
    assert all_reduce_sum(counts) is counts


# ---------------------------------------------------------------- two ranks (gloo, CPU)
_WORKER = r"""
import json, sys
import torch, torch.distributed as dist
from monai_ssl_ext.algorithms import DualThreshold

rank, out = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[3], rank=rank, world_size=2)
# rank 0 predicts class 0 on three samples, rank 1 class 1 on one: shares over both ranks are 3/4 and 1/4
probs = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.8, 0.2]]) if rank == 0 else torch.tensor([[0.35, 0.65]])
sel = DualThreshold(ramp_steps=100)
_, mask = sel(probs)
json.dump({"tau": sel.thresholds().tolist(), "mask": mask.tolist()}, open(out + f"/rank{rank}.json", "w"))
dist.destroy_process_group()
"""


@pytest.mark.slow  # two fresh interpreters importing torch
def test_two_ranks_count_pseudo_labels_together(tmp_path):
    results = run_two_ranks(_WORKER, tmp_path)
    tau, _, _ = _by_hand(0)
    for result in results:
        assert result["tau"] == pytest.approx(tau)
    assert results[0]["mask"] + results[1]["mask"] == [1.0, 0.0, 0.0, 0.0]
