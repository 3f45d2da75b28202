"""Checkpoint handlers: atomic saving and resuming a run from its latest checkpoint."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointLoader
from monai.handlers import CheckpointSaver as MonaiCheckpointSaver

from monai_ssl_ext.utils.weights import UnreadableWeightsError, load_weights_file

__all__ = ["AtomicCheckpointSaver", "ResumeCheckpointLoader", "find_latest_checkpoint", "periodic_checkpoints"]

logger = logging.getLogger(__name__)

# a periodic file of ignite's naming: "<prefix>_epoch=N.pt"; the prefix is "checkpoint" for several objects,
# which is what a run resumes from
_PERIODIC_FILE = re.compile(r"^(.+)_(epoch|iteration)=(\d+)\.pt$")


PARTIAL_SUFFIX = ".partial"


def _partial_path(path: Path) -> Path:
    """Where ``path`` is written before it is complete: a hidden sibling (same folder, so the rename is atomic)."""
    return path.with_name(f".{path.name}{PARTIAL_SUFFIX}")


class _AtomicDiskSaver(DiskSaver):
    """ignite's ``DiskSaver``, in an order that never loses the last good checkpoint.

    A file is written to ``.<name>.partial`` beside its target, flushed to disk and renamed over the target
    only when complete, so a kill at any moment leaves the previous file whole. ignite's ``Checkpoint``
    removes the file it replaces *before* saving the new one; here that removal waits until the next save
    is complete (and a fixed file name, MONAI's ``model.pt``, is never removed: the rename replaces it).
    With ``keep_last``, every periodic file of the saved one's series (``checkpoint_epoch=N.pt``...) but the
    newest ``keep_last`` is deleted after each complete save, including those a killed run left behind.
    """

    def __init__(self, dirname: str, filename: str | None = None, keep_last: int | None = None) -> None:
        super().__init__(dirname=dirname, require_empty=False, atomic=True)
        self.filename = filename
        self.keep_last = keep_last
        self._removals: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != self.save_on_rank:
            return
        name = self.filename or filename
        path = Path(self.dirname) / name
        partial = _partial_path(path)
        try:
            with open(partial, "wb") as f:
                torch.save(checkpoint, f, **self.kwargs)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(partial, 0o666 & ~umask)  # the usual mode of a new file
        os.replace(partial, path)
        _sync_folder(path.parent)
        self._remove_superseded(name)

    def remove(self, filename: str) -> None:
        name = self.filename or filename
        if name != self.filename and name not in self._removals:
            self._removals.append(name)  # removed once the next file is complete

    def _remove_superseded(self, saved: str) -> None:
        folder = Path(self.dirname)
        stale = [n for n in self._removals if n != saved]
        self._removals.clear()
        saved_match = _PERIODIC_FILE.match(saved)
        if self.keep_last is not None and saved_match:
            series = _periodic_files(folder, saved_match.group(1), saved_match.group(2))
            stale += [p.name for p in series[self.keep_last :] if p.name != saved]
        # partial files of a run killed while saving: nothing reads them, and only this process saves here
        stale += [p.name for p in folder.glob(f".*.pt{PARTIAL_SUFFIX}")]
        for name in dict.fromkeys(stale):
            (folder / name).unlink(missing_ok=True)


def _sync_folder(folder: Path) -> None:
    """Flush a folder's entries (the rename) to disk where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointSaver(MonaiCheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments) whose files are written atomically.

    MONAI's saver writes checkpoints in place, and ignite deletes the previous checkpoint before it
    writes the next, so a run killed while saving is left with nothing to resume from. Here every file
    goes to ``.<name>.partial`` in the same folder, is flushed and moved over the target only when
    complete, and the file it supersedes is deleted after that; the periodic checkpoints keep the newest
    ``n_saved`` (older ones a killed run left behind included).

    ``state_dict``/``load_state_dict`` carry the best-score bookkeeping of ``save_key_metric``, so a
    resumed run keeps the best model of the whole run instead of overwriting it at its first validation.
    """

    def __init__(self, save_dir: str, save_dict: dict, **kwargs: Any) -> None:
        super().__init__(save_dir, save_dict, **kwargs)
        for name in ("_final_checkpoint", "_key_metric_checkpoint", "_interval_checkpoint"):
            checkpoint = getattr(self, name, None)
            if checkpoint is not None:
                old = checkpoint.save_handler
                keep = checkpoint.n_saved if name == "_interval_checkpoint" else None
                checkpoint.save_handler = _AtomicDiskSaver(
                    self.save_dir, filename=getattr(old, "filename", None), keep_last=keep
                )

    def state_dict(self) -> dict:
        checkpoint = getattr(self, "_key_metric_checkpoint", None)
        return dict(checkpoint.state_dict()) if checkpoint is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        checkpoint = getattr(self, "_key_metric_checkpoint", None)
        if checkpoint is not None and state_dict:
            checkpoint.load_state_dict(state_dict)


def _periodic_files(folder: Path, prefix: str, unit: str | None = None) -> list[Path]:
    """The periodic files ``<prefix>_<unit>=N.pt`` of ``folder`` (either unit when ``None``), newest first."""
    found = [
        (int(m.group(3)), p)
        for p in folder.glob("*.pt")
        if (m := _PERIODIC_FILE.match(p.name)) and m.group(1) == prefix and unit in (None, m.group(2))
    ]
    return [p for _, p in sorted(found, reverse=True)]


def periodic_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """The ``checkpoint_epoch=N.pt`` / ``checkpoint_iteration=N.pt`` files of ``ckpt_dir`` a run resumes from,
    newest first (none for a missing folder)."""
    ckpt_dir = Path(ckpt_dir)
    return _periodic_files(ckpt_dir, "checkpoint") if ckpt_dir.is_dir() else []


def find_latest_checkpoint(ckpt_dir: str | os.PathLike, readable: bool = False) -> Path | None:
    """The newest ``checkpoint_epoch=N.pt`` / ``checkpoint_iteration=N.pt`` (largest N) in ``ckpt_dir``.

    With ``readable``, the newest that also loads as a weights-only checkpoint: a damaged newer file is
    named in a warning and passed over for the one before it.
    """
    for path in periodic_checkpoints(ckpt_dir):
        if not readable:
            return path
        try:
            load_weights_file(path, map_location="cpu")
        except UnreadableWeightsError as err:
            logger.warning(f"{err}; resuming from an older checkpoint")
            continue
        return path
    return None


class ResumeCheckpointLoader:
    """Resume training from a checkpoint when one is given; do nothing otherwise.

    Args:
        checkpoint: ``None`` (start fresh), a checkpoint path, or ``"latest"`` (the newest readable
            ``checkpoint_epoch=N.pt`` in ``ckpt_dir``; a damaged newer one is named and passed over).
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
            path = find_latest_checkpoint(self.ckpt_dir, readable=True)
            if path is None:
                raise FileNotFoundError(f"resume_from='latest': no readable checkpoint_epoch=N.pt in {self.ckpt_dir}")
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
