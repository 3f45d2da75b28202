"""Inputs of an inference run: a file, a folder of images, or a manifest split."""

from __future__ import annotations

import os
from pathlib import Path

from monai_ssl_ext.data.datalist import expand_frames, load_manifest
from monai_ssl_ext.io.frames import FrameSpec
from monai_ssl_ext.io.reader import IMAGE_SUFFIXES
from monai_ssl_ext.keys import DataKeys

__all__ = ["IMAGE_SUFFIXES", "list_inputs"]


def _is_image(path: Path) -> bool:
    name = path.name.lower()
    # masks sit beside their images in public data sets (BUSI: "<name>_mask.png"); they are not inputs
    return name.endswith(IMAGE_SUFFIXES) and "_mask" not in name and "_segmentation" not in name


def list_inputs(
    path: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    split: str = "test",
    frames: FrameSpec = "first",
) -> list[dict]:
    """Entries ``{"image": path}`` to run inference on.

    Args:
        path: an image file; a folder (searched recursively for image files, masks skipped, sorted);
            or a manifest ``.json`` whose ``split`` is used (labels are dropped: inference never sees them).
        data_root: data root of a manifest's relative paths.
        split: manifest split to use.
        frames: frame policy of multi-frame files, as in training; with ``"every:k"`` each k-th frame
            is an entry of its own (``{"image": path, "frame": index}``), as the model was trained.

    Raises:
        FileNotFoundError: ``path`` does not exist or a folder holds no image.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"Inference input not found: {p}")
    if p.is_file() and p.suffix.lower() == ".json":
        manifest = load_manifest(p, data_root)
        entries = [{DataKeys.IMAGE: e[DataKeys.IMAGE]} for e in manifest.split(split)]
    elif p.is_file():
        entries = [{DataKeys.IMAGE: str(p)}]
    else:
        files = sorted(f for f in p.rglob("*") if f.is_file() and _is_image(f))
        if not files:
            raise FileNotFoundError(f"No image files ({', '.join(IMAGE_SUFFIXES)}) under {p}")
        entries = [{DataKeys.IMAGE: str(f)} for f in files]
    return [{k: v for k, v in e.items() if k != "group"} for e in expand_frames(entries, frames)]
