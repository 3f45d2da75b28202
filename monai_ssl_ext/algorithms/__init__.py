"""Semi-supervised methods (one class each) and the parts they share."""

from collections.abc import Mapping
from typing import Any

from .base import SemiSupervisedAlgorithm, StepOutput
from .capr import ClassAdaptiveThreshold
from .clcpmt import CLCPMT
from .distribution_alignment import DistributionAlignment
from .dsrpgc import DSRPGC
from .ema import EMATeacher
from .fixmatch import FixMatch
from .flexmatch import FlexMatch
from .freematch import FreeMatch, FreeMatchThreshold, freematch_fairness_loss
from .hermes import Hermes
from .hsc import HSC
from .mean_teacher import MeanTeacher
from .memory_bank import FeatureMemoryBank
from .neighbourhood import NeighbourhoodCalibration, compactness_weight
from .prototypes import ClassPrototypes
from .reweighting import MetaReweighting, entropy_weights
from .schedules import RampUp, linear_rampup, sigmoid_rampup
from .semise import SEMISE, severity_levels
from .softmatch import SoftMatch, SoftMatchWeighting
from .supervised import Supervised
from .thresholds import DualThreshold, FixedThreshold, FlexMatchThreshold, PseudoLabelSelector


def choose(algorithms: Mapping[str, Any], name: str, **common: Any) -> SemiSupervisedAlgorithm:
    """The algorithm ``algorithms[name]``, constructed if the entry is a constructor.

    Bundle configs define each algorithm in ``callable`` mode (a class with its arguments, not yet
    called) so that only the chosen one is built, and an ablation is the same entry with other
    arguments (``functools.partial(@algorithms#semise, alpha=1.0)``). An entry may also be a built
    algorithm. An unknown name is an error that lists the choices.

    ``common`` holds the recipe switches every algorithm accepts (``class_balance``,
    ``distribution_alignment``), so a bundle sets them once for whichever method it runs. Only those
    that are on reach the constructor: a value that is ``None`` or inactive (``active`` false, as a
    :class:`~monai_ssl_ext.losses.ClassBalance` without options) is left out, so with every switch
    off the entry is called exactly as without them. A built algorithm cannot take a switch that is
    on (``ValueError``).
    """
    if name not in algorithms:
        raise KeyError(f"algorithm '{name}' is not defined in this bundle; choose one of {sorted(algorithms)}.")
    entry = algorithms[name]
    given = {k: v for k, v in common.items() if v is not None and bool(getattr(v, "active", True))}
    if isinstance(entry, SemiSupervisedAlgorithm):
        if given:
            raise ValueError(
                f"algorithm '{name}' is already built, so it cannot take {sorted(given)}: define it in "
                'callable mode ("_mode_": "callable") or give these to its constructor.'
            )
        return entry
    return entry(**given)


__all__ = [
    "CLCPMT",
    "DSRPGC",
    "HSC",
    "SEMISE",
    "ClassAdaptiveThreshold",
    "ClassPrototypes",
    "DistributionAlignment",
    "DualThreshold",
    "EMATeacher",
    "FeatureMemoryBank",
    "FixMatch",
    "FixedThreshold",
    "FlexMatch",
    "FlexMatchThreshold",
    "FreeMatch",
    "FreeMatchThreshold",
    "Hermes",
    "MeanTeacher",
    "MetaReweighting",
    "NeighbourhoodCalibration",
    "PseudoLabelSelector",
    "RampUp",
    "SemiSupervisedAlgorithm",
    "SoftMatch",
    "SoftMatchWeighting",
    "StepOutput",
    "Supervised",
    "choose",
    "compactness_weight",
    "entropy_weights",
    "freematch_fairness_loss",
    "linear_rampup",
    "severity_levels",
    "sigmoid_rampup",
]
