"""PNG, JPEG, BMP and TIFF images through Pillow, returned channel-first as ``(C, H, W)``.

- RGBA and LA images are composited on black (colour times alpha): opaque pixels keep their colour,
  and a mask whose background is transparent reads as background whatever colour it holds.
- Palette ("P") images are rendered through their palette, so an indexed colour PNG looks as in a viewer.
- 16-bit greyscale ("I;16") keeps its 16 bits; 1-bit images become boolean arrays (0/1).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from monai_ssl_ext.io.errors import ImageReadError

__all__ = ["RASTER_SUFFIXES", "read_raster"]

RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}


def _composite_on_black(img) -> np.ndarray:
    """Colour channels of an image with alpha, multiplied by alpha: transparent pixels become 0."""
    if img.mode == "PA":
        img = img.convert("RGBA")
    rgba = np.asarray(img)
    colour, alpha = rgba[..., :-1].astype(np.float32), rgba[..., -1:].astype(np.float32) / 255.0
    out = np.rint(colour * alpha).astype(rgba.dtype)
    return out[..., 0] if out.shape[-1] == 1 else out


def read_raster(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Read a raster image; return ``(array (C, H, W), meta)``. Raises :class:`ImageReadError`."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found")
    try:
        with Image.open(path) as img:
            mode = img.mode
            frames = getattr(img, "n_frames", 1)
            if mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            if img.mode in ("RGBA", "LA", "PA"):
                arr = _composite_on_black(img)
            else:
                if img.mode in ("CMYK", "YCbCr"):
                    img = img.convert("RGB")
                arr = np.asarray(img)  # mode "1" gives a bool array: 0/1, not 0/255
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(path, f"corrupt or truncated image ({e})") from None
    if arr.dtype == np.int32 and mode.startswith("I"):
        # Pillow widens 16-bit PNGs to int32; the values still fit 16 bits
        arr = arr.astype(np.uint16) if arr.min() >= 0 and arr.max() < 65536 else arr
    arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    meta = {
        "filename_or_obj": str(path),
        "format": path.suffix.lower().lstrip(".") or "raster",
        "stored_mode": mode,
        "frames": frames,
        "spatial_shape": tuple(arr.shape[1:]),
        "spacing": None,
    }
    return np.ascontiguousarray(arr), meta
