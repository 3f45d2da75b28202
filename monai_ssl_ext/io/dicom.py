"""DICOM images through pydicom, rendered as a clinical viewer shows them, channel-first ``(C, H, W)``.

Orientation: row 0 is the first stored row (the top of the image in a viewer), as for PNG.

Pixel pipeline (DICOM PS3.3 C.7.6.3 Image Pixel Module, C.11 Look Up Tables and Presentation States):

1. Decode the frame(s) with pydicom's decoders, asking for the decoded values as they are
   (``raw=True``) together with the photometric interpretation they actually hold. This matters
   for JPEG: a decoder may already have turned YCbCr into RGB, and a second conversion would be wrong.
2. Colour: ``RGB`` is kept; ``YBR_FULL`` and ``YBR_FULL_422`` are converted to RGB once (PS3.3
   C.7.6.3.1.2); ``PALETTE COLOR`` is rendered through its (possibly segmented) LUT, 8 or 16 bit,
   and 16-bit LUT entries are reduced to 8 bits as a display does (PS3.3 C.7.6.3.1.5-6, C.7.9).
3. Greyscale (``MONOCHROME1``/``MONOCHROME2``):

   - modality LUT (``modality_lut=True``): Rescale Slope/Intercept (0028,1053)/(0028,1052), or the
     Modality LUT Sequence (0028,3000) (PS3.3 C.11.1); per-frame values of enhanced objects come from
     the Pixel Value Transformation functional group (PS3.3 C.7.6.16.2.9);
   - VOI (``voi``, PS3.3 C.11.2): ``True`` applies the file's VOI LUT Sequence (0028,3010) or its
     first Window Center/Width (0028,1050)/(0028,1051) with the VOI LUT Function (0028,1056)
     (LINEAR, LINEAR_EXACT, SIGMOID; per frame from the Frame VOI LUT functional group), giving
     float32 in [0, 1]. Without a VOI in the file, 8-bit data without a rescale are taken as display
     values (as a PNG is) and deeper or rescaled data are windowed from their minimum to their
     maximum, the default of common viewers. ``"minmax"`` always does the latter; ``(center, width)``
     applies that linear window (in modality units, e.g. HU); ``False`` applies no VOI;
   - ``MONOCHROME1`` (minimum is white) is inverted to the ``MONOCHROME2`` convention within the
     value range, so it looks as in a viewer.

4. Ultrasound (PS3.3 C.8.5.5 US Region Calibration Module): the Sequence of Ultrasound Regions
   (0018,6011) is parsed; the imaging region is the largest 2D tissue region (else the largest 2D
   region, else the largest region). ``crop_to_region`` crops to it (or to a region index), dropping
   the UI, calipers and burned-in text around it.
5. Spacing in mm along (rows, columns): Pixel Spacing (0028,0030) (or its Pixel Measures functional
   group), else the imaging region's Physical Delta Y/X (0018,602E)/(0018,602C) when their units
   (0018,6024)/(0018,6026) are cm (code 3), else Imager Pixel Spacing (0018,1164) (at the detector).

``meta["value_range"]`` is the range the returned values can take (after the steps above), which
:class:`monai_ssl_ext.transforms.ReadImage` maps to [0, 1]. Overlays (60xx,3000) and presentation
states are not burned in: they are annotations, not image content.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from monai_ssl_ext.io.errors import ImageReadError, MissingDecoderError
from monai_ssl_ext.io.frames import FrameSpec, resolve_frame

__all__ = [
    "DICOM_SUFFIXES",
    "UltrasoundRegion",
    "apply_window",
    "is_dicom_file",
    "read_dicom",
    "read_dicom_header",
    "select_imaging_region",
    "ultrasound_regions",
]

DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}

# PS3.3 C.8.5.5.1.1-2 and C.8.5.5.1.13 (codes of the US Region Calibration Module)
_SPATIAL_FORMATS = {0: "none", 1: "2D", 2: "M-mode", 3: "spectral", 4: "waveform", 5: "graphics"}
_DATA_TYPES = {
    0: "none",
    1: "tissue",
    2: "color flow",
    3: "PW spectral doppler",
    4: "CW spectral doppler",
    5: "doppler mean trace",
    6: "doppler mode trace",
    7: "doppler max trace",
    8: "volume trace",
    10: "ECG trace",
    11: "pulse trace",
    12: "phonocardiogram trace",
    13: "gray bar",
    14: "color bar",
    15: "integrated backscatter",
    16: "area trace",
    17: "d(area)/dt",
    18: "other physiological input",
}
_UNIT_CM = 3

_GREY = ("MONOCHROME1", "MONOCHROME2")
_YBR = ("YBR_FULL", "YBR_FULL_422")
_IMAGE_MODULE = ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation")


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when the file starts with the 128-byte preamble and ``DICM`` (PS3.10 7.1)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


# ---------------------------------------------------------------- ultrasound regions


@dataclass(frozen=True)
class UltrasoundRegion:
    """One item of the Sequence of Ultrasound Regions (0018,6011), PS3.3 C.8.5.5.1.

    ``x0, y0, x1, y1`` are the inclusive pixel bounds (Region Location Min/Max X0/Y0/X1/Y1);
    ``delta_x``/``delta_y`` the physical size of a pixel in ``units_x``/``units_y`` (3 = cm).
    """

    index: int
    x0: int
    y0: int
    x1: int
    y1: int
    spatial_format: int
    data_type: int
    units_x: int
    units_y: int
    delta_x: float
    delta_y: float

    @property
    def area(self) -> int:
        return max(self.x1 - self.x0 + 1, 0) * max(self.y1 - self.y0 + 1, 0)

    def clipped(self, rows: int, cols: int) -> UltrasoundRegion | None:
        """The region inside an image of ``rows x cols`` (writers may exceed it), or ``None`` when outside."""
        x0, y0 = max(self.x0, 0), max(self.y0, 0)
        x1, y1 = min(self.x1, cols - 1), min(self.y1, rows - 1)
        if x1 < x0 or y1 < y0:
            return None
        return UltrasoundRegion(**{**asdict(self), "x0": x0, "y0": y0, "x1": x1, "y1": y1})

    def spacing_mm(self) -> tuple[float, float] | None:
        """``(row, column)`` pixel size in mm when both directions are calibrated in cm, else ``None``."""
        if self.units_x != _UNIT_CM or self.units_y != _UNIT_CM or not self.delta_x or not self.delta_y:
            return None
        return (abs(self.delta_y) * 10.0, abs(self.delta_x) * 10.0)

    def describe(self) -> dict[str, Any]:
        """Plain-type summary for a meta dict."""
        return {
            "index": self.index,
            "bbox": (self.x0, self.y0, self.x1, self.y1),
            "data_type": _DATA_TYPES.get(self.data_type, f"code {self.data_type}"),
            "spatial_format": _SPATIAL_FORMATS.get(self.spatial_format, f"code {self.spatial_format}"),
        }


def ultrasound_regions(ds: Any) -> list[UltrasoundRegion]:
    """The regions of a dataset's Sequence of Ultrasound Regions (0018,6011), in file order."""
    out = []
    for i, item in enumerate(ds.get("SequenceOfUltrasoundRegions") or []):
        try:
            out.append(
                UltrasoundRegion(
                    index=i,
                    x0=int(item.RegionLocationMinX0),
                    y0=int(item.RegionLocationMinY0),
                    x1=int(item.RegionLocationMaxX1),
                    y1=int(item.RegionLocationMaxY1),
                    spatial_format=int(item.get("RegionSpatialFormat", 0) or 0),
                    data_type=int(item.get("RegionDataType", 0) or 0),
                    units_x=int(item.get("PhysicalUnitsXDirection", 0) or 0),
                    units_y=int(item.get("PhysicalUnitsYDirection", 0) or 0),
                    delta_x=float(item.get("PhysicalDeltaX", 0.0) or 0.0),
                    delta_y=float(item.get("PhysicalDeltaY", 0.0) or 0.0),
                )
            )
        except (AttributeError, TypeError, ValueError):
            continue  # an item without a location cannot be used; the others still can
    return out


