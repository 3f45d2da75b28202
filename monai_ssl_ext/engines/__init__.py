"""The semi-supervised trainer, its handlers, validation metrics and the evaluation-report handler."""

from .checkpoint import AtomicCheckpointSaver, ResumeCheckpointLoader, find_latest_checkpoint, periodic_checkpoints
from .evaluation_report import EvaluationReport
from .handlers import ProgressLogger, TrainingHistory, format_duration, output_scalars, peak_memory_mb
from .metrics import (
    ClassificationMetric,
    SegmentationMetric,
    SeverityRankCorrelation,
    class_logits,
    seg_logits,
    selection_metric,
)
from .model_loader import CheckpointMismatchError, ModelLoader, load_model_weights
from .optimisation import OptimizerSet, SchedulerSet, branch_optimizers, parameter_groups, phase_schedule
from .prediction_writer import PredictionWriter
from .pseudo_label_accuracy import PseudoLabelAccuracy, pseudo_label_accuracy
from .trainer import SemiSupervisedStream, SemiSupervisedTrainer, move_to_device
from .weight_average import EvaluationEMA, ema_decay_for

__all__ = [
    "AtomicCheckpointSaver",
    "CheckpointMismatchError",
    "ClassificationMetric",
    "EvaluationEMA",
    "EvaluationReport",
    "ModelLoader",
    "OptimizerSet",
    "PredictionWriter",
    "ProgressLogger",
    "PseudoLabelAccuracy",
    "ResumeCheckpointLoader",
    "SchedulerSet",
    "SegmentationMetric",
    "SemiSupervisedStream",
    "SemiSupervisedTrainer",
    "SeverityRankCorrelation",
    "TrainingHistory",
    "branch_optimizers",
    "class_logits",
    "ema_decay_for",
    "find_latest_checkpoint",
    "format_duration",
    "load_model_weights",
    "move_to_device",
    "output_scalars",
    "parameter_groups",
    "peak_memory_mb",
    "periodic_checkpoints",
    "phase_schedule",
    "pseudo_label_accuracy",
    "seg_logits",
    "selection_metric",
]
