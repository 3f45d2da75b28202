"""Conversion and checks of metric inputs: numpy or torch in, validated float64/int64 numpy out."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["as_labels", "as_probs", "to_numpy"]

# softmax in float32 sums to 1 within ~1e-6; a larger gap means the caller passed logits or scores
_SUM_TOL = 1e-3


def to_numpy(x: Any) -> np.ndarray:
    """A numpy array from a numpy array, a torch tensor (any device, MetaTensor included) or a sequence."""
    if hasattr(x, "detach"):
        x = x.detach()
        if hasattr(x, "as_tensor"):  # MONAI MetaTensor: drop the metadata before leaving torch
            x = x.as_tensor()
        return x.cpu().numpy()
    return np.asarray(x)


def as_probs(probs: Any) -> np.ndarray:
    """Class probabilities as a float64 ``(N, C)`` array with ``C >= 2``.

    ``(N,)`` or ``(N, 1)`` input is read as the probability of class 1 of a binary task and expanded
    to ``(N, 2)``. Raises ``ValueError`` when there are no samples, values are not finite or outside
    ``[0, 1]``, or rows do not sum to 1 (logits passed instead of probabilities).
    """
    p = to_numpy(probs).astype(np.float64)
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2:
        raise ValueError(f"probs must have shape (N, C), got {p.shape}")
    if p.shape[0] == 0:
        raise ValueError("probs has no samples")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contains NaN or infinite values")
    if p.min() < -1e-6 or p.max() > 1 + 1e-6:
        raise ValueError(f"probs must lie in [0, 1] (got min {p.min():.3g}, max {p.max():.3g}); apply softmax first")
    sums = p.sum(axis=1)
    if np.max(np.abs(sums - 1.0)) > _SUM_TOL:
        raise ValueError(f"probs rows must sum to 1 (worst row sums to {sums[np.argmax(np.abs(sums - 1))]:.4g})")
    return np.clip(p, 0.0, 1.0)


def as_labels(labels: Any, num_samples: int | None = None, num_classes: int | None = None) -> np.ndarray:
    """Integer class indices as an int64 ``(N,)`` array; ``(N, 1)`` is flattened.

    Raises ``ValueError`` for non-integer values, a length other than ``num_samples`` or an index
    outside ``[0, num_classes)``.
    """
    y = to_numpy(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"labels must have shape (N,), got {y.shape}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError("labels must be integer class indices")
    elif y.dtype.kind not in "iub":
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if num_samples is not None and y.shape[0] != num_samples:
        raise ValueError(f"labels has {y.shape[0]} samples but probs has {num_samples}")
    if num_classes is not None and y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{y.min()}, {y.max()}]")
    return y
