"""What the readers make of a file or of every image in a folder: one record per file, and a table.

A record has the same keys for every file, ``None`` where a key does not apply:

``path``, ``format``, ``modality``, ``photometric`` (DICOM Photometric Interpretation (0028,0004) or
the raster mode), ``transfer_syntax`` (name), ``frames``, ``shape`` (the array after loading with the
default options, ``(C, H, W)``), ``dtype``, ``value_range`` (min, max of that array), ``spacing``
(mm along rows, columns), ``us_region`` (the ultrasound imaging region, PS3.3 C.8.5.5),
``cropped_shape`` (the array an ultrasound bundle reads: cropped to that region, as the ultrasound profile
does by default; ``None`` without a region) and ``error`` (the one-line
:class:`~monai_ssl_ext.io.ImageReadError` message of a file that does not load).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from monai_ssl_ext.io.dicom import read_dicom_header
from monai_ssl_ext.io.errors import ImageReadError
from monai_ssl_ext.io.reader import image_format, read_image

__all__ = ["RECORD_KEYS", "format_inspection", "inspect_path"]

RECORD_KEYS = (
    "path",
    "format",
    "modality",
    "photometric",
    "transfer_syntax",
    "frames",
    "shape",
    "dtype",
    "value_range",
    "spacing",
    "us_region",
    "cropped_shape",
    "error",
)


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if not name.startswith(".") and image_format(p) is not None:
                out.append(p)
    return out


def _header_fields(path: Path, record: dict[str, Any]) -> None:
    """DICOM header fields, so that a file whose pixels do not load still says what it is."""
    try:
        ds = read_dicom_header(path)
    except ImageReadError:
        return
    record["modality"] = str(ds.get("Modality") or "") or None
    record["photometric"] = str(ds.get("PhotometricInterpretation") or "") or None
    record["transfer_syntax"] = ds.file_meta.TransferSyntaxUID.name
    record["frames"] = int(ds.get("NumberOfFrames") or 1) if "PixelData" in ds or "Rows" in ds else None


def _inspect_file(path: Path) -> dict[str, Any]:
    record: dict[str, Any] = dict.fromkeys(RECORD_KEYS)
    record["path"] = str(path)
    kind = image_format(path)
    record["format"] = kind
    if kind == "dicom":
        _header_fields(path, record)
    try:
        array, meta = read_image(path)
    except ImageReadError as e:
        record["error"] = str(e)
        return record
    record["format"] = meta.get("format", kind)
    record["modality"] = meta.get("modality", record["modality"])
    # a raster's Pillow mode ("L", "RGB", "P") plays the part of the photometric interpretation
    record["photometric"] = meta.get("photometric_interpretation") or (
        meta.get("stored_mode") if kind == "raster" else None
    )
    record["frames"] = meta.get("frames")
    record["shape"] = tuple(int(s) for s in array.shape)
    record["dtype"] = str(array.dtype)
    record["value_range"] = (float(array.min()), float(array.max())) if array.size else None
    spacing = meta.get("spacing")
    record["spacing"] = tuple(round(float(s), 6) for s in spacing) if spacing else None
    record["us_region"] = meta.get("us_region")
    if record["us_region"] is not None:
        try:
            cropped, _ = read_image(path, crop_to_region=True)
        except ImageReadError as e:
            record["error"] = str(e)
            return record
        record["cropped_shape"] = tuple(int(s) for s in cropped.shape)
    return record


def inspect_path(path: str | os.PathLike) -> list[dict[str, Any]]:
    """One record per image file under ``path`` (a file, or a folder searched recursively).

    In a folder only files a reader recognises are listed (by suffix, or the DICOM ``DICM`` marker);
    hidden files and folders are skipped. A file given by name is always listed.

    Raises:
        ImageReadError: ``path`` does not exist.
    """
    root = Path(path)
    if not root.exists():
        raise ImageReadError(root, "file or folder not found")
    return [_inspect_file(p) for p in _files(root)]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e12 else f"{value:.4g}"
    if isinstance(value, tuple):
        return (
            "x".join(_cell(v) for v in value)
            if all(isinstance(v, int) for v in value)
            else ("(" + ", ".join(_cell(v) for v in value) + ")")
        )
    if isinstance(value, dict):  # the ultrasound region
        x0, y0, x1, y1 = value["bbox"]
        return f"#{value['index']} {value['data_type']} x{x0}-{x1} y{y0}-{y1}"
    return str(value)


def format_inspection(records: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`inspect_path` records, one line per file; errors shown on their line."""
    if not records:
        return "no image files found"
    paths = [Path(r["path"]) for r in records]
    common = Path(os.path.commonpath([str(p.parent) for p in paths]))
    columns = (
        "file",
        "format",
        "modality",
        "photometric",
        "transfer syntax",
        "frames",
        "shape",
        "dtype",
        "range",
        "spacing mm",
        "us region",
        "cropped",
    )
    rows = []
    for r, p in zip(records, paths, strict=True):
        name = str(p.relative_to(common)) if p.is_relative_to(common) else str(p)
        head = [
            name,
            _cell(r["format"]),
            _cell(r["modality"]),
            _cell(r["photometric"]),
            _cell(r["transfer_syntax"]),
            _cell(r["frames"]),
        ]
        if r["error"]:
            cause = r["error"][len(r["path"]) + 2 :] if r["error"].startswith(r["path"] + ": ") else r["error"]
            rows.append([*head, f"ERROR: {cause}"])
        else:
            rows.append(
                [
                    *head,
                    _cell(r["shape"]),
                    _cell(r["dtype"]),
                    _cell(r["value_range"]),
                    _cell(r["spacing"]),
                    _cell(r["us_region"]),
                    _cell(r["cropped_shape"]),
                ]
            )
    # an error row ends with one free-width cell, so it takes no part in the widths of the last columns
    widths = [
        max([len(columns[i])] + [len(row[i]) for row in rows if i < len(row) and not row[i].startswith("ERROR: ")])
        for i in range(len(columns))
    ]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())
    return "\n".join(lines)