def select_imaging_region(regions: list[UltrasoundRegion], rows: int, cols: int) -> UltrasoundRegion | None:
    """The imaging region clipped to the image: the largest 2D tissue region, else the largest 2D region,
    else the largest region (ties: the first in the sequence); ``None`` when there is none."""
    valid = [c for c in (r.clipped(rows, cols) for r in regions) if c is not None]
    tissue = [r for r in valid if r.spatial_format == 1 and r.data_type == 1]
    two_d = [r for r in valid if r.spatial_format == 1]
    pool = tissue or two_d or valid
    return max(pool, key=lambda r: r.area) if pool else None


# ---------------------------------------------------------------- header and decoding


def _install_hint(ts: Any) -> str | None:
    """pip packages that decode a transfer syntax, or ``None`` when pydicom needs nothing more."""
    from pydicom import uid

    extra = " (or pip install monai-ssl-ext[dicom])"
    if ts in uid.JPEGLSTransferSyntaxes:
        return "pip install pyjpegls" + extra
    if ts in uid.JPEG2000TransferSyntaxes:
        return "pip install pylibjpeg pylibjpeg-openjpeg" + extra
    if ts in uid.JPEGTransferSyntaxes:
        return "pip install pylibjpeg pylibjpeg-libjpeg" + extra
    return None


