"""Figures of an evaluation or a training run, drawn off-screen and written atomically as PNG.

Every function builds its own ``Figure`` on an Agg canvas instead of going through pyplot: plotting
from a training process never opens a window, never needs a display, leaves pyplot's list of open
figures (and the backend a notebook user chose) alone, and the figure is freed with its last
reference. :func:`monai_ssl_ext.utils.atomic.save_figure` writes the PNG.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from monai_ssl_ext.metrics.calibration import DEFAULT_BINS, ece_from_bins, reliability_data
from monai_ssl_ext.metrics.inputs import to_numpy
from monai_ssl_ext.utils.atomic import save_figure

__all__ = [
    "plot_confusion_matrix",
    "plot_mask_overlays",
    "plot_reliability_diagram",
    "plot_training_curves",
    "plot_validation_comparison",
]

# ground truth and prediction contours: green and magenta stay distinct with red-green colour blindness
TRUE_COLOUR = "#00e676"
PRED_COLOUR = "#ff2bd6"
PSEUDO_LABEL_KEYS = ("mask_rate", "pseudo_label_acc", "pseudo_label_acc_all", "threshold_mean")


def _figure(nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Figure, Any]:
    """A figure on its own Agg canvas and its axes (``squeeze`` as in ``pyplot.subplots``)."""
    fig = Figure(figsize=kwargs.pop("figsize", None))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def plot_confusion_matrix(
    cm: Any, class_names: Sequence[str], path: str | os.PathLike, normalize: bool = True, title: str | None = None
) -> Path:
    """Confusion matrix heat map (rows = true class, columns = predicted class).

    Args:
        cm: ``(C, C)`` counts.
        class_names: ``C`` names.
        path: output PNG.
        normalize: colour by row-normalised rates (the recall of each true class) and print the rate
            above the count in each cell; otherwise colour by counts.
        title: figure title.
    """
    counts = np.asarray(to_numpy(cm), dtype=np.int64)
    c = counts.shape[0]
    if counts.shape != (c, c) or len(class_names) != c:
        raise ValueError(f"confusion matrix {counts.shape} does not match {len(class_names)} class names")
    rows = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=np.float64), where=rows > 0)
    shown = rates if normalize else counts
    size = max(3.5, 0.9 * c + 2.0)
    fig, ax = _figure(figsize=(size + 1.0, size))
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else max(1, counts.max()))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class" if normalize else "count")
    threshold = (1.0 if normalize else max(1, counts.max())) / 2
    for i in range(c):
        for j in range(c):
            text = f"{rates[i, j]:.0%}\n({counts[i, j]})" if normalize else f"{counts[i, j]}"
            ax.text(
                j, i, text, ha="center", va="center", fontsize=9, color="white" if shown[i, j] > threshold else "black"
            )
    ax.set_xticks(
        range(c), labels=[str(n) for n in class_names], rotation=45 if c > 3 else 0, ha="right" if c > 3 else "center"
    )
    ax.set_yticks(range(c), labels=[str(n) for n in class_names])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or f"Confusion matrix (n={int(counts.sum())})")
    return save_figure(fig, path, close=False)


def plot_reliability_diagram(
    probs: Any, labels: Any, path: str | os.PathLike, n_bins: int = DEFAULT_BINS, title: str | None = None
) -> Path:
    """Reliability diagram (Guo et al. 2017): accuracy per confidence bin against the diagonal of
    perfect calibration, the gap to it shaded, and below it the number of samples per bin.

    Args:
        probs: ``(N, C)`` class probabilities.
        labels: ``(N,)`` class indices.
        path: output PNG.
        n_bins: equal-width confidence bins.
        title: figure title (the ECE is appended).
    """
    bins = reliability_data(probs, labels, n_bins)
    edges, acc, conf, count = bins["bin_edges"], bins["accuracy"], bins["confidence"], bins["count"]
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    filled = count > 0
    fig, (ax, ax_hist) = _figure(2, 1, figsize=(5, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    ax.bar(centers[filled], acc[filled], width=width, edgecolor="black", color="#4c72b0", alpha=0.85, label="accuracy")
    gap_bottom = np.minimum(acc[filled], conf[filled])
    ax.bar(
        conf[filled],
        np.abs(acc[filled] - conf[filled]),
        bottom=gap_bottom,
        width=width * 0.35,
        color="#dd5555",
        alpha=0.7,
        label="gap to mean confidence",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_aspect("auto")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"{title or 'Reliability diagram'} (ECE {ece_from_bins(bins):.3f}, n={int(count.sum())})")
    ax_hist.bar(centers, count, width=width, edgecolor="black", color="#8c8c8c")
    ax_hist.set_xlabel("confidence (largest class probability)")
    ax_hist.set_ylabel("samples")
    fig.tight_layout()
    return save_figure(fig, path, close=False)


def _display_image(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """``(C, H, W)`` in [0, 1] -> an array ``imshow`` understands and its colour map."""
    img = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    if img.ndim == 2:
        return img, "gray"
    if img.shape[0] == 1:
        return img[0], "gray"
    if img.shape[0] == 3:
        return np.moveaxis(img, 0, -1), None
    return img[0], "gray"  # other channel counts: the first channel is shown


def _squeeze_mask(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    while m.ndim > 2 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"masks must be (H, W) or (1, H, W) per image, got {np.asarray(mask).shape}")
    return m.astype(bool)


def _contour(ax: Any, mask: np.ndarray, colour: str) -> None:
    # an empty or full mask has no 0.5 level line; matplotlib would warn for each
    if mask.any() and not mask.all():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.5)


def plot_mask_overlays(
    images: Any,
    true_masks: Any,
    pred_masks: Any,
    path: str | os.PathLike,
    max_images: int = 16,
    titles: Sequence[str] | None = None,
) -> Path:
    """Grid of images with the ground-truth contour (green) and the predicted contour (magenta).

    Args:
        images: ``(N, C, H, W)`` float in ``[0, 1]`` (C = 1 grey or 3 RGB; values are clipped), or a
            sequence of ``(C, H, W)`` arrays.
        true_masks: ``(N, H, W)`` or ``(N, 1, H, W)`` binary ground truth.
        pred_masks: predicted masks of the same layout.
        path: output PNG.
        max_images: the first ``max_images`` images are drawn.
        titles: per-image titles (default: image index and its Dice).
    """
    from monai_ssl_ext.metrics.segmentation import dice_per_image

    imgs = [to_numpy(x) for x in images][:max_images]
    trues = [_squeeze_mask(to_numpy(m)) for m in true_masks][: len(imgs)]
    preds = [_squeeze_mask(to_numpy(m)) for m in pred_masks][: len(imgs)]
    n = len(imgs)
    if n == 0 or len(trues) != n or len(preds) != n:
        raise ValueError(f"plot_mask_overlays needs as many masks as images (got {n}, {len(trues)}, {len(preds)})")
    dice = dice_per_image(preds, trues)
    cols = min(n, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    fig, axes = _figure(rows, cols, figsize=(2.6 * cols, 2.8 * rows + 0.4), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        shown, cmap = _display_image(imgs[k])
        ax.imshow(shown, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        _contour(ax, trues[k], TRUE_COLOUR)
        _contour(ax, preds[k], PRED_COLOUR)
        label = titles[k] if titles is not None else f"#{k}  Dice {dice[k]:.2f}"
        if not trues[k].any():
            label += " (empty)"
        ax.set_title(label, fontsize=8)
    handles = [
        Line2D([0], [0], color=TRUE_COLOUR, lw=2, label="ground truth"),
        Line2D([0], [0], color=PRED_COLOUR, lw=2, label="prediction"),
    ]
    fig.legend(handles=handles, loc="upper center", ncol=2, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (2.8 * rows + 0.4)))
    return save_figure(fig, path, close=False)


def _finite_xy(x: Sequence[float], y: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray([np.nan if v is None else v for v in y], dtype=np.float64)
    m = min(xs.size, ys.size)  # a series that stopped early is drawn as far as it goes
    xs, ys = xs[:m], ys[:m]
    keep = np.isfinite(xs) & np.isfinite(ys)
    return xs[keep], ys[keep]


def _plot_series(ax: Any, x: Sequence[float], series: Mapping[str, Sequence[Any]], marker: str | None = None) -> bool:
    drawn = False
    for name, values in series.items():
        xs, ys = _finite_xy(x, values)
        if xs.size:
            ax.plot(xs, ys, label=name, marker=marker if marker else ("o" if xs.size == 1 else None), ms=4)
            drawn = True
    if drawn:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return drawn


def _panel_grid(num_panels: int, empty_text: str) -> tuple[Figure, Any]:
    """Two panels per row; unused axes hidden; ``empty_text`` shown when there is nothing to draw."""
    cols = min(2, max(1, num_panels))
    rows = max(1, math.ceil(num_panels / cols))
    fig, axes = _figure(rows, cols, figsize=(6 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[num_panels:]:
        ax.axis("off")
    if not num_panels:
        axes[0, 0].text(0.5, 0.5, empty_text, ha="center", va="center")
    return fig, axes


def plot_training_curves(history: Mapping[str, Any], path: str | os.PathLike, title: str | None = None) -> Path:
    """Training curves from a history (the format :class:`monai_ssl_ext.engines.TrainingHistory` writes).

    Args:
        history: ``{"iteration": [...], "scalars": {name: [values aligned with iteration]},
            "validation": {"epoch": [...], "iteration": [...], "metrics": {name: [...]}}}``; NaN
            and ``None`` values are left out of the lines.
        path: output PNG.
        title: figure title.

    Panels, each drawn only when it has data: losses (keys starting with ``loss``), pseudo-label
    statistics (``mask_rate``, ``pseudo_label_acc``, ``pseudo_label_acc_all``, ``threshold_mean``),
    learning rate (``lr``; log scale when it spans more than 20x), validation metrics against the training iteration.
    """
    iterations = list(history.get("iteration", []))
    scalars: Mapping[str, Sequence[Any]] = history.get("scalars", {}) or {}
    validation: Mapping[str, Any] = history.get("validation", {}) or {}
    panels: list[tuple[str, Sequence[float], dict[str, Sequence[Any]], str | None]] = []
    losses = {k: v for k, v in scalars.items() if k.startswith("loss")}
    if losses:
        panels.append(("losses", iterations, losses, None))
    pseudo = {k: scalars[k] for k in PSEUDO_LABEL_KEYS if k in scalars}
    if pseudo:
        panels.append(("pseudo-labels", iterations, pseudo, None))
    if "lr" in scalars:
        panels.append(("learning rate", iterations, {"lr": scalars["lr"]}, None))
    val_metrics = validation.get("metrics", {}) or {}
    if val_metrics:
        panels.append(("validation", validation.get("iteration", []), dict(val_metrics), "o"))
    panels = [p for p in panels if any(_finite_xy(p[1], v)[0].size for v in p[2].values())]

    fig, axes = _panel_grid(len(panels), "no finite values to plot yet")
    for ax, (name, x, series, marker) in zip(axes.flat, panels, strict=False):
        _plot_series(ax, x, series, marker)
        ax.set_title(name)
        ax.set_xlabel("iteration")
        if name == "learning rate":
            ys = _finite_xy(x, series["lr"])[1]
            # a log axis only helps when the schedule spans decades (warm-up from ~0, decay to ~0)
            if ys.size and np.all(ys > 0) and ys.max() / ys.min() > 20:
                ax.set_yscale("log")
        if name == "pseudo-labels":
            ax.set_ylim(-0.02, 1.02)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, close=False)


def plot_validation_comparison(
    histories: Mapping[str, Mapping[str, Any]], path: str | os.PathLike, title: str | None = None
) -> Path:
    """The validation metrics of several runs against the training iteration: a panel per metric, a line per run.

    Args:
        histories: run name -> history (the format of :func:`plot_training_curves`).
        path: output PNG.
        title: figure title.
    """
    metrics: list[str] = []
    for history in histories.values():
        for name in (history.get("validation", {}) or {}).get("metrics", {}) or {}:
            if name not in metrics:
                metrics.append(name)
    fig, axes = _panel_grid(len(metrics), "no validation metrics recorded")
    for ax, metric in zip(axes.flat, metrics, strict=False):
        drawn = False
        for run, history in histories.items():
            validation = history.get("validation", {}) or {}
            values = (validation.get("metrics", {}) or {}).get(metric)
            xs, ys = _finite_xy(validation.get("iteration", []), values or [])
            if xs.size:
                ax.plot(xs, ys, marker="o", markersize=3, label=run)
                drawn = True
        if drawn:
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        ax.set_title(metric)
        ax.set_xlabel("iteration")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, close=False)
