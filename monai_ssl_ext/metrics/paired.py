"""Does a method beat a baseline? Paired differences of two runs on the same test images, with bootstrap intervals.

A semi-supervised run and the supervised-only run of the same seed share the labeled subset and the
test images, so their figures are compared *paired*: the difference is computed on the same images
and its uncertainty estimated by resampling the test images - with the **same** resampled images
for both runs - so that what the two runs have in common (a hard image is hard for both) cancels
instead of widening the interval, as it would if the two runs' intervals were merely compared.

- :func:`paired_difference`: one run against its baseline (one seed).
- :func:`paired_difference_over_seeds`: several seeds, each run against the baseline of its seed;
  the figure is the mean over the seeds of the per-seed differences.

Both read :class:`~monai_ssl_ext.metrics.predictions.SplitPredictions` (or the ``predictions.json``
path / eval folder written by :func:`~monai_ssl_ext.metrics.evaluate_predictions`) and return a
:class:`PairedDifference` per metric.

**Same figures as the report.** Every figure, on the full test set and on each resample, is
computed by the report's own functions (:func:`~monai_ssl_ext.metrics.classification_metrics`,
:func:`~monai_ssl_ext.metrics.segmentation.segmentation_metrics_from_counts`: the mean per-image
Dice of :func:`~monai_ssl_ext.metrics.segmentation_metrics`), so the point estimate is exactly the
difference of the two runs' ``metrics.json`` figures (for several seeds: of their means over seeds).

**Pairing is checked, not assumed.** Both runs are put in image-id order and must have the same
image ids (source paths), the same labels, class names and positive class; otherwise
:class:`PairingError` (a ``ValueError``) says which image differs.

**Interval.** A percentile bootstrap (BCa is not needed at these sample sizes for a decision aid):
``n_resamples`` (2000) resamples of the test images with replacement, drawn from
``numpy.random.default_rng(seed)`` with a fixed ``seed`` (0), so the same inputs always give the same
interval. The image draws depend only on the seed, the number of resamples and the number of test
images, which also lets a run's bootstrap distribution be computed once and reused against every
other run of the same test set (an in-process cache keyed by the predictions' content).

**Degenerate resamples.** A resample may miss a class. The report functions handle this their own
way and never raise: balanced accuracy averages the recall over the classes present, macro-F1 over
the classes present or predicted, AUC is NaN when the labels of a binary task hold one class (in
a multiclass task it averages the classes that are defined), Dice over non-empty images is NaN
without a non-empty image. A resample where either run's figure is NaN (for any seed) is left out:
the bounds are ``numpy.nanpercentile`` over the defined resamples, and
:attr:`PairedDifference.n_undefined` says how many were left out (a large count means the interval
is conditional on the rare class being drawn and should be read with care).

**Several seeds: joint resampling of the test images, seeds held fixed.** In a benchmark every
seed draws its own labeled subset, but all seeds are tested on the *same* test images. Each
bootstrap replicate therefore draws one resample of the test images and applies it to every seed
(and to both runs of each seed), then averages the per-seed differences. We chose this over the
two-level bootstrap (resample seeds, then images within each seed) because:

- resampling the images independently within each seed would treat the seeds' test sets as
  independent samples, while they are one sample: an image that favours one method tends to do so
  for every seed, and independent draws would average that shared test-set noise away and give an
  interval that is too narrow;
- resampling seeds needs many seeds to mean anything: with the 3-5 seeds a benchmark runs, a seed
  resample takes only a handful of distinct values (10 multisets of 3 seeds), and the percentile
  interval of a mean over so few resampled values is both coarse and too narrow (by about
  ``sqrt((S - 1) / S)``).

What the interval covers, then, is the uncertainty due to the finite test set, for the labeled
subsets (and training runs) that were drawn; it does not include the variation between labeled
subsets. That variation is visible in the per-seed differences (``per_seed``, and the per-seed rows
of the benchmark table). ``resample_seeds=True`` adds it approximately: each replicate also draws
the seeds with replacement (a crossed bootstrap of seeds x images), at the cost described above.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from monai_ssl_ext.metrics.classification import classification_metrics
from monai_ssl_ext.metrics.predictions import SplitPredictions, load_predictions
from monai_ssl_ext.metrics.segmentation import segmentation_metrics_from_counts

__all__ = [
    "CLASSIFICATION_METRICS",
    "DEFAULT_RESAMPLES",
    "DEFAULT_SEED",
    "DIFFERENCE_METRICS",
    "SEGMENTATION_METRICS",
    "PairedDifference",
    "PairingError",
    "available_metrics",
    "bootstrap_indices",
    "bootstrap_metrics",
    "pair_runs",
    "paired_difference",
    "paired_difference_over_seeds",
    "split_metrics",
]

# the figures compared by default, in the order of the results tables
DIFFERENCE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc", "dice", "iou")
CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc", "sensitivity", "specificity", "ece")
SEGMENTATION_METRICS = ("dice", "iou", "dice_nonempty", "iou_nonempty")
DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0

RunLike = SplitPredictions | str | os.PathLike


class PairingError(ValueError):
    """Two runs that cannot be compared image by image (different images, labels or classes)."""


@dataclass(frozen=True)
class PairedDifference:
    """The difference ``run - baseline`` of one metric and its bootstrap percentile interval.

    Attributes:
        metric: the metric's key (as in ``metrics.json``).
        estimate: the difference on the full test set (mean over seeds of the per-seed differences).
        low, high: bounds of the ``confidence`` percentile interval (NaN when no resample is defined).
        confidence: e.g. 0.95.
        n_resamples: bootstrap replicates drawn.
        n_undefined: replicates left out because the metric was undefined (NaN) in one of them.
        per_seed: the difference of each seed, in the order the runs were given.
        resample_seeds: whether the replicates also resampled the seeds.
    """

    metric: str
    estimate: float
    low: float
    high: float
    confidence: float
    n_resamples: int
    n_undefined: int
    per_seed: tuple[float, ...]
    resample_seeds: bool = False

    @property
    def num_seeds(self) -> int:
        return len(self.per_seed)

    @property
    def excludes_zero(self) -> bool:
        """The interval lies entirely above or entirely below zero."""
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _load(run: RunLike) -> SplitPredictions:
    return run if isinstance(run, SplitPredictions) else load_predictions(run)


def _name(run: SplitPredictions, default: str) -> str:
    return run.source or default


def available_metrics(run: SplitPredictions) -> tuple[str, ...]:
    """The metrics a run's predictions define: classification figures, and Dice/IoU when it segments."""
    seg = SEGMENTATION_METRICS if run.seg_counts is not None else ()
    binary = len(run.class_names) == 2
    cls = tuple(m for m in CLASSIFICATION_METRICS if binary or m not in ("sensitivity", "specificity"))
    return cls + seg


