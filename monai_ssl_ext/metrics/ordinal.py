"""Severity metrics of a classifier whose classes carry ordinal severity levels (SEMISE reports MAE).

Classes map to levels through a ``(C,)`` array (e.g. ``SeverityOrder.levels_for(manifest.classes)``);
several classes may share a level. The errors are measured in levels, so that confusing two benign
kinds costs nothing and calling a melanoma benign costs two steps. :func:`severity_rank_correlation`
asks the same of a representation instead of a classifier: do images lie further from healthy the more
severe they are?
"""

from __future__ import annotations

from typing import Any

import numpy as np

from monai_ssl_ext.metrics.classification import average_ranks, ordinal_mae
from monai_ssl_ext.metrics.inputs import as_labels, as_probs, to_numpy

__all__ = ["severity_metrics", "severity_rank_correlation", "spearman"]


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


def spearman(x: Any, y: Any) -> float:
    """Spearman's rank correlation of two ``(N,)`` arrays: Pearson's correlation of their average ranks.

    Ties share the mean of their ranks (as ``scipy.stats.spearmanr``). ``nan`` when fewer than two samples or
    when either array is constant (no ranking to correlate).
    """
    a, b = np.asarray(to_numpy(x), dtype=np.float64).reshape(-1), np.asarray(to_numpy(y), dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"spearman needs two arrays of one length, got {a.shape} and {b.shape}")
    if a.size < 2:
        return float("nan")
    ra, rb = average_ranks(a) - (a.size + 1) / 2.0, average_ranks(b) - (a.size + 1) / 2.0
    denominator = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def severity_rank_correlation(embeddings: Any, labels: Any, class_levels: Any) -> float:
    """How well distance from the healthy reference ranks images by severity (SEMISE's claim, measured).

    The reference ``r`` is the mean L2-normalised embedding of the images at the least severe level (healthy
    where the data has it); each image's distance is ``1 - cos(z_n, r)``, with ``r`` computed without the image
    itself (leave one out), so the reference images are not closer for having made it. The result is
    Spearman's correlation (:func:`spearman`) between those distances and the images' severity levels: 1 when
    every more severe image lies further away, 0 when distance says nothing about severity.

    Args:
        embeddings: ``(N, D)`` representations (an encoder's pooled features or a projection of them).
        labels: ``(N,)`` true class indices.
        class_levels: ``(C,)`` severity level of each class.

    Returns:
        The correlation, or ``nan`` when the images have fewer than two levels, or fewer than two images at
        the reference level (no leave-one-out reference).
    """
    z = np.asarray(to_numpy(embeddings), dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"embeddings must have shape (N, D), got {z.shape}")
    levels = as_labels(to_numpy(class_levels))[as_labels(labels, z.shape[0])]
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    healthy = levels == levels.min()
    n_healthy = int(healthy.sum())
    if len(np.unique(levels)) < 2 or n_healthy < 2:
        return float("nan")
    total = z[healthy].sum(axis=0)
    references = np.where(healthy[:, None], (total - z) / (n_healthy - 1), total / n_healthy)
    references /= np.maximum(np.linalg.norm(references, axis=1, keepdims=True), 1e-12)
    distance = 1.0 - (z * references).sum(axis=1)
    return spearman(distance, levels)
