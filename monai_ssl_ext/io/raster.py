"""PNG, JPEG, BMP and TIFF images through Pillow, returned channel-first as ``(C, H, W)``.

- RGBA and LA images are composited on black (colour times alpha): opaque pixels keep their colour,
  and a mask whose background is transparent reads as background whatever colour it holds.
- Palette ("P") images are rendered through their palette, so an indexed colour PNG looks as in a viewer.
- 16-bit greyscale ("I;16") keeps its 16 bits as ``uint16``, and ``meta["value_range"]`` gives the range
  of the bits really used (see :func:`read_raster`); 1-bit images become boolean arrays (0/1).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from monai_ssl_ext.io.errors import ImageReadError

__all__ = ["RASTER_SUFFIXES", "read_raster"]

RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# a 16-bit file whose values all fit this many bits holds 12-bit data (CT, MR, many X-ray detectors)
_INFERRED_BITS = 12


def _png_significant_bits(path: str | os.PathLike) -> int | None:
    """Bits per sample declared by a PNG's ``sBIT`` chunk (the largest over its channels), else ``None``.

    Pillow does not expose ``sBIT`` when reading, so the chunks before the image data are walked here
    (PNG specification, 11.3.3.4: ``sBIT`` precedes ``IDAT``).
    """
    try:
        with open(path, "rb") as f:
            if f.read(8) != _PNG_SIGNATURE:
                return None
            while True:
                head = f.read(8)
                if len(head) < 8:
                    return None
                length, kind = struct.unpack(">I4s", head)
                if kind == b"sBIT":
                    data = f.read(length)
                    return max(data) if data else None
                if kind in (b"IDAT", b"IEND"):
                    return None
                f.seek(length + 4, os.SEEK_CUR)  # the chunk's data and its CRC
    except OSError:
        return None


def _sixteen_bit_range(arr: np.ndarray, path: Path) -> tuple[float, float] | None:
    """``(0, 2**bits - 1)`` for 16-bit data that uses fewer bits, else ``None`` (the full 16-bit range)."""
    declared = _png_significant_bits(path) if path.suffix.lower() == ".png" else None
    used = int(arr.max()).bit_length() if arr.size else 0
    if declared:  # the file's own declaration wins; values beyond it are scaled by the bits they need
        bits = min(16, max(declared, used))
    else:
        bits = _INFERRED_BITS if used <= _INFERRED_BITS else 16
    return (0.0, float(2**bits - 1)) if bits < 16 else None


def _composite_on_black(img) -> np.ndarray:
    """Colour channels of an image with alpha, multiplied by alpha: transparent pixels become 0."""
    if img.mode == "PA":
        img = img.convert("RGBA")
    rgba = np.asarray(img)
    colour, alpha = rgba[..., :-1].astype(np.float32), rgba[..., -1:].astype(np.float32) / 255.0
    out = np.rint(colour * alpha).astype(rgba.dtype)
    return out[..., 0] if out.shape[-1] == 1 else out


def read_raster(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Read a raster image; return ``(array (C, H, W), meta)``. Raises :class:`ImageReadError`.

    16-bit data (``uint16``) often hold fewer bits (12-bit CT, MR or X-ray saved as 16-bit PNG or TIFF), and
    scaled by 65535 such an image is near black. Their real bit depth sets ``meta["value_range"]`` to
    ``(0, 2**bits - 1)``, which :class:`~monai_ssl_ext.transforms.ReadImage` scales by:

    - a PNG's ``sBIT`` chunk (significant bits) when it has one, raised to the bits the largest value
      needs if the file holds larger values than it declares;
    - otherwise 12 bits when every value fits 12 bits (at most 4095), else 16 bits. A 16-bit image that
      is dark throughout (no value above 4095) is therefore scaled as 12-bit data: give such files an
      ``sBIT`` of 16 to keep the full range.

    With 16 bits no ``value_range`` is set (the type's range, as for 8-bit images, applies). Images of
    other types are returned as stored, without ``value_range``.
    """
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
    if arr.dtype == np.uint16:
        value_range = _sixteen_bit_range(arr, path)
        if value_range is not None:
            meta["value_range"] = value_range
    return np.ascontiguousarray(arr), meta
