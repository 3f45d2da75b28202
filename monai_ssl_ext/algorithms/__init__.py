"""Semi-supervised methods (one class each) and the parts they share."""

from .base import SemiSupervisedAlgorithm, StepOutput
from .ema import EMATeacher
from .fixmatch import FixMatch
from .flexmatch import FlexMatch
from .hermes import Hermes
from .mean_teacher import MeanTeacher
from .schedules import RampUp, cosine_rampdown, linear_rampup, sigmoid_rampup
from .semise import SEMISE, severity_levels
from .supervised import Supervised
from .thresholds import DualThreshold, FixedThreshold, FlexMatchThreshold, PseudoLabelSelector

ALGORITHMS: dict[str, type[SemiSupervisedAlgorithm]] = {
    "supervised": Supervised,
    "mean_teacher": MeanTeacher,
    "fixmatch": FixMatch,
    "flexmatch": FlexMatch,
    "hermes": Hermes,
    "semise": SEMISE,
}


def get_algorithm(name: str, **kwargs) -> SemiSupervisedAlgorithm:
    """The algorithm registered under ``name`` (see ``ALGORITHMS``), constructed with ``kwargs``."""
    if name not in ALGORITHMS:
        raise KeyError(f"Unknown algorithm '{name}'; available: {sorted(ALGORITHMS)}.")
    return ALGORITHMS[name](**kwargs)


def choose(algorithms: dict[str, SemiSupervisedAlgorithm], name: str) -> SemiSupervisedAlgorithm:
    """``algorithms[name]`` with an error that lists the choices (bundle configs select by one key)."""
    if name not in algorithms:
        raise KeyError(f"algorithm '{name}' is not defined in this bundle; choose one of {sorted(algorithms)}.")
    return algorithms[name]


__all__ = [
    "ALGORITHMS",
    "SEMISE",
    "DualThreshold",
    "EMATeacher",
    "FixMatch",
    "FixedThreshold",
    "FlexMatch",
    "FlexMatchThreshold",
    "Hermes",
    "MeanTeacher",
    "PseudoLabelSelector",
    "RampUp",
    "SemiSupervisedAlgorithm",
    "StepOutput",
    "Supervised",
    "choose",
    "cosine_rampdown",
    "get_algorithm",
    "linear_rampup",
    "severity_levels",
    "sigmoid_rampup",
]
