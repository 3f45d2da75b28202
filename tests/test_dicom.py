"""DICOM reader: photometric interpretations, LUTs, transfer syntaxes, ultrasound regions, cine frame
policies, bad files, the MONAI ImageReader and folder inspection; synthetic files and the real ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import shared_data
from PIL import Image

pydicom = pytest.importorskip("pydicom")
from pydicom import uid  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402

from monai_ssl_ext.data import expand_frames  # noqa: E402
from monai_ssl_ext.io import (  # noqa: E402
    DicomImageReader,
    ImageReadError,
    MissingDecoderError,
    count_frames,
    format_inspection,
    image_format,
    inspect_path,
    read_dicom,
    read_image,
)
from monai_ssl_ext.io.dicom import _install_hint, apply_window  # noqa: E402
from monai_ssl_ext.transforms import ReadImage, ReadImaged  # noqa: E402

# ---------------------------------------------------------------- helpers


def _dataset(array: np.ndarray, photometric: str, bits_stored: int = 8, **attrs) -> Dataset:
    """A Secondary Capture dataset holding ``array`` ((H, W), (H, W, 3) or (T, H, W...)), explicit VR LE."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SOPClassUID = uid.SecondaryCaptureImageStorage
    ds.Modality = "OT"
    ds.set_pixel_data(array, photometric_interpretation=photometric, bits_stored=bits_stored)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def _save(ds: Dataset, path, syntax=uid.ExplicitVRLittleEndian):
    if syntax != uid.ExplicitVRLittleEndian:
        try:
            ds.compress(syntax)
        except NotImplementedError:
            pytest.skip(f"pydicom has no encoder for {syntax.name}: cannot write the test file")
        except RuntimeError as e:
            pytest.skip(f"no working {syntax.name} encoder here ({str(e).splitlines()[0]})")
    ds.save_as(path, enforce_file_format=True)
    return path


def _rng(seed=0):
    return np.random.default_rng(seed)


# 32 x 48: the JPEG 2000 encoder refuses images smaller than its resolution levels
GREY = _rng(0).integers(0, 256, (32, 48), dtype=np.uint8)
RGB = _rng(1).integers(0, 256, (32, 48, 3), dtype=np.uint8)

# JPEG lossless (process 14) is decoded by pylibjpeg-libjpeg, but no Python package writes it, so no fixture
SYNTAXES = [
    uid.ExplicitVRLittleEndian,
    uid.RLELossless,
    uid.JPEGLSLossless,
    uid.JPEG2000Lossless,
]


# ---------------------------------------------------------------- identity with PNG


@pytest.mark.parametrize("syntax", SYNTAXES, ids=lambda s: s.name.split(" ")[0] + ("-RLE" if "RLE" in s.name else ""))
@pytest.mark.parametrize("kind", ["grey", "rgb", "monochrome1"])
def test_png_and_dicom_give_the_same_image(tmp_path, kind, syntax):
    shown = RGB if kind == "rgb" else GREY
    png = tmp_path / "image.png"
    Image.fromarray(shown).save(png)
    if kind == "grey":
        ds = _dataset(GREY, "MONOCHROME2")
    elif kind == "rgb":
        ds = _dataset(RGB, "RGB")
    else:  # MONOCHROME1 stores the inverse of what a viewer shows
        ds = _dataset(255 - GREY, "MONOCHROME1")
    dcm = _save(ds, tmp_path / "image.dcm", syntax)

    from_png, _ = read_image(png)
    from_dcm, meta = read_image(dcm)
    assert meta["transfer_syntax"] == syntax.name
    assert from_dcm.dtype == from_png.dtype == np.uint8
    assert np.array_equal(from_dcm, from_png)
    for channels in (None, 1, 3):
        assert torch.equal(ReadImage(channels=channels)(dcm), ReadImage(channels=channels)(png))


# ---------------------------------------------------------------- photometric interpretations and LUTs


def test_ybr_full_is_converted_to_rgb_once(tmp_path):
    from pydicom.pixels import convert_color_space

    ybr = convert_color_space(RGB, "RGB", "YBR_FULL")
    out, meta = read_dicom(_save(_dataset(ybr, "YBR_FULL"), tmp_path / "ybr.dcm"))
    assert meta["photometric_interpretation"] == "YBR_FULL"
    assert out.shape == (3, 32, 48)
    assert np.abs(out.astype(int) - np.moveaxis(RGB, -1, 0)).max() <= 3


