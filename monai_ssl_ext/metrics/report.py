"""Evaluation report of a classification (and optional segmentation) model on one split.

:func:`evaluate_predictions` turns whole-split predictions into ``metrics.json``, a confusion
matrix, a reliability diagram, mask overlays and a logged table; :func:`headline_metrics`,
:func:`per_class_recall` and :func:`format_report` read such a report. The ignite handler that
collects an evaluator's predictions and calls :func:`evaluate_predictions` at the end of the run is
:class:`monai_ssl_ext.engines.EvaluationReport`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_ssl_ext.metrics.classification import classification_metrics
from monai_ssl_ext.metrics.ordinal import severity_metrics, severity_rank_correlation
from monai_ssl_ext.metrics.paired import SEGMENTATION_METRICS
from monai_ssl_ext.metrics.plots import plot_confusion_matrix, plot_mask_overlays, plot_reliability_diagram
from monai_ssl_ext.metrics.predictions import PREDICTIONS_FILE, save_predictions
from monai_ssl_ext.metrics.segmentation import segmentation_counts, segmentation_metrics_from_counts
from monai_ssl_ext.utils.atomic import write_json

__all__ = [
    "HEADLINE_METRICS",
    "evaluate_predictions",
    "format_report",
    "headline_metrics",
    "per_class_recall",
    "selection_parts",
    "selection_value",
]

# the figures quoted in results tables, in display order: classification first, then segmentation
HEADLINE_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "auc",
    "sensitivity",
    "specificity",
    "ece",
    "dice",
    "iou",
    "dice_nonempty",
    "iou_nonempty",
    "severity_mae",
    "severity_rank_correlation",
)


def evaluate_predictions(
    probs: Any,
    labels: Any,
    class_names: Sequence[str] | None,
    output_dir: str | os.PathLike | None,
    pred_masks: Any = None,
    true_masks: Any = None,
    images: Any = None,
    split: str = "test",
    prefix: str = "",
    positive_class: int = 1,
    extra: Mapping[str, Any] | None = None,
    max_overlay_images: int = 16,
    plots: bool = True,
    logger_name: str | None = "monai_ssl_ext.evaluation",
    class_levels: Sequence[int] | None = None,
    image_ids: Sequence[str] | None = None,
    embeddings: Any = None,
) -> dict[str, Any]:
    """Compute the metrics of one split, write the report files and log a summary table.

    Args:
        probs: ``(N, C)`` class probabilities.
        labels: ``(N,)`` class indices.
        class_names: ``C`` class names (``None``: ``"0"``, ``"1"``...).
        output_dir: folder for ``<prefix>metrics.json``, ``<prefix>confusion_matrix.png``,
            ``<prefix>reliability_diagram.png``, ``<prefix>predictions.json`` (per-image labels,
            probabilities and Dice counts, see :mod:`monai_ssl_ext.metrics.predictions`) and, with
            masks and images, ``<prefix>mask_overlays.png``.
            ``None`` writes nothing (non-zero ranks, or metrics only).
        pred_masks, true_masks: ``(N, H, W)`` binary masks (or sequences of per-image masks) for
            Dice/IoU; both or neither.
        images: ``(M, C, H, W)`` images in ``[0, 1]`` for the overlays, matching the first ``M``
            masks; without them no overlay is drawn.
        split: name of the split, recorded in the JSON and the table.
        prefix: prepended to every file name (e.g. ``"val_"``), so that two splits share a folder.
        positive_class: positive class of a binary task.
        extra: free provenance (checkpoint path, bundle, data manifest...) stored under ``"extra"``.
        max_overlay_images: images in the overlay grid.
        plots: write the PNG figures.
        logger_name: logger of the summary table (``None``: no logging).
        class_levels: ``C`` ordinal severity levels of the classes; adds a ``"severity"`` section
            (:func:`~monai_ssl_ext.metrics.severity_metrics`: MAE in levels...).
        embeddings: ``(N, D)`` representations of the images; with ``class_levels`` the severity section gets
            ``rank_correlation`` (:func:`~monai_ssl_ext.metrics.severity_rank_correlation`).
        image_ids: ``N`` image identifiers (source paths) stored in ``predictions.json``, so that
            two runs can be checked to be paired (``None``: the positions ``"#0"``, ``"#1"``...).

    Returns:
        ``{"split", "class_names", "num_samples", "classification": classification_metrics(...),
        "segmentation": segmentation_metrics(...) (only with masks), "severity": severity_metrics(...)
        (only with ``class_levels``), "extra": {...}}``, the content of the JSON file.
    """
    cls = classification_metrics(probs, labels, class_names, positive_class=positive_class)
    report: dict[str, Any] = {
        "split": split,
        "class_names": list(cls["per_class"]),
        "num_samples": cls["num_samples"],
        "positive_class": positive_class if len(cls["per_class"]) == 2 else None,
        "classification": cls,
    }
    if (pred_masks is None) != (true_masks is None):
        raise ValueError("evaluate_predictions needs both pred_masks and true_masks, or neither")
    seg_counts = None
    if pred_masks is not None:
        seg_counts = segmentation_counts(pred_masks, true_masks)
        report["segmentation"] = segmentation_metrics_from_counts(*seg_counts)
    if class_levels is not None:
        report["severity"] = {"class_levels": [int(v) for v in class_levels]}
        report["severity"].update(severity_metrics(probs, labels, class_levels))
        if embeddings is not None:
            report["severity"]["rank_correlation"] = severity_rank_correlation(embeddings, labels, class_levels)
    report["extra"] = dict(extra or {})

    if output_dir is not None:
        out = Path(output_dir)
        write_json(out / f"{prefix}metrics.json", report)
        save_predictions(
            out / f"{prefix}{PREDICTIONS_FILE}",
            probs,
            labels,
            report["class_names"],
            image_ids,
            seg_counts,
            positive_class=positive_class,
            split=split,
        )
        if plots:
            title = f"{split}: " if split else ""
            plot_confusion_matrix(
                cls["confusion_matrix"],
                report["class_names"],
                out / f"{prefix}confusion_matrix.png",
                title=f"{title}confusion matrix (n={cls['num_samples']})",
            )
            plot_reliability_diagram(
                probs, labels, out / f"{prefix}reliability_diagram.png", title=f"{title}reliability"
            )
            if pred_masks is not None and images is not None and len(images):
                n = min(len(images), max_overlay_images)
                plot_mask_overlays(
                    images[:n],
                    list(true_masks[:n]),
                    list(pred_masks[:n]),
                    out / f"{prefix}mask_overlays.png",
                    max_images=n,
                )
    if logger_name is not None:
        logging.getLogger(logger_name).info("\n" + format_report(report))
    return report


def _classification_section(report: Mapping[str, Any]) -> Mapping[str, Any]:
    if "classification" not in report:
        raise KeyError(f"not an evaluation report: no 'classification' section (keys {sorted(report)})")
    return report["classification"]


def headline_metrics(report: Mapping[str, Any]) -> dict[str, float | None]:
    """The :data:`HEADLINE_METRICS` of a report (the content of ``metrics.json``) as one flat dict.

    Classification figures come from ``report["classification"]``, Dice/IoU from
    ``report["segmentation"]`` when the model segments and ``severity_mae`` (mean absolute error in
    severity levels) from ``report["severity"]`` when the classes are ordered; figures a task does not
    define are left out.
    """
    severity = report.get("severity") or {}
    sections = [_classification_section(report), report.get("segmentation") or {}]
    if "mae" in severity:
        sections.append({"severity_mae": severity["mae"]})
    if "rank_correlation" in severity:
        sections.append({"severity_rank_correlation": severity["rank_correlation"]})
    return {k: section[k] for k in HEADLINE_METRICS for section in sections if k in section}


def per_class_recall(report: Mapping[str, Any]) -> dict[str, float]:
    """Recall (sensitivity) of each class of a report, keyed by class name, in the report's class order."""
    per_class = _classification_section(report).get("per_class") or {}
    names = report.get("class_names", list(per_class))
    return {name: float(per_class[name]["recall"]) for name in names if name in per_class}


