"""The evaluation-report handler: collects a ``SupervisedEvaluator``'s predictions over one split and writes
the report of :func:`monai_ssl_ext.metrics.evaluate_predictions` (``metrics.json`` and figures) at the end."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from monai_ssl_ext.keys import DataKeys, OutputKeys
from monai_ssl_ext.metrics.inputs import to_numpy
from monai_ssl_ext.metrics.report import evaluate_predictions
from monai_ssl_ext.utils.distributed import get_world_size, is_dist, is_main_process

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["EvaluationReport"]

_PRED = "pred"  # monai.utils.CommonKeys.PRED: where SupervisedEvaluator puts the network output


def _pred_parts(pred: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(class logits, seg logits) of a network output: a class-logit tensor or a dict (see ``as_output_dict``)."""
    if isinstance(pred, Mapping):
        return pred.get(OutputKeys.CLASS), pred.get(OutputKeys.SEG)
    if isinstance(pred, torch.Tensor):
        if pred.ndim <= 2:  # (C,) decollated or (B, C) batched
            return pred, None
        raise ValueError(f"EvaluationReport needs class logits; got a prediction of shape {tuple(pred.shape)}")
    raise TypeError(f"EvaluationReport cannot read a prediction of type {type(pred).__name__}")


def _label_index(value: Any, num_classes: int) -> int | None:
    """A class index from a per-sample label: a scalar, or a one-hot / soft vector of ``num_classes``."""
    if value is None:
        return None
    arr = np.asarray(to_numpy(value)).reshape(-1)
    if arr.size == 1:
        return int(arr[0])
    if arr.size == num_classes and num_classes > 1:
        return int(arr.argmax())
    return None  # a mask or another target: not a class label


def _foreground(seg: np.ndarray, logits: bool) -> np.ndarray:
    """``(K, H, W)`` seg output -> ``(H, W)`` bool: any non-background class wins the arg-max."""
    if seg.shape[0] == 1:  # a single sigmoid channel
        return seg[0] > (0.0 if logits else 0.5)
    return seg.argmax(axis=0) > 0


def _true_foreground(mask: Any) -> np.ndarray:
    m = np.asarray(to_numpy(mask))
    if m.ndim == 3 and m.shape[0] > 1:  # one-hot (K, H, W)
        return m.argmax(axis=0) > 0
    if m.ndim == 3:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"EvaluationReport expects masks of shape (1, H, W), got {m.shape}")
    return m > 0


def _unit_range(image: Any) -> np.ndarray:
    # network inputs are normalised (z-score, ImageNet statistics...): stretch each image for display
    img = np.asarray(to_numpy(image), dtype=np.float32)
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def _source_of(image: Any, meta: Any) -> str | None:
    """The source file of one image: its MetaTensor's or its meta dict's ``filename_or_obj``."""
    meta = getattr(image, "meta", None) or meta
    src = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    if isinstance(src, (list, tuple)) and len(src) == 1:
        src = src[0]
    return str(src) if isinstance(src, (str, os.PathLike)) and str(src) else None


def _image_ids(output: Any, batch: Any, size: int) -> list[str | None]:
    """The source path of each sample (``None`` where unknown), from the output's or the batch's images."""
    meta_key = f"{DataKeys.IMAGE}_meta_dict"
    for source in (output, batch):
        ids: list[str | None] = []
        if isinstance(source, list) and len(source) == size and all(isinstance(d, Mapping) for d in source):
            ids = [_source_of(d.get(DataKeys.IMAGE), d.get(meta_key)) for d in source]
        elif isinstance(source, Mapping):  # batched: the meta holds one path per sample
            image = source.get(DataKeys.IMAGE)
            meta = getattr(image, "meta", None) or source.get(meta_key)
            src = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
            src = [src] if isinstance(src, (str, os.PathLike)) else src
            if isinstance(src, (list, tuple)) and len(src) == size:
                ids = [str(s) if str(s) else None for s in src]
        if ids and all(i is not None for i in ids):
            return ids
    return [None] * size


def _per_sample(container: Any, key: str) -> list[Any] | None:
    """The per-sample values of ``key`` in a decollated list of dicts or a batched dict (None if absent)."""
    if isinstance(container, list):
        if not container or not all(isinstance(d, Mapping) and key in d for d in container):
            return None
        return [d[key] for d in container]
    if isinstance(container, Mapping) and key in container and container[key] is not None:
        value = container[key]
        if isinstance(value, Mapping):  # a dict of batched tensors (a network's dict output)
            size = len(next(iter(value.values())))
            return [{k: v[i] for k, v in value.items()} for i in range(size)]
        return list(value) if isinstance(value, (torch.Tensor, np.ndarray, list, tuple)) else None
    return None


