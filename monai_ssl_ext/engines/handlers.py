"""Handlers for semi-supervised training: progress with an ETA, history curves and a run summary."""

from __future__ import annotations

import logging
import math
import os
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from ignite.engine import Engine, Events

from monai_ssl_ext.engines.pseudo_label_accuracy import UNLABELED_OUTPUT_KEYS
from monai_ssl_ext.utils.atomic import write_json
from monai_ssl_ext.utils.distributed import get_world_size, is_main_process

if TYPE_CHECKING:
    from monai.engines import Workflow

__all__ = ["ProgressLogger", "TrainingHistory", "format_duration", "on_run_start", "output_scalars", "peak_memory_mb"]

# batched entries, and the per-unlabeled-sample ones a non-decollated output keeps (a batch of one is not a scalar)
_SKIP = {"image", "label", "pred", "mask", *UNLABELED_OUTPUT_KEYS}
_LR = "lr"  # the trainer's learning-rate scalar (monai_ssl_ext.engines.trainer.LR_KEY)


def output_scalars(output: Any) -> dict[str, float]:
    """The scalar entries of a trainer's ``engine.state.output`` (a dict or a decollated list of dicts).

    With :class:`~monai_ssl_ext.engines.SemiSupervisedTrainer`: ``loss``, the algorithm's loss terms and
    logs, ``lr`` (learning rate of the step) and, in benchmark mode, ``pseudo_label_acc`` and
    ``pseudo_label_acc_all``; the ``output_transform`` of ``TensorBoardStatsHandler`` in the bundles.
    """
    first = output[0] if isinstance(output, list) and output else output
    if not isinstance(first, dict):
        return {}
    out = {}
    for key, value in first.items():
        if key in _SKIP:
            continue
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if (isinstance(value, torch.Tensor) and value.numel() == 1) or is_number:
            out[str(key)] = float(value)
    return out


def format_duration(seconds: float) -> str:
    """``3725`` -> ``"1h02m"``, ``95`` -> ``"1m35s"``, ``7.2`` -> ``"7s"``."""
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{s:02d}s" if m else f"{s}s"


def on_run_start(engine: Engine, handler: Callable[[Engine], None]) -> None:
    """Call ``handler`` once per ``engine.run()``, after every ``STARTED`` handler has run.

    A checkpoint loader restores the iteration counter in its own ``STARTED`` handler, which may be
    attached after this one; the first ``EPOCH_STARTED`` of a run comes after all of them, so a handler
    called there sees the iteration a resumed run really starts from.
    """
    pending = False

    def arm(_: Engine) -> None:
        nonlocal pending
        pending = True

    def fire(e: Engine) -> None:
        nonlocal pending
        if pending:
            pending = False
            handler(e)

    engine.add_event_handler(Events.STARTED, arm)
    engine.add_event_handler(Events.EPOCH_STARTED, fire)


def peak_memory_mb(device: torch.device | str | None = None) -> float:
    """Peak memory of this process in MiB: CUDA allocations on a GPU, resident set size on the CPU."""
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(torch.device(device)) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


