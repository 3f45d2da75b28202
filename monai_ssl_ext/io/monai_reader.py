"""A MONAI ``ImageReader`` over :func:`monai_ssl_ext.io.read_dicom`, for ``LoadImage(reader=...)``.

Bundle configs can name it by its dotted path, which ``LoadImage`` resolves::

    {"_target_": "LoadImaged", "keys": "image", "reader": "monai_ssl_ext.io.DicomImageReader"}
    {"_target_": "LoadImaged", "keys": "image",
     "reader": {"_target_": "monai_ssl_ext.io.DicomImageReader", "frame": "middle", "crop_to_region": true}}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, ensure_tuple

from monai_ssl_ext.io.dicom import DICOM_SUFFIXES, is_dicom_file, read_dicom
from monai_ssl_ext.io.frames import FrameSpec
from monai_ssl_ext.io.reader import check_finite

__all__ = ["DicomImageReader"]

PathLike = str | Path


class DicomImageReader(ImageReader):
    """Read DICOM files as a viewer shows them (photometric, palette, modality and VOI LUTs, MONOCHROME1,
    ultrasound region crop, frame policy), with :func:`~monai_ssl_ext.io.read_dicom`.

    Unlike MONAI's ``ITKReader`` and ``PydicomReader``, the data are channel-first ``(C, H, W)``
    (``(C, T, H, W)`` for ``frame="all"``) with rows first, as our PNG reader gives them, and the meta
    dict says so (``original_channel_dim`` 0), so ``LoadImage(ensure_channel_first=True)`` keeps them.
    The affine scales rows and columns by the pixel spacing in mm (``meta["spacing"]``, 1 when unknown).
    A list of files is concatenated along the channel axis (MONAI's convention for readers).

    Args: as :func:`~monai_ssl_ext.io.read_dicom` (``frame``, ``crop_to_region``, ``modality_lut``, ``voi``).
    """

    def __init__(
        self,
        frame: FrameSpec = None,
        crop_to_region: bool | int = False,
        modality_lut: bool = True,
        voi: bool | str | tuple[float, float] = True,
    ) -> None:
        super().__init__()
        self.options: dict[str, Any] = {
            "frame": frame,
            "crop_to_region": crop_to_region,
            "modality_lut": modality_lut,
            "voi": voi,
        }

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """True when every file has a DICOM suffix or the ``DICM`` preamble."""
        names = ensure_tuple(filename)
        return bool(names) and all(Path(n).suffix.lower() in DICOM_SUFFIXES or is_dicom_file(n) for n in names)

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> Any:
        """Read one file (or each of a list) as ``(array, meta)``; ``kwargs`` override the reader options."""
        options = {**self.options, **kwargs}
        images = [read_dicom(name, **options) for name in ensure_tuple(data)]
        for name, (array, _) in zip(ensure_tuple(data), images, strict=True):
            check_finite(array, name)  # float pixel data: NaN would reach the loss without naming the file
        return images if len(images) > 1 else images[0]

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """The channel-first array and a MONAI meta dict (affine, spatial shape, channel dim 0)."""
        items = [img] if isinstance(img, tuple) else list(img)
        arrays = [a for a, _ in items]
        meta = _monai_meta(items[0][1], arrays[0])
        array = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
        return array, meta


def _plain(value: Any) -> Any:
    """Meta values as plain Python types, which MONAI's meta handling (endianness, collation) requires."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _monai_meta(meta: dict, array: np.ndarray) -> dict:
    spatial = array.shape[1:]
    rows, cols = meta.get("spacing") or (1.0, 1.0)
    scales = [float(rows), float(cols)] if len(spatial) == 2 else [1.0, float(rows), float(cols)]
    affine = np.diag([*scales, 1.0]).astype(np.float64)
    out = {k: _plain(v) for k, v in meta.items() if v is not None}
    out.update(
        {
            MetaKeys.ORIGINAL_CHANNEL_DIM: 0,
            MetaKeys.SPATIAL_SHAPE: np.asarray(spatial),
            MetaKeys.AFFINE: affine,
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
        }
    )
    return out
