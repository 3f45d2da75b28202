"""Transforms: speckle noise, image and mask loading, and the ultrasound modality profile."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from monai_ssl_ext.io import ImageReadError
from monai_ssl_ext.keys import DataKeys
from monai_ssl_ext.transforms import (
    PROFILES,
    MaskMismatchError,
    RandSpeckleNoise,
    RandSpeckleNoised,
    ReadImage,
    ReadImaged,
    ReadMask,
    ReadMaskd,
    UltrasoundProfile,
    get_profile,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _image(seed=0, shape=(1, 16, 16)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _save(array, path):
    Image.fromarray(array).save(path)
    return path


# ---------------------------------------------------------------- RandSpeckleNoise


def test_speckle_is_deterministic_per_seed():
    x = _image()
    a = RandSpeckleNoise(prob=1.0).set_random_state(7)(x)
    b = RandSpeckleNoise(prob=1.0).set_random_state(7)(x)
    c = RandSpeckleNoise(prob=1.0).set_random_state(8)(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, x)


def test_speckle_respects_clip():
    x = _image()
    clipped = RandSpeckleNoise(prob=1.0, sigma=(2.0, 2.0)).set_random_state(0)(x)
    assert clipped.min() >= 0.0 and clipped.max() <= 1.0
    narrow = RandSpeckleNoise(prob=1.0, sigma=(2.0, 2.0), clip=(0.2, 0.6)).set_random_state(0)(x)
    assert narrow.min() >= 0.2 and narrow.max() <= 0.6
    raw = RandSpeckleNoise(prob=1.0, sigma=(2.0, 2.0), clip=None).set_random_state(0)(x)
    assert raw.min() < 0.0 and raw.max() > 1.0
    assert torch.equal(clipped, raw.clamp(0.0, 1.0))


def test_speckle_prob_zero_is_identity():
    x = _image()
    t = RandSpeckleNoise(prob=0.0, sigma=(0.5, 0.5)).set_random_state(0)
    for _ in range(5):
        assert torch.equal(t(x), x)


def test_speckle_is_multiplicative():
    x = _image()
    x[:, :4] = 0.0
    out = RandSpeckleNoise(prob=1.0, sigma=(0.1, 0.1), clip=None).set_random_state(3)(x)
    assert torch.all(out[:, :4] == 0.0)
    assert torch.all(out[:, 4:] != x[:, 4:])
    # the same draw on a scaled image gives the scaled output: noise proportional to the signal
    scaled = RandSpeckleNoise(prob=1.0, sigma=(0.1, 0.1), clip=None).set_random_state(3)(0.5 * x)
    torch.testing.assert_close(scaled, 0.5 * out)
    # ratio out / x = 1 + sigma * n has the requested spread
    ratio = out[:, 4:] / x[:, 4:]
    assert abs(float(ratio.mean()) - 1.0) < 0.05
    assert 0.07 < float(ratio.std()) < 0.13


def test_speckle_dict_shares_one_draw_across_keys():
    x = _image(shape=(1, 8, 8))
    t = RandSpeckleNoised(["a", "b"], prob=1.0).set_random_state(5)
    out = t({"a": x.clone(), "b": x.clone(), "c": x.clone()})
    assert torch.equal(out["a"], out["b"])
    assert not torch.allclose(out["a"], x)
    assert torch.equal(out["c"], x)
    again = RandSpeckleNoised(["a", "b"], prob=1.0).set_random_state(5)({"a": x.clone(), "b": x.clone()})
    assert torch.equal(again["a"], out["a"])


def test_speckle_dict_prob_zero_returns_inputs():
    x = _image(shape=(1, 8, 8))
    out = RandSpeckleNoised(["a", "b"], prob=0.0).set_random_state(0)({"a": x, "b": x})
    assert out["a"] is x and out["b"] is x


# ---------------------------------------------------------------- ReadImage


@pytest.fixture
def grey_png(tmp_path):
    array = np.arange(12 * 20, dtype=np.uint8).reshape(12, 20)
    return _save(array, tmp_path / "grey.png"), array


def test_read_grey_png(grey_png):
    path, array = grey_png
    img = ReadImage()(path)
    assert isinstance(img, MetaTensor)
    assert img.dtype == torch.float32
    assert tuple(img.shape) == (1, 12, 20)
    torch.testing.assert_close(img[0], torch.from_numpy(array.astype(np.float32) / 255))
    assert img.meta["filename_or_obj"] == str(path)


def test_read_grey_as_three_channels(grey_png):
    path, array = grey_png
    img = ReadImage(channels=3)(path)
    assert tuple(img.shape) == (3, 12, 20)
    for c in range(3):
        torch.testing.assert_close(img[c], torch.from_numpy(array.astype(np.float32) / 255))


def test_read_rgb_png_keeps_or_reduces_channels(tmp_path):
    array = np.zeros((6, 8, 3), np.uint8)
    array[..., 0] = 255
    array[:, 4:, 1] = 255
    path = _save(array, tmp_path / "rgb.png")
    rgb = ReadImage(channels=None)(path)
    assert tuple(rgb.shape) == (3, 6, 8)
    torch.testing.assert_close(rgb, torch.from_numpy(np.moveaxis(array, -1, 0).astype(np.float32) / 255))
    luma = ReadImage(channels=1)(path)
    assert tuple(luma.shape) == (1, 6, 8)
    assert torch.allclose(luma[0, :, :4], torch.tensor(0.299))
    assert torch.allclose(luma[0, :, 4:], torch.tensor(0.299 + 0.587))


def test_read_rgba_png_drops_alpha(tmp_path):
    array = np.zeros((4, 4, 4), np.uint8)
    array[..., 2] = 102
    array[..., 3] = 255
    path = _save(array, tmp_path / "rgba.png")
    img = ReadImage(channels=None)(path)
    assert tuple(img.shape) == (3, 4, 4)
    assert torch.allclose(img[2], torch.tensor(0.4)) and torch.all(img[:2] == 0)
    assert torch.allclose(ReadImage(channels=1)(path), torch.tensor(0.114 * 0.4))


def test_read_16bit_png_scales_by_65535(tmp_path):
    array = np.array([[0, 1000], [32768, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(array).save(path)
    img = ReadImage()(path)
    torch.testing.assert_close(img[0], torch.from_numpy(array.astype(np.float32) / 65535))
    assert img.max() == 1.0
    raw = ReadImage(scale=None)(path)
    assert float(raw.max()) == 65535.0


def test_read_palette_png_through_palette(tmp_path):
    img = Image.new("P", (4, 2))
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 51, 255] + [0] * (253 * 3))
    img.putdata([0, 1, 2, 1] * 2)
    path = tmp_path / "palette.png"
    img.save(path)
    out = ReadImage(channels=None)(path)
    assert tuple(out.shape) == (3, 2, 4)
    torch.testing.assert_close(out[:, 0, 1], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(out[:, 0, 2], torch.tensor([0.0, 0.2, 1.0]))
    torch.testing.assert_close(out[:, 0, 0], torch.zeros(3))


def test_read_one_bit_png_is_binary(tmp_path):
    array = np.zeros((4, 6), bool)
    array[1, 2:5] = True
    path = tmp_path / "bits.png"
    Image.fromarray(array).convert("1").save(path)
    img = ReadImage()(path)
    assert tuple(img.shape) == (1, 4, 6)
    assert img.min() >= 0.0 and img.max() <= 1.0
    assert torch.equal(img[0] > 0, torch.from_numpy(array))


def test_read_one_bit_png_white_is_one(tmp_path):
    array = np.zeros((4, 6), bool)
    array[1, 2:5] = True
    path = tmp_path / "bits.png"
    Image.fromarray(array).convert("1").save(path)
    img = ReadImage()(path)
    assert torch.equal(img[0], torch.from_numpy(array.astype(np.float32)))


def test_read_image_rejects_impossible_channel_conversion(grey_png):
    path, _ = grey_png
    with pytest.raises(ImageReadError, match=r"grey\.png"):
        ReadImage(channels=2)(path)
    with pytest.raises(ValueError, match="scale"):
        ReadImage(scale="minmax")


def test_read_imaged_replaces_paths(grey_png):
    path, array = grey_png
    out = ReadImaged(["image"], channels=3)({"image": str(path), "label": 2})
    assert out["label"] == 2
    assert isinstance(out["image"], MetaTensor)
    assert tuple(out["image"].shape) == (3, 12, 20)
    assert out["image"].meta["filename_or_obj"] == str(path)
    torch.testing.assert_close(out["image"][1], torch.from_numpy(array.astype(np.float32) / 255))


# ---------------------------------------------------------------- ReadMask


def _mask(shape, box, value=255):
    m = np.zeros(shape, np.uint8)
    m[box] = value
    return m


def test_read_mask_union_of_several_files(tmp_path):
    a = _save(_mask((8, 10), np.s_[1:3, 1:4]), tmp_path / "a_mask.png")
    b = _save(_mask((8, 10), np.s_[5:7, 6:9], value=1), tmp_path / "b_mask.png")
    out = ReadMask()([str(a), str(b)])
    expected = np.zeros((8, 10), np.float32)
    expected[1:3, 1:4] = 1
    expected[5:7, 6:9] = 1
    assert out.dtype == torch.float32
    assert tuple(out.shape) == (1, 8, 10)
    assert torch.equal(out[0], torch.from_numpy(expected))
    single = ReadMask()(a)
    assert single.sum() == 6


def test_read_mask_binarises_any_positive_value(tmp_path):
    m = np.array([[0, 1, 2], [127, 255, 0]], np.uint8)
    out = ReadMask()(_save(m, tmp_path / "levels.png"))
    assert torch.equal(out[0], torch.tensor([[0.0, 1, 1], [1, 1, 0]]))


def test_read_mask_colour_files(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[1, 1] = (0, 0, 9)
    rgb[2, 3] = (200, 0, 0)
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[3, 0, :3] = 255
    out = ReadMask()([_save(rgb, tmp_path / "rgb_mask.png"), _save(rgba, tmp_path / "rgba_mask.png")])
    expected = torch.zeros(4, 5)
    expected[1, 1] = expected[2, 3] = expected[3, 0] = 1
    assert torch.equal(out[0], expected)


def test_read_mask_resizes_same_aspect_nearest_when_allowed(tmp_path):
    small = np.zeros((6, 10), np.uint8)
    small[1:4, 2:7] = 255
    small[5, 9] = 255
    big = np.kron(small, np.ones((3, 3), np.uint8))
    path = _save(big, tmp_path / "big_mask.png")
    out = ReadMask(resize=True)(path, spatial_shape=(6, 10))
    assert tuple(out.shape) == (1, 6, 10)
    assert torch.equal(out[0], torch.from_numpy((small > 0).astype(np.float32)))


def test_read_mask_later_file_is_matched_to_the_first(tmp_path):
    small = _mask((4, 6), np.s_[0:2, 0:2])
    big = np.kron(_mask((4, 6), np.s_[3:4, 5:6]), np.ones((3, 3), np.uint8))
    out = ReadMask(resize=True)([_save(small, tmp_path / "s.png"), _save(big, tmp_path / "b.png")])
    assert tuple(out.shape) == (1, 4, 6)
    assert out.sum() == 5 and out[0, 3, 5] == 1


def test_read_mask_rejects_other_aspect_ratio(tmp_path):
    path = _save(_mask((30, 30), np.s_[5:10, 5:10]), tmp_path / "square_mask.png")
    with pytest.raises(MaskMismatchError) as info:
        ReadMask()(path, spatial_shape=(10, 20))
    assert isinstance(info.value, ImageReadError)
    assert str(info.value).startswith(str(path))
    assert "aspect" in str(info.value)


def test_read_mask_needs_a_path():
    with pytest.raises(ValueError):
        ReadMask()([])


def test_read_maskd_sizes_to_image_and_fills_missing(grey_png, tmp_path):
    path, _ = grey_png
    mask_path = _save(np.kron(_mask((12, 20), np.s_[2:5, 3:9]), np.ones((2, 2), np.uint8)), tmp_path / "m.png")
    reader = ReadImaged(["image"])
    out = ReadMaskd(["mask"], allow_missing_keys=True, resize=True)(reader({"image": path, "mask": [mask_path]}))
    assert tuple(out["mask"].shape) == (1, 12, 20)
    assert out["mask"].sum() == 18

    for entry in ({"image": path}, {"image": path, "mask": None}):
        out = ReadMaskd(["mask"], allow_missing_keys=True)(reader(entry))
        assert out["mask"].dtype == torch.float32
        assert tuple(out["mask"].shape) == (1, 12, 20)
        assert torch.all(out["mask"] == 0)


def test_read_maskd_missing_mask_not_allowed_names_the_image(grey_png):
    path, _ = grey_png
    data = ReadImaged(["image"])({"image": path})
    with pytest.raises(KeyError, match=r"grey\.png"):
        ReadMaskd(["mask"])(data)


# ---------------------------------------------------------------- UltrasoundProfile


@pytest.fixture
def profile():
    return get_profile("ultrasound", image_size=32)


def test_get_profile_returns_ultrasound(profile):
    assert isinstance(profile, UltrasoundProfile)
    assert profile.image_size == (32, 32)
    assert profile.channels == 1
    assert get_profile("ultrasound", image_size=(24, 40), channels=3).image_size == (24, 40)


def test_get_profile_unknown_name_lists_available():
    with pytest.raises(KeyError) as info:
        get_profile("thermography")
    assert "thermography" in str(info.value)
    for name in PROFILES:
        assert name in str(info.value)
    assert "ultrasound" in str(info.value)


def test_preprocess_with_mask(profile, tmp_path):
    image = np.full((40, 60), 20, np.uint8)
    image[10:25, 20:45] = 220
    mask = _mask((40, 60), np.s_[10:25, 20:45])
    entry = {
        DataKeys.IMAGE: str(_save(image, tmp_path / "us.png")),
        DataKeys.MASK: str(_save(mask, tmp_path / "us_mask.png")),
        DataKeys.LABEL: 1,
    }
    out = profile.preprocess(with_mask=True)(entry)
    img, m = out[DataKeys.IMAGE], out[DataKeys.MASK]
    assert tuple(img.shape) == (1, 32, 32) and img.dtype == torch.float32
    assert img.min() >= 0.0 and img.max() <= 1.0
    assert img.max() == pytest.approx(220 / 255) and img.min() == pytest.approx(20 / 255)
    assert tuple(m.shape) == (1, 32, 32)
    assert set(m.unique().tolist()) == {0.0, 1.0}
    # the resized mask covers the bright rectangle of the resized image
    assert float(img[m > 0].min()) > 0.8
    assert out[DataKeys.LABEL] == 1

    no_mask = profile.preprocess(with_mask=True)({DataKeys.IMAGE: entry[DataKeys.IMAGE]})
    assert tuple(no_mask[DataKeys.MASK].shape) == (1, 32, 32) and no_mask[DataKeys.MASK].sum() == 0


def test_preprocess_colour_image_becomes_one_channel(profile, tmp_path):
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[..., 1] = 255
    out = profile.preprocess()({DataKeys.IMAGE: str(_save(rgb, tmp_path / "c.png"))})
    assert tuple(out[DataKeys.IMAGE].shape) == (1, 32, 32)
    assert torch.allclose(out[DataKeys.IMAGE], torch.tensor(0.587))


def test_labeled_weak_augmentation_keeps_mask_aligned(profile):
    image = torch.zeros(1, 32, 32)
    image[:, 6:18, 4:20] = 1.0  # off-centre, so flips and shifts move it
    mask = (image > 0).float()
    transform = profile.labeled_transforms(with_mask=True)
    moved = 0
    for seed in range(8):
        transform.set_random_state(seed)
        out = transform({DataKeys.IMAGE: image.clone(), DataKeys.MASK: mask.clone()})
        img, m = torch.as_tensor(out[DataKeys.IMAGE]), torch.as_tensor(out[DataKeys.MASK])
        assert tuple(img.shape) == tuple(m.shape) == (1, 32, 32)
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        assert m.sum() > 0
        assert float(img[m > 0].mean()) > 0.9, seed
        assert float(img[m == 0].mean()) < 0.05, seed
        assert float(((img > 0.5) == (m > 0)).float().mean()) > 0.99, seed
        moved += not torch.equal(m, mask)
    assert moved >= 3


def test_unlabeled_views(profile):
    image = _image(shape=(1, 32, 32))
    transform = profile.unlabeled_transforms()
    differ = 0
    for seed in range(10):
        transform.set_random_state(seed)
        out = transform({DataKeys.IMAGE: image.clone()})
        assert DataKeys.IMAGE not in out
        weak, strong = torch.as_tensor(out[DataKeys.IMAGE_WEAK]), torch.as_tensor(out[DataKeys.IMAGE_STRONG])
        assert weak.shape == strong.shape == (1, 32, 32)
        for view in (weak, strong):
            assert view.min() >= 0.0 and view.max() <= 1.0 + 1e-6
        differ += not torch.allclose(weak, strong)
    assert differ >= 8


def test_unlabeled_views_are_reproducible(profile):
    image = _image(shape=(1, 32, 32))
    outs = []
    for _ in range(2):
        transform = profile.unlabeled_transforms()
        transform.set_random_state(11)
        outs.append(transform({DataKeys.IMAGE: image.clone()}))
    for key in (DataKeys.IMAGE_WEAK, DataKeys.IMAGE_STRONG):
        assert torch.equal(torch.as_tensor(outs[0][key]), torch.as_tensor(outs[1][key]))
    transform = profile.unlabeled_transforms()
    transform.set_random_state(12)
    other = transform({DataKeys.IMAGE: image.clone()})
    first_strong = torch.as_tensor(outs[0][DataKeys.IMAGE_STRONG])
    assert not torch.equal(torch.as_tensor(other[DataKeys.IMAGE_STRONG]), first_strong)
