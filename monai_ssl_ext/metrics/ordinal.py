"""Severity metrics of a classifier whose classes carry ordinal severity levels (SEMISE reports MAE).

Classes map to levels through a ``(C,)`` array (e.g. ``SeverityOrder.levels_for(manifest.classes)``);
several classes may share a level. The errors are measured in levels, so that confusing two benign
kinds costs nothing and calling a melanoma benign costs two steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from monai_ssl_ext.metrics.classification import ordinal_mae
from monai_ssl_ext.metrics.inputs import as_labels, as_probs, to_numpy

__all__ = ["severity_metrics"]


def severity_metrics(probs: Any, labels: Any, class_levels: Any) -> dict[str, Any]:
    """Ordinal errors of class probabilities measured in severity levels.

    Args:
        probs: ``(N, C)`` class probabilities (rows sum to 1); the prediction is the arg-max class.
        labels: ``(N,)`` true class indices in ``[0, C)``.
        class_levels: ``(C,)`` non-negative integer severity level of each class.

    Returns:
        A JSON-serialisable dict, with ``l(k)`` the level of class ``k``, ``y_n`` the true class and
        ``p_nk`` the probabilities:

        - ``mae``: ``1/N sum_n |l(argmax_k p_nk) - l(y_n)|``, the mean absolute error of the predicted
          class's level;
        - ``expected_level_mae``: ``1/N sum_n |sum_k p_nk l(k) - l(y_n)|``, the error of the
          probability-weighted (expected) level, which sees confidence as well as the decision;
        - ``level_accuracy``: the fraction of samples whose predicted class has the true level;
        - ``num_samples``.
    """
    p = as_probs(probs)
    n, c = p.shape
    y = as_labels(labels, n, c)
    levels = to_numpy(class_levels)
    if levels.ndim != 1 or levels.shape[0] != c:
        raise ValueError(f"class_levels must have shape ({c},) for {c} classes, got {levels.shape}")
    levels = as_labels(levels)
    if levels.min() < 0:
        raise ValueError(f"class_levels must be >= 0, got {levels.tolist()}")
    true_level = levels[y]
    pred_level = levels[p.argmax(axis=1)]
    expected = p @ levels.astype(np.float64)
    return {
        "num_samples": int(n),
        "mae": ordinal_mae(pred_level, true_level),
        "expected_level_mae": float(np.abs(expected - true_level).mean()),
        "level_accuracy": float((pred_level == true_level).mean()),
    }
