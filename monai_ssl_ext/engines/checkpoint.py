"""Checkpoint handlers: atomic saving and resuming a run from its latest checkpoint."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointLoader
from monai.handlers import CheckpointSaver as MonaiCheckpointSaver

from monai_ssl_ext.utils.weights import load_weights_file

__all__ = ["AtomicCheckpointSaver", "ResumeCheckpointLoader", "find_latest_checkpoint"]

logger = logging.getLogger(__name__)

_EPOCH_FILE = re.compile(r"checkpoint_(epoch|iteration)=(\d+)\.pt$")


class _AtomicDiskSaver(DiskSaver):
    """ignite's ``DiskSaver`` writing to a temporary file that replaces the target (``atomic=True``),
    with MONAI's fixed-filename option and ordinary read permissions for the group and others."""

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, require_empty=False, atomic=True)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        filename = self.filename or filename
        super().__call__(checkpoint=checkpoint, filename=filename, metadata=metadata)
        path = os.path.join(self.dirname, filename)
        if not os.path.isfile(path):  # another rank saves
            return
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(path, 0o666 & ~umask)  # a temporary file is created 0600; give the file the usual mode

    def remove(self, filename: str) -> None:
        super().remove(self.filename or filename)


class AtomicCheckpointSaver(MonaiCheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments) whose files are written atomically.

    MONAI's saver writes checkpoints in place, so a run killed while saving leaves a truncated file
    where the previous good checkpoint was. Here every file goes to a temporary name in the same
    folder and is moved over the target only when complete.

    ``state_dict``/``load_state_dict`` carry the best-score bookkeeping of ``save_key_metric``, so a
    resumed run keeps the best model of the whole run instead of overwriting it at its first validation.
    """

    def __init__(self, save_dir: str, save_dict: dict, **kwargs: Any) -> None:
        super().__init__(save_dir, save_dict, **kwargs)
        for name in ("_final_checkpoint", "_key_metric_checkpoint", "_interval_checkpoint"):
            checkpoint = getattr(self, name, None)
            if checkpoint is not None:
                old = checkpoint.save_handler
                checkpoint.save_handler = _AtomicDiskSaver(self.save_dir, filename=getattr(old, "filename", None))

    def state_dict(self) -> dict:
        checkpoint = getattr(self, "_key_metric_checkpoint", None)
        return dict(checkpoint.state_dict()) if checkpoint is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        checkpoint = getattr(self, "_key_metric_checkpoint", None)
        if checkpoint is not None and state_dict:
            checkpoint.load_state_dict(state_dict)


def find_latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """The newest ``checkpoint_epoch=N.pt`` / ``checkpoint_iteration=N.pt`` (largest N) in ``ckpt_dir``."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    found = [(int(m.group(2)), p) for p in ckpt_dir.glob("*.pt") if (m := _EPOCH_FILE.search(p.name))]
    return max(found)[1] if found else None


class ResumeCheckpointLoader:
    """Resume training from a checkpoint when one is given; do nothing otherwise.

    Args:
        checkpoint: ``None`` (start fresh), a checkpoint path, or ``"latest"`` (the newest
            ``checkpoint_epoch=N.pt`` in ``ckpt_dir``).
        load_dict: objects to restore (network, optimizer, algorithm, trainer, lr scheduler...).
        ckpt_dir: folder searched for ``"latest"``.
        map_location: ``torch.load`` map location.
        strict: require the checkpoint's keys to match exactly.

    Raises:
        FileNotFoundError: when attaching, if a given checkpoint (or any for ``"latest"``) is missing,
            so a wrong path stops the run before training instead of silently starting over.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | None,
        load_dict: dict,
        ckpt_dir: str | os.PathLike | None = None,
        map_location: Any = None,
        strict: bool = True,
    ) -> None:
        self.checkpoint = checkpoint
        self.load_dict = load_dict
        self.ckpt_dir = ckpt_dir
        self.map_location = map_location
        self.strict = strict

    def resolve(self) -> Path | None:
        if self.checkpoint in (None, "", False, "none", "None"):
            return None
        if str(self.checkpoint) == "latest":
            if self.ckpt_dir is None:
                raise ValueError("resume_from='latest' needs the checkpoint folder (ckpt_dir).")
            path = find_latest_checkpoint(self.ckpt_dir)
            if path is None:
                raise FileNotFoundError(f"resume_from='latest': no checkpoint_epoch=N.pt in {self.ckpt_dir}")
            return path
        path = Path(self.checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"Checkpoint to resume from not found: {path}")
        load_weights_file(path, map_location="cpu")  # a foreign or unsafe file: one line naming it, before training
        return path

    def attach(self, engine: Engine) -> None:
        path = self.resolve()
        if path is None:
            return
        map_location = self.map_location
        if map_location is not None and not isinstance(map_location, (dict, str)):
            map_location = str(map_location)
        logger.info("resuming from %s", path)
        CheckpointLoader(str(path), self.load_dict, map_location=map_location, strict=self.strict).attach(engine)