def test_palette_colour_8bit_lut(tmp_path):
    red, green, blue = (np.arange(256) * k % 256 for k in (1, 3, 7))
    indices = _rng(2).integers(0, 256, (6, 9), dtype=np.uint8)
    ds = _dataset(indices, "PALETTE COLOR")
    for name, lut in (("Red", red), ("Green", green), ("Blue", blue)):
        setattr(ds, f"{name}PaletteColorLookupTableDescriptor", [256, 0, 8])
        setattr(ds, f"{name}PaletteColorLookupTableData", lut.astype(np.uint8).tobytes())
    out, meta = read_dicom(_save(ds, tmp_path / "palette.dcm"))
    assert out.dtype == np.uint8 and out.shape == (3, 6, 9)
    assert np.array_equal(out, np.stack([red[indices], green[indices], blue[indices]]).astype(np.uint8))
    assert meta["value_range"] == (0.0, 255.0)


def _ct(tmp_path, name="ct.dcm", **attrs):
    raw = np.array([[0, 1000, 1024], [1064, 2000, 4095]], np.uint16)
    return _save(_dataset(raw, "MONOCHROME2", 12, RescaleSlope=1, RescaleIntercept=-1024, **attrs), tmp_path / name)


def test_modality_lut_and_window(tmp_path):
    path = _ct(tmp_path, WindowCenter=40, WindowWidth=400)
    hu, meta = read_dicom(path, voi=False)
    assert hu.dtype == np.float32
    assert np.array_equal(hu[0], np.array([[-1024, -24, 0], [40, 976, 3071]], np.float32))
    assert meta["modality_lut"].startswith("rescale") and meta["voi"] is None
    assert meta["value_range"] == (-1024.0, 3071.0)

    shown, meta = read_dicom(path)
    assert meta["voi"] == "window 40/400 LINEAR"
    assert shown.dtype == np.float32 and meta["value_range"] == (0.0, 1.0)
    assert np.allclose(shown[0], apply_window(hu[0], 40, 400))
    assert shown[0, 0, 0] == 0.0 and shown[0, 1, 2] == 1.0
    assert abs(shown[0, 1, 0] - 0.5) < 0.01  # 40 HU is the window centre

    wide, meta = read_dicom(path, voi=(1000, 4000))
    assert meta["voi"] == "window 1000/4000 LINEAR"
    assert np.allclose(wide[0], apply_window(hu[0], 1000, 4000))
    raw, meta = read_dicom(path, modality_lut=False, voi=False)
    assert raw.dtype == np.uint16 and raw[0, 1, 2] == 4095 and meta["value_range"] == (0.0, 4095.0)


def test_window_functions_follow_ps3_3():
    x = np.array([-1000.0, 39.5, 40.0, 1000.0])
    assert np.allclose(apply_window(x, 40, 400)[[0, 3]], [0, 1])
    assert abs(apply_window(x, 40, 400, "LINEAR_EXACT")[2] - 0.5) < 1e-6
    assert abs(apply_window(x, 40, 400, "SIGMOID")[2] - 0.5) < 1e-6


def test_no_window_deep_data_uses_min_max(tmp_path):
    deep = np.array([[100, 200], [300, 500]], np.uint16)
    out, meta = read_dicom(_save(_dataset(deep, "MONOCHROME2", 12), tmp_path / "deep.dcm"))
    assert meta["voi"] == "min/max 100..500"
    assert np.allclose(out[0], [[0, 0.25], [0.5, 1.0]])
    minmax, _ = read_dicom(tmp_path / "deep.dcm", voi="minmax")
    assert np.array_equal(minmax, out)
    with pytest.raises(ValueError, match="voi"):
        read_dicom(tmp_path / "deep.dcm", voi="auto")


def test_monochrome1_with_window_is_inverted(tmp_path):
    raw = np.array([[0, 512, 1023]], np.uint16)
    path = _save(_dataset(raw, "MONOCHROME1", 10, WindowCenter=512, WindowWidth=1024), tmp_path / "cr.dcm")
    out, _ = read_dicom(path)
    assert np.allclose(out[0], 1.0 - apply_window(raw.astype(float), 512, 1024))
    assert out[0, 0, 0] > 0.99 and out[0, 0, 2] < 0.01  # stored 0 is white in MONOCHROME1
    kept, _ = read_dicom(path, voi=False)
    assert kept.dtype == np.uint16 and np.array_equal(kept[0], 1023 - raw)


