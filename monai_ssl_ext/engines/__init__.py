"""The semi-supervised trainer and its handlers."""

from .checkpoint import AtomicCheckpointSaver, ResumeCheckpointLoader, find_latest_checkpoint
from .handlers import ProgressLogger, TrainingHistory, format_duration, output_scalars, peak_memory_mb
from .metrics import ClassificationMetric, SegmentationMetric, class_logits, seg_logits, selection_metric
from .prediction_writer import PredictionWriter
from .trainer import SemiSupervisedTrainer, move_to_device

__all__ = [
    "AtomicCheckpointSaver",
    "ClassificationMetric",
    "PredictionWriter",
    "ProgressLogger",
    "ResumeCheckpointLoader",
    "SegmentationMetric",
    "SemiSupervisedTrainer",
    "TrainingHistory",
    "class_logits",
    "find_latest_checkpoint",
    "format_duration",
    "move_to_device",
    "output_scalars",
    "peak_memory_mb",
    "seg_logits",
    "selection_metric",
]
