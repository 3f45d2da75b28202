"""Semi-supervised methods (one class each) and the parts they share."""

from collections.abc import Mapping
from typing import Any

from .base import SemiSupervisedAlgorithm, StepOutput
from .distribution_alignment import DistributionAlignment
from .ema import EMATeacher
from .fixmatch import FixMatch
from .flexmatch import FlexMatch
from .freematch import FreeMatch, FreeMatchThreshold, freematch_fairness_loss
from .hermes import Hermes
from .mean_teacher import MeanTeacher
from .schedules import RampUp, linear_rampup, sigmoid_rampup
from .semise import SEMISE, severity_levels
from .softmatch import SoftMatch, SoftMatchWeighting
from .supervised import Supervised
from .thresholds import DualThreshold, FixedThreshold, FlexMatchThreshold, PseudoLabelSelector


def choose(algorithms: Mapping[str, Any], name: str) -> SemiSupervisedAlgorithm:
    """The algorithm ``algorithms[name]``, constructed if the entry is a constructor.

    Bundle configs define each algorithm in ``callable`` mode (a class with its arguments, not yet
    called) so that only the chosen one is built, and an ablation is the same entry with other
    arguments (``functools.partial(@algorithms#semise, alpha=1.0)``). An entry may also be a built
    algorithm. An unknown name is an error that lists the choices.
    """
    if name not in algorithms:
        raise KeyError(f"algorithm '{name}' is not defined in this bundle; choose one of {sorted(algorithms)}.")
    entry = algorithms[name]
    return entry if isinstance(entry, SemiSupervisedAlgorithm) else entry()


__all__ = [
    "SEMISE",
    "DistributionAlignment",
    "DualThreshold",
    "EMATeacher",
    "FixMatch",
    "FixedThreshold",
    "FlexMatch",
    "FlexMatchThreshold",
    "FreeMatch",
    "FreeMatchThreshold",
    "Hermes",
    "MeanTeacher",
    "PseudoLabelSelector",
    "RampUp",
    "SemiSupervisedAlgorithm",
    "SoftMatch",
    "SoftMatchWeighting",
    "StepOutput",
    "Supervised",
    "choose",
    "freematch_fairness_loss",
    "linear_rampup",
    "severity_levels",
    "sigmoid_rampup",
]
