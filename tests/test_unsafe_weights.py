"""A weights file that would run code when loaded is refused with one line naming it, in every loading path."""

from __future__ import annotations

import os

import pytest
import torch

from monai_ssl_ext.engines.checkpoint import ResumeCheckpointLoader
from monai_ssl_ext.engines.model_loader import load_model_weights
from monai_ssl_ext.networks import Classifier
from monai_ssl_ext.networks.encoders import read_state_dict
from monai_ssl_ext.utils import UnreadableWeightsError, load_weights_file


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def unsafe(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "model.pt"
    torch.save({"network": _RunsCode(str(marker)), "weight": torch.zeros(1)}, path)
    return path, marker


def _loaders(path):
    net = Classifier(2, depth=10)
    return {
        "load_weights_file": lambda: load_weights_file(path),
        "pretrained (read_state_dict)": lambda: read_state_dict(path),
        "evaluation / inference / export (load_model_weights)": lambda: load_model_weights(net, path),
        "resume_from": lambda: ResumeCheckpointLoader(path, {"network": net}).resolve(),
    }


def test_every_loading_path_refuses_a_pickle_that_runs_code(unsafe):
    path, marker = unsafe
    for name, load in _loaders(path).items():
        with pytest.raises(UnreadableWeightsError) as err:
            load()
        message = str(err.value)
        assert "\n" not in message and str(path) in message and "not a weights-only checkpoint" in message, name
    assert not marker.exists()  # nothing ran


def test_truncated_file_is_named_in_one_line(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(Classifier(2, depth=10).state_dict(), good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:1000])
    for name, load in _loaders(cut).items():
        with pytest.raises(UnreadableWeightsError, match="cannot be read as a PyTorch weights file") as err:
            load()
        assert "\n" not in str(err.value) and str(cut) in str(err.value), name


def test_export_command_reports_an_unsafe_checkpoint_in_one_line(unsafe, tmp_path, capsys):
    from monai_ssl_ext.cli import main

    path, marker = unsafe
    with pytest.raises(SystemExit) as stopped:
        main(["export", str(path), str(tmp_path / "model.ts"), "--image_size", "32"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a weights-only checkpoint" in err[0] and str(path) in err[0]
    assert not marker.exists() and not (tmp_path / "model.ts").exists()
