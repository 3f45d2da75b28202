"""TorchScript export with config and metadata overlays (``monai_ssl_ext.deploy.export_bundle``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from monai_ssl_ext.deploy import export_bundle, merged_metadata
from monai_ssl_ext.engines import CheckpointMismatchError

pytestmark = pytest.mark.usefixtures("one_thread")

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "semise_ultrasound"
SMALL = {"image_size": 32, "backbone": "resnet10"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), **SMALL})
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


def test_metadata_overlay_sets_nested_entries_and_keeps_the_rest(tmp_path):
    overlay = tmp_path / "overlay.json"
    overlay.write_text(json.dumps({"network_data_format::inputs::image::num_channels": 3, "version": "9.9.9"}))
    base = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    meta = merged_metadata([BUNDLE / "configs" / "metadata.json", overlay])
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 3
    assert meta["version"] == "9.9.9"
    assert meta["network_data_format"]["outputs"] == base["network_data_format"]["outputs"]
    assert meta["name"] == base["name"]


def test_export_embeds_the_merged_metadata(tmp_path, checkpoint):
    # no trained configuration beside this checkpoint: the bundle's defaults, with the given overrides
    ts = export_bundle(BUNDLE, checkpoint, tmp_path / "model.ts", **SMALL)
    extra = {"metadata.json": ""}
    model = torch.jit.load(str(ts), _extra_files=extra)
    image_in = json.loads(extra["metadata.json"])["network_data_format"]["inputs"]["image"]
    assert image_in["num_channels"] == 1 and image_in["spatial_shape"] == [32, 32]
    assert model(torch.rand(1, 1, 32, 32))["class"].shape == (1, 3)


def test_missing_files_are_named_and_a_failed_export_keeps_the_previous_model(tmp_path, checkpoint):
    target = tmp_path / "model.ts"
    target.write_bytes(b"previous export")
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*absent\.pt"):
        export_bundle(BUNDLE, tmp_path / "absent.pt", target, **SMALL)
    with pytest.raises(FileNotFoundError, match=r"metadata file not found: .*metadata_typo\.json"):
        export_bundle(BUNDLE, checkpoint, target, metadata=["metadata.json", "metadata_typo.json"], **SMALL)
    # a checkpoint of another network: one line naming the checkpoint and the first differing key
    with pytest.raises(CheckpointMismatchError, match=r"model\.pt: the weights do not fit the network: .*encoder"):
        export_bundle(BUNDLE, checkpoint, target, image_size=32, backbone="resnet18")
    assert target.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.ts"]
