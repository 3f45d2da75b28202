"""The ``monai-ssl inspect`` and ``monai-ssl manifest`` commands on good and bad files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import shared_data
from PIL import Image

from monai_ssl_ext.cli import Commands, main


def _png(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def _lesion(h: int = 20, w: int = 30) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[5:12, 8:20] = 255
    return mask


@pytest.fixture
def class_folders(tmp_path):
    """benign/ and malignant/ with 6 good images each (masks beside them) and three bad files."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for cls in ("benign", "malignant"):
        for i in range(6):
            _png(root / cls / f"{cls}{i}.png", rng.integers(0, 256, (20, 30)))
            _png(root / cls / f"{cls}{i}_mask.png", _lesion())
    (root / "benign" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    _png(root / "benign" / "corrupt_mask.png", _lesion())
    _png(root / "malignant" / "empty.png", rng.integers(0, 256, (20, 30)))
    _png(root / "malignant" / "empty_mask.png", np.zeros((20, 30)))
    _png(root / "malignant" / "tall.png", rng.integers(0, 256, (20, 30)))
    _png(root / "malignant" / "tall_mask.png", _lesion(60, 30))
    return root


def test_inspect_reports_each_file_and_fails_on_a_bad_one(class_folders, capsys):
    with pytest.raises(SystemExit) as exit_info:
        Commands.inspect(str(class_folders / "benign"), json=True)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    records = {r["path"].rsplit("/", 1)[-1]: r for r in json.loads(out)}
    assert records["benign0.png"]["shape"] == [1, 20, 30] and records["benign0.png"]["error"] is None
    assert "corrupt.png" in records["corrupt.png"]["error"]
    assert err.strip().count("\n") == 0 and "corrupt.png" in err and "Traceback" not in err


def test_inspect_debug_shows_the_traceback_of_a_bad_file(class_folders):
    from monai_ssl_ext.io import ImageReadError

    with pytest.raises(ImageReadError, match=r"corrupt\.png"):
        Commands.inspect(str(class_folders / "benign" / "corrupt.png"), debug=True)


def test_inspect_prints_a_table_and_exits_cleanly_on_good_files(class_folders, capsys):
    Commands.inspect(str(class_folders / "benign" / "benign0.png"))
    out = capsys.readouterr().out
    assert "benign0.png" in out and "1x20x30" in out


def test_inspect_missing_path_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        Commands.inspect(str(tmp_path / "nowhere"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and err.strip().count("\n") == 0


def test_manifest_verify_stops_at_a_bad_file_and_writes_nothing(class_folders, tmp_path, capsys):
    out = tmp_path / "manifest.json"
    with pytest.raises(SystemExit):
        Commands.manifest("folder", str(class_folders), str(out), verify=True)
    err = capsys.readouterr().err
    assert err.startswith("monai-ssl manifest: error: ") and err.strip().count("\n") == 0
    assert any(name in err for name in ("corrupt.png", "empty_mask.png", "tall_mask.png"))
    assert not out.exists()


def test_manifest_skip_leaves_bad_files_out_and_reports_why(class_folders, tmp_path):
    out = tmp_path / "manifest.json"
    Commands.manifest("folder", str(class_folders), str(out), verify=True, on_error="skip")
    manifest = json.loads(out.read_text())
    images = [e["image"] for split in ("training", "validation", "test") for e in manifest[split]]
    assert len(images) == 12 and not any(name in " ".join(images) for name in ("corrupt", "empty", "tall"))
    with open(tmp_path / "manifest.skipped.csv", newline="") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    assert rows["benign/corrupt.png"]["kind"] == "unreadable_image"
    assert rows["malignant/empty_mask.png"]["kind"] == "empty_mask"
    assert rows["malignant/tall_mask.png"]["kind"] == "bad_mask"
    assert "aspect ratio" in rows["malignant/tall_mask.png"]["reason"]


def test_manifest_rejects_an_unknown_source_and_option(class_folders, tmp_path, capsys):
    with pytest.raises(SystemExit):
        Commands.manifest("foldr", str(class_folders), str(tmp_path / "m.json"))
    assert "choose one of" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        Commands.manifest("folder", str(class_folders), str(tmp_path / "m.json"), lables="x.csv")
    assert "does not take ['lables']" in capsys.readouterr().err


@pytest.mark.real_data
def test_inspect_every_shared_dicom_file_loads(capsys):
    folder = shared_data("dicom")
    Commands.inspect(str(folder), json=True)
    records = json.loads(capsys.readouterr().out)
    assert len(records) == len(list(folder.glob("*.dcm")))
    assert all(r["error"] is None and r["shape"] for r in records)


@pytest.mark.parametrize("command", ["benchmark", "demo", "train"])
def test_help_flag_prints_help_and_runs_nothing(command, tmp_path, monkeypatch, capfd):
    # commands with **overrides used to take --help as a setting named "help" and start running
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PAGER", "cat")
    with pytest.raises(SystemExit) as stopped:
        main([command, "--help"])
    assert stopped.value.code in (0, None)
    captured = capfd.readouterr()
    out = captured.out + captured.err
    assert f"monai-ssl {command}" in out and "FLAGS" in out
    assert list(tmp_path.iterdir()) == []  # no run folder, no data


@pytest.mark.parametrize("command", [["split", "MANIFEST", "2.5"], ["benchmark", "--labels", "2.5"]])
def test_a_label_count_that_is_not_whole_is_refused(command, tmp_path, monkeypatch, capsys):
    # "monai-ssl split MANIFEST 2.5" used to split 2 images without a word
    from monai_ssl_ext.data.synthetic import ensure_synthetic_dataset

    monkeypatch.chdir(tmp_path)
    manifest = ensure_synthetic_dataset(tmp_path / "data", num_images=20, image_size=32)
    args = [str(manifest) if a == "MANIFEST" else a for a in command]
    with pytest.raises(SystemExit) as stopped:
        main([*args, "--output", str(tmp_path / "out")])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "label budget 2.5: a count must be a whole number" in err[0]
    assert not (tmp_path / "out").exists()


def test_synthetic_writes_the_options_into_the_manifest_and_names_an_unknown_one(tmp_path, capsys):
    main(["synthetic", str(tmp_path / "s"), "--num_images", "4", "--image_size", "40", "--overlap", "0.5"])
    source = json.loads((tmp_path / "s" / "datalist.json").read_text())["source"]
    assert (source["num_images"], source["image_size"], source["overlap"], source["lesion_scale"]) == (4, 40, 0.5, 1.0)
    with pytest.raises(SystemExit) as exit_info:
        main(["synthetic", str(tmp_path / "t"), "--overlpa", "0.5"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("monai-ssl synthetic: error: unknown option --overlpa; the options are --num_images")
    assert not (tmp_path / "t").exists()


def test_the_recorded_command_line_keeps_an_argument_with_spaces_whole(monkeypatch):
    import shlex

    from monai_ssl_ext.cli import _invocation

    argv = ["monai-ssl", "benchmark_merge", "a", "--baselines", "supervised,semise (separate_schedule)"]
    monkeypatch.setattr("sys.argv", argv)
    recorded = _invocation()
    assert shlex.split(recorded) == argv and "'supervised,semise (separate_schedule)'" in recorded
