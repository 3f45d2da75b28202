"""NIfTI-1 and NIfTI-2 images through nibabel, as one 2D slice shown as in a radiological viewer.

Axes: the image is first reoriented to the closest canonical RAS+ voxel order (nibabel
``as_closest_canonical``: voxel axis 0 runs to the patient's Right, 1 to Anterior, 2 to Superior). A
slice across ``slice_axis`` (0 sagittal, 1 coronal, 2 axial; names accepted) keeps the two other axes
``(a, b)``, ``a < b``, and is displayed in radiological convention, as DICOM viewers show axial images:

- axial: rows run anterior -> posterior, columns patient right -> left (right on the viewer's left);
- coronal: rows superior -> inferior, columns right -> left;
- sagittal: rows superior -> inferior, columns anterior -> posterior.

In every case ``image = slice[::-1, ::-1].T``, i.e. rows follow axis ``b`` reversed and columns
axis ``a`` reversed. A 2D NIfTI (or one with a single slice) is the axial slice of a 1-slice volume.
Spacing is the header zooms of ``(b, a)`` in the file's spatial unit (usually mm).

4D images (x, y, z, t) choose the volume (time point) with the frame policy
(:mod:`monai_ssl_ext.io.frames`); ``"all"`` stacks them as ``(1, T, H, W)``. Voxel values keep
their stored type (scaled to float32 when the header has a scl_slope). ``meta["value_range"]`` is the
header's display range cal_min..cal_max when set, else the min..max of the (3D) volume used, which is
how viewers window a NIfTI by default; :class:`monai_ssl_ext.transforms.ReadImage` maps it to [0, 1].
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from monai_ssl_ext.io.errors import ImageReadError
from monai_ssl_ext.io.frames import FrameSpec, resolve_frame

__all__ = ["NIFTI_SUFFIXES", "is_nifti_path", "nifti_frames", "read_nifti", "slice_to_nifti"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}


def is_nifti_path(path: str | os.PathLike) -> bool:
    """True for ``.nii`` and ``.nii.gz`` names (any case)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _load(path: Path):
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        img = nib.load(path)
    except ImageFileError as e:
        raise ImageReadError(path, f"not a readable NIfTI file ({e})") from None
    except Exception as e:  # nibabel raises many types (HeaderDataError, EOFError, zlib.error...) for bad files
        raise ImageReadError(path, f"corrupt or truncated NIfTI file ({type(e).__name__}: {e})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ImageReadError(path, f"not a NIfTI image ({type(img).__name__})")
    return img


def _shape4(shape: tuple[int, ...], path: Path) -> tuple[int, ...]:
    """Pad to ``(x, y, z, t)``; dimensions past the fourth must be singletons."""
    if len(shape) > 4 and any(s != 1 for s in shape[4:]):
        raise ImageReadError(path, f"a {len(shape)}D NIfTI of shape {shape} is not supported (up to 4D)")
    shape = tuple(shape[:4])
    return shape + (1,) * (4 - len(shape))


def nifti_frames(path: str | os.PathLike) -> int:
    """Number of volumes (4th dimension) of a NIfTI file, from its header."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found")
    return int(_shape4(_load(path).shape, path)[3])


def read_nifti(
    path: str | os.PathLike,
    *,
    slice_axis: int | str = 2,
    slice_index: int | None = None,
    frame: FrameSpec = None,
) -> tuple[np.ndarray, dict]:
    """Read one slice of a NIfTI-1/2 image as ``(1, H, W)`` (``(1, T, H, W)`` for ``frame="all"``).

    Args:
        slice_axis: canonical voxel axis across which to slice: 0/"sagittal", 1/"coronal", 2/"axial".
        slice_index: slice index along that axis in canonical order (negative counts from the end);
            default the middle slice ``n // 2``.
        frame: the volume of a 4D image (frame policy; default the first).

    Meta keys: ``filename_or_obj``, ``format`` ("nifti1"/"nifti2"), ``stored_mode`` (on-disk dtype),
    ``orientation`` (axis codes of the file), ``frames`` (volumes), ``frame``, ``slice_axis``,
    ``slice_index``, ``volume_shape``, ``spatial_shape``, ``spacing`` (rows, columns), ``value_range``.

    Raises:
        ImageReadError: missing, corrupt or truncated file, unsupported dimensionality, index out of range.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found")
    axis = _AXES.get(slice_axis, slice_axis) if isinstance(slice_axis, str) else int(slice_axis)
    if axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1, 2 or sagittal/coronal/axial, got {slice_axis!r}")
    img = _load(path)
    shape = _shape4(img.shape, path)
    orientation = "".join(nib.aff2axcodes(img.affine))
    index = resolve_frame(frame, shape[3], path)
    try:
        if index is not None and len(img.shape) >= 4:
            # read only the volume used: fMRI series can be large
            data = np.asanyarray(img.dataobj[:, :, :, index]).reshape((*shape[:3], 1))
        else:
            data = np.asanyarray(img.dataobj).reshape(shape)
            data = data if index is None else data[..., index : index + 1]
        if data.dtype.names:
            raise ImageReadError(path, f"NIfTI data type {data.dtype} (structured, e.g. RGB) is not supported")
        canonical = nib.as_closest_canonical(nib.Nifti1Image(data, img.affine))
        data = np.asanyarray(canonical.dataobj)
    except ImageReadError:
        raise
    except Exception as e:
        raise ImageReadError(path, f"corrupt or truncated NIfTI file ({type(e).__name__}: {e})") from None
    zooms = [float(z) for z in canonical.header.get_zooms()[:3]]
    volumes = data  # (x, y, z, t): every volume for "all", else the one chosen

    n = volumes.shape[axis]
    k = n // 2 if slice_index is None else int(slice_index)
    if not -n <= k < n:
        raise ImageReadError(path, f"slice {k} out of range along axis {axis}: the volume has {n} slices")
    k %= n
    plane = np.take(volumes, k, axis=axis)  # (a, b, t)
    image = np.moveaxis(plane[::-1, ::-1], -1, 0).transpose(0, 2, 1)  # (t, b reversed, a reversed)
    if image.dtype.kind == "f" and image.dtype != np.float32:
        image = image.astype(np.float32)
    elif image.dtype.byteorder not in ("=", "|"):
        image = image.astype(image.dtype.newbyteorder("="))

    cal_min, cal_max = float(img.header["cal_min"]), float(img.header["cal_max"])
    if cal_max > cal_min:
        value_range = (cal_min, cal_max)
    else:
        value_range = (float(np.min(volumes)), float(np.max(volumes)))
    a, b = (i for i in range(3) if i != axis)
    out = image[None] if index is None else image[:1]
    meta = {
        "filename_or_obj": str(path),
        "format": "nifti2" if isinstance(img, nib.Nifti2Image) else "nifti1",
        "stored_mode": str(img.get_data_dtype()),
        "orientation": orientation,
        "frames": int(shape[3]),
        "frame": index,
        "slice_axis": axis,
        "slice_index": k,
        "volume_shape": tuple(int(s) for s in shape[:3]),
        "spatial_shape": tuple(int(s) for s in out.shape[-2:]),
        "spacing": (zooms[b], zooms[a]),
        "value_range": value_range,
    }
    return np.ascontiguousarray(out), meta


def _inverse_orientation(ornt: np.ndarray) -> np.ndarray:
    inv = np.empty_like(ornt)
    for axis, (target, flip) in enumerate(ornt):
        inv[int(target)] = (axis, flip)
    return inv


def slice_to_nifti(labels: np.ndarray, reference: str | os.PathLike, slice_axis: int, slice_index: int):
    """A label map of one slice read by :func:`read_nifti` put back into the voxel grid of its file.

    Undoes :func:`read_nifti`: its display orientation (flips and transpose), the slice taken from
    the canonical (RAS) volume, and the reorientation to RAS; the result shares the shape (one volume
    of a 4D series) and affine of the ``reference`` file, so any viewer overlays it voxel for voxel.

    Args:
        labels: ``(H, W)`` label map in the orientation :func:`read_nifti` returned the slice in.
        reference: the NIfTI file the slice was read from.
        slice_axis: ``meta["slice_axis"]`` of the read (canonical axis, 0, 1 or 2).
        slice_index: ``meta["slice_index"]`` of the read (index along that axis in canonical order).

    Returns:
        a ``nibabel.Nifti1Image`` of ``uint8`` labels (zero outside the slice) with the reference's
        affine, spatial units and qform/sform codes.
    """
    import nibabel as nib
    from nibabel.orientations import apply_orientation, io_orientation

    ref = nib.load(reference)
    shape = (*ref.shape[:3], 1, 1)[:3]
    ornt = io_orientation(ref.affine)
    volume = np.zeros(apply_orientation(np.empty(shape, dtype=np.uint8), ornt).shape, dtype=np.uint8)
    where: list[Any] = [slice(None)] * 3
    where[int(slice_axis)] = int(slice_index)
    # read_nifti shows plane[a, b] as image[B - 1 - b, A - 1 - a]
    volume[tuple(where)] = labels.T[::-1, ::-1]
    volume = apply_orientation(volume, _inverse_orientation(ornt))
    if len(ref.shape) == 2:
        volume = volume[:, :, 0]
    out = nib.Nifti1Image(np.ascontiguousarray(volume, dtype=np.uint8), ref.affine)
    header = ref.header
    out.header.set_xyzt_units(*header.get_xyzt_units())
    if int(header["qform_code"]) > 0:
        out.header.set_qform(header.get_qform(), code=int(header["qform_code"]))
    if int(header["sform_code"]) > 0:
        out.header.set_sform(header.get_sform(), code=int(header["sform_code"]))
    return out
