"""Classification metrics from class probabilities, in numpy only.

The figures follow scikit-learn's definitions so that numbers can be compared with published
results: per-class precision/recall/F1 with 0 where a ratio has a zero denominator
(``zero_division=0``), balanced accuracy as the mean recall over the classes present in the labels
(Brodersen et al., ICPR 2010), macro-F1 over the classes present in the labels or the predictions,
and ROC AUC computed from the Mann-Whitney U statistic with tied scores given their average rank
(Hanley & McNeil, Radiology 1982), which equals the trapezoidal area under the ROC curve.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from monai_ssl_ext.metrics.calibration import DEFAULT_BINS, calibration_bins, ece_from_bins
from monai_ssl_ext.metrics.inputs import as_labels, as_probs, to_numpy

__all__ = [
    "average_ranks",
    "binary_auc",
    "classification_metrics",
    "confusion_matrix",
    "one_vs_rest_auc",
    "ordinal_mae",
]


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` where tied values share the mean of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    start = np.cumsum(counts) - counts  # 0-based position of the first member of each tie group
    return (start + (counts + 1) / 2.0)[inverse.reshape(-1)]


def binary_auc(scores: Any, targets: Any) -> float:
    """ROC AUC of ``scores`` ``(N,)`` for boolean ``targets`` ``(N,)`` via the Mann-Whitney U statistic.

    AUC is the probability that a random positive scores above a random negative, ties counting
    one half. It is NaN when the targets hold only one class (the ROC curve is undefined).
    """
    s = to_numpy(scores).astype(np.float64).reshape(-1)
    t = to_numpy(targets).astype(bool).reshape(-1)
    if s.shape != t.shape:
        raise ValueError(f"scores and targets differ in length: {s.size} vs {t.size}")
    n_pos = int(t.sum())
    n_neg = t.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(s)
    u = ranks[t].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def one_vs_rest_auc(probs: Any, labels: Any) -> tuple[float, np.ndarray]:
    """Macro one-vs-rest ROC AUC of ``(N, C)`` probabilities and the ``(C,)`` per-class AUCs.

    A class absent from the labels (or making up all of them) has an undefined AUC: it is NaN in
    the per-class array and left out of the macro mean, which is NaN when no class is defined.
    """
    p = as_probs(probs)
    y = as_labels(labels, p.shape[0], p.shape[1])
    per_class = np.array([binary_auc(p[:, k], y == k) for k in range(p.shape[1])])
    defined = np.isfinite(per_class)
    return (float(per_class[defined].mean()) if defined.any() else float("nan")), per_class


def confusion_matrix(labels: Any, preds: Any, num_classes: int) -> np.ndarray:
    """``(C, C)`` int64 counts, rows = true class, columns = predicted class."""
    y = as_labels(labels, num_classes=num_classes)
    yhat = as_labels(preds, y.shape[0], num_classes)
    return np.bincount(y * num_classes + yhat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


def _class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [str(k) for k in range(num_classes)]
    names = [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names given for {num_classes} classes: {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be unique: {names}")
    return names


def classification_metrics(
    probs: Any,
    labels: Any,
    class_names: Sequence[str] | None = None,
    positive_class: int = 1,
    n_bins: int = DEFAULT_BINS,
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro-F1, ROC AUC, calibration and per-class figures.

    Args:
        probs: ``(N, C)`` class probabilities (numpy or torch; rows sum to 1). ``(N,)`` is read as
            the probability of class 1 of a binary task. The prediction is the arg-max class.
        labels: ``(N,)`` integer class indices in ``[0, C)``.
        class_names: ``C`` names used as keys of ``per_class`` (default ``"0"``, ``"1"``...).
        positive_class: the positive class of a binary task, for ``auc``, ``sensitivity`` and
            ``specificity``.
        n_bins: confidence bins of the ECE (15, as in Guo et al. 2017).

    Returns:
        A JSON-serialisable dict (Python floats, ints, lists):

        - ``accuracy``, ``balanced_accuracy`` (mean recall over classes present in the labels),
          ``macro_f1`` (mean F1 over classes present in the labels or predictions);
        - ``auc``: binary tasks, ROC AUC of the positive class's probability; multiclass, the
          macro mean of one-vs-rest AUCs over the classes present in the labels. NaN when undefined
          (a single class in the labels);
        - ``sensitivity`` and ``specificity`` (binary tasks only): recall of the positive and of the
          negative class, NaN when the labels hold no sample of that class;
        - ``per_class``: ``{name: {"precision", "recall", "f1", "support"}}`` (0 for a zero denominator);
        - ``confusion_matrix``: list of lists, rows = true class, columns = predicted class;
        - ``ece``: expected calibration error of the arg-max confidence;
        - ``num_samples``.
    """
    p = as_probs(probs)
    n, c = p.shape
    y = as_labels(labels, n, c)
    names = _class_names(class_names, c)
    if not 0 <= positive_class < c:
        raise ValueError(f"positive_class {positive_class} is not a class index in [0, {c})")
    pred = p.argmax(axis=1)
    cm = confusion_matrix(y, pred, c)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    present = support > 0
    seen = present | (predicted > 0)

    if c == 2:
        auc = binary_auc(p[:, positive_class], y == positive_class)
    else:
        auc, _ = one_vs_rest_auc(p, y)

    out: dict[str, Any] = {
        "num_samples": int(n),
        "accuracy": float(tp.sum() / n),
        "balanced_accuracy": float(recall[present].mean()),
        "macro_f1": float(f1[seen].mean()),
        "auc": auc,
    }
    if c == 2:
        negative = 1 - positive_class
        out["sensitivity"] = float(recall[positive_class]) if support[positive_class] else float("nan")
        out["specificity"] = float(recall[negative]) if support[negative] else float("nan")
    out["ece"] = ece_from_bins(calibration_bins(p.max(axis=1), pred == y, n_bins))
    out["per_class"] = {
        name: {
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(f1[k]),
            "support": int(support[k]),
        }
        for k, name in enumerate(names)
    }
    out["confusion_matrix"] = cm.tolist()
    return out


def ordinal_mae(pred_labels: Any, labels: Any) -> float:
    """Mean absolute error between predicted and true class indices ``(N,)``, for ordered grades.

    A severity grade predicted two steps off costs twice one step off, which accuracy does not see.
    """
    yhat = as_labels(pred_labels)
    y = as_labels(labels, yhat.shape[0])
    if y.size == 0:
        raise ValueError("ordinal_mae needs at least one sample")
    return float(np.abs(yhat - y).mean())