def test_voi_lut_sequence(tmp_path):
    raw = np.array([[0, 16, 4095]], np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 8]
    item.add_new(0x00283006, "OW", (np.arange(4096) >> 4).astype("<u2").tobytes())
    ds = _dataset(raw, "MONOCHROME2", 12)
    ds.VOILUTSequence = [item]
    out, meta = read_dicom(_save(ds, tmp_path / "voilut.dcm"))
    assert meta["voi"] == "VOI LUT Sequence"
    assert np.allclose(out[0], [[0, 1 / 255, 1.0]])


def test_modality_lut_sequence(tmp_path):
    raw = np.array([[5, 10, 12, 20]], np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4, 10, 12]
    item.ModalityLUTType = "US"
    item.add_new(0x00283006, "OW", np.array([100, 200, 300, 400], "<u2").tobytes())
    ds = _dataset(raw, "MONOCHROME2", 12)
    ds.ModalityLUTSequence = [item]
    out, meta = read_dicom(_save(ds, tmp_path / "mlut.dcm"), voi=False)
    assert meta["modality_lut"] == "Modality LUT Sequence"
    assert np.array_equal(out[0], [[100, 100, 300, 400]]) and meta["value_range"] == (0.0, 4095.0)


# ---------------------------------------------------------------- transfer syntaxes and decoders


@pytest.mark.parametrize(
    ("syntax", "package"),
    [
        (uid.JPEG2000Lossless, "pylibjpeg-openjpeg"),
        (uid.JPEGLosslessSV1, "pylibjpeg-libjpeg"),
        (uid.JPEGBaseline8Bit, "pylibjpeg-libjpeg"),
        (uid.JPEGLSLossless, "pyjpegls"),
    ],
)
def test_install_hints_name_the_package(syntax, package):
    hint = _install_hint(syntax)
    assert package in hint and "monai-ssl-ext[dicom]" in hint


