"""Summaries of benchmark results: mean +- standard deviation over seeds, and paired differences to
supervised-only with bootstrap intervals, as Markdown."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from monai_ssl_ext.metrics.paired import (
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    PairedDifference,
    paired_difference,
    paired_difference_over_seeds,
)
from monai_ssl_ext.metrics.predictions import LEGACY_PREDICTIONS_FILE, PREDICTIONS_FILE, load_predictions

__all__ = [
    "BASELINE_ALGORITHM",
    "difference_cell",
    "difference_lines",
    "mean_std",
    "predictions_path",
    "results_markdown",
]

BASELINE_ALGORITHM = "supervised"
DIFFERENCE_TITLE = "Difference to supervised-only (paired, 95 % bootstrap interval)"

# (metric key, column title, shown in %): severity MAE is a distance in levels and the rank correlation a
# correlation, not rates
_COLUMNS = [
    ("accuracy", "Accuracy", True),
    ("balanced_accuracy", "Balanced acc.", True),
    ("macro_f1", "Macro-F1", True),
    ("auc", "AUC", True),
    ("dice", "Dice", True),
    ("iou", "IoU", True),
    ("severity_mae", "Severity MAE", False),
    ("severity_rank_correlation", "Severity rank corr.", False),
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


def predictions_path(record: Mapping) -> Path | None:
    """The ``predictions.json`` of a run record's test evaluation, ``None`` when it has none (older records).

    Read from the record's ``eval_dir``, else ``<run_dir>/eval_test`` (where the harness evaluates); a run
    evaluated before the text format has its ``predictions.npz`` instead.
    """
    eval_dir = record.get("eval_dir")
    if not eval_dir and record.get("run_dir"):
        eval_dir = Path(record["run_dir"]) / "eval_test"
    if not eval_dir:
        return None
    for name in (PREDICTIONS_FILE, LEGACY_PREDICTIONS_FILE):
        if (Path(eval_dir) / name).is_file():
            return Path(eval_dir) / name
    return None


def _points(value: float) -> str:
    """A rate difference in percentage points with its sign: ``+1.23``, or a minus sign (U+2212) for a negative one."""
    if value is None or not math.isfinite(value):
        return "n/a"
    text = f"{value * 100:+.2f}"
    return "+0.00" if text == "-0.00" else text.replace("-", "\u2212")


def difference_cell(diff: PairedDifference | None) -> str:
    """``+1.23 [-0.40, +2.90]``: a difference and its interval in percentage points (``-`` when undefined)."""
    if diff is None or not math.isfinite(diff.estimate):
        return "-"
    return f"{_points(diff.estimate)} [{_points(diff.low)}, {_points(diff.high)}]"


def difference_lines(
    by_algorithm: Mapping[str, Sequence[dict]],
    baseline: str = BASELINE_ALGORITHM,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> list[str]:
    """The table "Difference to supervised-only": per algorithm, ``algorithm - baseline`` per metric.

    Per algorithm other than ``baseline``, over the seeds that have a run of both (and, with several
    seeds, a row per seed): the paired difference in percentage points and its 95 % percentile
    bootstrap interval over the test images (:func:`~monai_ssl_ext.metrics.paired.paired_difference_over_seeds`,
    seeds held fixed). The runs' ``predictions.json`` are read through :func:`predictions_path`; runs
    without one (evaluated before it was written) are named in a note and left out. Nothing when
    there is no ``baseline`` run or no other algorithm.
    """
    baseline_runs = {r["seed"]: r for r in by_algorithm.get(baseline, [])}
    others = [a for a in by_algorithm if a != baseline]
    if not baseline_runs or not others:
        return []
    rows: list[tuple[str, list[int], dict[str, PairedDifference]]] = []
    missing: list[str] = []
    notes: list[str] = []
    for algorithm in others:
        runs = {r["seed"]: r for r in by_algorithm[algorithm]}
        seeds = sorted(s for s in runs if s in baseline_runs)
        if not seeds:
            notes.append(f"{algorithm}: no seed with a {baseline} run.")
            continue
        paired = []
        for s in seeds:
            run_file, base_file = predictions_path(runs[s]), predictions_path(baseline_runs[s])
            missing += [f"{name} seed {s}" for name, f in ((algorithm, run_file), (baseline, base_file)) if f is None]
            if run_file is not None and base_file is not None:
                paired.append((s, run_file, base_file))
        if not paired:
            continue
        try:
            loaded = [(s, load_predictions(r), load_predictions(b)) for s, r, b in paired]
            pooled = paired_difference_over_seeds(
                [r for _, r, _ in loaded], [b for _, _, b in loaded], n_resamples=n_resamples, seed=seed
            )
            rows.append((algorithm, [s for s, _, _ in loaded], pooled))
            if len(loaded) > 1:
                for s, r, b in loaded:
                    rows.append((f"{algorithm} (seed {s})", [s], paired_difference(r, b, None, n_resamples, seed)))
        except (OSError, KeyError, ValueError) as err:  # PairingError is a ValueError
            notes.append(f"{algorithm}: not compared, {err}")
    title = (
        DIFFERENCE_TITLE
        if baseline == BASELINE_ALGORITHM
        else f"Difference to {baseline} (paired, 95 % bootstrap interval)"
    )
    lines = [f"{title}, in points:", ""]
    if rows:
        present = [c for c in _COLUMNS if any(c[0] in diffs for _, _, diffs in rows)]
        header = ["Algorithm", "Seeds", *[name for _, name, _ in present]]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] * len(header)) + "|")
        for label, seeds, diffs in rows:
            cells = [label, ",".join(str(s) for s in seeds), *[difference_cell(diffs.get(k)) for k, _, _ in present]]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(
            f"Algorithm minus {baseline} of the same seed (same labeled subset), on the same test images, in "
            f"percentage points; [low, high]: 95 % percentile bootstrap over the test images ({n_resamples} "
            f"resamples, RNG seed {seed}), the same resampled images for both runs and every seed. Over several "
            "seeds: the mean of the per-seed differences with the seeds held fixed, so the interval covers the "
            "test-set sampling, not the variation between labeled subsets (see the per-seed rows)."
        )
        for label, _, diffs in rows:
            notes += [
                f"{label}, {d.metric}: undefined in {d.n_undefined} of {d.n_resamples} resamples "
                "(a class absent from the resample), left out of the interval."
                for d in diffs.values()
                if d.n_undefined
            ]
    if missing:
        notes.append(
            "Left out, no per-image predictions (`predictions.json`, evaluated by an older version?): "
            + ", ".join(dict.fromkeys(missing))
            + "."
        )
    if notes:
        lines += ["", *notes] if rows else notes
    return [*lines, ""]


def results_markdown(
    results: Sequence[dict],
    command: str = "",
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    baselines: Sequence[str] = (BASELINE_ALGORITHM,),
) -> str:
    """One table per (dataset, labels, profile): a row per algorithm, mean ± std over its seeds.

    Rates are in %, severity MAE in levels; runs that record ``per_class_recall`` add a table of
    recall per class, and each of ``baselines`` that has runs, with others beside it, the table of
    :func:`difference_lines` (paired differences with bootstrap intervals, ``n_resamples`` resamples
    from RNG seed ``seed``): supervised-only by default; a method is also compared with the strongest
    semi-supervised baseline by naming it too.
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
        for baseline in baselines:
            lines += difference_lines(by_algorithm, baseline=baseline, n_resamples=n_resamples, seed=seed)
        lines += _per_class_recall_lines(by_algorithm)
    lines.append("Metrics on the test split, in % (severity MAE in levels), mean ± sample standard deviation over")
    lines.append("seeds; the checkpoint evaluated is the one with the best validation key metric.")
    return "\n".join(lines) + "\n"
