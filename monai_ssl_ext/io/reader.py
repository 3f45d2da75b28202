"""One entry point that picks the reader for a file by its content and suffix."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from monai_ssl_ext.io.errors import ImageReadError
from monai_ssl_ext.io.raster import RASTER_SUFFIXES, read_raster

__all__ = ["read_image"]


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Read any supported image file as ``(array (C, H, W), meta)``.

    Raises:
        ImageReadError: missing, unreadable or unsupported file; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found")
    suffix = path.suffix.lower()
    if suffix in RASTER_SUFFIXES:
        return read_raster(path)
    raise ImageReadError(path, f"unsupported file type '{suffix or '(no suffix)'}'")