def _hint_installed(ts: Any) -> bool:
    """Whether the packages named by :func:`_install_hint` are importable."""
    from pydicom import uid

    def have(*modules: str) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in modules)

    if ts in uid.JPEGLSTransferSyntaxes:
        return have("jpeg_ls") or have("pylibjpeg", "libjpeg")
    if ts in uid.JPEG2000TransferSyntaxes:
        return have("pylibjpeg", "openjpeg")
    if ts in uid.JPEGTransferSyntaxes:
        return have("pylibjpeg", "libjpeg")
    return True


def _check_complete(ds: Any, path: Path) -> None:
    """Raise when the file ends inside its last element: pydicom reads such values short, silently."""
    from pydicom.dataelem import RawDataElement

    keys = list(ds.keys())
    if not keys:
        raise ImageReadError(
            path, "truncated or corrupt DICOM file: no data element could be read after the file meta information"
        )
    last = ds.get_item(max(keys))
    if isinstance(last, RawDataElement) and last.length != 0xFFFFFFFF:
        size = path.stat().st_size
        if last.value_tell + last.length > size:
            raise ImageReadError(
                path,
                f"truncated DICOM file: element {last.tag} needs {last.length} bytes at offset {last.value_tell}, "
                f"the file has {size} bytes",
            )


def _dcmread(path: Path, stop_before_pixels: bool = False) -> Any:
    import pydicom
    from pydicom import uid
    from pydicom.errors import InvalidDicomError

    try:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
        except InvalidDicomError:
            if path.suffix.lower() not in DICOM_SUFFIXES:
                raise ImageReadError(path, "not a DICOM file (no 'DICM' preamble)") from None
            # files written without the PS3.10 preamble still occur; accept them when they parse as an image
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
            if "SOPClassUID" not in ds and not all(k in ds for k in _IMAGE_MODULE):
                raise ImageReadError(
                    path, "not a DICOM file (no 'DICM' preamble and no DICOM image attributes)"
                ) from None
    except ImageReadError:
        raise
    except Exception as e:
        raise ImageReadError(path, f"corrupt DICOM file ({type(e).__name__}: {e})") from None
    if not stop_before_pixels:
        _check_complete(ds, path)
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ts = uid.ImplicitVRLittleEndian if implicit else uid.ExplicitVRLittleEndian
        ds.file_meta.TransferSyntaxUID = ts if little else uid.ExplicitVRBigEndian
    return ds


