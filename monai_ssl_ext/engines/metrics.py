"""An ignite metric over whole-epoch predictions, for validation-based model selection."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.metrics import Metric
from monai.handlers import from_engine

from monai_ssl_ext.keys import OutputKeys
from monai_ssl_ext.utils.distributed import all_gather_objects

__all__ = [
    "ClassificationMetric",
    "SegmentationMetric",
    "SeverityRankCorrelation",
    "class_logits",
    "seg_logits",
    "selection_metric",
]


def class_logits(pred: Any) -> torch.Tensor:
    """Class logits from a prediction that is a tensor or a dict with a ``class`` entry."""
    if isinstance(pred, dict):
        if OutputKeys.CLASS not in pred:
            raise KeyError(f"prediction has no '{OutputKeys.CLASS}' output (keys: {sorted(pred)})")
        return pred[OutputKeys.CLASS]
    return pred


class ClassificationMetric(Metric):
    """One figure of :func:`monai_ssl_ext.metrics.classification_metrics` over an evaluator's epoch.

    Rank statistics (AUC) and class-balanced figures are not averages of per-batch values, so the
    metric keeps every sample's probabilities and label, gathers them from all ranks, and computes
    the figure once at the end of the epoch.

    Args:
        metric: key of the figure (``auc``, ``accuracy``, ``balanced_accuracy``, ``macro_f1``...).
        output_transform: maps ``engine.state.output`` to ``(pred, label)``; predictions may be
            logits ``(C,)``/``(B, C)`` or dicts with a ``class`` entry (decollated lists are fine).
        positive_class: positive class of binary tasks (for sensitivity/specificity).
        class_levels: ``(C,)`` severity level of each class; with it, the ordinal figures of
            :func:`monai_ssl_ext.metrics.severity_metrics` are available as ``severity_mae``,
            ``severity_expected_level_mae`` and ``severity_level_accuracy``.
    """

    def __init__(
        self,
        metric: str = "auc",
        output_transform: Callable = from_engine(["pred", "label"]),
        positive_class: int = 1,
        device: str | torch.device = "cpu",
        class_levels: Sequence[int] | None = None,
    ) -> None:
        self.metric = metric
        self.positive_class = positive_class
        self.class_levels = None if class_levels is None else [int(v) for v in class_levels]
        self._probs: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._probs = []
        self._labels = []

    def update(self, output: Sequence[Any]) -> None:
        preds, labels = output
        if isinstance(preds, (list, tuple)):
            logits = torch.stack([class_logits(p).detach().float().reshape(-1) for p in preds])
            labels = torch.stack([torch.as_tensor(lb).reshape(-1)[0] for lb in labels])
        else:
            logits = class_logits(preds).detach().float()
            labels = torch.as_tensor(labels).reshape(-1)
        self._probs.append(torch.softmax(logits, dim=1).cpu())
        self._labels.append(labels.long().cpu())

    def compute(self) -> float:
        from monai_ssl_ext.metrics import classification_metrics

        # ranks may hold different numbers of samples (a validation set not divisible by the world size)
        parts = all_gather_objects((self._probs, self._labels))
        probs_parts = [p for rank_probs, _ in parts for p in rank_probs]
        if not probs_parts:
            raise RuntimeError("ClassificationMetric has no data: did the evaluator run on an empty split?")
        probs = torch.cat(probs_parts)
        labels = torch.cat([lb for _, rank_labels in parts for lb in rank_labels])
        figures = classification_metrics(probs.numpy(), labels.numpy(), positive_class=self.positive_class)
        if self.class_levels is not None:
            from monai_ssl_ext.metrics import severity_metrics

            ordinal = severity_metrics(probs.numpy(), labels.numpy(), self.class_levels)
            figures.update({f"severity_{k}": v for k, v in ordinal.items() if k != "num_samples"})
        if self.metric not in figures:
            raise KeyError(f"unknown classification metric '{self.metric}'; available: {sorted(figures)}")
        return float(figures[self.metric])


class SeverityRankCorrelation(Metric):
    """Whether the network's representation orders the validation images by severity, over an evaluator's epoch.

    Keeps each sample's representation (the ``representation`` entry of a dict prediction, by default the
    encoder's pooled ``features``) and label, and computes
    :func:`~monai_ssl_ext.metrics.severity_rank_correlation` once at the end of the epoch: Spearman's
    correlation between each image's distance to the healthy reference and its severity level.

    Args:
        class_levels: ``(C,)`` severity level of each class.
        representation: key of the prediction holding ``(B, D)`` representations (``features`` or ``embedding``).
        output_transform: maps ``engine.state.output`` to ``(pred, label)`` (decollated lists are fine).
    """

    def __init__(
        self,
        class_levels: Sequence[int],
        representation: str = OutputKeys.FEATURES,
        output_transform: Callable = from_engine(["pred", "label"]),
        device: str | torch.device = "cpu",
    ) -> None:
        self.class_levels = [int(v) for v in class_levels]
        self.representation = representation
        self._features: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        super().__init__(output_transform=output_transform, device=device)

    def _of(self, pred: Any) -> torch.Tensor:
        if not isinstance(pred, dict) or self.representation not in pred:
            keys = sorted(pred) if isinstance(pred, dict) else type(pred).__name__
            raise KeyError(f"SeverityRankCorrelation: the prediction has no '{self.representation}' output ({keys})")
        return pred[self.representation].detach().float().cpu()

    def reset(self) -> None:
        self._features = []
        self._labels = []

    def update(self, output: Sequence[Any]) -> None:
        preds, labels = output
        if isinstance(preds, (list, tuple)):
            features = torch.stack([self._of(p).reshape(-1) for p in preds])
            labels = torch.stack([torch.as_tensor(lb).reshape(-1)[0] for lb in labels])
        else:
            features = self._of(preds)
            features = features.reshape(features.shape[0], -1)
            labels = torch.as_tensor(labels).reshape(-1)
        self._features.append(features)
        self._labels.append(labels.long().cpu())

    def compute(self) -> float:
        from monai_ssl_ext.metrics import severity_rank_correlation

        parts = all_gather_objects((self._features, self._labels))
        features = [f for rank_features, _ in parts for f in rank_features]
        if not features:
            raise RuntimeError("SeverityRankCorrelation has no data: did the evaluator run on an empty split?")
        labels = torch.cat([lb for _, rank_labels in parts for lb in rank_labels])
        return severity_rank_correlation(torch.cat(features).numpy(), labels.numpy(), self.class_levels)


def seg_logits(pred: Any) -> torch.Tensor:
    """Segmentation logits ``(K, H, W)``/``(B, K, H, W)`` from a dict prediction with a ``seg`` entry."""
    if not isinstance(pred, dict) or OutputKeys.SEG not in pred:
        keys = sorted(pred) if isinstance(pred, dict) else f"a tensor of shape {tuple(pred.shape)}"
        raise KeyError(f"prediction has no '{OutputKeys.SEG}' output ({keys}): is the network a segmentation one?")
    return pred[OutputKeys.SEG]


def _per_item(container: Any, key: str) -> Any:
    """``key`` of a batched dict, or the list of ``key`` of a decollated list of dicts (``KeyError`` if absent)."""
    if isinstance(container, (list, tuple)):
        return [item[key] for item in container]
    return container[key]


class SegmentationMetric(Metric):
    """Mean per-image Dice or IoU of the predicted lesion over an evaluator's epoch.

    The foreground is every pixel whose arg-max is not background; an image whose prediction and
    mask are both empty scores 1 (as in :func:`monai_ssl_ext.metrics.segmentation_metrics`). Only
    per-image counts are kept, so memory does not grow with image size.

    Args:
        metric: ``"dice"`` or ``"iou"``.
        output_transform: maps ``engine.state.output`` to ``(pred, mask)``; ``pred`` a dict with ``seg``
            logits, ``mask`` ``(1, H, W)`` per sample (decollated lists or batched tensors). ``None``
            (default): ``pred`` from the output and ``mask`` from the output or, as MONAI's evaluators
            leave it, from the batch.
    """

    def __init__(
        self,
        metric: str = "dice",
        output_transform: Callable | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if metric not in ("dice", "iou"):
            raise ValueError(f"unknown segmentation metric '{metric}'; choose 'dice' or 'iou'.")
        self.metric = metric
        self._scores: list[float] = []
        self._from_output_only = output_transform is not None
        super().__init__(output_transform=output_transform or (lambda output: output), device=device)

    def iteration_completed(self, engine: Any) -> None:
        if self._from_output_only:
            super().iteration_completed(engine)
            return
        output, batch = engine.state.output, engine.state.batch
        try:
            masks = _per_item(output, "mask")
        except KeyError:
            masks = _per_item(batch, "mask")
        self.update((_per_item(output, "pred"), masks))

    def reset(self) -> None:
        self._scores = []

    def update(self, output: Sequence[Any]) -> None:
        preds, masks = output
        if not isinstance(preds, (list, tuple)):
            logits = seg_logits(preds)
            preds, masks = [{OutputKeys.SEG: s} for s in logits], list(masks)
        for pred, mask in zip(preds, masks, strict=True):
            if mask is None:
                raise ValueError("SegmentationMetric needs a mask for every image of the split.")
            fg = seg_logits(pred).detach().argmax(dim=0) > 0
            true = torch.as_tensor(mask).to(fg.device).reshape(fg.shape) > 0.5
            inter = float((fg & true).sum())
            total = float(fg.sum() + true.sum())
            if total == 0:
                self._scores.append(1.0)
            elif self.metric == "dice":
                self._scores.append(2.0 * inter / total)
            else:
                self._scores.append(inter / (total - inter))

    def compute(self) -> float:
        scores = [s for part in all_gather_objects(self._scores) for s in part]
        if not scores:
            raise RuntimeError("SegmentationMetric has no data: did the evaluator run on an empty split?")
        return float(sum(scores) / len(scores))


SEGMENTATION_METRICS = ("dice", "iou")


def selection_metric(name: str) -> Metric:
    """The validation metric a bundle selects checkpoints by, from its name.

    A classification figure (``auc``, ``accuracy``, ``macro_f1``...), a segmentation one (``dice``,
    ``iou``), or several joined by ``+`` for their mean (``auc+dice``: one checkpoint that is good at
    both tasks of a joint network).
    """
    from monai_ssl_ext.metrics.report import selection_parts

    parts = selection_parts(name)
    metrics = [SegmentationMetric(p) if p in SEGMENTATION_METRICS else ClassificationMetric(p) for p in parts]
    if len(metrics) == 1:
        return metrics[0]
    total = metrics[0]
    for m in metrics[1:]:
        total = total + m
    return total / len(metrics)
