"""Bad inputs are refused (or, for empty lesion masks, reported) in one line that names the file.

Each test builds the bad file in a temporary folder and goes through the code a training run uses:
:func:`~monai_ssl_ext.data.load_manifest`, the label split and the profile's preprocessing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from monai_ssl_ext.data import ManifestError, load_manifest
from monai_ssl_ext.io import ImageReadError, read_image
from monai_ssl_ext.keys import DataKeys
from monai_ssl_ext.transforms import MaskMismatchError, ReadImage, get_profile

pytestmark = pytest.mark.usefixtures("one_thread")


def _png(array: np.ndarray, path: Path, significant_bits: int | None = None) -> Path:
    info = None
    if significant_bits is not None:
        info = PngImagePlugin.PngInfo()
        info.add(b"sBIT", bytes([significant_bits]))
    Image.fromarray(array).save(path, pnginfo=info)
    return path


def _lesion(shape: tuple[int, int], value: int = 255) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[shape[0] // 4 : shape[0] // 2, shape[1] // 4 : shape[1] // 2] = value
    return mask


def _manifest(root: Path, entries: list[dict], validation: list[dict] | None = None, **extra) -> Path:
    """A manifest file in ``root`` with ``entries`` for training and (by default) the same for validation."""
    data = {
        "name": "bad_inputs",
        "classes": ["normal", "benign"],
        "training": entries,
        "validation": entries if validation is None else validation,
        "test": [],
        **extra,
    }
    path = root / "manifest.json"
    path.write_text(json.dumps(data))
    return path


def _preprocess(entry: dict) -> dict:
    """The training preprocessing of one entry; MONAI's ``Compose`` wraps a transform's error, so unwrap it."""
    try:
        return get_profile("ultrasound", image_size=16).preprocess(with_mask=True)(dict(entry))
    except RuntimeError as e:
        cause: BaseException = e
        while isinstance(cause, RuntimeError) and cause.__cause__ is not None:
            cause = cause.__cause__
        raise cause from None


# ------------------------------------------------------------------ 1. mask of another size, same aspect
def test_mask_of_another_size_with_the_same_aspect_ratio_is_refused(tmp_path):
    image = _png(np.full((12, 20), 100, np.uint8), tmp_path / "b1.png")
    mask = _png(_lesion((24, 40)), tmp_path / "b1_mask.png")  # twice the size: same aspect ratio
    manifest = load_manifest(_manifest(tmp_path, [{"image": "b1.png", "label": 1, "mask": "b1_mask.png"}]))
    with pytest.raises(MaskMismatchError) as info:
        _preprocess(manifest.training[0])
    message = str(info.value)
    assert message.startswith(f"{mask}: mask size 24x40 differs from its image {image} (12x20);")
    assert '"mask_resize": true' in message and "\n" not in message


def test_mask_of_another_aspect_ratio_is_refused_by_the_same_check(tmp_path):
    _png(np.full((12, 20), 100, np.uint8), tmp_path / "b1.png")
    mask = _png(_lesion((20, 20)), tmp_path / "b1_mask.png")
    entry = {"image": "b1.png", "label": 1, "mask": "b1_mask.png"}
    for declared in (False, True):  # a declared resize does not cover another aspect ratio
        manifest = load_manifest(_manifest(tmp_path, [entry], mask_resize=declared))
        with pytest.raises(MaskMismatchError, match="a different aspect ratio") as info:
            _preprocess(manifest.training[0])
        assert str(info.value).startswith(f"{mask}: mask size 20x20 differs from its image ")


def test_a_manifest_that_declares_mask_resize_gets_its_masks_resized(tmp_path):
    _png(np.full((12, 20), 100, np.uint8), tmp_path / "b1.png")
    _png(_lesion((24, 40)), tmp_path / "b1_mask.png")
    path = _manifest(tmp_path, [{"image": "b1.png", "label": 1, "mask": "b1_mask.png"}], mask_resize=True)
    manifest = load_manifest(path)
    out = _preprocess(manifest.training[0])
    assert tuple(out[DataKeys.MASK].shape) == (1, 16, 16) and out[DataKeys.MASK].sum() > 0
    assert DataKeys.MASK_RULES not in out  # consumed, so batches hold tensors only
    unlabeled = get_profile("ultrasound", image_size=16).preprocess(with_mask=False)(dict(manifest.training[0]))
    assert set(unlabeled) == {DataKeys.IMAGE, DataKeys.LABEL}


# ------------------------------------------------------------------ 3. empty mask on a lesion class
def test_an_empty_lesion_mask_is_reported_once_per_file(tmp_path, caplog):
    for name in ("b1", "n1"):
        _png(np.full((8, 8), 100, np.uint8), tmp_path / f"{name}.png")
        _png(np.zeros((8, 8), np.uint8), tmp_path / f"{name}_mask.png")
    _png(np.full((8, 8), 100, np.uint8), tmp_path / "b2.png")
    _png(_lesion((8, 8)), tmp_path / "b2_mask.png")
    entries = [
        {"image": "b1.png", "label": "benign", "mask": "b1_mask.png"},
        {"image": "n1.png", "label": "normal", "mask": "n1_mask.png"},  # lesion-free class: empty is right
        {"image": "b2.png", "label": "benign", "mask": "b2_mask.png"},
    ]
    manifest = load_manifest(_manifest(tmp_path, entries))
    with caplog.at_level(logging.WARNING, logger="monai_ssl_ext.transforms.loading"):
        for _ in range(2):  # a second epoch over the same files adds no line
            for entry in manifest.training:
                _preprocess(entry)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"{tmp_path / 'b1_mask.png'}: empty lesion mask (all zero) for an image of class 'benign'; "
        "it trains as 'no lesion', fix the mask if the image shows one"
    ]


# ------------------------------------------------------------------ 4. 12-bit data in a 16-bit PNG
def test_twelve_bit_data_in_a_sixteen_bit_png_is_scaled_by_its_real_range(tmp_path):
    data = np.linspace(0, 4095, 64, dtype=np.uint16).reshape(8, 8)
    out = ReadImage()(_png(data, tmp_path / "ct12.png"))
    torch.testing.assert_close(out[0], torch.from_numpy(data.astype(np.float32) / 4095))
    assert float(out.max()) == 1.0


def test_the_png_significant_bits_chunk_sets_the_range(tmp_path):
    data = np.linspace(0, 1000, 64, dtype=np.uint16).reshape(8, 8)
    out = ReadImage()(_png(data, tmp_path / "ten_bit.png", significant_bits=10))
    torch.testing.assert_close(out[0], torch.from_numpy(data.astype(np.float32) / 1023))


def test_full_sixteen_bit_and_eight_bit_pngs_keep_their_scaling(tmp_path):
    wide = np.linspace(0, 60000, 64, dtype=np.uint16).reshape(8, 8)
    out = ReadImage()(_png(wide, tmp_path / "wide.png"))
    assert torch.equal(out[0], torch.from_numpy((wide.astype(np.float32) / 65535.0).astype(np.float32)))
    dark = np.linspace(0, 3000, 64, dtype=np.uint16).reshape(8, 8)  # fits 12 bits, but declared 16
    out = ReadImage()(_png(dark, tmp_path / "dark16.png", significant_bits=16))
    assert torch.equal(out[0], torch.from_numpy((dark.astype(np.float32) / 65535.0).astype(np.float32)))
    byte = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    out = ReadImage()(_png(byte, tmp_path / "byte.png"))
    assert torch.equal(out[0], torch.from_numpy((byte.astype(np.float32) / 255.0).astype(np.float32)))
    assert "value_range" not in read_image(tmp_path / "byte.png")[1]


# ------------------------------------------------------------------ 5. NaN or infinite pixel values
def _float_tiff(array: np.ndarray, path: Path) -> Path:
    Image.fromarray(array.astype(np.float32)).save(path)
    return path


def _float_nifti(array: np.ndarray, path: Path) -> Path:
    nib = pytest.importorskip("nibabel")
    nib.save(nib.Nifti1Image(array.astype(np.float32)[:, :, None], np.eye(4)), path)
    return path


@pytest.mark.parametrize("write, name", [(_float_tiff, "scan.tif"), (_float_nifti, "scan.nii.gz")])
def test_nan_or_infinite_pixels_are_refused_at_read_time(tmp_path, write, name):
    array = np.ones((6, 6), np.float32)
    array[1, 2], array[3, 4], array[5, 5] = np.nan, np.inf, -np.inf
    path = write(array, tmp_path / name)
    with pytest.raises(ImageReadError) as info:
        ReadImage()(path)
    assert str(info.value) == f"{path}: 3 NaN/infinite pixel values; fix the file or remove it from the data"


# ------------------------------------------------------------------ 6. empty validation split
def test_an_empty_validation_split_is_refused_before_training(tmp_path):
    _png(np.full((8, 8), 100, np.uint8), tmp_path / "b1.png")
    _png(np.full((8, 8), 100, np.uint8), tmp_path / "n1.png")
    entries = [{"image": "b1.png", "label": "benign"}, {"image": "n1.png", "label": "normal"}]
    path = _manifest(tmp_path, entries, validation=[])
    manifest = load_manifest(path)  # evaluation and inference still load it
    with pytest.raises(ManifestError) as info:
        manifest.label_split(2, seed=0)
    message = str(info.value)
    assert message.startswith(f"{path}: the 'validation' split is empty")
    assert "add validation entries" in message and "\n" not in message
    assert manifest.label_split(2, seed=0, require_validation=False).budget == 2