class ProgressLogger:
    """A line every ``interval`` iterations: progress, loss terms, pseudo-label statistics, speed and ETA.

    Example::

        [train] 150/1000 (15%) epoch 2/10 | loss 0.532 loss_sup 0.410 loss_unsup 0.122 mask_rate 0.63
        pseudo_label_acc 0.91 | lr 0.00987 | 3.1 it/s 148 img/s | elapsed 48s ETA 4m34s

    The learning rate (the output's ``lr``) gets its own field after the other scalars.

    Args:
        interval: iterations between lines.
        keys: scalar output keys to show (default: all scalars of the output).
        name: logger name.
    """

    def __init__(self, interval: int = 10, keys: list[str] | None = None, name: str = "monai_ssl_ext.train") -> None:
        self.interval = max(1, int(interval))
        self.keys = keys
        self.logger = logging.getLogger(name)
        self._t0 = 0.0
        self._it0 = 0
        self._samples0 = 0

    def attach(self, engine: Engine) -> None:
        on_run_start(engine, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED(event_filter=self._due), self._log)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _due(self, engine: Engine, iteration: int) -> bool:
        # the last iteration always gets a line, so a run's log ends at 100 %
        return iteration % self.interval == 0 or iteration == engine.state.max_epochs * engine.state.epoch_length

    def _batch_requested(self, engine: Engine) -> None:
        self._batch_t0 = time.perf_counter()

    def _batch_received(self, engine: Engine) -> None:
        self._data_wait += time.perf_counter() - self._batch_t0

    def _started(self, engine: Engine) -> None:
        self._data_wait = 0.0
        self._t0 = time.perf_counter()
        self._it0 = engine.state.iteration
        self._samples0 = getattr(engine.state, "samples_seen", 0)
        total = engine.state.max_epochs * engine.state.epoch_length
        if self._it0:
            self.logger.info(f"[train] resuming at iteration {self._it0}/{total}")
        else:
            self.logger.info(f"[train] {total} iterations ({engine.state.max_epochs} x {engine.state.epoch_length})")

    def _log(self, engine: Engine) -> None:
        if not is_main_process():
            return
        it = engine.state.iteration
        total = engine.state.max_epochs * engine.state.epoch_length
        elapsed = time.perf_counter() - self._t0
        done = it - self._it0
        rate = done / elapsed if elapsed > 0 else float("nan")
        samples = getattr(engine.state, "samples_seen", 0) - self._samples0
        eta = (total - it) / rate if rate > 0 else float("nan")
        scalars = output_scalars(engine.state.output)
        if self.keys is not None:
            scalars = {k: scalars[k] for k in self.keys if k in scalars}
        lr = scalars.pop(_LR, None)
        terms = " ".join(f"{k} {v:.4g}" for k, v in scalars.items())
        if lr is not None:
            terms += f" | lr {lr:.3g}"
        self.logger.info(
            f"[train] {it}/{total} ({100 * it / total:.0f}%) epoch {engine.state.epoch}/{engine.state.max_epochs} | "
            f"{terms} | {rate:.2f} it/s {samples / elapsed if elapsed > 0 else 0:.0f} img/s | "
            f"elapsed {format_duration(elapsed)} ETA {format_duration(eta)}"
        )

    def _completed(self, engine: Engine) -> None:
        if is_main_process():
            elapsed = time.perf_counter() - self._t0
            self.logger.info(f"[train] done: {engine.state.iteration} iterations in {format_duration(elapsed)}")