def read_dicom_header(path: str | os.PathLike) -> Any:
    """The dataset without its pixel data (``pydicom.Dataset``); raises :class:`ImageReadError`."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found")
    return _dcmread(path, stop_before_pixels=True)


def _sop_class_name(ds: Any) -> str:
    sop = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
    if sop is None:
        return "unknown SOP class"
    name = sop.name
    return name if name and name != str(sop) else str(sop)


def _sop_class_uid(ds: Any) -> str | None:
    sop = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
    return str(sop) if sop else None


def _has_pixels(ds: Any) -> bool:
    return any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def _check_has_pixels(ds: Any, path: Path) -> None:
    if _has_pixels(ds):
        return
    name = _sop_class_name(ds)
    if "Image Storage" in name or all(k in ds for k in _IMAGE_MODULE):
        raise ImageReadError(path, f"incomplete DICOM file: {name} with no pixel data (truncated or corrupt)")
    raise ImageReadError(path, f"no pixel data ({name}: not an image)")


def _decode(ds: Any, path: Path, index: int | None) -> tuple[np.ndarray, str]:
    """Decoded frame(s) as pydicom gives them, and the photometric interpretation they hold."""
    from pydicom.pixels import get_decoder

    ts = ds.file_meta.TransferSyntaxUID
    name = ts.name or str(ts)
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        from pydicom import uid

        video = " (video: extract the frames with a video decoder first)" if ts in uid.MPEGTransferSyntaxes else ""
        raise ImageReadError(path, f"transfer syntax {name} ({ts}) is not supported{video}") from None
    hint = _install_hint(ts)
    if not decoder.is_available:
        raise MissingDecoderError(path, f"{name} pixel data", hint or "pip install monai-ssl-ext[dicom]")
    try:
        arr, info = decoder.as_array(ds, index=index, raw=True)
    except Exception as e:
        cause = " ".join(str(e).split())[:300]
        if hint and not _hint_installed(ts):
            raise MissingDecoderError(path, f"{name} pixel data (decoding failed: {cause})", hint) from None
        if "less than expected" in cause or "truncat" in cause.lower():
            raise ImageReadError(path, f"truncated or corrupt pixel data: {cause}") from None
        raise ImageReadError(path, f"cannot decode {name} pixel data: {cause}") from None
    return arr, str(info.get("photometric_interpretation", ds.PhotometricInterpretation))


# ---------------------------------------------------------------- greyscale rendering


def _functional_item(ds: Any, frame: int, sequence: str) -> Any:
    """The item of a functional group macro for ``frame`` (per-frame first, then shared), PS3.3 C.7.6.16."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame < len(per_frame) and per_frame[frame].get(sequence):
        return per_frame[frame].get(sequence)[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and shared[0].get(sequence):
        return shared[0].get(sequence)[0]
    return None


def _first(value: Any) -> float:
    """The first of a multi-valued attribute (PS3.3: extra windows are alternatives to the first)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        return float(value)
    return float(value[0])


def _stored_range(ds: Any) -> tuple[int, int]:
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _rescale(ds: Any, frame: int) -> tuple[float, float] | None:
    item = _functional_item(ds, frame, "PixelValueTransformationSequence")
    source = item if item is not None and "RescaleSlope" in item else ds
    if "RescaleSlope" not in source and "RescaleIntercept" not in source:
        return None
    slope = float(source.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(source.get("RescaleIntercept", 0.0) or 0.0)
    return None if (slope, intercept) == (1.0, 0.0) else (slope, intercept)


def _window(ds: Any, frame: int) -> tuple[float, float, str] | None:
    item = _functional_item(ds, frame, "FrameVOILUTSequence")
    source = item if item is not None and "WindowCenter" in item else ds
    if "WindowCenter" not in source or "WindowWidth" not in source:
        return None
    try:
        center, width = _first(source.WindowCenter), _first(source.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return None
    function = str(source.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if width <= 0:  # not a valid window (PS3.3 C.11.2.1.2); the caller falls back to min/max
        return None
    return center, width, function


def apply_window(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Window values to float32 in [0, 1] (PS3.3 C.11.2.1.2: LINEAR, LINEAR_EXACT, SIGMOID)."""
    x = x.astype(np.float64, copy=False)
    if function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / max(width, 1e-12)))
    elif function == "LINEAR_EXACT":
        out = (x - center) / max(width, 1e-12) + 0.5
    else:
        w = max(width - 1.0, 1e-12)  # PS3.3 requires width >= 1 for LINEAR; width 1 is a threshold
        out = (x - (center - 0.5)) / w + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _lut(item: Any, ds: Any) -> tuple[np.ndarray, int, int]:
    """A LUT item's ``(table, first mapped value, bits per entry)`` (PS3.3 C.11.1.1, C.11.2.1.1)."""
    n, first, bits = (int(v) for v in item.LUTDescriptor)
    n = n or 65536  # 0 means 2**16 entries
    data = item.LUTData
    if isinstance(data, bytes):
        # OW: 16-bit words in the dataset's byte order
        big = ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.2"
        table = np.frombuffer(data, dtype=">u2" if big else "<u2")[:n]
    else:
        table = np.asarray(data if not np.isscalar(data) else [data], dtype=np.int64)[:n]
    # the descriptor's first value is unsigned (US) even when the stored values are signed
    if first >= 2**15 and int(ds.get("PixelRepresentation", 0) or 0) == 1:
        first -= 2**16
    return table.astype(np.int64), first, bits