def _figures(run: SplitPredictions, idx: np.ndarray | None, metrics: Sequence[str], names: bool) -> list[float]:
    """The report's figures ``metrics`` of ``run`` on the images ``idx`` (all when ``None``)."""
    values: dict[str, Any] = {}
    if any(m in CLASSIFICATION_METRICS for m in metrics):
        probs = run.probs if idx is None else run.probs[idx]
        labels = run.labels if idx is None else run.labels[idx]
        values.update(
            classification_metrics(probs, labels, run.class_names if names else None, positive_class=run.positive_class)
        )
    if any(m in SEGMENTATION_METRICS for m in metrics):
        if run.seg_counts is None:
            raise KeyError("the predictions hold no segmentation counts")
        counts = run.seg_counts if idx is None else tuple(c[idx] for c in run.seg_counts)
        values.update(segmentation_metrics_from_counts(*counts))
    return [float(values[m]) for m in metrics]


def split_metrics(run: RunLike, metrics: Sequence[str] | None = None) -> dict[str, float]:
    """The figures of a run on its whole split, as the report computes them (``metrics.json``)."""
    pred = _load(run)
    keys = (
        tuple(metrics) if metrics is not None else tuple(m for m in DIFFERENCE_METRICS if m in available_metrics(pred))
    )
    _check_metrics(keys, [pred])
    return dict(zip(keys, _figures(pred, None, keys, names=True), strict=True))


