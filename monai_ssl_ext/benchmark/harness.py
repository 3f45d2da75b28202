"""The benchmark harness: every requested algorithm x seed, trained and tested under one profile.

For each run the harness trains the bundle (model selection on the validation split), evaluates
the selected checkpoint once on the test split, and appends a record to ``results.json`` (its
``eval_dir`` holds ``metrics.json`` and the per-image ``predictions.json``); after each run
``results.md`` (mean +- std over seeds, and the paired difference of each algorithm to
supervised-only with a bootstrap interval) is rewritten, so a long benchmark shows its table as it
goes and can be resumed: finished runs are skipped, and a run whose training was cut off continues from its
newest checkpoint (the trainer's resume is exact: it ends with the weights of an uninterrupted run).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai_ssl_ext.benchmark.tables import results_markdown
from monai_ssl_ext.bundle.runner import find_bundle, run_workflow, workflow_command
from monai_ssl_ext.engines.checkpoint import find_latest_checkpoint, periodic_checkpoints
from monai_ssl_ext.engines.handlers import format_duration
from monai_ssl_ext.metrics.report import headline_metrics, per_class_recall
from monai_ssl_ext.utils.atomic import write_json, write_text

__all__ = [
    "BenchmarkSpec",
    "OutputFolderBusyError",
    "evaluate_model",
    "interrupted_training",
    "load_results",
    "only_writer",
    "progress_echo",
    "run_benchmark",
    "save_results",
]

logger = logging.getLogger("monai_ssl_ext.benchmark")


@dataclass
class BenchmarkSpec:
    """What to run.

    Attributes:
        bundle: bundle folder or name under ``bundles/``.
        algorithms: values of the bundle's ``algorithm_name`` key.
        seeds: run seeds (each also draws its own labeled subset).
        labels: label budget, a count (``216``), a fraction (``0.2``) or ``"all"``.
        profile: ``smoke`` or ``full`` (``configs/profiles/<profile>.json`` of the bundle).
        datalist: manifest path, or ``"synthetic"``.
        data_root: data root of the manifest's relative paths.
        output_dir: folder of the run folders and the results files.
        classes: keep only these classes of the manifest.
        overrides: further ``key: value`` config overrides for every run.
        nproc: processes per run (torchrun when above 1).
        command: the command line that started the benchmark (recorded in ``results.md``).
    """

    bundle: str
    algorithms: Sequence[str]
    seeds: Sequence[int]
    labels: int | float | str
    profile: str = "smoke"
    datalist: str = "synthetic"
    data_root: str | None = None
    output_dir: str = "runs/benchmark"
    classes: Sequence[str] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    nproc: int = 1
    command: str = ""


def _dataset_name(spec: BenchmarkSpec) -> str:
    if spec.datalist == "synthetic":
        return "synthetic_ultrasound"
    from monai_ssl_ext.data.manifest import Manifest

    return Manifest.load(spec.datalist).name


def _overrides(spec: BenchmarkSpec, algorithm: str, seed: int, run_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {
        "algorithm_name": algorithm,
        "seed": seed,
        "label_budget": spec.labels,
        "datalist": str(Path(spec.datalist).resolve()) if spec.datalist != "synthetic" else "synthetic",
        "ckpt_dir": str(run_dir / "models"),
        "output_dir": str(run_dir),
    }
    if spec.data_root is not None:
        out["data_root"] = str(Path(spec.data_root).resolve())
    if spec.classes:
        out["classes"] = list(spec.classes)
    out.update(spec.overrides)
    return out


_RECORD_PATHS = ("run_dir", "eval_dir")


def load_results(path: str | os.PathLike) -> list[dict]:
    """The run records of a ``results.json``, their folders resolved against the file's folder.

    The harness writes the folders relative to ``results.json`` (see :func:`save_results`), so a results
    folder can be moved, or kept under version control and resumed from another clone.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = json.loads(path.read_text())
    for record in records:
        for key in _RECORD_PATHS:
            if record.get(key) and not Path(record[key]).is_absolute():
                record[key] = str(path.parent / record[key])
    return records


