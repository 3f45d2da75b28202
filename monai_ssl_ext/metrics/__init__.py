"""Evaluation metrics, calibration, figures and the evaluation report (numpy only, no scikit-learn).

- :func:`classification_metrics`: accuracy, balanced accuracy, macro-F1, ROC AUC, sensitivity and
  specificity, per-class figures, confusion matrix and ECE from class probabilities.
- :func:`segmentation_metrics`: per-image Dice/IoU with an explicit empty-mask convention.
- :func:`expected_calibration_error`, :func:`reliability_data`: calibration (Guo et al. 2017).
- ``plot_*``: figures written atomically as PNG.
- :func:`evaluate_predictions`: ``metrics.json`` and figures of one split (the ``SupervisedEvaluator``
  handler that feeds it is :class:`monai_ssl_ext.engines.EvaluationReport`), and the per-image
  ``predictions.json`` (:func:`load_predictions`).
- :func:`paired_difference`, :func:`paired_difference_over_seeds`: difference of two runs on the same
  test images with a paired bootstrap interval.
"""

from .calibration import calibration_bins, ece_from_bins, expected_calibration_error, reliability_data
from .classification import binary_auc, classification_metrics, confusion_matrix, one_vs_rest_auc, ordinal_mae
from .ordinal import severity_metrics, severity_rank_correlation, spearman
from .paired import PairedDifference, PairingError, paired_difference, paired_difference_over_seeds
from .plots import plot_confusion_matrix, plot_mask_overlays, plot_reliability_diagram, plot_training_curves
from .predictions import SplitPredictions, load_predictions, save_predictions
from .report import (
    HEADLINE_METRICS,
    evaluate_predictions,
    format_report,
    headline_metrics,
    per_class_recall,
)
from .segmentation import (
    dice_per_image,
    iou_per_image,
    segmentation_counts,
    segmentation_metrics,
    segmentation_metrics_from_counts,
)

__all__ = [
    "HEADLINE_METRICS",
    "PairedDifference",
    "PairingError",
    "SplitPredictions",
    "binary_auc",
    "calibration_bins",
    "classification_metrics",
    "confusion_matrix",
    "dice_per_image",
    "ece_from_bins",
    "evaluate_predictions",
    "expected_calibration_error",
    "format_report",
    "headline_metrics",
    "iou_per_image",
    "load_predictions",
    "one_vs_rest_auc",
    "ordinal_mae",
    "paired_difference",
    "paired_difference_over_seeds",
    "per_class_recall",
    "plot_confusion_matrix",
    "plot_mask_overlays",
    "plot_reliability_diagram",
    "plot_training_curves",
    "reliability_data",
    "save_predictions",
    "segmentation_counts",
    "segmentation_metrics",
    "segmentation_metrics_from_counts",
    "severity_metrics",
    "severity_rank_correlation",
    "spearman",
]
