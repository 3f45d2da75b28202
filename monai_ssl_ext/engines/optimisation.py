"""Optimisers of a network: parameter groups (weight decay on weights, optionally not on normalisation and
biases), and a set of optimisers and schedulers stepped as one, one per branch of a network."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, SequentialLR

__all__ = ["NORM_LAYERS", "OptimizerSet", "SchedulerSet", "branch_optimizers", "parameter_groups", "phase_schedule"]

# the member name when one optimiser covers the whole network
SINGLE = "network"

# layers whose parameters are scales and shifts of normalised activations, not filters
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def parameter_groups(network: nn.Module, weight_decay: float, decay_norm_and_bias: bool = True) -> list[dict]:
    """The trainable parameters of ``network`` as optimiser parameter groups.

    Weight decay pulls a parameter towards zero. For convolution and linear weights that is the
    intended regulariser; for a normalisation layer's scale and shift, and for biases, it only biases
    them towards zero (USB and the FixMatch reference code exclude them).

    Args:
        network: the model (a ``DistributedDataParallel`` wrapper is fine: its parameters are the module's).
        weight_decay: decay of the decayed group.
        decay_norm_and_bias: ``True``: one group, every parameter decayed (the plain optimiser); ``False``:
            a second group, with no decay, of normalisation-layer parameters and biases.

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay}]``, plus ``{"params": [...], "weight_decay": 0.0}``
        when ``decay_norm_and_bias`` is ``False`` (groups in the network's parameter order).
    """
    trainable = [(name, p) for name, p in network.named_parameters() if p.requires_grad]
    if decay_norm_and_bias:
        return [{"params": [p for _, p in trainable], "weight_decay": float(weight_decay)}]
    no_decay = set()
    for module in network.modules():
        if isinstance(module, NORM_LAYERS):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    for name, p in trainable:
        if name.endswith("bias"):
            no_decay.add(id(p))
    decayed = [p for _, p in trainable if id(p) not in no_decay]
    undecayed = [p for _, p in trainable if id(p) in no_decay]
    return [
        {"params": decayed, "weight_decay": float(weight_decay)},
        {"params": undecayed, "weight_decay": 0.0},
    ]


class OptimizerSet:
    """Several optimisers stepped as one: one per part of a network, each with its own rule and learning rate.

    Hermes' authors train the classifier with SGD and the segmenter with Adam. The trainer, the checkpoint
    handlers and the learning-rate logging address one object with the optimiser's interface
    (``zero_grad``, ``step``, ``param_groups``, ``state_dict``, ``load_state_dict``); this class gives a
    named set of optimisers that interface, so a bundle can swap one optimiser for several without any
    change to the training loop. Mixed precision works too: ``GradScaler.step(optimizer_set)`` unscales
    every member's gradients and, when none is infinite, steps them all.

    Args:
        optimizers: name -> optimiser. No parameter may belong to two of them (it would be stepped twice).

    Raises:
        ValueError: no optimiser, or a parameter shared by two of them.
    """

    def __init__(self, optimizers: Mapping[str, Optimizer]) -> None:
        if not optimizers:
            raise ValueError("OptimizerSet needs at least one optimizer.")
        owner: dict[int, str] = {}
        for name, optimizer in optimizers.items():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if id(p) in owner and owner[id(p)] != name:
                        raise ValueError(
                            f"a parameter is in optimizers '{owner[id(p)]}' and '{name}': it would be stepped twice."
                        )
                    owner[id(p)] = name
        self.optimizers: dict[str, Optimizer] = dict(optimizers)

    def __getitem__(self, name: str) -> Optimizer:
        return self.optimizers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.optimizers)

    def __len__(self) -> int:
        return len(self.optimizers)

    @property
    def param_groups(self) -> list[dict]:
        """The parameter groups of every optimiser, in the set's order (the first is the first optimiser's)."""
        return [group for optimizer in self.optimizers.values() for group in optimizer.param_groups]

    def learning_rates(self) -> dict[str, float]:
        """The learning rate of each optimiser's first parameter group."""
        return {name: float(opt.param_groups[0]["lr"]) for name, opt in self.optimizers.items()}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure: None = None) -> None:
        if closure is not None:
            raise ValueError("OptimizerSet.step takes no closure: each optimizer would re-evaluate the loss.")
        for optimizer in self.optimizers.values():
            optimizer.step()

    def state_dict(self) -> dict[str, dict]:
        return {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}

    def load_state_dict(self, state_dict: Mapping[str, Mapping]) -> None:
        _check_names("optimizer", self.optimizers, state_dict)
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state_dict[name])

    def __repr__(self) -> str:
        members = ", ".join(f"{name}={type(opt).__name__}" for name, opt in self.optimizers.items())
        return f"OptimizerSet({members})"