def selection_parts(name: str) -> list[str]:
    """The figures a selection metric's name joins with ``+`` (``auc+dice``: ``["auc", "dice"]``).

    Raises:
        ValueError: an empty name.
    """
    parts = [p.strip() for p in name.split("+") if p.strip()]
    if not parts:
        raise ValueError("selection metric name is empty")
    return parts


def selection_value(report: Mapping[str, Any], name: str) -> float:
    """A report's value of the selection metric ``name`` (a bundle's ``key_metric``: ``auc``, or ``auc+dice``
    for the mean of several), as :func:`~monai_ssl_ext.engines.metrics.selection_metric` names it.

    Raises:
        KeyError: the report lacks one of the figures.
    """
    parts = selection_parts(name)
    sections = {p: report.get("segmentation") if p in SEGMENTATION_METRICS else _classification_section(report)
                for p in parts}  # fmt: skip
    missing = [p for p, section in sections.items() if not section or section.get(p) is None]
    if missing:
        raise KeyError(f"the report has no {', '.join(missing)} (selection metric {name!r})")
    return float(sum(float(sections[p][p]) for p in parts) / len(parts))


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def format_report(report: Mapping[str, Any]) -> str:
    """A compact plain-text table of a report returned by :func:`evaluate_predictions`."""
    cls = report["classification"]
    lines = [
        f"[{report.get('split', '')}] {report['num_samples']} samples, classes: {', '.join(report['class_names'])}"
    ]
    figures = [
        ("accuracy", "accuracy"),
        ("balanced acc", "balanced_accuracy"),
        ("macro-F1", "macro_f1"),
        ("AUC", "auc"),
        ("sensitivity", "sensitivity"),
        ("specificity", "specificity"),
        ("ECE", "ece"),
    ]
    lines.append("  ".join(f"{name} {_fmt(cls[key])}" for name, key in figures if key in cls))
    width = max(5, *(len(n) for n in report["class_names"]))
    lines.append(f"  {'class':<{width}}  precision  recall     f1  support")
    for name, row in cls["per_class"].items():
        lines.append(
            f"  {name:<{width}}  {_fmt(row['precision']):>9}  {_fmt(row['recall']):>6}  "
            f"{_fmt(row['f1']):>5}  {row['support']:>7}"
        )
    seg = report.get("segmentation")
    if seg:
        lines.append(
            f"segmentation ({seg['num_images']} images, {seg['num_nonempty']} with a lesion): "
            f"Dice {_fmt(seg['dice'])} (non-empty {_fmt(seg['dice_nonempty'])})  "
            f"IoU {_fmt(seg['iou'])} (non-empty {_fmt(seg['iou_nonempty'])})  "
            f"false positives on empty {_fmt(seg['empty_false_positive_rate'])}"
        )
    severity = report.get("severity")
    if severity:
        lines.append(
            f"severity (levels {severity['class_levels']}): MAE {_fmt(severity['mae'])}  "
            f"expected-level MAE {_fmt(severity['expected_level_mae'])}  "
            f"level accuracy {_fmt(severity['level_accuracy'])}"
            + (
                f"  representation rank correlation {severity['rank_correlation']:.3f}"
                if "rank_correlation" in severity
                else ""
            )
        )
    return "\n".join(lines)
