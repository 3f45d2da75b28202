"""Several optimisers and schedulers acting as one (one per branch of a network), and the trainer stepping them."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from monai_ssl_ext.engines import OptimizerSet, SchedulerSet, branch_optimizers, phase_schedule
from monai_ssl_ext.engines.trainer import learning_rates

pytestmark = pytest.mark.usefixtures("one_thread")


class TwoBranches(nn.Module):
    """A stand-in for a two-branch network: ``branches()`` names its parts."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.left = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        self.right = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.right(self.left(x))

    def branches(self) -> dict[str, nn.ModuleDict]:
        return {"first": nn.ModuleDict({"left": self.left}), "second": nn.ModuleDict({"right": self.right})}


def _pair(net: TwoBranches) -> OptimizerSet:
    return OptimizerSet(
        {
            "first": torch.optim.SGD(net.left.parameters(), lr=0.1),
            "second": torch.optim.Adam(net.right.parameters(), lr=0.01),
        }
    )


def _step(net: nn.Module, optimizer: OptimizerSet) -> None:
    optimizer.zero_grad()
    net(torch.rand(4, 3)).square().mean().backward()
    optimizer.step()


def test_each_member_steps_its_own_parameters_with_its_own_rule():
    net = TwoBranches()
    optimizer = _pair(net)
    reference = TwoBranches()
    sgd, adam = (
        torch.optim.SGD(reference.left.parameters(), lr=0.1),
        torch.optim.Adam(reference.right.parameters(), lr=0.01),
    )
    torch.manual_seed(1)
    _step(net, optimizer)
    torch.manual_seed(1)
    sgd.zero_grad(), adam.zero_grad()
    reference(torch.rand(4, 3)).square().mean().backward()
    sgd.step(), adam.step()
    for a, b in zip(net.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert len(optimizer.param_groups) == 2 and optimizer.param_groups[0]["lr"] == 0.1
    assert optimizer.learning_rates() == {"first": 0.1, "second": 0.01}
    assert learning_rates(optimizer) == {"lr": 0.1, "lr_first": 0.1, "lr_second": 0.01}
    assert learning_rates(optimizer["first"]) == {"lr": 0.1}


def test_a_parameter_in_two_optimizers_is_refused():
    net = TwoBranches()
    with pytest.raises(ValueError, match="'a' and 'b'"):
        OptimizerSet(
            {"a": torch.optim.SGD(net.parameters(), lr=0.1), "b": torch.optim.SGD(net.right.parameters(), lr=0.1)}
        )
    with pytest.raises(ValueError, match="at least one"):
        OptimizerSet({})


def test_state_round_trip_and_mismatched_names():
    net = TwoBranches()
    optimizer = _pair(net)
    _step(net, optimizer)
    state = optimizer.state_dict()
    assert set(state) == {"first", "second"} and state["second"]["state"]  # Adam's moments are kept
    fresh = _pair(TwoBranches())
    fresh.load_state_dict(state)
    assert fresh["second"].state_dict()["state"][0]["step"] == 1
    with pytest.raises(ValueError, match="missing \\['second'\\]"):
        fresh.load_state_dict({"first": state["first"]})
    with pytest.raises(ValueError, match="closure"):
        optimizer.step(closure=lambda: 0.0)


def test_scheduler_set_gives_each_optimizer_its_own_schedule_from_its_own_rate():
    net = TwoBranches()
    optimizer = _pair(net)
    scheduler = SchedulerSet(
        optimizer, lambda opt: torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=10, power=0.9)
    )
    for _ in range(5):
        _step(net, optimizer)
        scheduler.step()
    factor = (1 - 5 / 10) ** 0.9
    assert optimizer.learning_rates() == pytest.approx({"first": 0.1 * factor, "second": 0.01 * factor})
    assert scheduler.get_last_lr() == pytest.approx([0.1 * factor, 0.01 * factor])
    state = scheduler.state_dict()
    again = _pair(TwoBranches())
    restored = SchedulerSet(again, lambda opt: torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=10, power=0.9))
    restored.load_state_dict(state)
    assert restored["first"].last_epoch == 5
    single = SchedulerSet(
        torch.optim.SGD(net.parameters(), lr=1.0), lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1)
    )
    assert list(single.schedulers) == ["network"]


def test_branch_optimizers_build_one_optimizer_per_branch_with_its_own_decay():
    net = TwoBranches()
    factories = {
        "first": lambda groups: torch.optim.SGD(groups, lr=0.1),
        "second": lambda groups: torch.optim.Adam(groups),
    }
    optimizer = branch_optimizers(
        net, factories, weight_decay={"first": 1e-4, "second": 0.0}, decay_norm_and_bias=False
    )
    assert isinstance(optimizer["first"], torch.optim.SGD) and isinstance(optimizer["second"], torch.optim.Adam)
    first = optimizer["first"].param_groups
    # the linear weight is decayed; the BatchNorm scale and shift and the bias are not
    assert [len(g["params"]) for g in first] == [1, 3] and [g["weight_decay"] for g in first] == [1e-4, 0.0]
    assert all(g["weight_decay"] == 0.0 for g in optimizer["second"].param_groups)
    covered = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert covered == {id(p) for p in net.parameters()}

    single = branch_optimizers(net, factories, weight_decay=1e-4, per_branch=False)
    assert list(single) == ["network"] and isinstance(single["network"], torch.optim.SGD)
    assert {id(p) for g in single.param_groups for p in g["params"]} == covered


def test_branch_optimizers_refuse_a_network_without_those_branches():
    factories = {"first": torch.optim.SGD, "second": torch.optim.Adam}
    with pytest.raises(ValueError, match="no branches"):
        branch_optimizers(nn.Linear(2, 2), factories)
    with pytest.raises(ValueError, match=r"missing \['second'\]"):
        branch_optimizers(TwoBranches(), {"first": torch.optim.SGD})
    with pytest.raises(ValueError, match=r"unexpected \['third'\]"):
        branch_optimizers(TwoBranches(), {**factories, "third": torch.optim.SGD})


def test_phase_schedule_restarts_from_the_base_rate_at_each_phase_and_resumes():
    def build():
        net = nn.Linear(2, 2)
        optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
        linear = functools.partial(torch.optim.lr_scheduler.PolynomialLR, power=1.0)
        return optimizer, phase_schedule(optimizer, linear, [4, 6])

    optimizer, scheduler = build()
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # the second phase runs the schedule a baseline of 6 steps would have
    assert rates == pytest.approx([1.0, 0.75, 0.5, 0.25, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    state = scheduler.state_dict()
    again, restored = build()
    restored.load_state_dict(state)
    assert restored.last_epoch == 10
    one_phase = phase_schedule(again, functools.partial(torch.optim.lr_scheduler.PolynomialLR, power=1.0), [0, 6])
    assert isinstance(one_phase, torch.optim.lr_scheduler.PolynomialLR) and one_phase.total_iters == 6
    with pytest.raises(ValueError, match="at least one step"):
        phase_schedule(again, torch.optim.lr_scheduler.PolynomialLR, [0])
