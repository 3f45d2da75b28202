"""Clinical readers: raster formats through Pillow, errors that name the file, and a real BUSI case."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_data
from PIL import Image

from monai_ssl_ext.io import (
    RASTER_SUFFIXES,
    FramePolicy,
    ImageReadError,
    MissingDecoderError,
    count_frames,
    image_format,
    parse_frame_policy,
    read_image,
    read_raster,
)
from monai_ssl_ext.transforms import ReadImage, ReadMask


def _grey(h=12, w=20):
    return (np.arange(h * w).reshape(h, w) % 256).astype(np.uint8)


def _rgb(h=12, w=20):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------- formats


def test_read_grey_png(tmp_path):
    array = _grey()
    path = tmp_path / "grey.png"
    Image.fromarray(array).save(path)
    out, meta = read_image(path)
    assert out.shape == (1, 12, 20) and out.dtype == np.uint8
    assert np.array_equal(out[0], array)
    assert meta["filename_or_obj"] == str(path)
    assert meta["format"] == "png"
    assert meta["stored_mode"] == "L"
    assert meta["spatial_shape"] == (12, 20)
    assert meta["frames"] == 1


def test_read_rgb_png_is_channel_first(tmp_path):
    array = _rgb()
    path = tmp_path / "rgb.png"
    Image.fromarray(array).save(path)
    out, _ = read_image(str(path))
    assert out.shape == (3, 12, 20)
    assert np.array_equal(out, np.moveaxis(array, -1, 0))
    assert out.flags["C_CONTIGUOUS"]


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".JPG"])
def test_read_jpeg(tmp_path, suffix):
    array = np.zeros((16, 24, 3), np.uint8)
    array[..., 0] = 200
    array[..., 1] = 40
    array[..., 2] = 90
    path = tmp_path / f"photo{suffix}"
    Image.fromarray(array).save(path, format="JPEG", quality=95)
    out, meta = read_image(path)
    assert out.shape == (3, 16, 24) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - np.moveaxis(array, -1, 0)).max() <= 4
    assert meta["format"] == suffix.lower().lstrip(".")


def test_read_grey_jpeg(tmp_path):
    path = tmp_path / "grey.jpg"
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(path, quality=95)
    out, _ = read_image(path)
    assert out.shape == (1, 8, 8)
    assert np.abs(out.astype(int) - 128).max() <= 2


@pytest.mark.parametrize("suffix", [".tif", ".tiff"])
def test_read_tiff(tmp_path, suffix):
    rgb = _rgb()
    path = tmp_path / f"slide{suffix}"
    Image.fromarray(rgb).save(path)
    out, meta = read_image(path)
    assert np.array_equal(out, np.moveaxis(rgb, -1, 0))
    assert meta["format"] == suffix.lstrip(".")

    deep = (np.arange(6 * 5).reshape(6, 5) * 2000).astype(np.uint16)
    path16 = tmp_path / f"deep{suffix}"
    Image.fromarray(deep).save(path16)
    out16, _ = read_image(path16)
    assert out16.dtype == np.uint16
    assert np.array_equal(out16[0], deep)


def test_read_palette_png_renders_palette_colours(tmp_path):
    palette = [(0, 0, 0), (255, 0, 0), (0, 128, 255), (17, 34, 51)]
    img = Image.new("P", (4, 3))
    img.putpalette([v for colour in palette for v in colour] + [0] * ((256 - len(palette)) * 3))
    indices = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [1, 1, 3, 3]], np.uint8)
    img.putdata(indices.ravel().tolist())
    path = tmp_path / "indexed.png"
    img.save(path)
    out, meta = read_image(path)
    assert meta["stored_mode"] == "P"
    assert out.shape == (3, 3, 4)
    expected = np.moveaxis(np.array(palette, np.uint8)[indices], -1, 0)
    assert np.array_equal(out, expected)


def test_read_rgba_png_drops_alpha(tmp_path):
    rgba = np.zeros((5, 6, 4), np.uint8)
    rgba[..., :3] = _rgb(5, 6)
    rgba[..., 3] = 255
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba).save(path)
    out, meta = read_image(path)
    assert meta["stored_mode"] == "RGBA"
    assert out.shape == (3, 5, 6)
    assert np.array_equal(out, np.moveaxis(rgba[..., :3], -1, 0))


def test_read_rgba_png_transparent_pixels_are_black(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3] = 255  # one opaque pixel, the others fully transparent
    path = tmp_path / "transparent.png"
    Image.fromarray(rgba).save(path)
    out, _ = read_image(path)
    assert out[0, 0, 0] == 200
    assert out[0, 1, 1] == 0


def test_read_la_png_gives_one_channel(tmp_path):
    la = np.stack([_grey(4, 5), np.full((4, 5), 255, np.uint8)], axis=-1)
    path = tmp_path / "la.png"
    Image.fromarray(la, "LA").save(path)
    out, _ = read_image(path)
    assert out.shape == (1, 4, 5)
    assert np.array_equal(out[0], la[..., 0])


def test_read_16bit_png_keeps_16_bits(tmp_path):
    array = np.array([[0, 255, 256], [4095, 40000, 65535]], np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(array).save(path)
    out, meta = read_image(path)
    assert out.dtype == np.uint16
    assert out.shape == (1, 2, 3)
    assert np.array_equal(out[0], array)
    assert out.max() > 255
    assert meta["stored_mode"].startswith("I")


def test_read_one_bit_png_gives_zero_one(tmp_path):
    bits = np.zeros((3, 9), bool)
    bits[1, ::2] = True
    path = tmp_path / "bits.png"
    Image.fromarray(bits).convert("1").save(path)
    out, meta = read_image(path)
    assert meta["stored_mode"] == "1"
    assert out.shape == (1, 3, 9)
    assert set(np.unique(out).tolist()) == {0, 1}
    assert np.array_equal(out[0].astype(bool), bits)


def test_raster_suffixes_cover_the_documented_formats():
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"} <= RASTER_SUFFIXES


def test_raster_frame_policies(tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray(_grey()).save(path)
    assert count_frames(path) == 1 and image_format(path) == "raster"
    for policy in (None, "first", "middle", "last", 0, -1, "every:4"):
        out, meta = read_image(path, frame=policy)
        assert out.shape == (1, 12, 20) and meta["frame"] == 0
    stacked, meta = read_image(path, frame="all")
    assert stacked.shape == (1, 1, 12, 20) and meta["frame"] is None
    with pytest.raises(ImageReadError, match="frame 1 out of range"):
        read_image(path, frame=1)


def test_reader_options_of_other_formats_are_ignored_for_rasters(tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray(_grey()).save(path)
    out, _ = read_image(path, crop_to_region=True, voi=False, slice_axis=0)
    assert np.array_equal(out[0], _grey())
    with pytest.raises(TypeError, match="unknown option"):
        read_image(path, crop=True)
    with pytest.raises(TypeError, match="unknown reader option"):
        ReadImage(crop=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, FramePolicy("first")),
        (float("nan"), FramePolicy("first")),
        ("middle", FramePolicy("middle")),
        (" ALL ", FramePolicy("all")),
        (np.int64(3), FramePolicy(3)),
        ("-1", FramePolicy(-1)),
        ("every:4", FramePolicy(every=4)),
        ({"every": 2}, FramePolicy(every=2)),
    ],
)
def test_parse_frame_policy(value, expected):
    assert parse_frame_policy(value) == expected


@pytest.mark.parametrize("value", [True, "sometimes", "every:0", {"step": 2}, 1.5])
def test_parse_frame_policy_rejects(value):
    with pytest.raises(ValueError, match=r"frame|every"):
        parse_frame_policy(value)


# ---------------------------------------------------------------- errors


def test_missing_file_error_starts_with_path(tmp_path):
    path = tmp_path / "nowhere.png"
    for reader in (read_image, read_raster):
        with pytest.raises(ImageReadError) as info:
            reader(path)
        assert str(info.value).startswith(str(path))
        assert info.value.path == str(path)
        assert "not found" in info.value.cause


def test_image_read_error_is_a_value_error():
    err = ImageReadError("/data/a.png", "broken")
    assert isinstance(err, ValueError)
    assert str(err) == "/data/a.png: broken"


def test_missing_decoder_error_names_install_command():
    err = MissingDecoderError("/data/x.dcm", "JPEG 2000", "pip install pylibjpeg-openjpeg")
    assert isinstance(err, ImageReadError)
    assert err.install == "pip install pylibjpeg-openjpeg"
    assert str(err).startswith("/data/x.dcm: JPEG 2000")
    assert str(err).endswith("pip install pylibjpeg-openjpeg")


def test_truncated_png_raises_with_path(tmp_path):
    noise = np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)
    path = tmp_path / "cut.png"
    Image.fromarray(noise).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert str(path) in str(info.value)
    assert str(info.value).startswith(str(path))


def test_text_file_named_png_raises_with_path(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert str(info.value).startswith(str(path))
    assert "not a readable image" in str(info.value)


@pytest.mark.parametrize(("name", "shown"), [("volume.xyz", "'.xyz'"), ("README", "(no suffix)")])
def test_unsupported_suffix_raises(tmp_path, name, shown):
    path = tmp_path / name
    Image.fromarray(_grey()).save(path, format="PNG")
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert str(info.value).startswith(str(path))
    assert "unsupported" in str(info.value)
    assert shown in str(info.value)


# ---------------------------------------------------------------- real data


@pytest.mark.real_data
def test_busi_image_and_union_mask():
    folder = shared_data("busi", "benign")
    image_path = folder / "benign (4).png"
    mask_paths = [folder / "benign (4)_mask.png", folder / "benign (4)_mask_1.png"]
    array, meta = read_image(image_path)
    assert array.ndim == 3 and array.shape[0] in (1, 3)
    assert meta["filename_or_obj"] == str(image_path)

    image = ReadImage(channels=1)(image_path)
    assert image.shape[1:] == array.shape[1:]
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert float(image.std()) > 0

    masks = [ReadMask()(p, spatial_shape=array.shape[1:]) for p in mask_paths]
    union = ReadMask()([str(p) for p in mask_paths], spatial_shape=array.shape[1:])
    assert tuple(union.shape) == (1, *array.shape[1:])
    assert set(union.unique().tolist()) <= {0.0, 1.0}
    assert union.sum() > 0
    assert union.sum() >= max(float(m.sum()) for m in masks)
    assert union.sum() <= sum(float(m.sum()) for m in masks)
