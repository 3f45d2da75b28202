"""Frame policy and ultrasound crop chosen by bundle keys reach the manifest, the label budget and the reader."""

from __future__ import annotations

import pytest
import torch
from conftest import shared_data
from monai.transforms import Compose

from monai_ssl_ext.data import LabelBudgetError, Manifest, load_manifest
from monai_ssl_ext.keys import DataKeys
from monai_ssl_ext.transforms import get_profile

CINE = "examples_ybr_color.dcm"  # 30 frames, YBR_FULL_422, JPEG baseline
TWO_FRAMES = "OBXXXX1A_2frame.dcm"
SINGLE = "OBXXXX1A.dcm"


def _manifest() -> Manifest:
    return Manifest.from_dict(
        {
            "name": "cine",
            "classes": ["a", "b"],
            "training": [{"image": CINE, "label": 0}, {"image": TWO_FRAMES, "label": 1}],
            "validation": [{"image": SINGLE, "label": 1}],
            "test": [],
        }
    )


@pytest.mark.real_data
def test_every_kth_frame_becomes_a_sample_that_keeps_its_file_together():
    root = shared_data("dicom")
    manifest = load_manifest(_manifest(), root, frames="every:10")
    frames = [(e[DataKeys.IMAGE].rsplit("/", 1)[-1], e["frame"]) for e in manifest.training]
    assert frames == [(CINE, 0), (CINE, 10), (CINE, 20), (TWO_FRAMES, 0)]
    assert len({e[DataKeys.GROUP] for e in manifest.training if CINE in e[DataKeys.IMAGE]}) == 1
    assert [e["frame"] for e in manifest.validation] == [0]
    # the three frames of the cine are one group: a budget that would need to cut it says so
    with pytest.raises(LabelBudgetError, match="class\\(es\\) \\['a'\\] have no labeled image"):
        manifest.label_split(2, seed=0)
    assert manifest.label_split(4, seed=0).per_class == {"a": 3, "b": 1}


@pytest.mark.real_data
def test_profile_reads_the_entry_frame_and_crops_to_the_ultrasound_region():
    root = shared_data("dicom")
    entries = load_manifest(_manifest(), root, frames="every:10").training
    read = Compose(get_profile("ultrasound", image_size=32, crop_to_region=False).read(with_mask=False))
    first, tenth = (read(dict(e))[DataKeys.IMAGE] for e in entries[:2])
    assert first.shape == tenth.shape == (1, 240, 320) and not torch.equal(first, tenth)
    # ultrasound crops to the imaging region unless told otherwise: the text and UI around it never reach the network
    default = Compose(get_profile("ultrasound", image_size=32).read(with_mask=False))(dict(entries[0]))[DataKeys.IMAGE]
    explicit = Compose(get_profile("ultrasound", image_size=32, crop_to_region=True).read(with_mask=False))
    assert default.shape == (1, 209, 236) and torch.equal(default, explicit(dict(entries[0]))[DataKeys.IMAGE])
    other = Compose(get_profile("xray", image_size=32).read(with_mask=False))(dict(entries[0]))[DataKeys.IMAGE]
    assert other.shape == (1, 240, 320)  # other modalities do not crop by default

    cropped = Compose(get_profile("ultrasound", image_size=32, crop_to_region=True).read(with_mask=False))
    image = cropped({DataKeys.IMAGE: str(root / SINGLE)})[DataKeys.IMAGE]
    assert image.shape == (1, 459, 680)
    assert image.meta["spacing"] == pytest.approx((0.2623, 0.2623), abs=1e-4)


def test_profile_rejects_an_unknown_frame_policy():
    with pytest.raises(ValueError, match="frame"):
        get_profile("ultrasound", frame="sometimes")


def test_inference_inputs_follow_the_trained_frame_policy(tmp_path, monkeypatch):
    import monai_ssl_ext.data.datalist as datalist
    from monai_ssl_ext.data import list_inputs

    monkeypatch.setattr(datalist, "count_frames", lambda path: 6)  # a six-frame cine loop
    (tmp_path / "cine.dcm").write_bytes(b"")
    entries = list_inputs(tmp_path / "cine.dcm", frames="every:2")
    assert [e["frame"] for e in entries] == [0, 2, 4] and all("group" not in e for e in entries)
    assert list_inputs(tmp_path / "cine.dcm") == [{"image": str(tmp_path / "cine.dcm")}]