def pair_runs(run: RunLike, baseline: RunLike) -> tuple[SplitPredictions, SplitPredictions]:
    """Both runs in image-id order, after checking they hold the same images, labels and classes.

    Raises:
        PairingError: different image ids (or numbers of images), labels, class names or positive
            class; the message names an image found in one run only, or the first with another label.
    """
    a, b = _load(run).in_id_order(), _load(baseline).in_id_order()
    what = f"{_name(a, 'run')} and {_name(b, 'baseline')}"
    if not np.array_equal(a.image_ids, b.image_ids):
        parts = [
            f"{extra.size} only in the {side}, e.g. '{extra[0]}'"
            for side, extra in (
                ("run", np.setdiff1d(a.image_ids, b.image_ids)),
                ("baseline", np.setdiff1d(b.image_ids, a.image_ids)),
            )
            if extra.size
        ] or ["the same ids, some repeated a different number of times"]
        raise PairingError(
            f"not evaluated on the same test images ({a.num_images} vs {b.num_images} images; "
            f"{'; '.join(parts)}): {what}"
        )
    if a.class_names != b.class_names:
        raise PairingError(f"different classes, {list(a.class_names)} vs {list(b.class_names)}: {what}")
    differ = np.flatnonzero(a.labels != b.labels)
    if differ.size:
        i = differ[0]
        raise PairingError(
            f"same image ids but different labels for {differ.size} images, e.g. '{a.image_ids[i]}': "
            f"{a.labels[i]} vs {b.labels[i]}: {what}"
        )
    if len(a.class_names) == 2 and a.positive_class != b.positive_class:
        raise PairingError(f"different positive classes, {a.positive_class} vs {b.positive_class}: {what}")
    return a, b