class SchedulerSet:
    """One learning-rate scheduler per optimiser of an :class:`OptimizerSet` (or of a single optimiser), as one.

    ``step``, ``state_dict`` and ``load_state_dict`` act on every member, so MONAI's ``LrScheduleHandler``
    and the checkpoint handlers take it as they take one scheduler.

    Args:
        optimizer: an :class:`OptimizerSet`, or one optimiser (then one scheduler, named ``"network"``).
        scheduler: builds a scheduler from an optimiser (a class or ``functools.partial``; a bundle writes
            ``{"_target_": "torch.optim.lr_scheduler.PolynomialLR", "_mode_": "callable", ...}``).
    """

    def __init__(self, optimizer: Optimizer | OptimizerSet, scheduler: Callable[[Optimizer], LRScheduler]) -> None:
        members = optimizer.optimizers if isinstance(optimizer, OptimizerSet) else {SINGLE: optimizer}
        self.schedulers: dict[str, LRScheduler] = {name: scheduler(opt) for name, opt in members.items()}

    def __getitem__(self, name: str) -> LRScheduler:
        return self.schedulers[name]

    def step(self) -> None:
        for scheduler in self.schedulers.values():
            scheduler.step()

    def get_last_lr(self) -> list[float]:
        return [lr for scheduler in self.schedulers.values() for lr in scheduler.get_last_lr()]

    def state_dict(self) -> dict[str, dict]:
        return {name: scheduler.state_dict() for name, scheduler in self.schedulers.items()}

    def load_state_dict(self, state_dict: Mapping[str, Mapping]) -> None:
        _check_names("lr_scheduler", self.schedulers, state_dict)
        for name, scheduler in self.schedulers.items():
            scheduler.load_state_dict(state_dict[name])


def branch_optimizers(
    network: nn.Module,
    optimizers: Mapping[str, Callable[..., Optimizer]],
    weight_decay: float | Mapping[str, float] = 0.0,
    decay_norm_and_bias: bool = True,
    per_branch: bool = True,
) -> OptimizerSet:
    """An optimiser per branch of a multi-branch network, as an :class:`OptimizerSet`.

    The network names its branches (``network.branches()``: name -> sub-modules, every parameter in
    exactly one; :class:`~monai_ssl_ext.networks.HermesNet` has ``classifier`` and ``segmenter``). Each
    branch's parameters, split by :func:`parameter_groups`, go to ``optimizers[name]``.

    Args:
        network: the network (a ``DistributedDataParallel`` wrapper is unwrapped).
        optimizers: branch name -> optimiser factory taking the parameter groups (``torch.optim.SGD`` with
            its settings as a ``functools.partial``; in a bundle, a component with ``"_mode_": "callable"``).
        weight_decay: one decay for every branch, or branch name -> decay.
        decay_norm_and_bias: as in :func:`parameter_groups`.
        per_branch: ``False``: the first factory over all parameters, one optimiser named ``"network"``
            (the single-optimiser ablation).

    Raises:
        ValueError: the network has no branches, or ``optimizers`` names other branches than it has.
    """
    module = network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network
    branches = getattr(module, "branches", None)
    if branches is None:
        raise ValueError(f"{type(module).__name__} has no branches(): it cannot take an optimizer per branch.")
    parts: dict[str, nn.Module] = branches()
    _check_names("branch", parts, optimizers)
    decay = weight_decay if isinstance(weight_decay, Mapping) else dict.fromkeys(parts, weight_decay)
    _check_names("weight_decay branch", parts, decay)
    if not per_branch:
        first = next(iter(parts))
        return OptimizerSet({SINGLE: optimizers[first](parameter_groups(module, decay[first], decay_norm_and_bias))})
    return OptimizerSet(
        {name: optimizers[name](parameter_groups(parts[name], decay[name], decay_norm_and_bias)) for name in parts}
    )


def _check_names(what: str, expected: Mapping, given: Mapping) -> None:
    missing, unexpected = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{what} names differ: expected {sorted(expected)}"
            + (f", missing {missing}" if missing else "")
            + (f", unexpected {unexpected}" if unexpected else "")
            + "."
        )


def phase_schedule(
    optimizer: Optimizer,
    scheduler: Callable[..., LRScheduler],
    lengths: Sequence[int],
    length_arg: str = "total_iters",
) -> LRScheduler:
    """A learning-rate schedule that starts again from the base rate at each phase of a run.

    One ``scheduler`` per phase, each over its phase's length, chained with torch's ``SequentialLR``: a method
    whose run has a representation phase before its supervised one (SEMISE with ``representation_steps``) then
    gives the supervised phase the same schedule as a baseline trained for that many steps.

    Args:
        optimizer: the optimiser.
        scheduler: builds a scheduler from the optimiser and ``length_arg=<length>`` (``PolynomialLR`` with its
            ``power`` as a ``functools.partial``; in a bundle, ``"_mode_": "callable"``).
        lengths: steps of each phase (at least one; zero-length phases are dropped).
        length_arg: the name of the length argument of ``scheduler`` (``T_max`` for cosine annealing).

    Returns:
        The scheduler itself for one phase, a ``SequentialLR`` for several.
    """
    phases = [int(n) for n in lengths if int(n) > 0]
    if not phases:
        raise ValueError(f"phase_schedule needs a phase of at least one step, got lengths {list(lengths)}.")
    schedulers = [scheduler(optimizer, **{length_arg: n}) for n in phases]
    if len(schedulers) == 1:
        return schedulers[0]
    milestones = [sum(phases[: i + 1]) for i in range(len(phases) - 1)]
    return SequentialLR(optimizer, schedulers, milestones=milestones)
