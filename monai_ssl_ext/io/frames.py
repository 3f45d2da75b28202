"""Frame policies for multi-frame images: DICOM cine and multi-frame objects, NIfTI 4D time series.

A bundle chooses the policy with one config key (``"frame": ...``); the value is one of

- ``"first"`` (the default), ``"middle"`` (index ``n // 2``), ``"last"`` or an index ``i`` (negative
  indices count from the end): one frame per file;
- ``"all"``: every frame, stacked on a time axis after the channel axis, ``(C, T, H, W)``;
- ``"every:k"`` (or ``{"every": k}``): every ``k``-th frame (0, k, 2k, ...) as a **separate sample**.
  :func:`monai_ssl_ext.data.expand_frames` turns one manifest entry into one entry per selected frame,
  each carrying its index under ``"frame"``; the readers then load that frame (an entry's own
  ``"frame"`` wins).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from monai_ssl_ext.io.errors import ImageReadError

__all__ = ["FramePolicy", "FrameSpec", "frame_indices", "parse_frame_policy", "resolve_frame"]

_NAMED = ("first", "middle", "last", "all")


@dataclass(frozen=True)
class FramePolicy:
    """A parsed frame policy: ``select`` is ``"first" | "middle" | "last" | "all"`` or an index; ``every`` is
    ``k`` for one sample per ``k``-th frame (``select`` is then unused)."""

    select: str | int = "first"
    every: int | None = None

    def __str__(self) -> str:
        return f"every:{self.every}" if self.every else str(self.select)


FrameSpec = int | str | Mapping[str, Any] | FramePolicy | None


def parse_frame_policy(value: FrameSpec) -> FramePolicy:
    """Parse a policy from a config value (see the module docstring); ``None`` (or NaN, ``""``) means ``"first"``.

    Raises:
        ValueError: a value that is not a policy.
    """
    # a table column without a value for this row reads as NaN (pandas) or ""
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return FramePolicy()
    if isinstance(value, FramePolicy):
        return value
    if isinstance(value, bool):
        raise ValueError(f"frame policy must be 'first', 'middle', 'last', 'all', an index or 'every:k', got {value!r}")
    if isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer()):
        return FramePolicy(select=int(value))
    if isinstance(value, Mapping):
        if set(value) != {"every"}:
            raise ValueError(f"a frame policy mapping takes one key, 'every', got {dict(value)!r}")
        return _every(value["every"], value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _NAMED:
            return FramePolicy(select=text)
        if text.startswith("every"):
            return _every(text[len("every") :].lstrip(":_ ="), value)
        try:
            return FramePolicy(select=int(text))
        except ValueError:
            pass
    raise ValueError(f"frame policy must be 'first', 'middle', 'last', 'all', an index or 'every:k', got {value!r}")


def _every(k: Any, original: Any) -> FramePolicy:
    try:
        step = int(k)
    except (TypeError, ValueError):
        step = 0
    if step < 1:
        raise ValueError(f"'every' needs a positive frame step, got {original!r}")
    return FramePolicy(select="first", every=step)


def resolve_frame(policy: FrameSpec, n_frames: int, path: str | os.PathLike = "") -> int | None:
    """The frame index a policy picks in a file of ``n_frames`` frames; ``None`` for ``"all"``.

    Raises:
        ImageReadError: an index out of range, or ``"every:k"`` on a multi-frame file (such a manifest
            must be expanded with :func:`monai_ssl_ext.data.expand_frames`, so that each entry names its frame).
    """
    p = parse_frame_policy(policy)
    n = max(int(n_frames), 1)
    if p.every is not None:
        if n == 1:
            return 0
        raise ImageReadError(
            path,
            f"{n} frames and frame policy '{p}' without a frame index: expand the manifest with "
            "expand_frames() so that each entry names its frame",
        )
    if p.select == "all":
        return None
    if p.select == "first":
        return 0
    if p.select == "middle":
        return n // 2
    if p.select == "last":
        return n - 1
    index = int(p.select)
    if not -n <= index < n:
        raise ImageReadError(path, f"frame {index} out of range: the file has {n} frame(s)")
    return index % n


def frame_indices(policy: FrameSpec, n_frames: int) -> list[int]:
    """Every frame index a policy uses in a file of ``n_frames`` frames (``"every:k"``: 0, k, 2k, ...)."""
    p = parse_frame_policy(policy)
    n = max(int(n_frames), 1)
    if p.every is not None:
        return list(range(0, n, p.every))
    index = resolve_frame(p, n)
    return list(range(n)) if index is None else [index]
