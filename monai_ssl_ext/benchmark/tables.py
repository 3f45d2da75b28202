"""Summaries of benchmark results: mean +- standard deviation over seeds, as Markdown."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

__all__ = ["mean_std", "results_markdown"]

# (metric key, column title, shown in %): severity MAE is a distance in levels, not a rate
_COLUMNS = [
    ("accuracy", "Accuracy", True),
    ("balanced_accuracy", "Balanced acc.", True),
    ("macro_f1", "Macro-F1", True),
    ("auc", "AUC", True),
    ("dice", "Dice", True),
    ("iou", "IoU", True),
    ("severity_mae", "Severity MAE", False),
]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``n - 1``; 0 for one value) of the finite values."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return float("nan"), float("nan")
    mean = sum(finite) / len(finite)
    if len(finite) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1))


def _fmt(values: Sequence[float], percent: bool = True) -> str:
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "-"
    if percent:
        return f"{mean * 100:.2f} ± {std * 100:.2f}"
    return f"{mean:.3f} ± {std:.3f}"


def _per_class_recall_lines(by_algorithm: dict[str, list[dict]]) -> list[str]:
    """A table of recall per class (mean ± std over seeds, in %) for the runs that record it."""
    classes: list[str] = []
    for runs in by_algorithm.values():
        for r in runs:
            classes += [c for c in r.get("per_class_recall") or {} if c not in classes]
    if not classes:
        return []
    lines = ["Recall per class (%):", ""]
    lines.append("| " + " | ".join(["Algorithm", *classes]) + " |")
    lines.append("|" + "|".join(["---"] * (len(classes) + 1)) + "|")
    for algorithm, runs in by_algorithm.items():
        cells = [_fmt([(r.get("per_class_recall") or {}).get(c) for r in runs]) for c in classes]
        lines.append("| " + " | ".join([algorithm, *cells]) + " |")
    return [*lines, ""]


def results_markdown(results: Sequence[dict], command: str = "") -> str:
    """One table per (dataset, labels, profile): a row per algorithm, mean ± std over its seeds.

    Rates are in %, severity MAE in levels; runs that record ``per_class_recall`` add a second table.
    """
    groups: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        groups[(r["dataset"], r["labels"], r["profile"], r.get("bundle", ""))][r["algorithm"]].append(r)
    lines = ["# Benchmark results", ""]
    if command:
        lines += ["Produced by:", "", "```", command, "```", ""]
    for (dataset, labels, profile, bundle), by_algorithm in groups.items():
        present = [
            column for column in _COLUMNS if any(column[0] in r["metrics"] for rs in by_algorithm.values() for r in rs)
        ]
        lines.append(f"## {dataset}, {labels} labels, profile `{profile}` ({bundle})")
        lines.append("")
        header = ["Algorithm", "Seeds", *[name for _, name, _ in present], "Train img/s", "Peak MiB", "Train time"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] * len(header)) + "|")
        for algorithm, runs in by_algorithm.items():
            seeds = ",".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"]))
            cells = [algorithm, seeds]
            cells += [_fmt([r["metrics"].get(k) for r in runs], percent) for k, _, percent in present]
            speed, _ = mean_std([r.get("train_images_per_s") for r in runs])
            memory, _ = mean_std([r.get("peak_memory_mb") for r in runs])
            wall, _ = mean_std([r.get("wall_s") for r in runs])
            cells += [f"{speed:.1f}", f"{memory:.0f}", f"{wall / 60:.1f} min"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines += _per_class_recall_lines(by_algorithm)
    lines.append("Metrics on the test split, in % (severity MAE in levels), mean ± sample standard deviation over")
    lines.append("seeds; the checkpoint evaluated is the one with the best validation key metric.")
    return "\n".join(lines) + "\n"