def _apply_lut(x: np.ndarray, table: np.ndarray, first: int) -> np.ndarray:
    """Values below the first mapped value take the first entry, above the last the last entry."""
    index = np.clip(np.rint(x).astype(np.int64) - first, 0, len(table) - 1)
    return table[index]


def _render_grey(
    ds: Any, frames: np.ndarray, indices: list[int], modality_lut: bool, voi: Any
) -> tuple[np.ndarray, tuple[float, float], dict[str, Any]]:
    """Modality LUT, VOI and MONOCHROME1 inversion of ``frames`` ``(T, H, W)``; see the module docstring."""
    lo, hi = _stored_range(ds)
    info: dict[str, Any] = {"modality_lut": None, "voi": None}
    values: list[np.ndarray] = []
    changed = False
    for x, f in zip(frames, indices, strict=True):
        if modality_lut and ds.get("ModalityLUTSequence"):
            table, first, bits = _lut(ds.ModalityLUTSequence[0], ds)
            x = _apply_lut(x, table, first).astype(np.uint16 if bits <= 16 else np.uint32)
            lo, hi, changed = 0, 2**bits - 1, True
            info["modality_lut"] = "Modality LUT Sequence"
        elif modality_lut and (r := _rescale(ds, f)) is not None:
            slope, intercept = r
            x = x.astype(np.float32) * np.float32(slope) + np.float32(intercept)
            a, b = _stored_range(ds)
            lo, hi = sorted((a * slope + intercept, b * slope + intercept))
            changed = True
            info["modality_lut"] = f"rescale slope {slope:g} intercept {intercept:g}"
        values.append(x)
    stack = np.stack(values)

    if voi is True:
        if ds.get("VOILUTSequence"):
            voi = "lut"
        elif all(_window(ds, f) is not None for f in indices):
            voi = "file"
        elif changed or hi - lo > 255:
            voi = "minmax"
        else:
            voi = False
    if voi == "lut":
        table, first, bits = _lut(ds.VOILUTSequence[0], ds)
        stack = (_apply_lut(stack, table, first) / float(2**bits - 1)).astype(np.float32)
        info["voi"] = "VOI LUT Sequence"
    elif voi == "file":
        out = []
        for x, f in zip(stack, indices, strict=True):
            center, width, function = _window(ds, f)  # type: ignore[misc]
            out.append(apply_window(x, center, width, function))
            info["voi"] = f"window {center:g}/{width:g} {function}"
        stack = np.stack(out)
    elif voi == "minmax":
        a, b = float(stack.min()), float(stack.max())
        stack = (
            ((stack.astype(np.float32) - a) / (b - a)).astype(np.float32) if b > a else np.zeros_like(stack, np.float32)
        )
        info["voi"] = f"min/max {a:g}..{b:g}"
    elif isinstance(voi, (tuple, list)) and len(voi) == 2:
        center, width = float(voi[0]), float(voi[1])
        stack = apply_window(stack, center, width)
        info["voi"] = f"window {center:g}/{width:g} LINEAR"
    if info["voi"] is not None:
        lo, hi = 0.0, 1.0

    if str(ds.PhotometricInterpretation).strip() == "MONOCHROME1":
        if np.issubdtype(stack.dtype, np.integer):
            stack = (int(lo) + int(hi) - stack.astype(np.int64)).astype(stack.dtype)
        else:
            stack = (np.float32(lo + hi) - stack).astype(np.float32)
        info["inverted"] = True
    return stack, (lo, hi), info


