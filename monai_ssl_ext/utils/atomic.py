"""Atomic file writes: a reader never sees a half-written checkpoint, JSON or figure.

Every writer goes to a temporary file in the destination folder and is moved into place with
:func:`os.replace`, which is atomic on POSIX and Windows when source and target share a file system.
If the process dies while writing, the previous file stays intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "atomic_path", "save_figure", "save_torch", "write_json", "write_text"]


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=suffix if suffix is not None else target.suffix, dir=target.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates files 0600; give the result the mode an ordinary open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file for writing that replaces ``path`` when the block exits without error."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def _json_default(obj: Any) -> Any:
    # numpy and torch scalars/arrays appear in metrics; JSON has no type for them
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_json(path: str | os.PathLike, data: Any, indent: int = 2) -> Path:
    """Write ``data`` as JSON atomically and return the path."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=indent, default=_json_default, allow_nan=True)
        f.write("\n")
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` atomically and return the path."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file, then move it into place."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120, close: bool = True) -> Path:
    """Save a matplotlib figure atomically (PNG unless the suffix says otherwise)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return Path(path)


def atomic_saver(save_fn: Callable[[Any, str], None]) -> Callable[[Any, str | os.PathLike], None]:
    """Wrap a ``save_fn(obj, path)`` so that it writes atomically."""

    def _save(obj: Any, path: str | os.PathLike) -> None:
        with atomic_path(path) as tmp:
            save_fn(obj, str(tmp))

    return _save