class EvaluationReport:
    """Handler of a MONAI ``SupervisedEvaluator`` that writes the evaluation report of the run.

    Over the evaluator's iterations it keeps, per sample, the softmax of the class logits, the
    class label and, when the network also returns a segmentation map and the batch has a ``mask``,
    the predicted foreground (arg-max over the seg channels, any non-background class) and the true
    mask, plus the first ``max_overlay_images`` images. At ``COMPLETED`` it gathers them from all
    ranks, computes the metrics with :func:`~monai_ssl_ext.metrics.evaluate_predictions`, stores the report dict on
    ``engine.state.metrics_report`` (every rank) and writes the files (rank 0), ``predictions.json`` among
    them: per image its source path (the image's ``filename_or_obj`` metadata), label, probabilities and
    Dice counts, which :mod:`monai_ssl_ext.metrics.paired` reads to compare two runs image by image.

    ``engine.state.output`` may be decollated (MONAI's default: a list of per-sample dicts) or a
    dict of batched tensors. Its ``pred`` is class logits ``(B, C)``, or a dict with ``class``
    ``(B, C)`` and optionally ``seg`` ``(B, K, H, W)`` logits (see ``networks.as_output_dict``).
    The label is read from the output's ``label`` (a class index, or a one-hot vector), falling
    back to the batch's ``label``; masks ``(1, H, W)`` from the output's or the batch's ``mask``.

    Distributed evaluation: ``torch.utils.data.DistributedSampler`` pads the split with repeated
    samples so that every rank gets the same count; use ``monai.data.DistributedSampler(even_divisible=False)``
    for exact figures. The gather uses ``all_gather_object``, which with NCCL needs
    ``torch.cuda.set_device(local_rank)`` (as every MONAI multi-GPU config does).

    Args:
        output_dir: folder of the report files.
        class_names: class names, in class-index order.
        split: split name written into the report.
        prefix: prepended to the file names.
        positive_class: positive class of a binary task.
        extra: provenance stored in the JSON (checkpoint, bundle version, manifest...).
        logger_name: logger of the summary table.
        logits: predictions are logits (softmax applied here); set ``False`` when the evaluator's
            postprocessing already produced probabilities.
        max_overlay_images: images kept for ``mask_overlays.png``.
        plots: write the PNG figures.
        class_levels: ordinal severity level of each class, for the report's ``severity`` section; when the
            network's output also holds ``features`` (its encoder's pooled representation), the section gets the
            representation's ``rank_correlation`` (:func:`~monai_ssl_ext.metrics.severity_rank_correlation`).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_names: Sequence[str],
        split: str = "test",
        prefix: str = "",
        positive_class: int = 1,
        extra: Mapping[str, Any] | None = None,
        logger_name: str = "monai_ssl_ext.evaluation",
        logits: bool = True,
        max_overlay_images: int = 16,
        plots: bool = True,
        class_levels: Sequence[int] | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = [str(n) for n in class_names]
        self.split = split
        self.prefix = prefix
        self.positive_class = positive_class
        self.extra = dict(extra or {})
        self.logger_name = logger_name
        self.logits = logits
        self.max_overlay_images = max_overlay_images
        self.plots = plots
        self.class_levels = None if class_levels is None else [int(v) for v in class_levels]
        self.reset()

    def attach(self, engine: Engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        engine.add_event_handler(Events.COMPLETED, self.complete)

    def reset(self, engine: Engine | None = None) -> None:
        """Forget the collected predictions (called when the evaluator starts a run)."""
        self._probs: list[np.ndarray] = []
        self._labels: list[int] = []
        self._pred_masks: list[np.ndarray] = []
        self._true_masks: list[np.ndarray] = []
        self._images: list[np.ndarray] = []
        self._ids: list[str | None] = []
        self._features: list[np.ndarray] = []

    def update(self, engine: Engine) -> None:
        """Collect the predictions of one iteration from ``engine.state.output`` and ``engine.state.batch``."""
        self.collect(engine.state.output, getattr(engine.state, "batch", None))

    def collect(self, output: Any, batch: Any = None) -> None:
        """Collect one iteration's output (decollated list or batched dict) and, for labels/masks, its batch."""
        preds = _per_sample(output, _PRED)
        if preds is None:
            raise KeyError(f"EvaluationReport: the engine output has no '{_PRED}' entry")
        num_classes = len(self.class_names)
        parts = [_pred_parts(p) for p in preds]
        if any(c is None for c, _ in parts):
            raise KeyError(f"EvaluationReport: the prediction has no '{OutputKeys.CLASS}' output")
        logits = torch.stack([torch.as_tensor(c).detach().float().reshape(-1).cpu() for c, _ in parts])
        if logits.shape[1] != num_classes:
            raise ValueError(f"EvaluationReport: {logits.shape[1]} class outputs for {num_classes} class names")
        probs = torch.softmax(logits, dim=1) if self.logits else logits
        labels = self._labels_of(output, batch, len(preds), num_classes)

        seg = [s for _, s in parts]
        masks = _per_sample(output, DataKeys.MASK) or _per_sample(batch, DataKeys.MASK)
        if all(s is not None for s in seg) and masks is not None:
            if len(masks) != len(seg):
                raise ValueError(f"EvaluationReport: {len(masks)} masks for {len(seg)} predictions")
            images = _per_sample(output, DataKeys.IMAGE) or _per_sample(batch, DataKeys.IMAGE) or []
            for i, (s, m) in enumerate(zip(seg, masks, strict=True)):
                pred_fg = _foreground(np.asarray(to_numpy(s), dtype=np.float32), self.logits)
                true_fg = _true_foreground(m)
                if pred_fg.shape != true_fg.shape:
                    raise ValueError(
                        f"EvaluationReport: segmentation output {pred_fg.shape} and mask {true_fg.shape} "
                        "differ in size; resample one to the other before evaluation"
                    )
                self._pred_masks.append(pred_fg)
                self._true_masks.append(true_fg)
                if len(self._images) < self.max_overlay_images and i < len(images):
                    self._images.append(_unit_range(images[i]))
        features = [p.get(OutputKeys.FEATURES) if isinstance(p, Mapping) else None for p in preds]
        if self.class_levels is not None and all(f is not None for f in features):
            self._features.extend(np.asarray(to_numpy(f), dtype=np.float32).reshape(-1) for f in features)
        self._probs.append(probs.numpy())
        self._labels.extend(labels)
        self._ids.extend(_image_ids(output, batch, len(preds)))

    def _labels_of(self, output: Any, batch: Any, size: int, num_classes: int) -> list[int]:
        for source in (output, batch):
            values = _per_sample(source, DataKeys.LABEL)
            if values is None or len(values) != size:
                continue
            labels = [_label_index(v, num_classes) for v in values]
            if all(lb is not None for lb in labels):
                return labels  # type: ignore[return-value]
        raise KeyError("EvaluationReport: no class label per sample in the output's or the batch's 'label'")

    def _gathered(self) -> dict[str, Any]:
        local = {
            "probs": np.concatenate(self._probs) if self._probs else np.zeros((0, len(self.class_names))),
            "labels": np.asarray(self._labels, dtype=np.int64),
            "pred_masks": self._pred_masks,
            "true_masks": self._true_masks,
            "ids": list(self._ids),
            "features": list(self._features),
        }
        if not is_dist() or get_world_size() == 1:
            return local
        # ranks hold different numbers of samples (and maybe image sizes): gather picklable objects
        parts: list[Any] = [None] * get_world_size()
        dist.all_gather_object(parts, local)
        return {
            "probs": np.concatenate([p["probs"] for p in parts]),
            "labels": np.concatenate([p["labels"] for p in parts]),
            "pred_masks": [m for p in parts for m in p["pred_masks"]],
            "true_masks": [m for p in parts for m in p["true_masks"]],
            "ids": [i for p in parts for i in p["ids"]],
            "features": [f for p in parts for f in p["features"]],
        }

    def complete(self, engine: Engine | None = None) -> dict[str, Any]:
        """Gather, compute and write the report; returns it and sets ``engine.state.metrics_report``."""
        data = self._gathered()
        if data["labels"].size == 0:
            raise RuntimeError(f"EvaluationReport: no predictions were collected on split '{self.split}'")
        # every image has a mask or none has: a partial set would bias Dice towards the batches that had one
        has_seg = len(data["pred_masks"]) == data["labels"].size
        if data["pred_masks"] and not has_seg:
            logging.getLogger(self.logger_name).warning(
                f"EvaluationReport: masks for {len(data['pred_masks'])} of {data['labels'].size} samples; "
                "segmentation figures are computed over those samples only"
            )
        main = is_main_process()
        report = evaluate_predictions(
            data["probs"],
            data["labels"],
            self.class_names,
            self.output_dir if main else None,
            pred_masks=data["pred_masks"] or None,
            true_masks=data["true_masks"] or None,
            images=self._images or None,
            split=self.split,
            prefix=self.prefix,
            positive_class=self.positive_class,
            extra=self.extra,
            max_overlay_images=self.max_overlay_images,
            plots=self.plots,
            logger_name=self.logger_name if main else None,
            class_levels=self.class_levels,
            # the source paths pair the images of two runs; positions when some image has none
            image_ids=data["ids"] if all(i is not None for i in data["ids"]) else None,
            # a representation of every image, or none: a partial set would rank a subset
            embeddings=np.stack(data["features"]) if len(data["features"]) == data["labels"].size else None,
        )
        if engine is not None:
            engine.state.metrics_report = report
        return report
