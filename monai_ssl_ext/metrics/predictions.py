"""Per-image predictions of one evaluated split, kept beside ``metrics.json`` for later statistics.

:func:`~monai_ssl_ext.metrics.evaluate_predictions` writes ``<prefix>predictions.json`` next to
``<prefix>metrics.json``: per test image its identifier (the source file path), true class, class
probabilities and, when the model segments, the per-image counts ``|P n T|``, ``|P|`` and ``|T|``
from which :func:`~monai_ssl_ext.metrics.segmentation.segmentation_metrics_from_counts` recomputes
the report's Dice/IoU exactly (they are means of per-image figures, so the counts are all a resample
needs). Paired comparisons of two runs (:mod:`monai_ssl_ext.metrics.paired`) read these files.

The file is plain JSON (text, so benchmark records can be kept under version control and read
without numpy), written atomically. Probabilities that are single-precision values (as a network's
softmax gives them) are written with the shortest text that reads back to the same float32, and
``probs_dtype`` says so: reading gives the identical values. Keys:

- ``image_ids`` ``N`` str: source paths; ``"#<i>"`` (position in the split) when the evaluator
  had no file name for the images;
- ``labels`` ``N`` int, ``probs`` ``N x C`` (as the metrics read them), ``probs_dtype``;
- ``class_names`` ``C`` str, ``positive_class``, ``split``, ``format_version``;
- with segmentation: ``seg_intersection``, ``seg_pred_sum``, ``seg_true_sum`` ``N`` int.

Files of format 1 (``predictions.npz``, a numpy archive with the same keys) are still read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from monai_ssl_ext.metrics.inputs import as_labels, as_probs
from monai_ssl_ext.utils.atomic import atomic_open

__all__ = ["PREDICTIONS_FILE", "SplitPredictions", "load_predictions", "save_predictions"]

PREDICTIONS_FILE = "predictions.json"
#: the file name of format 1 (a numpy archive), read for runs evaluated before the text format
LEGACY_PREDICTIONS_FILE = "predictions.npz"
FORMAT_VERSION = 2
_SEG_KEYS = ("seg_intersection", "seg_pred_sum", "seg_true_sum")


@dataclass(frozen=True, eq=False)
class SplitPredictions:
    """The per-image predictions of one evaluated split (the content of ``predictions.json``).

    Attributes:
        image_ids: ``(N,)`` str identifiers (source paths).
        labels: ``(N,)`` int64 true classes.
        probs: ``(N, C)`` float64 class probabilities.
        class_names: the ``C`` class names.
        positive_class: positive class of a binary task (for AUC).
        seg_counts: per-image ``(|P n T|, |P|, |T|)`` or ``None`` when segmentation was not evaluated.
        split: the split's name.
        source: the file it was read from (empty when built in memory).
    """

    image_ids: np.ndarray
    labels: np.ndarray
    probs: np.ndarray
    class_names: tuple[str, ...]
    positive_class: int = 1
    seg_counts: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    split: str = ""
    source: str = ""

    @property
    def num_images(self) -> int:
        return int(self.labels.size)

    def take(self, indices: Any) -> SplitPredictions:
        """The predictions of the images at ``indices`` (a resample or a reordering)."""
        idx = np.asarray(indices, dtype=np.int64)
        seg = None if self.seg_counts is None else tuple(c[idx] for c in self.seg_counts)
        return SplitPredictions(
            self.image_ids[idx],
            self.labels[idx],
            self.probs[idx],
            self.class_names,
            self.positive_class,
            seg,  # type: ignore[arg-type]
            self.split,
            self.source,
        )

    def in_id_order(self) -> SplitPredictions:
        """The same predictions sorted by image id (stable): the canonical order for pairing two runs."""
        order = np.argsort(self.image_ids, kind="stable")
        return self if np.array_equal(order, np.arange(order.size)) else self.take(order)

    def fingerprint(self) -> str:
        """A hash of the content (ids, labels, probabilities, counts, classes), a cache key."""
        h = hashlib.sha1()
        h.update("\x1f".join(self.image_ids.tolist()).encode())
        h.update("\x1f".join(self.class_names).encode())
        h.update(str(self.positive_class).encode())
        for arr in (self.labels, self.probs, *(self.seg_counts or ())):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()


def _counts(seg_counts: Any, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    if seg_counts is None:
        return None
    arrays = tuple(np.asarray(c, dtype=np.int64).reshape(-1) for c in seg_counts)
    if len(arrays) != 3 or any(a.size != n for a in arrays):
        raise ValueError(f"seg_counts must be three arrays (|P n T|, |P|, |T|) of {n} images")
    return arrays  # type: ignore[return-value]


def save_predictions(
    path: str | os.PathLike,
    probs: Any,
    labels: Any,
    class_names: Sequence[str],
    image_ids: Sequence[str] | None = None,
    seg_counts: Sequence[Any] | None = None,
    positive_class: int = 1,
    split: str = "",
) -> Path:
    """Write the per-image predictions of a split to ``path`` (JSON) atomically; returns the path.

    Args:
        probs: ``(N, C)`` class probabilities (``(N,)``: binary, as in ``classification_metrics``).
        labels: ``(N,)`` class indices.
        class_names: ``C`` class names.
        image_ids: ``N`` identifiers (source paths); ``None``: ``"#0"``, ``"#1"``... (positions).
        seg_counts: per-image ``(|P n T|, |P|, |T|)`` (:func:`~monai_ssl_ext.metrics.segmentation.segmentation_counts`).
        positive_class: positive class of a binary task.
        split: the split's name.
    """
    p = as_probs(probs)
    y = as_labels(labels, p.shape[0], p.shape[1])
    n = p.shape[0]
    ids = [f"#{i}" for i in range(n)] if image_ids is None else [str(i) for i in image_ids]
    if len(ids) != n:
        raise ValueError(f"{len(ids)} image ids for {n} predictions")
    names = [str(c) for c in class_names]
    if len(names) != p.shape[1]:
        raise ValueError(f"{len(names)} class names for {p.shape[1]} classes")
    single = p.astype(np.float32)
    lossless = bool(np.array_equal(single.astype(np.float64), p))
    # float32 values are written as their shortest float32 text (a third of float64's), read back exactly
    probs_text = [[float(str(v)) for v in row] for row in single] if lossless else p.tolist()
    content: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "split": str(split),
        "class_names": names,
        "positive_class": int(positive_class),
        "probs_dtype": "float32" if lossless else "float64",
        "image_ids": ids,
        "labels": y.tolist(),
        "probs": probs_text,
    }
    counts = _counts(seg_counts, n)
    if counts is not None:
        content.update({k: c.tolist() for k, c in zip(_SEG_KEYS, counts, strict=True)})
    with atomic_open(path, "w") as f:
        json.dump(content, f, separators=(",", ":"))
    return Path(path)


def _read_file(file: Path) -> dict[str, Any]:
    """The stored keys of a predictions file, JSON or a format-1 numpy archive, as plain values."""
    if file.suffix == ".npz":
        with np.load(file, allow_pickle=False) as data:
            content: dict[str, Any] = {k: data[k] for k in data.files}
        content["format_version"] = int(content.get("format_version", 0))
        content["probs_dtype"] = "float64"
        return content
    try:
        content = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file}: not a predictions file ({err})") from None
    if not isinstance(content, dict) or "probs" not in content:
        raise ValueError(f"{file}: not a predictions file (no 'probs')")
    return content


def load_predictions(path: str | os.PathLike) -> SplitPredictions:
    """Read a file written by :func:`save_predictions`; a folder reads its ``predictions.json``
    (or the ``predictions.npz`` of a run evaluated before the text format)."""
    file = Path(path)
    if file.is_dir():
        file = file / PREDICTIONS_FILE if (file / PREDICTIONS_FILE).is_file() else file / LEGACY_PREDICTIONS_FILE
    if not file.is_file():
        raise FileNotFoundError(f"no per-image predictions at {file}")
    data = _read_file(file)
    version = int(data.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise ValueError(f"{file}: predictions format {version} is newer than this code reads ({FORMAT_VERSION})")
    probs = np.asarray(data["probs"], dtype=np.float32 if data["probs_dtype"] == "float32" else np.float64)
    seg = tuple(np.asarray(data[k], dtype=np.int64) for k in _SEG_KEYS) if _SEG_KEYS[0] in data else None
    return SplitPredictions(
        image_ids=np.asarray(data["image_ids"]).astype(str),
        labels=np.asarray(data["labels"]).astype(np.int64),
        probs=probs.astype(np.float64).reshape(len(data["labels"]), -1),
        class_names=tuple(str(c) for c in np.asarray(data["class_names"]).tolist()),
        positive_class=int(data["positive_class"]),
        seg_counts=seg,  # type: ignore[arg-type]
        split=str(data.get("split", "")),
        source=str(file),
    )