def _render_palette(ds: Any, frames: np.ndarray) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    rgb = apply_color_lut(frames, ds)
    if rgb.dtype != np.uint8:
        # 16-bit LUT entries: a display shows their 8 most significant bits
        rgb = (rgb >> 8).astype(np.uint8)
    return rgb


# ---------------------------------------------------------------- reader


def _spacing(ds: Any, region: UltrasoundRegion | None, frame: int) -> tuple[tuple[float, float] | None, str | None]:
    item = _functional_item(ds, frame, "PixelMeasuresSequence")
    for source in (item, ds):
        if source is not None and source.get("PixelSpacing"):
            ps = source.PixelSpacing
            return (float(ps[0]), float(ps[1])), "PixelSpacing"
    if region is not None and (mm := region.spacing_mm()) is not None:
        return mm, "UltrasoundRegion"
    if ds.get("ImagerPixelSpacing"):
        ps = ds.ImagerPixelSpacing
        return (float(ps[0]), float(ps[1])), "ImagerPixelSpacing"
    return None, None


def read_dicom(
    path: str | os.PathLike,
    *,
    frame: FrameSpec = None,
    crop_to_region: bool | int = False,
    modality_lut: bool = True,
    voi: bool | str | tuple[float, float] = True,
) -> tuple[np.ndarray, dict]:
    """Read a DICOM image as a viewer shows it; return ``(array, meta)``.

    The array is ``(C, H, W)`` (C = 1 greyscale, 3 colour) for one frame and ``(C, T, H, W)`` for
    ``frame="all"``. Its dtype is that of the stored data (uint8 for 8-bit colour and palette images),
    or float32 in [0, 1] once a VOI window or LUT is applied. See the module docstring for the steps.

    Args:
        frame: which frame(s) of a multi-frame file (:mod:`monai_ssl_ext.io.frames`); default the first.
        crop_to_region: ``True`` crops to the ultrasound imaging region (no crop when the file has no
            regions), an int to that item of the Sequence of Ultrasound Regions.
        modality_lut: apply Rescale Slope/Intercept or the Modality LUT to greyscale data.
        voi: ``True`` (the file's window or VOI LUT, else a viewer's default), ``"minmax"``,
            ``(center, width)`` or ``False``.

    Meta keys: ``filename_or_obj``, ``format`` ("dicom"), ``modality``, ``sop_class`` (its name), ``sop_class_uid``,
    ``photometric_interpretation`` (as stored), ``stored_mode`` (same), ``transfer_syntax`` (name),
    ``frames``, ``frame`` (index, ``None`` for all), ``spatial_shape``, ``spacing`` (mm along rows,
    columns), ``spacing_source``, ``us_region`` (the imaging region: index, bbox ``(x0, y0, x1, y1)``,
    data type, spatial format), ``cropped``, ``value_range``, ``modality_lut``, ``voi``.

    Raises:
        ImageReadError: missing, truncated or corrupt file, no pixel data, unsupported transfer syntax
            or photometric interpretation, frame out of range.
        MissingDecoderError: the compression needs a decoder package that is not installed.
    """
    if not (isinstance(voi, bool) or voi == "minmax" or (isinstance(voi, (tuple, list)) and len(voi) == 2)):
        raise ValueError(f"voi must be True, False, 'minmax' or (center, width), got {voi!r}")
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found")
    ds = _dcmread(path)
    _check_has_pixels(ds, path)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in (*_GREY, "RGB", *_YBR, "PALETTE COLOR", "YBR_ICT", "YBR_RCT"):
        raise ImageReadError(path, f"photometric interpretation '{photometric or '(missing)'}' is not supported")
    n_frames = int(ds.get("NumberOfFrames") or 1)
    index = resolve_frame(frame, n_frames, path)
    indices = list(range(n_frames)) if index is None else [index]

    pixels, decoded = _decode(ds, path, index)
    samples = int(ds.get("SamplesPerPixel") or 1)
    # one layout for everything below: (T, H, W) or (T, H, W, S)
    if index is not None or n_frames == 1:
        pixels = pixels[None]
    if pixels.ndim == 3 and samples > 1:
        raise ImageReadError(path, f"decoded shape {pixels.shape[1:]} does not match {samples} samples per pixel")

    info: dict[str, Any] = {"modality_lut": None, "voi": None}
    if decoded in _GREY or photometric in _GREY:
        pixels, value_range, info = _render_grey(ds, pixels, indices, modality_lut, voi)
        channel_first = pixels[None]
    else:
        if photometric == "PALETTE COLOR":
            pixels = _render_palette(ds, pixels)
            value_range: tuple[float, float] = (0, 255)
        elif decoded in _YBR:
            from pydicom.pixels import convert_color_space

            pixels = convert_color_space(pixels, decoded, "RGB", per_frame=True)
            value_range = _stored_range(ds)
        elif decoded == "RGB":
            value_range = _stored_range(ds)
        else:
            raise ImageReadError(path, f"decoded photometric interpretation '{decoded}' is not supported")
        channel_first = np.moveaxis(pixels, -1, 0)
    if index is not None:
        channel_first = channel_first[:, 0]

    rows, cols = channel_first.shape[-2:]
    regions = ultrasound_regions(ds)
    region = select_imaging_region(regions, rows, cols)
    cropped = False
    if crop_to_region is not False and crop_to_region is not None:
        if not isinstance(crop_to_region, bool):
            by_index = {r.index: r for r in regions}
            if int(crop_to_region) not in by_index:
                raise ImageReadError(path, f"no ultrasound region {crop_to_region} (the file has {len(regions)})")
            region = by_index[int(crop_to_region)].clipped(rows, cols)
            if region is None:
                raise ImageReadError(path, f"ultrasound region {crop_to_region} lies outside the image")
        if region is not None:
            channel_first = channel_first[..., region.y0 : region.y1 + 1, region.x0 : region.x1 + 1]
            cropped = True
    spacing, spacing_source = _spacing(ds, region, indices[0])

    modality = ds.get("Modality")
    frame_time = ds.get("FrameTime")
    meta = {
        "filename_or_obj": str(path),
        "format": "dicom",
        "modality": str(modality) if modality else None,
        "sop_class": _sop_class_name(ds),
        "sop_class_uid": _sop_class_uid(ds),
        "photometric_interpretation": photometric,
        "stored_mode": photometric,
        "transfer_syntax": ds.file_meta.TransferSyntaxUID.name,
        "frames": n_frames,
        "frame": index,
        "frame_time_ms": float(frame_time) if frame_time else None,
        "spatial_shape": tuple(int(s) for s in channel_first.shape[-2:]),
        "spacing": spacing,
        "spacing_source": spacing_source,
        "us_region": region.describe() if region is not None else None,
        "cropped": cropped,
        "value_range": (float(value_range[0]), float(value_range[1])),
        "modality_lut": info["modality_lut"],
        "voi": info["voi"],
    }
    return np.ascontiguousarray(channel_first), meta