def save_results(path: str | os.PathLike, records: Sequence[dict]) -> None:
    """Write the run records to ``results.json`` (atomically), their folders made relative to its folder.

    Relative with ``..`` too (the records of a merged table point at the benchmark folders beside it), as
    long as the two share a folder below the file system's root; otherwise the path stays absolute.
    """
    path = Path(path)
    base = path.parent.resolve()
    portable = []
    for record in records:
        record = dict(record)
        for key in _RECORD_PATHS:
            if record.get(key):
                folder = Path(record[key]).resolve()
                if Path(os.path.commonpath([folder, base])) != Path(base.anchor):
                    record[key] = Path(os.path.relpath(folder, base)).as_posix()
        portable.append(record)
    write_json(path, portable)


class OutputFolderBusyError(RuntimeError):
    """Another benchmark is writing to the output folder."""


@contextlib.contextmanager
def only_writer(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir/.lock`` for the benchmark's whole run: a second benchmark on the same folder would read
    ``results.json`` before the first adds to it, and its save would drop the first one's new records."""
    import fcntl

    with open(out_dir / ".lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise OutputFolderBusyError(
                f"{out_dir}: another benchmark ({holder}) is writing its results there; wait for it or give another "
                "--output"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def run_benchmark(spec: BenchmarkSpec) -> list[dict]:
    """Run the benchmark described by ``spec``; return the list of run records (also in ``results.json``).

    One benchmark at a time writes to an output folder (a second one is refused, naming the first's process).
    """
    out_dir = Path(spec.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with only_writer(out_dir):
        return _run_benchmark(spec, out_dir)


def _run_benchmark(spec: BenchmarkSpec, out_dir: Path) -> list[dict]:
    bundle = find_bundle(spec.bundle)
    profile_cfg = f"profiles/{spec.profile}.json"
    if not (bundle / "configs" / profile_cfg).is_file():
        available = sorted(p.stem for p in (bundle / "configs" / "profiles").glob("*.json"))
        raise FileNotFoundError(
            f"Profile '{spec.profile}' not found in {bundle}/configs/profiles (available: {available})."
        )
    dataset = _dataset_name(spec)
    results_path = out_dir / "results.json"
    results = load_results(results_path)
    others = sorted({r["bundle"] for r in results if r.get("bundle", bundle.name) != bundle.name})
    if others:
        # the runs are keyed by algorithm and seed: a second bundle would take the first one's runs as its own
        raise ValueError(
            f"{results_path} holds runs of the bundle {', '.join(others)}, not {bundle.name}: give each bundle its "
            "own --output (monai-ssl benchmark_merge puts bundles that train the same network in one table)"
        )
    done = {(r["algorithm"], r["seed"], str(r["labels"]), r["profile"], r["dataset"]) for r in results}
    runs = [(a, s) for a in spec.algorithms for s in spec.seeds]
    started = time.perf_counter()
    finished_here = 0
    for n, (algorithm, seed) in enumerate(runs, 1):
        key = (algorithm, seed, str(spec.labels), spec.profile, dataset)
        if key in done:
            logger.info(f"[{n}/{len(runs)}] {algorithm} seed {seed}: already in {results_path}, skipped")
            continue
        run_dir = out_dir / dataset / f"labels{spec.labels}" / algorithm / f"seed{seed}"
        overrides = _overrides(spec, algorithm, seed, run_dir)
        remaining = len(runs) - n + 1
        eta = (time.perf_counter() - started) / finished_here * remaining if finished_here else float("nan")
        resume = interrupted_training(run_dir)
        if resume is not None:
            overrides["resume_from"] = "latest"
        else:
            _clear_unrecorded_training(run_dir)
        action = f"continuing the interrupted training from {resume.name}" if resume else "training"
        logger.info(
            f"[{n}/{len(runs)}] {algorithm} seed {seed}: {action} ({run_dir}) | benchmark ETA {format_duration(eta)}"
        )

        train_cmd = workflow_command(bundle, "training", spec.profile, overrides=overrides, nproc=spec.nproc)
        progress = progress_echo(f"[{n}/{len(runs)}] {algorithm} seed {seed}")
        train_s = run_workflow(train_cmd, run_dir / "train.log", echo=progress, append=resume is not None)
        eval_started = time.perf_counter()
        report = evaluate_model(bundle, run_dir / "models", "test", run_dir / "eval_test", spec.overrides,
                                run_dir / "evaluate.log")  # fmt: skip
        eval_s = time.perf_counter() - eval_started

        summary = json.loads((run_dir / "train_summary.json").read_text())
        metrics = headline_metrics(report)
        record = {
            "bundle": bundle.name,
            "algorithm": algorithm,
            "dataset": dataset,
            "labels": spec.labels,
            "seed": seed,
            "profile": spec.profile,
            "metrics": metrics,
            "per_class_recall": per_class_recall(report),
            "train_images_per_s": summary.get("train_images_per_s"),
            "peak_memory_mb": summary.get("peak_memory_mb"),
            "data_wait_share": summary.get("data_wait_share"),
            "wall_s": train_s,
            "eval_wall_s": eval_s,
            "iterations": summary.get("iterations"),
            "best_val_metric": {summary.get("best_metric_name") or "val": summary.get("best_metric")},
            "best_val_epoch": summary.get("best_metric_epoch"),
            "device": summary.get("device"),
            "run_dir": str(run_dir),
            # metrics.json and predictions.json (per-image predictions for the paired differences of results.md)
            "eval_dir": str(run_dir / "eval_test"),
        }
        iterations, this_run = summary.get("iterations") or 0, summary.get("iterations_this_run")
        if this_run is not None and this_run < iterations:
            # the cut-off attempt's time is not known: the whole run's time at the rate of the part run here
            record["resumed_at_iteration"] = iterations - this_run
            record["wall_s"] = train_s * iterations / this_run if this_run else None
        results.append(record)
        finished_here += 1
        save_results(results_path, results)
        write_text(out_dir / "results.md", results_markdown(results, command=spec.command))
        shown = ", ".join(f"{k} {metrics[k]:.3f}" for k in ("accuracy", "auc", "dice") if k in metrics)
        logger.info(f"[{n}/{len(runs)}] {algorithm} seed {seed}: {shown} (train {format_duration(train_s)})")
    write_text(out_dir / "results.md", results_markdown(results, command=spec.command))
    logger.info(f"results: {results_path} and {out_dir / 'results.md'}")
    return results


def interrupted_training(run_dir: Path) -> Path | None:
    """The newest readable checkpoint of a training in ``run_dir`` that was cut off; ``None`` for none begun.

    A training that finished wrote ``train_summary.json``: when its evaluation was cut off (the run has no
    record), it is trained again from the start.
    """
    if (run_dir / "train_summary.json").is_file():
        return None
    return find_latest_checkpoint(run_dir / "models", readable=True)


def _clear_unrecorded_training(run_dir: Path) -> None:
    """Before a training starts over in ``run_dir``: the summary and periodic checkpoints of one that has no record.

    Otherwise, were the new training cut off before its first checkpoint, the next attempt would continue the old
    one's; its best model and logs are overwritten by the new training as it goes.
    """
    (run_dir / "train_summary.json").unlink(missing_ok=True)
    for stale in periodic_checkpoints(run_dir / "models"):
        stale.unlink()


def evaluate_model(
    bundle: str | os.PathLike, model_dir: Path, split: str, eval_dir: Path, overrides: dict[str, Any], log: Path
) -> dict:
    """The bundle's evaluation of a trained-model folder on ``split``, logged to ``log``; its report.

    The evaluation reads the trained configuration beside the weights (data, classes, network); ``overrides``
    go on top (another manifest's ``datalist``...). The report is also in ``eval_dir/metrics.json``.
    """
    settings = {"ckpt_dir": str(model_dir), "output_dir": str(eval_dir.parent), "eval_split": split,
                "eval_output_dir": str(eval_dir), **overrides}  # fmt: skip
    run_workflow(workflow_command(find_bundle(bundle), "evaluating", overrides=settings), log)
    return json.loads((eval_dir / "metrics.json").read_text())


def progress_echo(prefix: str) -> Callable[[str], None]:
    """Forward the trainer's progress lines (they carry the ETA) and errors; drop the rest of the log."""

    def echo(line: str) -> None:
        if "[train]" in line or "Traceback" in line or "Error" in line:
            text = line.split("[train]", 1)[-1].strip() if "[train]" in line else line
            logger.info(f"{prefix} {text}")

    return echo
