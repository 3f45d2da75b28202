"""One semi-supervised run against supervised-only on the same labeled subset: a table and one figure.

What ``monai-ssl demo`` shows after training both: the test figures side by side, the paired difference with
its 95 % bootstrap interval over the test images, and the validation curves of both runs in one PNG.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_ssl_ext.benchmark.tables import difference_cell, predictions_path
from monai_ssl_ext.metrics.paired import paired_difference
from monai_ssl_ext.metrics.plots import plot_validation_comparison

__all__ = ["COMPARED_METRICS", "comparison_table", "plot_run_comparison"]

#: the headline figures of the comparison, in this order, when the runs report them
COMPARED_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1", "auc", "dice")


def _find(records: Sequence[Mapping[str, Any]], algorithm: str, seed: int) -> Mapping[str, Any]:
    for record in records:
        if record["algorithm"] == algorithm and record["seed"] == seed:
            return record
    raise KeyError(f"no {algorithm} run with seed {seed} in the results")


def comparison_table(records: Sequence[Mapping[str, Any]], algorithm: str, baseline: str, seed: int) -> str:
    """A text table: metric, baseline, algorithm, ``algorithm - baseline`` in points with its 95 % interval.

    Args:
        records: run records of the benchmark harness (``results.json``).
        algorithm, baseline: the two runs' algorithm names.
        seed: the seed both were run with (the same labeled subset).
    """
    run, base = _find(records, algorithm, seed), _find(records, baseline, seed)
    metrics = [m for m in COMPARED_METRICS if m in run["metrics"] and m in base["metrics"]]
    run_file, base_file = predictions_path(run), predictions_path(base)
    diffs = paired_difference(run_file, base_file, metrics) if run_file and base_file else {}
    width = max(len(m) for m in metrics) + 2
    lines = [
        f"{'':{width}}{baseline:>14}{algorithm:>14}   difference, points [95 % interval]",
    ]
    for m in metrics:
        lines.append(
            f"{m:{width}}{base['metrics'][m] * 100:>14.2f}{run['metrics'][m] * 100:>14.2f}   "
            f"{difference_cell(diffs.get(m))}"
        )
    return "\n".join(lines)


def plot_run_comparison(
    run_dirs: Mapping[str, str | os.PathLike], path: str | os.PathLike, title: str | None = None
) -> Path:
    """The validation curves of several runs in one figure, from each run folder's ``history.json``."""
    histories = {name: json.loads((Path(d) / "history.json").read_text()) for name, d in run_dirs.items()}
    return plot_validation_comparison(histories, path, title=title)