def bootstrap_indices(num_images: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """``(n_resamples, num_images)`` image indices drawn with replacement from ``default_rng(seed)``."""
    if num_images < 1 or n_resamples < 1:
        raise ValueError(f"need at least one image and one resample, got {num_images} and {n_resamples}")
    return np.random.default_rng(seed).integers(0, num_images, size=(n_resamples, num_images))


def bootstrap_metrics(run: RunLike, indices: np.ndarray, metrics: Sequence[str]) -> dict[str, np.ndarray]:
    """The report's figures of ``run`` on each resample ``indices[b]``: ``{metric: (B,) float64}`` (NaN: undefined)."""
    pred = _load(run)
    values = np.array([_figures(pred, idx, metrics, names=False) for idx in np.asarray(indices)])
    values = values.reshape(len(indices), len(metrics))
    return {m: values[:, k] for k, m in enumerate(metrics)}


_CACHE: OrderedDict[tuple, dict[str, np.ndarray]] = OrderedDict()
_CACHE_SIZE = 256


def _distribution(
    run: SplitPredictions, n_resamples: int, seed: int, metrics: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """:func:`bootstrap_metrics` on the standard draws, cached: a baseline is compared with every method."""
    key = (run.fingerprint(), n_resamples, seed, metrics)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    dist = bootstrap_metrics(run, bootstrap_indices(run.num_images, n_resamples, seed), metrics)
    for v in dist.values():
        v.flags.writeable = False
    _CACHE[key] = dist
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return dist


def _check_metrics(metrics: Sequence[str], runs: Sequence[SplitPredictions]) -> None:
    for run in runs:
        missing = [m for m in metrics if m not in available_metrics(run)]
        if missing:
            raise KeyError(
                f"{_name(run, 'a run')} does not define {missing} (available: {list(available_metrics(run))})"
            )


def paired_difference(
    run: RunLike,
    baseline: RunLike,
    metrics: Sequence[str] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = 0.95,
) -> dict[str, PairedDifference]:
    """``run - baseline`` on the same test images, per metric, with a paired bootstrap percentile interval.

    Args:
        run, baseline: :class:`SplitPredictions`, or a ``predictions.json`` path or the eval folder
            holding it.
        metrics: metric keys (default: those of :data:`DIFFERENCE_METRICS` both runs define).
        n_resamples: bootstrap replicates.
        seed: seed of the resampling RNG (fixed: the same inputs give the same interval).
        confidence: coverage of the percentile interval.

    Raises:
        PairingError: the runs were not evaluated on the same images (see :func:`pair_runs`).
    """
    return paired_difference_over_seeds([run], [baseline], metrics, n_resamples, seed, confidence)


def paired_difference_over_seeds(
    runs: Sequence[RunLike],
    baselines: Sequence[RunLike],
    metrics: Sequence[str] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    confidence: float = 0.95,
    resample_seeds: bool = False,
) -> dict[str, PairedDifference]:
    """Mean over seeds of ``runs[k] - baselines[k]``, with a bootstrap interval over the shared test images.

    Each replicate resamples the test images once and applies the draw to every seed and both runs
    of each seed (see the module docstring for why the seeds are held fixed by default).

    Args:
        runs, baselines: one run and its baseline per seed (same labeled subset), as in
            :func:`paired_difference`. All seeds must have been tested on the same images.
        metrics, n_resamples, seed, confidence: as in :func:`paired_difference`.
        resample_seeds: also draw the seeds with replacement in each replicate (crossed bootstrap).

    Raises:
        PairingError: a run and its baseline, or two seeds, were not evaluated on the same images.
        KeyError: a requested metric is not defined by every run (Dice without segmentation).
    """
    if len(runs) != len(baselines) or not runs:
        raise ValueError(f"need one baseline per run, got {len(runs)} runs and {len(baselines)} baselines")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    pairs = [pair_runs(r, b) for r, b in zip(runs, baselines, strict=True)]
    reference = pairs[0][1]
    for k, (_, b) in enumerate(pairs[1:], 1):
        if not (np.array_equal(b.image_ids, reference.image_ids) and np.array_equal(b.labels, reference.labels)):
            raise PairingError(
                f"seed {k} was tested on other images than seed 0 ({_name(b, 'a baseline')} vs "
                f"{_name(reference, 'a baseline')}): the joint bootstrap over seeds needs one test set"
            )
    every = [run for pair in pairs for run in pair]
    if metrics is None:
        keys = tuple(m for m in DIFFERENCE_METRICS if all(m in available_metrics(r) for r in every))
    else:
        keys = tuple(metrics)
        _check_metrics(keys, every)

    # point estimates: the report's figures on the full test set
    per_seed = np.array(
        [np.subtract(_figures(a, None, keys, names=True), _figures(b, None, keys, names=True)) for a, b in pairs]
    ).reshape(len(pairs), len(keys))
    # (S, B) per metric: the same image draws for every seed and both runs of a seed
    diffs = {m: np.empty((len(pairs), n_resamples)) for m in keys}
    for s, (a, b) in enumerate(pairs):
        da, db = _distribution(a, n_resamples, seed, keys), _distribution(b, n_resamples, seed, keys)
        for m in keys:
            diffs[m][s] = da[m] - db[m]
    if resample_seeds:
        # a stream of its own: the image draws stay those of resample_seeds=False
        chosen = np.random.default_rng([seed, 1]).integers(0, len(pairs), size=(n_resamples, len(pairs)))
        columns = np.arange(n_resamples)[:, None]

    tail = 100.0 * (1.0 - confidence) / 2.0
    out: dict[str, PairedDifference] = {}
    for k, m in enumerate(keys):
        d = diffs[m]
        stat = d[chosen, columns].mean(axis=1) if resample_seeds else d.mean(axis=0)  # NaN if a seed is undefined
        defined = np.isfinite(stat)
        low, high = (
            (float(v) for v in np.nanpercentile(stat, [tail, 100.0 - tail])) if defined.any() else (math.nan, math.nan)
        )
        out[m] = PairedDifference(
            metric=m,
            estimate=float(per_seed[:, k].mean()),
            low=low,
            high=high,
            confidence=confidence,
            n_resamples=n_resamples,
            n_undefined=int((~defined).sum()),
            per_seed=tuple(float(v) for v in per_seed[:, k]),
            resample_seeds=resample_seeds,
        )
    return out
