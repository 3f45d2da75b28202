"""Loading transforms: file paths in, channel-first float tensors out.

Array and dictionary versions side by side, as in ``monai.transforms``:

- :class:`ReadImage` / :class:`ReadImaged`: read with :func:`monai_ssl_ext.io.read_image` (raster, DICOM,
  NIfTI; frame policy and reader options passed through), scale to [0, 1] by the declared value range
  or the integer type's range, and convert to the requested number of channels.
- :class:`ReadMask` / :class:`ReadMaskd`: read one or several mask files, binarise with ``> 0`` and take
  their union. A mask must have its image's size; a resize (nearest neighbour, same aspect ratio) happens
  only for a manifest that declares ``"mask_resize": true`` (HAM10000: masks at the original resolution).
  An empty mask on an image of a lesion class is logged once per file.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from monai_ssl_ext.io import ImageReadError, read_image
from monai_ssl_ext.io.frames import FrameSpec, parse_frame_policy
from monai_ssl_ext.io.reader import DICOM_OPTIONS, NIFTI_OPTIONS
from monai_ssl_ext.keys import DataKeys

__all__ = [
    "MaskMismatchError",
    "ReadImage",
    "ReadImaged",
    "ReadMask",
    "ReadMaskd",
    "report_empty_mask",
    "to_channels",
]

# ITU-R BT.601 luma weights, the convention of PIL's "L" conversion
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
READER_OPTIONS = DICOM_OPTIONS | NIFTI_OPTIONS

logger = logging.getLogger(__name__)
# mask files already reported empty: a non-cached data set reads a file every epoch, the log names it once
_EMPTY_REPORTED: set[str] = set()
_EMPTY_LOCK = threading.Lock()


class MaskMismatchError(ImageReadError):
    """A mask whose size cannot be matched to its image."""


def to_channels(array: np.ndarray, channels: int | None, path: str = "") -> np.ndarray:
    """Convert a ``(C, H, W)`` array to ``channels`` channels (1: luma of RGB, 3: grey replicated)."""
    c = array.shape[0]
    if channels is None or c == channels:
        return array
    if channels == 1 and c >= 3:
        return np.tensordot(_LUMA, array[:3].astype(np.float32), axes=1)[None]
    if channels == 3 and c == 1:
        return np.repeat(array, 3, axis=0)
    raise ImageReadError(path, f"cannot convert a {c}-channel image to {channels} channels")


def _scale_to_unit(array: np.ndarray, value_range: Sequence[float] | None = None) -> np.ndarray:
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if value_range is not None:
        lo, hi = float(value_range[0]), float(value_range[1])
        if hi > lo:
            # the same operations as the dtype branch when lo == 0, so PNG and DICOM give equal floats
            out = array.astype(np.float32)
            if lo != 0.0:
                out = out - np.float32(lo)
            return np.clip(out / float(hi - lo), 0.0, 1.0).astype(np.float32, copy=False)
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        if info.min < 0:
            return ((array.astype(np.float32) - info.min) / float(info.max - info.min)).astype(np.float32)
        return (array.astype(np.float32) / float(info.max)).astype(np.float32)
    return array.astype(np.float32)


def _check_reader_options(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(options) - READER_OPTIONS
    if unknown:
        raise TypeError(f"unknown reader option(s) {sorted(unknown)}; known: {sorted(READER_OPTIONS)}")
    return dict(options)


class ReadImage(Transform):
    """Read an image file into a ``(C, H, W)`` float32 ``MetaTensor`` (``(C, T, H, W)`` for ``frame="all"``).

    Any format :func:`monai_ssl_ext.io.read_image` reads: PNG/JPEG/TIFF, DICOM (rendered as a viewer
    shows it: photometric, palette, modality/VOI LUT, MONOCHROME1), NIfTI (one slice).
    The meta dict keeps the source (``filename_or_obj``), the stored mode and the pixel spacing, so
    inference can write its outputs beside the input and error messages can name the file; ``cropped`` and
    ``crop_box`` (``[x0, y0, x1, y1]``, inclusive, of the image in the stored frame: the ultrasound region it was
    cropped to, else the whole frame) say where it lies in the file, for every image. The affine
    scales rows and columns by the spacing (mm for DICOM and NIfTI, 1 when unknown).

    Args:
        channels: output channels (1 for greyscale modalities such as ultrasound, 3 for RGB), or
            ``None`` to keep what the file holds.
        scale: ``"dtype"`` maps data to [0, 1]: by the value range the reader declares when it does
            (``meta["value_range"]``: DICOM Bits Stored or the VOI output, NIfTI cal_min/cal_max or
            the volume's range, the real bit depth of 16-bit PNG/TIFF such as 12-bit data / 4095; values
            outside are clipped), else integers by their type's range (8-bit / 255, 16-bit / 65535);
            ``None`` keeps raw values.
        frame: frame policy for multi-frame files (:mod:`monai_ssl_ext.io.frames`): ``"first"``
            (default), ``"middle"``, ``"last"``, an index, ``"all"`` or ``"every:k"`` (entries then
            name their frame, see :func:`monai_ssl_ext.data.expand_frames`).
        crop_to_region: crop DICOM ultrasound to its imaging region (``True``) or a region index.
        reader_options: further options of :func:`monai_ssl_ext.io.read_image` (``modality_lut``,
            ``voi``, ``slice_axis``, ``slice_index``).
    """

    def __init__(
        self,
        channels: int | None = 1,
        scale: str | None = "dtype",
        frame: FrameSpec = None,
        crop_to_region: bool | int = False,
        **reader_options: Any,
    ) -> None:
        if scale not in ("dtype", None):
            raise ValueError(f"scale must be 'dtype' or None, got {scale!r}.")
        self.channels = channels
        self.scale = scale
        self.frame = parse_frame_policy(frame)
        self.reader_options = _check_reader_options({"crop_to_region": crop_to_region, **reader_options})

    def __call__(self, path: str | os.PathLike, frame: FrameSpec = None) -> MetaTensor:
        """Read ``path``; ``frame`` (e.g. an entry's frame index) overrides the policy given at construction."""
        array, meta = read_image(path, frame=self.frame if frame is None else frame, **self.reader_options)
        if self.scale == "dtype":
            array = _scale_to_unit(array, meta.get("value_range"))
        array = to_channels(array, self.channels, str(path)).astype(np.float32, copy=False)
        spacing = meta.get("spacing") or (1.0, 1.0)
        scales = [float(spacing[0]), float(spacing[1])]
        scales = [*scales, 1.0] if array.ndim == 3 else [1.0, *scales]  # (C, T, H, W): time first
        affine = torch.diag(torch.tensor([*scales, 1.0], dtype=torch.float64))
        meta = {k: v for k, v in meta.items() if v is not None}
        # every image states its crop with the same keys, so that a batch mixing cropped and uncropped images
        # (collated, then decollated by an evaluator) keeps them: an entry some images lack is lost for all
        box = meta.get("us_region", {}).get("bbox") if meta.get("cropped") else None
        rows, columns = array.shape[-2:]
        meta["cropped"] = box is not None
        meta["crop_box"] = [int(v) for v in box] if box is not None else [0, 0, int(columns) - 1, int(rows) - 1]
        return MetaTensor(torch.from_numpy(np.ascontiguousarray(array)), affine=affine, meta=meta)


class ReadImaged(MapTransform):
    """Dictionary version of :class:`ReadImage`; replaces each path under ``keys`` by its image.

    An entry's own frame index (under ``frame_key``, as :func:`monai_ssl_ext.data.expand_frames`
    writes it) takes precedence over ``frame``, so one config key (``frame``) chooses the policy and
    expanded manifests load the frame each entry names.
    """

    def __init__(
        self,
        keys: KeysCollection,
        channels: int | None = 1,
        scale: str | None = "dtype",
        allow_missing_keys: bool = False,
        frame: FrameSpec = None,
        frame_key: str = "frame",
        crop_to_region: bool | int = False,
        **reader_options: Any,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.frame_key = frame_key
        self.reader = ReadImage(
            channels=channels, scale=scale, frame=frame, crop_to_region=crop_to_region, **reader_options
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        frame = d.get(self.frame_key)
        for key in self.key_iterator(d):
            d[key] = self.reader(d[key], frame=frame)
        return d


def _size(shape: Sequence[int]) -> str:
    return "x".join(str(int(n)) for n in shape)


def report_empty_mask(path: str, lesion_class: str) -> None:
    """Log, once per file, that the mask ``path`` of an image of the lesion class ``lesion_class`` is empty.

    A warning, not an error: some data sets hold lesion-class images whose lesion is not visible, and
    their empty mask then teaches "no lesion here", which is worth knowing but may be right.
    """
    with _EMPTY_LOCK:
        if path in _EMPTY_REPORTED:
            return
        _EMPTY_REPORTED.add(path)
    logger.warning(
        f"{path}: empty lesion mask (all zero) for an image of class '{lesion_class}'; it trains as 'no lesion', "
        "fix the mask if the image shows one"
    )


class ReadMask(Transform):
    """Read one or several mask files as one binary ``(1, H, W)`` float tensor (their union).

    Every mask must have the size of its image (or, without one, of the first mask): a mask of another
    size usually belongs to another image or another crop, so it is refused. Data sets that publish masks
    at another resolution than their images (HAM10000: 600 x 450 masks for 200 x 150 copies of the
    images) declare ``"mask_resize": true`` in their manifest; their masks are then resized
    (nearest neighbour) when the aspect ratio agrees.

    Args:
        resize: resize masks of the same aspect ratio to the image's size instead of refusing them.
        aspect_tolerance: relative difference of aspect ratios (mask vs image) still accepted for a resize.
    """

    def __init__(self, resize: bool = False, aspect_tolerance: float = 0.02) -> None:
        self.resize = resize
        self.aspect_tolerance = aspect_tolerance

    def __call__(
        self,
        paths: str | os.PathLike | Sequence[str],
        spatial_shape: Sequence[int] | None = None,
        image: str | os.PathLike | None = None,
        resize: bool | None = None,
    ) -> torch.Tensor:
        """The union of the masks ``paths``, of size ``spatial_shape`` (that of the image file ``image``).

        ``resize`` overrides the constructor's choice for this call (an entry's manifest decides it).

        Raises:
            MaskMismatchError: a mask whose size differs from the image's (or the first mask's).
            ImageReadError: a mask file that cannot be read.
        """
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if not paths:
            raise ValueError("ReadMask needs at least one mask path.")
        resize = self.resize if resize is None else resize
        union: torch.Tensor | None = None
        reference = f"its image {image}" if image is not None else "its image"
        for p in paths:
            array, _ = read_image(p)
            m = torch.from_numpy((array > 0).any(axis=0, keepdims=True).astype(np.float32))
            if spatial_shape is None and union is None:
                spatial_shape, reference = tuple(m.shape[1:]), f"the first mask {p}"
            target = tuple(int(n) for n in spatial_shape)
            if tuple(m.shape[1:]) != target:
                m = self._match(m, target, str(p), reference, resize)
            union = m if union is None else torch.maximum(union, m)
        assert union is not None
        return union

    def _match(
        self, mask: torch.Tensor, shape: tuple[int, ...], path: str, reference: str, resize: bool
    ) -> torch.Tensor:
        """The one size check: refuse ``mask`` unless resizing is allowed and the aspect ratio agrees."""
        mh, mw = mask.shape[1:]
        h, w = shape
        sizes = f"mask size {_size((mh, mw))} differs from {reference} ({_size(shape)})"
        if abs((mh / mw) / (h / w) - 1.0) > self.aspect_tolerance:
            raise MaskMismatchError(
                path, f"{sizes}, a different aspect ratio; fix the mask or its pairing in the manifest"
            )
        if not resize:
            raise MaskMismatchError(
                path,
                f"{sizes}; fix the mask or its pairing in the manifest, or, if the data set publishes its masks at "
                'another resolution, declare "mask_resize": true in the manifest',
            )
        return F.interpolate(mask[None], size=(h, w), mode="nearest")[0]


class ReadMaskd(MapTransform):
    """Dictionary version of :class:`ReadMask`: masks sized to the already-loaded ``ref_key`` image.

    An entry's ``mask_rules`` (set by :func:`~monai_ssl_ext.data.load_manifest` from its manifest, and
    removed here) decide whether its masks may be resized (``"resize"``) and name its class when that class
    shows a lesion (``"lesion_class"``): an empty mask of such an entry is logged once per file
    (:func:`report_empty_mask`).

    Args:
        keys: mask keys (each holding a path or a list of paths).
        ref_key: key of the image (already read) whose size the mask must match.
        resize: for entries without ``mask_rules``, resize masks of the same aspect ratio (see :class:`ReadMask`).
        aspect_tolerance: as :class:`ReadMask`.
        allow_missing_keys: entries without a mask get an all-zero mask of the image's size when True.
        rules_key: the entry key holding the mask rules.
    """

    def __init__(
        self,
        keys: KeysCollection,
        ref_key: str = "image",
        aspect_tolerance: float = 0.02,
        allow_missing_keys: bool = False,
        resize: bool = False,
        rules_key: str = DataKeys.MASK_RULES,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.rules_key = rules_key
        self.reader = ReadMask(resize=resize, aspect_tolerance=aspect_tolerance)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        rules = d.pop(self.rules_key, None) or {}
        ref = d[self.ref_key]
        shape = tuple(ref.shape[1:])
        source = getattr(ref, "meta", {}).get("filename_or_obj")
        for key in self.keys:
            if d.get(key) is None:
                if not self.allow_missing_keys:
                    raise KeyError(f"{source or 'an entry'}: no '{key}' given and missing masks are not allowed here")
                d[key] = torch.zeros((1, *shape), dtype=torch.float32)
                continue
            paths = d[key]
            d[key] = self.reader(paths, spatial_shape=shape, image=source, resize=rules.get("resize"))
            lesion_class = rules.get("lesion_class")
            if lesion_class is not None and not bool(d[key].any()):
                report_empty_mask(str(paths if isinstance(paths, (str, os.PathLike)) else paths[0]), lesion_class)
        return d
