"""Confidence calibration: expected calibration error and the data of a reliability diagram.

A classifier is calibrated when, among the samples it predicts with confidence ``p``, a fraction
``p`` is correct. Following Guo et al., "On Calibration of Modern Neural Networks", ICML 2017
(https://arxiv.org/abs/1706.04599), the confidence of a sample is its largest class probability,
the interval ``[0, 1]`` is cut into ``n_bins`` equal-width bins ``((m-1)/M, m/M]`` and

    ECE = sum_m |B_m| / N * |acc(B_m) - conf(B_m)|

where ``acc`` is the fraction of correct predictions in bin ``B_m`` and ``conf`` its mean confidence.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from monai_ssl_ext.metrics.inputs import as_labels, as_probs

__all__ = ["DEFAULT_BINS", "calibration_bins", "ece_from_bins", "expected_calibration_error", "reliability_data"]

DEFAULT_BINS = 15


def calibration_bins(confidences: Any, correct: Any, n_bins: int = DEFAULT_BINS) -> dict[str, np.ndarray]:
    """Bin samples by confidence into ``n_bins`` equal-width, right-closed bins ``((m-1)/M, m/M]``.

    Args:
        confidences: ``(N,)`` confidences in ``[0, 1]`` (a confidence of exactly 0 falls in the first bin).
        correct: ``(N,)`` bool, whether each prediction is correct.
        n_bins: number of bins (15 in Guo et al. 2017).

    Returns:
        ``bin_edges`` ``(n_bins + 1,)``, and per bin ``confidence`` (mean confidence), ``accuracy``
        (fraction correct), both NaN for an empty bin, and ``count`` (int).
    """
    conf = np.asarray(confidences, dtype=np.float64).reshape(-1)
    hit = np.asarray(correct).reshape(-1).astype(bool)
    if conf.shape != hit.shape:
        raise ValueError(f"confidences and correct differ in length: {conf.size} vs {hit.size}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if conf.size and (not np.all(np.isfinite(conf)) or conf.min() < 0 or conf.max() > 1):
        raise ValueError("confidences must be finite and in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # the number of inner edges strictly below a confidence is its bin index for right-closed bins;
    # this is the same comparison (lower < conf <= upper) as the reference implementation of Guo et al.
    idx = np.searchsorted(edges[1:-1], conf, side="left")
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    hit_sum = np.bincount(idx, weights=hit.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        accuracy = np.where(count > 0, hit_sum / count, np.nan)
    return {"bin_edges": edges, "confidence": mean_conf, "accuracy": accuracy, "count": count}


def reliability_data(probs: Any, labels: Any, n_bins: int = DEFAULT_BINS) -> dict[str, np.ndarray]:
    """The data of a reliability diagram for class probabilities.

    Args:
        probs: ``(N, C)`` class probabilities (numpy or torch); ``(N,)`` is read as P(class 1) of a binary task.
        labels: ``(N,)`` integer class indices.
        n_bins: number of equal-width confidence bins.

    Returns:
        The dict of :func:`calibration_bins` (confidence = largest class probability, correct =
        its class is the label).
    """
    p = as_probs(probs)
    y = as_labels(labels, p.shape[0], p.shape[1])
    return calibration_bins(p.max(axis=1), p.argmax(axis=1) == y, n_bins)


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = DEFAULT_BINS) -> float:
    """Expected calibration error (Guo et al. 2017) of ``(N, C)`` probabilities against ``(N,)`` labels.

    Returns a value in ``[0, 1]``; NaN when there are no samples.
    """
    bins = reliability_data(probs, labels, n_bins)
    return ece_from_bins(bins)


def ece_from_bins(bins: dict[str, np.ndarray]) -> float:
    """ECE from the output of :func:`calibration_bins` (NaN when no sample was binned)."""
    count = bins["count"]
    total = count.sum()
    if total == 0:
        return float("nan")
    filled = count > 0
    gaps = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float(np.sum(count[filled] / total * gaps))
