"""Per-image overlap of binary segmentation masks: Dice and IoU (Jaccard).

Dice = 2|P n T| / (|P| + |T|), IoU = |P n T| / |P u T| per image, then averaged over images
(the "per-image" or "case" average used by the Medical Segmentation Decathlon and the BUSI
literature, rather than one global ratio over all pixels, which large lesions would dominate).

Empty masks: when both prediction and truth of an image are empty the overlap is 0/0. We count it
as a perfect 1.0 (the model correctly found nothing), the convention of MONAI's ``DiceMetric``
with ``ignore_empty=False``. Data sets with lesion-free images (BUSI "normal") would be flattered
by that, so :func:`segmentation_metrics` also reports ``dice_nonempty``/``iou_nonempty`` over the
images whose ground truth is not empty. A prediction on an empty truth scores 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from monai_ssl_ext.metrics.inputs import to_numpy

__all__ = [
    "dice_per_image",
    "iou_per_image",
    "segmentation_counts",
    "segmentation_metrics",
    "segmentation_metrics_from_counts",
]


def _binary(mask: Any, what: str) -> np.ndarray:
    m = to_numpy(mask)
    if m.dtype == bool:
        return m
    if m.size and not np.all((m == 0) | (m == 1)):
        raise ValueError(f"{what} must be binary (bool or 0/1), got values such as {np.unique(m)[:5].tolist()}")
    return m.astype(bool)


def _per_image_counts(pred_masks: Any, true_masks: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image |P n T|, |P| and |T| for ``(N, ...)`` arrays or sequences of per-image arrays."""
    preds = _as_image_list(pred_masks, "pred_masks")
    trues = _as_image_list(true_masks, "true_masks")
    if len(preds) != len(trues):
        raise ValueError(f"pred_masks has {len(preds)} images but true_masks has {len(trues)}")
    inter, p_sum, t_sum = (np.zeros(len(preds), dtype=np.int64) for _ in range(3))
    for i, (p, t) in enumerate(zip(preds, trues, strict=True)):
        if p.shape != t.shape:
            raise ValueError(f"image {i}: predicted mask shape {p.shape} differs from true mask shape {t.shape}")
        inter[i] = np.count_nonzero(p & t)
        p_sum[i] = np.count_nonzero(p)
        t_sum[i] = np.count_nonzero(t)
    return inter, p_sum, t_sum


def _as_image_list(masks: Any, what: str) -> list[np.ndarray]:
    # a sequence of per-image arrays allows images of different sizes (no resampling before scoring)
    if isinstance(masks, Sequence) and not isinstance(masks, np.ndarray):
        return [_binary(m, what) for m in masks]
    arr = _binary(masks, what)
    if arr.ndim < 2:
        raise ValueError(f"{what} must have shape (N, H, W), got {arr.shape}")
    return list(arr)


def dice_per_image(pred_masks: Any, true_masks: Any) -> np.ndarray:
    """Dice of each image, ``(N,)`` float64; 1.0 where prediction and truth are both empty.

    Args:
        pred_masks: ``(N, H, W)`` (or ``(N, 1, H, W)``) bool or 0/1 masks, numpy or torch, or a
            sequence of ``N`` per-image masks of possibly different sizes.
        true_masks: ground truth of the same layout.
    """
    inter, p_sum, t_sum = _per_image_counts(pred_masks, true_masks)
    den = p_sum + t_sum
    return np.where(den > 0, 2.0 * inter / np.maximum(den, 1), 1.0)


def iou_per_image(pred_masks: Any, true_masks: Any) -> np.ndarray:
    """IoU (Jaccard index) of each image, ``(N,)`` float64; 1.0 where both masks are empty.

    Inputs as in :func:`dice_per_image`.
    """
    inter, p_sum, t_sum = _per_image_counts(pred_masks, true_masks)
    union = p_sum + t_sum - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def segmentation_metrics(pred_masks: Any, true_masks: Any) -> dict[str, Any]:
    """Mean per-image Dice and IoU, overall and over images with a non-empty ground truth.

    Args:
        pred_masks: ``(N, H, W)`` bool or 0/1 predicted masks (or a sequence of per-image masks).
        true_masks: ground-truth masks of the same layout.

    Returns:
        JSON-serialisable dict: ``dice``, ``iou`` (mean over all images, an image with both masks
        empty counting 1.0), ``dice_nonempty``, ``iou_nonempty`` (mean over images whose truth is
        not empty; NaN when there is none), ``num_images``, ``num_nonempty`` and
        ``empty_false_positive_rate`` (fraction of empty-truth images with a non-empty prediction;
        NaN when no truth is empty).
    """
    return segmentation_metrics_from_counts(*_per_image_counts(pred_masks, true_masks))


def segmentation_counts(pred_masks: Any, true_masks: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image ``(|P n T|, |P|, |T|)``, three ``(N,)`` int64 arrays; inputs as in :func:`dice_per_image`.

    They are all :func:`segmentation_metrics_from_counts` needs: a per-image record of a split
    (``predictions.json``) stores them instead of the masks.
    """
    return _per_image_counts(pred_masks, true_masks)


def segmentation_metrics_from_counts(intersection: Any, pred_sum: Any, true_sum: Any) -> dict[str, Any]:
    """:func:`segmentation_metrics` from the per-image counts of :func:`segmentation_counts`."""
    inter, p_sum, t_sum = (np.asarray(a, dtype=np.int64).reshape(-1) for a in (intersection, pred_sum, true_sum))
    if not inter.shape == p_sum.shape == t_sum.shape:
        raise ValueError(f"per-image counts differ in length: {inter.size}, {p_sum.size}, {t_sum.size}")
    n = inter.size
    if n == 0:
        raise ValueError("segmentation_metrics needs at least one image")
    den = p_sum + t_sum
    union = den - inter
    dice = np.where(den > 0, 2.0 * inter / np.maximum(den, 1), 1.0)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    nonempty = t_sum > 0
    empty = ~nonempty

    def _mean(x: np.ndarray) -> float:
        return float(x.mean()) if x.size else float("nan")

    return {
        "dice": _mean(dice),
        "iou": _mean(iou),
        "dice_nonempty": _mean(dice[nonempty]),
        "iou_nonempty": _mean(iou[nonempty]),
        "num_images": int(n),
        "num_nonempty": int(nonempty.sum()),
        "empty_false_positive_rate": _mean((p_sum[empty] > 0).astype(np.float64)),
    }