def test_missing_decoder_names_the_package(tmp_path, monkeypatch):
    from pydicom.pixels import get_decoder

    path = _save(_dataset(GREY, "MONOCHROME2"), tmp_path / "j2k.dcm", uid.JPEG2000Lossless)
    # as if neither pylibjpeg-openjpeg nor Pillow's JPEG 2000 plugin were installed
    monkeypatch.setattr(get_decoder(uid.JPEG2000Lossless), "_available", {})
    with pytest.raises(MissingDecoderError) as info:
        read_image(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    assert "JPEG 2000" in message and "pip install pylibjpeg pylibjpeg-openjpeg" in message


def test_failed_decode_without_the_package_is_a_missing_decoder(tmp_path, monkeypatch):
    from pydicom.pixels import get_decoder

    import monai_ssl_ext.io.dicom as dicom

    path = _save(_dataset(GREY, "MONOCHROME2"), tmp_path / "jls.dcm", uid.JPEGLSLossless)
    decoder = get_decoder(uid.JPEGLSLossless)

    def broken(*args, **kwargs):
        raise RuntimeError("Unable to decode as exceptions were raised by all available plugins")

    monkeypatch.setattr(decoder, "as_array", broken)
    monkeypatch.setattr(dicom, "_hint_installed", lambda ts: False)
    with pytest.raises(MissingDecoderError, match="pyjpegls"):
        read_image(path)
    monkeypatch.setattr(dicom, "_hint_installed", lambda ts: True)
    with pytest.raises(ImageReadError, match="cannot decode JPEG-LS") as info:
        read_image(path)
    assert not isinstance(info.value, MissingDecoderError)


def test_video_transfer_syntax_is_not_supported(tmp_path):
    from pydicom.encaps import encapsulate

    ds = _dataset(GREY, "MONOCHROME2")
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(64)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = uid.MPEG4HP41
    ds.save_as(tmp_path / "video.dcm", enforce_file_format=True)
    with pytest.raises(ImageReadError, match=r"MPEG-4 AVC/H\.264.* is not supported \(video"):
        read_image(tmp_path / "video.dcm")


# ---------------------------------------------------------------- bad files


def test_missing_file(tmp_path):
    path = tmp_path / "absent.dcm"
    for reader in (read_image, read_dicom, count_frames):
        with pytest.raises(ImageReadError, match="file not found") as info:
            reader(path)
        assert str(info.value).startswith(str(path))


@pytest.mark.parametrize("keep", [0.5, 0.05])
def test_truncated_file(tmp_path, keep):
    ds = _dataset(np.tile(GREY, (4, 4)), "MONOCHROME2")
    for i in range(40):  # a header long enough that 5% of the file ends inside it
        ds.add_new(0x00091000 + i, "LO", "x" * 40)
    whole = _save(ds, tmp_path / "whole.dcm").read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(whole[: int(len(whole) * keep)])
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    assert "truncated" in message


def test_truncated_compressed_pixel_data(tmp_path):
    whole = _save(_dataset(RGB, "RGB"), tmp_path / "rle.dcm", uid.RLELossless).read_bytes()
    path = tmp_path / "cut_rle.dcm"
    path.write_bytes(whole[:-200])
    with pytest.raises(ImageReadError, match=r"cut_rle\.dcm: .*(truncated|corrupt|cannot decode)"):
        read_image(path)


def test_structured_report_has_no_pixel_data(tmp_path):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = uid.ComprehensiveSRStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid.generate_uid()
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    path = tmp_path / "report.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert str(info.value) == f"{path}: no pixel data (Comprehensive SR Storage: not an image)"


def test_image_without_pixel_data_is_called_incomplete(tmp_path):
    ds = _dataset(GREY, "MONOCHROME2")
    del ds.PixelData
    ds.save_as(tmp_path / "empty.dcm", enforce_file_format=True)
    with pytest.raises(ImageReadError, match="incomplete DICOM file: Secondary Capture Image Storage"):
        read_image(tmp_path / "empty.dcm")


def test_text_file_named_dcm(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("not an image\n" * 20)
    with pytest.raises(ImageReadError, match=r"notes\.dcm: not a DICOM file"):
        read_image(path)


def test_unsupported_photometric(tmp_path):
    ds = _dataset(RGB, "RGB")
    ds.PhotometricInterpretation = "HSV"
    with pytest.raises(ImageReadError, match="photometric interpretation 'HSV' is not supported"):
        read_image(_save(ds, tmp_path / "hsv.dcm"))


# ---------------------------------------------------------------- dispatch and options


def test_dicom_without_suffix_is_recognised_by_preamble(tmp_path):
    for name in ("IM000001", "1.2.840.99.7", "scan.xyz"):
        path = _save(_dataset(GREY, "MONOCHROME2"), tmp_path / name)
        assert image_format(path) == "dicom"
        out, meta = read_image(path)
        assert meta["format"] == "dicom" and np.array_equal(out[0], GREY)


def test_read_image_options(tmp_path):
    path = _ct(tmp_path)
    out, _ = read_image(path, voi=False, slice_axis=1, crop_to_region=True)  # other readers' options ignored
    assert out[0, 0, 0] == -1024
    with pytest.raises(TypeError, match="windw"):
        read_image(path, windw=(1, 2))


# ---------------------------------------------------------------- multi-frame (synthetic)


@pytest.fixture
def cine(tmp_path):
    frames = np.stack([np.full((8, 10, 3), 20 * i, np.uint8) for i in range(7)])
    return _save(_dataset(frames, "RGB"), tmp_path / "cine.dcm"), frames


@pytest.mark.parametrize(("policy", "index"), [(None, 0), ("first", 0), ("middle", 3), ("last", 6), (4, 4), (-2, 5)])
def test_single_frame_policies(cine, policy, index):
    path, frames = cine
    out, meta = read_image(path, frame=policy)
    assert out.shape == (3, 8, 10)
    assert meta["frame"] == index and meta["frames"] == 7
    assert np.array_equal(out, np.moveaxis(frames[index], -1, 0))


def test_all_frames_are_stacked_on_a_time_axis(cine):
    path, frames = cine
    out, meta = read_image(path, frame="all")
    assert out.shape == (3, 7, 8, 10) and meta["frame"] is None
    assert np.array_equal(out, np.moveaxis(frames, -1, 0))
    image = ReadImage(channels=1, frame="all")(path)
    assert tuple(image.shape) == (1, 7, 8, 10)


def test_every_kth_frame_as_separate_samples(cine):
    path, _ = cine
    entries = [{"image": str(path), "label": 1}, {"image": str(path), "frame": 2}]
    expanded = expand_frames(entries, "every:3")
    assert [e.get("frame") for e in expanded] == [0, 3, 6, 2]
    assert all(e["label"] == 1 for e in expanded[:3])
    assert expand_frames(entries, {"every": 7})[0]["frame"] == 0
    assert expand_frames(entries, "middle") == entries

    reader = ReadImaged("image", channels=None, frame="every:3")
    for entry in expanded:
        image = reader(entry)["image"]
        assert image.meta["frame"] == entry["frame"]
        assert torch.allclose(image[:, 0, 0], torch.full((3,), 20 * entry["frame"] / 255))
    with pytest.raises(ImageReadError, match="expand_frames"):
        reader({"image": str(path)})


def test_frame_out_of_range(cine):
    path, _ = cine
    with pytest.raises(ImageReadError, match="frame 7 out of range: the file has 7 frame"):
        read_image(path, frame=7)
    with pytest.raises(ValueError, match="frame policy"):
        read_image(path, frame="sometimes")


# ---------------------------------------------------------------- ultrasound regions (synthetic)


def _region(x0, y0, x1, y1, data_type=1, spatial=1, units=3, delta=0.01):
    item = Dataset()
    item.RegionSpatialFormat = spatial
    item.RegionDataType = data_type
    item.RegionFlags = 0
    item.RegionLocationMinX0, item.RegionLocationMinY0 = x0, y0
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = x1, y1
    item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = units
    item.PhysicalDeltaX = delta
    item.PhysicalDeltaY = delta * 2
    return item


def test_region_crop_and_spacing(tmp_path):
    ds = _dataset(RGB, "RGB", Modality="US")
    ds.SequenceOfUltrasoundRegions = [_region(0, 0, 47, 3, data_type=13), _region(4, 5, 30, 20)]
    path = _save(ds, tmp_path / "us.dcm")
    full, meta = read_dicom(path)
    assert full.shape == (3, 32, 48) and not meta["cropped"]
    assert meta["us_region"] == {"index": 1, "bbox": (4, 5, 30, 20), "data_type": "tissue", "spatial_format": "2D"}
    assert meta["spacing"] == pytest.approx((0.2, 0.1)) and meta["spacing_source"] == "UltrasoundRegion"
    crop, meta = read_dicom(path, crop_to_region=True)
    assert crop.shape == (3, 16, 27) and meta["cropped"]
    assert np.array_equal(crop, full[:, 5:21, 4:31])
    bar, meta = read_dicom(path, crop_to_region=0)
    assert bar.shape == (3, 4, 48) and meta["us_region"]["data_type"] == "gray bar"
    with pytest.raises(ImageReadError, match="no ultrasound region 5"):
        read_dicom(path, crop_to_region=5)
    image = ReadImage(channels=1, crop_to_region=True)(path)
    assert tuple(image.shape) == (1, 16, 27)
    assert torch.allclose(torch.diag(image.affine)[:2].float(), torch.tensor([0.2, 0.1]))


def test_pixel_spacing_wins_over_regions(tmp_path):
    ds = _dataset(GREY, "MONOCHROME2", PixelSpacing=[0.5, 0.25])
    ds.SequenceOfUltrasoundRegions = [_region(0, 0, 10, 10)]
    _, meta = read_dicom(_save(ds, tmp_path / "ps.dcm"))
    assert meta["spacing"] == (0.5, 0.25) and meta["spacing_source"] == "PixelSpacing"


def test_region_in_other_units_gives_no_spacing(tmp_path):
    ds = _dataset(GREY, "MONOCHROME2")
    ds.SequenceOfUltrasoundRegions = [_region(0, 0, 10, 10, units=4)]  # seconds: an M-mode time axis
    _, meta = read_dicom(_save(ds, tmp_path / "mmode.dcm"))
    assert meta["spacing"] is None and meta["us_region"]["index"] == 0


# ---------------------------------------------------------------- MONAI ImageReader


def test_load_image_with_dicom_reader(tmp_path):
    from monai.transforms import LoadImage, LoadImaged

    ds = _dataset(RGB, "RGB", PixelSpacing=[0.5, 0.25])
    path = _save(ds, tmp_path / "rgb.dcm")
    expected, _ = read_dicom(path)
    for reader in (DicomImageReader(), "monai_ssl_ext.io.DicomImageReader"):
        image = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)(path)
        assert tuple(image.shape) == (3, 32, 48)
        assert np.array_equal(image.numpy(), expected)
        assert image.meta["original_channel_dim"] == 0
        assert image.meta["photometric_interpretation"] == "RGB"
        assert torch.allclose(torch.diag(image.affine)[:2].double(), torch.tensor([0.5, 0.25], dtype=torch.float64))
    assert DicomImageReader().verify_suffix(str(path)) and not DicomImageReader().verify_suffix("a.png")

    out = LoadImaged("image", reader=DicomImageReader(voi=False), image_only=True)({"image": str(_ct(tmp_path))})
    assert float(out["image"][0, 0, 0]) == -1024.0


def test_dicom_reader_from_a_bundle_config(cine):
    from monai.bundle import ConfigParser

    path, frames = cine
    config = {
        "load": {
            "_target_": "LoadImage",
            "image_only": True,
            "reader": {"_target_": "monai_ssl_ext.io.DicomImageReader", "frame": "middle"},
        }
    }
    image = ConfigParser(config).get_parsed_content("load")(path)
    assert np.array_equal(image.numpy(), np.moveaxis(frames[3], -1, 0)) and image.meta["frame"] == 3


def test_dicom_reader_frame_option_and_lists(cine):
    from monai.transforms import LoadImage

    path, frames = cine
    image = LoadImage(reader=DicomImageReader(frame="last"), image_only=True)(path)
    assert np.array_equal(image.numpy(), np.moveaxis(frames[-1], -1, 0))
    both = LoadImage(reader=DicomImageReader(), image_only=True)([path, path])
    assert tuple(both.shape) == (6, 8, 10)


# ---------------------------------------------------------------- inspection


def test_inspect_folder_with_good_and_bad_files(tmp_path):
    folder = tmp_path / "export"
    (folder / "series").mkdir(parents=True)
    _save(_dataset(GREY, "MONOCHROME2", Modality="US"), folder / "series" / "IM0001")
    whole = _save(_dataset(GREY, "MONOCHROME2"), folder / "good.dcm").read_bytes()
    (folder / "cut.dcm").write_bytes(whole[: len(whole) // 2])
    Image.fromarray(RGB).save(folder / "photo.png")
    (folder / "notes.txt").write_text("not an image")
    records = inspect_path(folder)
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in records}
    assert sorted(by_name) == ["IM0001", "cut.dcm", "good.dcm", "photo.png"]
    good = by_name["IM0001"]
    assert good["format"] == "dicom" and good["modality"] == "US" and good["error"] is None
    assert good["photometric"] == "MONOCHROME2" and good["transfer_syntax"] == "Explicit VR Little Endian"
    assert good["shape"] == (1, 32, 48) and good["dtype"] == "uint8" and good["frames"] == 1
    assert good["value_range"] == (float(GREY.min()), float(GREY.max()))
    assert by_name["photo.png"]["shape"] == (3, 32, 48) and by_name["photo.png"]["format"] == "png"
    bad = by_name["cut.dcm"]
    assert bad["error"].startswith(str(folder / "cut.dcm")) and "truncated" in bad["error"]
    assert bad["shape"] is None
    table = format_inspection(records)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["file", "format", "modality"]
    assert len(lines) == 5
    assert any("cut.dcm" in line and "ERROR: truncated" in line for line in lines)
    assert any(line.startswith("series/IM0001") and "1x32x48" in line for line in lines)
    assert inspect_path(folder / "good.dcm")[0]["error"] is None
    with pytest.raises(ImageReadError, match="not found"):
        inspect_path(tmp_path / "nowhere")


# ---------------------------------------------------------------- the real files in ../shared/data/dicom

# file: (shape, dtype, stored photometric, (min, max) after loading, frames, spacing mm or None)
REAL = {
    "CT_small.dcm": ((1, 128, 128), "float32", "MONOCHROME2", (0.0, 1.0), 1, (0.661468, 0.661468)),
    "MR_small.dcm": ((1, 64, 64), "float32", "MONOCHROME2", (0.2045, 1.0), 1, (0.3125, 0.3125)),
    "emri_small.dcm": ((1, 64, 64), "float32", "MONOCHROME2", (0.0, 1.0), 10, None),
    "RG3_J2KR.dcm": ((1, 1760, 1760), "float32", "MONOCHROME1", (0.0371, 1.0), 1, None),
    "US1_UNCR.dcm": ((3, 480, 640), "uint8", "RGB", (0, 255), 1, None),
    "examples_rgb_color.dcm": ((3, 240, 320), "uint8", "RGB", (0, 255), 1, None),
    "examples_ybr_color.dcm": ((3, 240, 320), "uint8", "YBR_FULL_422", (0, 220), 30, (0.5105, 0.5105)),
    "examples_palette.dcm": ((3, 350, 800), "uint8", "PALETTE COLOR", (0, 255), 1, (0.2623, 0.2623)),
    "OBXXXX1A.dcm": ((3, 600, 800), "uint8", "PALETTE COLOR", (0, 255), 1, (0.2623, 0.2623)),
    "OBXXXX1A_2frame.dcm": ((3, 600, 800), "uint8", "PALETTE COLOR", (0, 255), 2, (0.2623, 0.2623)),
    "gdcm-US-ALOKA-16.dcm": ((3, 480, 640), "uint8", "PALETTE COLOR", (0, 251), 1, (0.3827, 0.3827)),
}


@pytest.mark.real_data
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_dicom_file(name):
    path = shared_data("dicom", name)
    shape, dtype, photometric, (lo, hi), frames, spacing = REAL[name]
    out, meta = read_image(path)
    assert out.shape == shape and str(out.dtype) == dtype
    assert meta["photometric_interpretation"] == photometric and meta["frames"] == frames
    assert float(out.min()) == pytest.approx(lo, abs=1e-3) and float(out.max()) == pytest.approx(hi, abs=1e-3)
    if spacing is None:
        assert meta["spacing"] is None
    else:
        assert meta["spacing"] == pytest.approx(spacing, abs=1e-4)


@pytest.mark.real_data
def test_real_dicom_folder_has_no_unexpected_files():
    folder = shared_data("dicom")
    assert sorted(p.name for p in folder.iterdir()) == sorted(REAL)


@pytest.mark.real_data
def test_real_pixels_match_pydicom():
    from pydicom.pixels import apply_color_lut

    rgb = pydicom.dcmread(shared_data("dicom", "US1_UNCR.dcm"))
    assert np.array_equal(read_image(rgb.filename)[0], np.moveaxis(rgb.pixel_array, -1, 0))
    # JPEG YBR_FULL_422: pydicom's own RGB conversion; converting twice would differ
    ybr = pydicom.dcmread(shared_data("dicom", "examples_ybr_color.dcm"))
    out, meta = read_image(ybr.filename, frame=15)
    assert meta["frame"] == 15 and np.array_equal(out, np.moveaxis(ybr.pixel_array[15], -1, 0))
    palette = pydicom.dcmread(shared_data("dicom", "gdcm-US-ALOKA-16.dcm"))
    expected = (apply_color_lut(palette.pixel_array, palette) >> 8).astype(np.uint8)
    assert np.array_equal(read_image(palette.filename)[0], np.moveaxis(expected, -1, 0))
    mr = pydicom.dcmread(shared_data("dicom", "MR_small.dcm"))
    out, meta = read_image(mr.filename)
    assert meta["voi"] == "window 600/1600 LINEAR"
    assert np.allclose(out[0], apply_window(mr.pixel_array, 600, 1600))
    ct = pydicom.dcmread(shared_data("dicom", "CT_small.dcm"))
    hu, _ = read_image(ct.filename, voi=False)
    assert np.array_equal(hu[0], ct.pixel_array.astype(np.float32) - 1024)


@pytest.mark.real_data
def test_real_ultrasound_regions():
    # US1_UNCR has no Sequence of Ultrasound Regions: no crop, no spacing
    out, meta = read_image(shared_data("dicom", "US1_UNCR.dcm"), crop_to_region=True)
    assert out.shape == (3, 480, 640) and meta["us_region"] is None and not meta["cropped"]

    # the region extends past this 350-row image; it is clipped to it
    out, meta = read_image(shared_data("dicom", "examples_palette.dcm"), crop_to_region=True)
    assert out.shape == (3, 290, 680) and meta["us_region"]["bbox"] == (120, 60, 799, 349)

    out, meta = read_image(shared_data("dicom", "OBXXXX1A.dcm"), crop_to_region=True)
    assert out.shape == (3, 459, 680) and meta["us_region"]["index"] == 0
    assert meta["spacing"] == pytest.approx((0.26229, 0.26229), abs=1e-5)  # 0.026229 cm

    # dual view: two equal tissue regions, the first is used; the other by index
    aloka = shared_data("dicom", "gdcm-US-ALOKA-16.dcm")
    left, meta = read_image(aloka, crop_to_region=True)
    assert left.shape == (3, 392, 304) and meta["us_region"]["bbox"] == (32, 24, 335, 415)
    right, meta = read_image(aloka, crop_to_region=1)
    assert right.shape == (3, 392, 304) and meta["us_region"]["bbox"] == (336, 24, 639, 415)
    bar, meta = read_image(aloka, crop_to_region=2)
    assert bar.shape == (3, 64, 32) and meta["us_region"]["data_type"] == "gray bar"

    out, meta = read_image(shared_data("dicom", "examples_ybr_color.dcm"), crop_to_region=True, frame="middle")
    assert out.shape == (3, 209, 236) and meta["frame"] == 15


@pytest.mark.real_data
def test_real_cine_policies():
    path = shared_data("dicom", "OBXXXX1A_2frame.dcm")
    single, _ = read_image(shared_data("dicom", "OBXXXX1A.dcm"))
    first, meta = read_image(path)
    assert meta["frame"] == 0 and np.array_equal(first, single)
    second, meta = read_image(path, frame="middle")
    assert meta["frame"] == 1 and not np.array_equal(second, first)
    assert np.array_equal(read_image(path, frame="last")[0], second)
    stacked, meta = read_image(path, frame="all")
    assert stacked.shape == (3, 2, 600, 800) and meta["frame"] is None
    assert np.array_equal(stacked[:, 0], first) and np.array_equal(stacked[:, 1], second)
    assert count_frames(path) == 2
    assert [e["frame"] for e in expand_frames([{"image": str(path)}], "every:1")] == [0, 1]
    assert [e["frame"] for e in expand_frames([{"image": str(path)}], "every:2")] == [0]
    with pytest.raises(ImageReadError, match="frame 2 out of range"):
        read_image(path, frame=2)
    cine = shared_data("dicom", "examples_ybr_color.dcm")
    assert [e["frame"] for e in expand_frames([{"image": str(cine)}], "every:10")] == [0, 10, 20]


@pytest.mark.real_data
def test_real_missing_jpeg2000_decoder(monkeypatch):
    from pydicom.pixels import get_decoder

    path = shared_data("dicom", "RG3_J2KR.dcm")
    monkeypatch.setattr(get_decoder(uid.JPEG2000Lossless), "_available", {})
    with pytest.raises(MissingDecoderError, match=r"RG3_J2KR\.dcm: JPEG 2000 .*pylibjpeg-openjpeg"):
        read_image(path)


@pytest.mark.real_data
def test_real_inspection_of_the_dicom_folder():
    records = inspect_path(shared_data("dicom"))
    assert len(records) == len(REAL) and all(r["error"] is None for r in records)
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in records}
    assert by_name["RG3_J2KR.dcm"]["transfer_syntax"] == "JPEG 2000 Image Compression (Lossless Only)"
    assert by_name["examples_ybr_color.dcm"]["frames"] == 30
    assert by_name["OBXXXX1A.dcm"]["us_region"]["data_type"] == "tissue"
    # the shape an ultrasound bundle reads: cropped to the imaging region (its default)
    region = by_name["OBXXXX1A.dcm"]["us_region"]["bbox"]
    expected = (by_name["OBXXXX1A.dcm"]["shape"][0], region[3] - region[1] + 1, region[2] - region[0] + 1)
    assert by_name["OBXXXX1A.dcm"]["cropped_shape"] == expected != by_name["OBXXXX1A.dcm"]["shape"]
    assert by_name["RG3_J2KR.dcm"]["cropped_shape"] is None
    table = format_inspection(records)
    assert "gdcm-US-ALOKA-16.dcm" in table and "cropped" in table.splitlines()[0]
