"""NIfTI reader: radiological orientation of axial/coronal/sagittal slices, spacing, 4D volumes,
value ranges, bad files, and the real files in ../shared/data/nifti."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from conftest import shared_data

nib = pytest.importorskip("nibabel")

from monai_ssl_ext.data import expand_frames  # noqa: E402
from monai_ssl_ext.io import ImageReadError, count_frames, read_image, read_nifti, slice_to_nifti  # noqa: E402
from monai_ssl_ext.transforms import ReadImage, ReadImaged  # noqa: E402

X, Y, Z = 5, 7, 9
ZOOMS = (0.5, 0.8, 3.0)


def _volume() -> np.ndarray:
    """Every voxel holds its own (x, y, z) position: 100 x + 10 y + z, so slices show where they come from."""
    x, y, z = np.meshgrid(np.arange(X), np.arange(Y), np.arange(Z), indexing="ij")
    return (100 * x + 10 * y + z).astype(np.int16)


def _save(path, data, affine=None, cls=None, **header):
    affine = np.diag([*ZOOMS, 1.0]) if affine is None else affine
    img = (cls or nib.Nifti1Image)(data, affine)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, path)
    return path


# ---------------------------------------------------------------- orientation


def test_axial_slice_is_shown_as_in_a_radiological_viewer(tmp_path):
    path = _save(tmp_path / "ras.nii", _volume())
    out, meta = read_image(path)
    assert out.shape == (1, Y, X) and out.dtype == np.int16
    assert meta["slice_axis"] == 2 and meta["slice_index"] == Z // 2
    # top-left: most anterior row, patient's right on the viewer's left
    assert out[0, 0, 0] == 100 * (X - 1) + 10 * (Y - 1) + Z // 2
    assert out[0, -1, -1] == Z // 2  # bottom-right: posterior, patient's left
    assert meta["spacing"] == pytest.approx((ZOOMS[1], ZOOMS[0]))
    assert meta["orientation"] == "RAS" and meta["format"] == "nifti1"


def test_left_right_flipped_affine_gives_the_same_picture(tmp_path):
    volume = _volume()
    ras = read_image(_save(tmp_path / "ras.nii", volume))[0]
    las_affine = np.diag([-ZOOMS[0], ZOOMS[1], ZOOMS[2], 1.0])
    las, meta = read_image(_save(tmp_path / "las.nii.gz", volume[::-1].copy(), las_affine))
    assert meta["orientation"] == "LAS"
    assert np.array_equal(las, ras)


@pytest.mark.parametrize(
    ("axis", "shape", "top_left", "spacing"),
    [
        ("coronal", (Z, X), 100 * (X - 1) + 10 * 3 + (Z - 1), (ZOOMS[2], ZOOMS[0])),
        ("sagittal", (Z, Y), 100 * 2 + 10 * (Y - 1) + (Z - 1), (ZOOMS[2], ZOOMS[1])),
        (2, (Y, X), 100 * (X - 1) + 10 * (Y - 1) + 4, (ZOOMS[1], ZOOMS[0])),
    ],
)
def test_coronal_and_sagittal_slices(tmp_path, axis, shape, top_left, spacing):
    path = _save(tmp_path / "vol.nii", _volume())
    out, meta = read_nifti(path, slice_axis=axis)
    assert out.shape == (1, *shape)
    assert out[0, 0, 0] == top_left  # superior (coronal/sagittal) or anterior (axial) at the top
    assert meta["spacing"] == pytest.approx(spacing)


def test_slice_index_and_range(tmp_path):
    path = _save(tmp_path / "vol.nii", _volume())
    out, meta = read_image(path, slice_index=0)
    assert meta["slice_index"] == 0 and out[0, -1, -1] == 0
    assert read_image(path, slice_index=-1)[1]["slice_index"] == Z - 1
    with pytest.raises(ImageReadError, match="slice 9 out of range along axis 2"):
        read_image(path, slice_index=Z)
    with pytest.raises(ValueError, match="slice_axis"):
        read_nifti(path, slice_axis="oblique")


def test_2d_nifti(tmp_path):
    plane = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out, meta = read_image(_save(tmp_path / "flat.nii", plane))
    assert out.shape == (1, 4, 3)
    assert np.array_equal(out[0], plane[::-1, ::-1].T)
    assert meta["frames"] == 1 and meta["volume_shape"] == (3, 4, 1)


# ---------------------------------------------------------------- 4D, values, NIfTI-2


def test_4d_volume_choice(tmp_path):
    series = np.stack([_volume() + 1000 * t for t in range(4)], axis=-1)
    path = _save(tmp_path / "bold.nii.gz", series)
    assert count_frames(path) == 4
    first, meta = read_image(path)
    assert meta["frames"] == 4 and meta["frame"] == 0 and first.shape == (1, Y, X)
    third, meta = read_image(path, frame=2)
    assert np.array_equal(third, first + 2000)
    assert read_image(path, frame="middle")[1]["frame"] == 2
    stacked, meta = read_image(path, frame="all")
    assert stacked.shape == (1, 4, Y, X) and meta["frame"] is None
    assert np.array_equal(stacked[:, 2], third)
    assert [e["frame"] for e in expand_frames([{"image": str(path)}], "every:2")] == [0, 2]
    out = ReadImaged("image", frame="every:2")({"image": str(path), "frame": 2})["image"]
    assert out.meta["frame"] == 2
    with pytest.raises(ImageReadError, match="frame 4 out of range"):
        read_image(path, frame=4)


def test_value_range_from_cal_or_volume(tmp_path):
    volume = _volume()
    path = _save(tmp_path / "plain.nii", volume)
    _, meta = read_image(path)
    assert meta["value_range"] == (0.0, float(volume.max()))
    image = ReadImage()(path)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert torch.allclose(image[0, -1, -1], torch.tensor(4 / float(volume.max())))

    windowed = _save(tmp_path / "cal.nii", volume, cal_min=100, cal_max=300)
    _, meta = read_image(windowed)
    assert meta["value_range"] == (100.0, 300.0)
    image = ReadImage()(windowed)
    assert float(image.min()) == 0.0 and float(image.max()) == 1.0  # clipped to the display range


def test_scaled_data_become_float32(tmp_path):
    path = _save(tmp_path / "scaled.nii", _volume(), scl_slope=0.5, scl_inter=1.0)
    out, _ = read_image(path)
    assert out.dtype == np.float32
    assert out[0, -1, -1] == pytest.approx(4 * 0.5 + 1.0)


def test_nifti2_and_big_endian(tmp_path):
    volume = _volume()
    two, meta = read_image(_save(tmp_path / "two.nii", volume, cls=nib.Nifti2Image))
    assert meta["format"] == "nifti2"
    one, _ = read_image(_save(tmp_path / "one.nii", volume))
    assert np.array_equal(two, one)
    big = nib.Nifti1Image(volume.astype(">i2"), np.diag([*ZOOMS, 1.0]))
    big.set_data_dtype(">i2")
    nib.save(big, tmp_path / "big.nii")
    out, _ = read_image(tmp_path / "big.nii")
    assert out.dtype.isnative and np.array_equal(out, one)


# ---------------------------------------------------------------- writing a slice back


# voxel axes permuted and flipped against RAS, so that reading reorients before slicing
_PERMUTED = np.array([[0.0, -0.8, 0.0, 1.0], [0.6, 0.0, 0.0, 2.0], [0.0, 0.0, -1.5, 3.0], [0.0, 0.0, 0.0, 1.0]])


@pytest.mark.parametrize(
    ("shape", "affine", "axis", "index"),
    [
        ((X, Y, Z), None, 2, None),
        ((X, Y, Z), _PERMUTED, 2, None),
        ((X, Y, Z), _PERMUTED, 0, 1),
        ((X, Y, Z), _PERMUTED, "coronal", -2),
        ((X, Y), _PERMUTED, 2, None),
        ((X, Y, Z, 3), _PERMUTED, 1, 4),
    ],
)
def test_slice_written_back_reads_as_the_same_mask(tmp_path, shape, affine, axis, index):
    path = _save(tmp_path / "image.nii.gz", np.zeros(shape, np.int16), affine)
    image, meta = read_nifti(path, slice_axis=axis, slice_index=index)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=image.shape[-2:]).astype(np.uint8)
    mask_path = tmp_path / "mask.nii.gz"
    nib.save(slice_to_nifti(labels, path, meta["slice_axis"], meta["slice_index"]), mask_path)

    mask, mask_meta = read_nifti(mask_path, slice_axis=axis, slice_index=index)
    assert mask.dtype == np.uint8 and np.array_equal(mask[0], labels)
    assert mask_meta["slice_index"] == meta["slice_index"] and mask_meta["spacing"] == meta["spacing"]
    written, source = nib.load(mask_path), nib.load(path)
    assert written.shape == source.shape[:3] and np.array_equal(written.affine, source.affine)
    # only the slice that was read is labelled
    assert np.count_nonzero(written.dataobj) == np.count_nonzero(labels)


# ---------------------------------------------------------------- bad files


def test_missing_and_truncated_nifti(tmp_path):
    with pytest.raises(ImageReadError, match="file not found"):
        read_image(tmp_path / "absent.nii.gz")
    path = _save(tmp_path / "whole.nii", _volume())
    data = path.read_bytes()
    cut = tmp_path / "cut.nii"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as info:
        read_image(cut)
    assert str(info.value).startswith(str(cut)) and "\n" not in str(info.value)
    gz = tmp_path / "cut.nii.gz"
    gz.write_bytes(gzip.compress(data)[:200])
    with pytest.raises(ImageReadError, match=r"cut\.nii\.gz: "):
        read_image(gz)
    text = tmp_path / "notes.nii"
    text.write_text("not a nifti file")
    with pytest.raises(ImageReadError, match=r"notes\.nii: "):
        read_image(text)


def test_more_than_4d_is_rejected(tmp_path):
    path = _save(tmp_path / "5d.nii", np.zeros((3, 3, 3, 2, 2), np.int16))
    with pytest.raises(ImageReadError, match="5D NIfTI"):
        read_image(path)


# ---------------------------------------------------------------- the real files in ../shared/data/nifti

# file: (shape, dtype, frames, (min, max) of the middle axial slice, spacing (rows, columns))
REAL = {
    "anatomical.nii": ((1, 41, 33), "int16", 1, (-136, 13705), (2.0, 2.0)),
    "functional.nii": ((1, 21, 17), "float32", 20, (2839.48, 5538.07), (4.0, 4.0)),
    "example4d.nii.gz": ((1, 96, 128), "int16", 2, (0, 1022), (2.0, 2.0)),
    "example_nifti2.nii.gz": ((1, 20, 32), "int16", 2, (59, 724), (2.0, 2.0)),
}


@pytest.mark.real_data
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_nifti_file(name):
    path = shared_data("nifti", name)
    shape, dtype, frames, (lo, hi), spacing = REAL[name]
    out, meta = read_image(path)
    assert out.shape == shape and str(out.dtype) == dtype
    assert meta["frames"] == frames == count_frames(path)
    assert float(out.min()) == pytest.approx(lo, abs=0.01) and float(out.max()) == pytest.approx(hi, abs=0.01)
    assert meta["spacing"] == pytest.approx(spacing, abs=1e-5)
    image = ReadImage()(path)
    assert tuple(image.shape) == shape
    assert 0.0 <= float(image.min()) <= float(image.max()) <= 1.0


@pytest.mark.real_data
def test_real_nifti_folder_has_no_unexpected_files():
    assert sorted(p.name for p in shared_data("nifti").iterdir()) == sorted(REAL)


@pytest.mark.real_data
def test_real_nifti_volumes_and_axes():
    path = shared_data("nifti", "example4d.nii.gz")
    assert read_image(path, frame="all")[0].shape == (1, 2, 96, 128)
    assert read_image(path, slice_axis="coronal")[0].shape == (1, 24, 128)
    assert read_image(path, slice_axis="sagittal")[0].shape == (1, 24, 96)
    _, meta = read_image(path)
    assert meta["orientation"] == "LAS" and meta["value_range"] == (0.0, 1162.0)  # the header's cal range
    out, meta = read_image(shared_data("nifti", "functional.nii"), frame="last", slice_axis=0, slice_index=0)
    assert out.shape == (1, 3, 21) and meta["frame"] == 19 and meta["spacing"] == pytest.approx((8.0, 4.0))