class TrainingHistory:
    """Records training scalars and validation metrics; writes ``history.json``, ``training_curves.png`` and
    ``train_summary.json`` into ``output_dir`` (rank 0 only, atomically).

    - Every iteration: the scalar entries of the output (loss terms, mask rate, pseudo-label
      accuracy...) and the learning rate are accumulated and averaged over ``interval`` iterations.
      The learning rate ``lr`` is read from ``optimizer`` when given (at ``ITERATION_COMPLETED``, so
      after a scheduler handler attached before this one has stepped), else from the output's ``lr``
      (the rate the step used, which :class:`~monai_ssl_ext.engines.SemiSupervisedTrainer` puts there).
    - Every epoch: the validator's metrics (when ``validator`` is given; attach this handler after
      the ``ValidationHandler`` so that validation has run) and the files are rewritten, so a run that
      stops early still leaves its curves.
    - At the end: ``train_summary.json`` with iterations, wall time, training images per second,
      peak memory, the best validation metric, and ``data_wait_s`` / ``data_wait_share``: the time the
      trainer waited for its next batch (ignite's ``GET_BATCH_STARTED`` to ``GET_BATCH_COMPLETED``, as
      its ``BasicTimeProfiler`` measures data flow) and its share of the wall time. A share near 0 means
      the model's forward and backward passes set the pace; a large one, the data pipeline.

    Args:
        output_dir: folder for the files.
        validator: the validation evaluator, whose ``state.metrics`` are recorded each epoch.
        optimizer: to record the learning rate of its first parameter group (``None``: the output's ``lr``).
        interval: iterations averaged into one point.
        plot: write ``training_curves.png``.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        validator: Workflow | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        interval: int = 10,
        plot: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.validator = validator
        self.optimizer = optimizer
        self.interval = max(1, int(interval))
        self.plot = plot
        self.iterations: list[int] = []
        self.scalars: dict[str, list[float]] = defaultdict(list)
        self.validation: dict[str, Any] = {"epoch": [], "iteration": [], "metrics": defaultdict(list)}
        self._window: dict[str, list[float]] = defaultdict(list)
        self._t0 = 0.0
        self._it0 = 0
        self._samples0 = 0
        self._batch_t0 = 0.0
        self._data_wait = 0.0

    def attach(self, engine: Engine) -> None:
        on_run_start(engine, self._started)
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._batch_requested)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._batch_received)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _batch_requested(self, engine: Engine) -> None:
        self._batch_t0 = time.perf_counter()

    def _batch_received(self, engine: Engine) -> None:
        self._data_wait += time.perf_counter() - self._batch_t0

    def _started(self, engine: Engine) -> None:
        self._data_wait = 0.0
        self._t0 = time.perf_counter()
        self._it0 = engine.state.iteration
        self._samples0 = getattr(engine.state, "samples_seen", 0)
        existing = self.output_dir / "history.json"
        if self._it0 and existing.is_file():
            self._load(existing, upto=self._it0)

    def _load(self, path: Path, upto: int) -> None:
        import json

        data = json.loads(path.read_text())
        keep = [i for i, it in enumerate(data.get("iteration", [])) if it <= upto]
        self.iterations = [data["iteration"][i] for i in keep]
        for k, v in data.get("scalars", {}).items():
            self.scalars[k] = [v[i] for i in keep]
        val = data.get("validation", {})
        vkeep = [i for i, it in enumerate(val.get("iteration", [])) if it <= upto]
        self.validation["epoch"] = [val["epoch"][i] for i in vkeep]
        self.validation["iteration"] = [val["iteration"][i] for i in vkeep]
        for k, v in val.get("metrics", {}).items():
            self.validation["metrics"][k] = [v[i] for i in vkeep]

    def _iteration(self, engine: Engine) -> None:
        scalars = output_scalars(engine.state.output)
        lr = scalars.pop(_LR, None)
        for k, v in scalars.items():
            self._window[k].append(v)
        if self.optimizer is not None:
            lr = float(self.optimizer.param_groups[0]["lr"])
        if lr is not None:  # one value per iteration, recorded last (as in earlier history files)
            self._window[_LR].append(lr)
        if engine.state.iteration % self.interval == 0:
            self._flush(engine.state.iteration)

    def _flush(self, iteration: int) -> None:
        if not self._window:
            return
        self.iterations.append(iteration)
        n = len(self.iterations)
        for k, values in self._window.items():
            finite = [v for v in values if math.isfinite(v)]
            series = self.scalars[k]
            series.extend([float("nan")] * (n - 1 - len(series)))  # a key that appeared late
            series.append(sum(finite) / len(finite) if finite else float("nan"))
        for series in self.scalars.values():
            series.extend([float("nan")] * (n - len(series)))
        self._window.clear()

    def _epoch(self, engine: Engine) -> None:
        if self.validator is not None and getattr(self.validator.state, "metrics", None):
            self.validation["epoch"].append(engine.state.epoch)
            self.validation["iteration"].append(engine.state.iteration)
            for k, v in self.validator.state.metrics.items():
                if isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1):
                    self.validation["metrics"][k].append(float(v))
        self.save()

    def _completed(self, engine: Engine) -> None:
        self._flush(engine.state.iteration)
        self.save()
        if not is_main_process():
            return
        # every process trains an equal slice of each step's batches (the streams give each rank the same count), so
        # the run's images are this process's times the processes: no collective call while the processes finish
        samples = (getattr(engine.state, "samples_seen", 0) - self._samples0) * get_world_size()
        elapsed = time.perf_counter() - self._t0
        summary = {
            "iterations": engine.state.iteration,
            "iterations_this_run": engine.state.iteration - self._it0,
            "processes": get_world_size(),
            "images_this_run": samples,
            "wall_s": elapsed,
            "train_images_per_s": samples / elapsed if elapsed > 0 else float("nan"),
            "peak_memory_mb": peak_memory_mb(engine.state.device),
            "data_wait_s": self._data_wait,
            "data_wait_share": self._data_wait / elapsed if elapsed > 0 else float("nan"),
            "device": str(engine.state.device),
        }
        summary.update(self.best_validation())
        write_json(self.output_dir / "train_summary.json", summary)

    def best_validation(self) -> dict[str, Any]:
        """The best value of the validator's key metric over the whole run (resumed parts included)."""
        name = getattr(getattr(self.validator, "state", None), "key_metric_name", None)
        values = self.validation["metrics"].get(name, []) if name else []
        finite = [(v, i) for i, v in enumerate(values) if math.isfinite(v)]
        if not finite:
            return {"best_metric_name": name, "best_metric": None, "best_metric_epoch": None}
        best, i = max(finite, key=lambda t: (t[0], -t[1]))  # first epoch reaching the maximum, like MONAI
        return {"best_metric_name": name, "best_metric": best, "best_metric_epoch": self.validation["epoch"][i]}

    def as_dict(self) -> dict:
        return {
            "iteration": list(self.iterations),
            "scalars": {k: list(v) for k, v in self.scalars.items()},
            "validation": {
                "epoch": list(self.validation["epoch"]),
                "iteration": list(self.validation["iteration"]),
                "metrics": {k: list(v) for k, v in self.validation["metrics"].items()},
            },
        }

    def save(self) -> None:
        if not is_main_process():
            return
        history = self.as_dict()
        write_json(self.output_dir / "history.json", history)
        if self.plot and history["iteration"]:
            from monai_ssl_ext.metrics.plots import plot_training_curves

            plot_training_curves(history, self.output_dir / "training_curves.png")
