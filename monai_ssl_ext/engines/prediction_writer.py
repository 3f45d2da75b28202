"""Write an inference run's predictions: one row per image with the class and its probabilities."""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from monai_ssl_ext.utils.atomic import write_json, write_text

__all__ = ["PredictionWriter"]


def _source(item: dict, key: str) -> str:
    value = item.get(key)
    meta = getattr(value, "meta", None) or item.get(f"{key}_meta_dict") or {}
    src = meta.get("filename_or_obj", "")
    return str(src[0] if isinstance(src, (list, tuple)) else src)


class PredictionWriter:
    """Collects per-image class probabilities from an inference evaluator; writes ``predictions.csv`` and
    ``predictions.json`` into ``output_dir`` at the end of the run (atomically).

    Expects the evaluator's decollated output to hold ``probs`` (class probabilities ``(C,)``) and
    ``pred`` (class index, as MONAI Deploy requires postprocessing to end in), with the source file
    taken from the image's metadata.

    Args:
        output_dir: folder for the files.
        class_names: names of the classes, in the order of the network's outputs.
        probs_key, pred_key, image_key: keys in the decollated output/batch.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_names: list[str],
        probs_key: str = "probs",
        pred_key: str = "pred",
        image_key: str = "image",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.probs_key, self.pred_key, self.image_key = probs_key, pred_key, image_key
        self.rows: list[dict[str, Any]] = []
        self.logger = logging.getLogger("monai_ssl_ext.inference")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch] * len(outputs)
        for out, item in zip(outputs, batch, strict=True):
            probs = torch.as_tensor(out[self.probs_key]).detach().float().reshape(-1).cpu()
            if probs.numel() != len(self.class_names):
                raise ValueError(
                    f"the network gives {probs.numel()} class probabilities but {len(self.class_names)} class names "
                    f"are configured ({self.class_names})"
                )
            index = int(probs.argmax())
            self.rows.append(
                {
                    "image": _source(item, self.image_key) or _source(out, self.image_key),
                    "prediction": self.class_names[index],
                    "class_index": index,
                    **{f"prob_{c}": float(p) for c, p in zip(self.class_names, probs, strict=True)},
                }
            )

    def _write(self, engine: Engine) -> None:
        if not self.rows:
            self.logger.warning("no image was processed; nothing written")
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(self.rows[0]))
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.output_dir / "predictions.csv", buffer.getvalue())
        write_json(self.output_dir / "predictions.json", {"classes": self.class_names, "predictions": self.rows})
        self.logger.info(f"wrote {len(self.rows)} predictions to {self.output_dir / 'predictions.csv'}")
