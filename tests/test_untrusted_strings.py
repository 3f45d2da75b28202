"""Strings from data (manifest names, class names, paths) stay data: nothing they say is run or written elsewhere."""

from __future__ import annotations

import json
import subprocess

import pytest

from monai_ssl_ext.bundle.literal import inert
from monai_ssl_ext.bundle.runner import bundle_command
from monai_ssl_ext.data.manifest import Manifest, ManifestError


def _marker_code(marker) -> str:
    return f"$__import__('pathlib').Path({str(marker)!r}).touch()"


def _manifest(tmp_path, name="ok", label=0, filename="m.json"):
    data = {"name": name, "classes": ["benign", "malignant"], "training": [{"image": "a.png", "label": label}]}
    path = tmp_path / filename
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("name", ["$__import__('os').getcwd()", "@network", "../outside", "/etc/cron.d/x", "a/b", ".."])
def test_a_manifest_name_that_is_not_a_safe_identifier_is_refused(tmp_path, name):
    path = _manifest(tmp_path, name=name)
    with pytest.raises(ManifestError, match=r"m\.json: name .* is not a safe identifier"):
        Manifest.load(path)


def test_a_manifest_without_a_name_takes_its_file_name_made_safe(tmp_path):
    path = tmp_path / "my site's data.json"
    path.write_text(json.dumps({"classes": ["a", "b"], "training": [{"image": "a.png", "label": 1}]}))
    assert Manifest.load(path).name == "my_site_s_data"


@pytest.mark.parametrize("label", [1.7, True, "1.5", None])
def test_a_label_that_is_not_a_whole_number_or_a_class_is_refused(tmp_path, label):
    with pytest.raises(ManifestError, match=r"m\.json: training\[0\] \(a\.png\).*label"):
        Manifest.load(_manifest(tmp_path, label=label))


@pytest.mark.parametrize("label", [1, "1", 1.0, "malignant"])
def test_whole_numbers_and_class_names_are_labels(tmp_path, label):
    assert Manifest.load(_manifest(tmp_path, label=label)).training[0]["label"] == 1


def test_inert_strings_read_back_unchanged():
    values = ["$x", "@y", "%z#w", "plain", 3, None, ["$a", ("@b", "c")], {"k": "%m"}]
    made = inert(values)
    assert made[3:6] == ["plain", 3, None] and all(s.startswith("$bytes.fromhex(") for s in made[:3])
    assert isinstance(made[6][1], tuple)
    rebuilt = eval(made[0][1:])  # what MONAI evaluates
    assert rebuilt == "$x"


def test_data_settings_never_reach_monai_as_expressions(tmp_path):
    # a data root, a class name and an output folder beginning with "$" (or "@") from a file nobody checked
    marker = tmp_path / "MARKER"
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "train.json").write_text(
        json.dumps(
            {
                "data_root": "",
                "classes": [],
                "output_dir": "",
                "run": "$print('GOT', repr((@data_root, @classes, @output_dir)))",
            }
        )
    )
    values = {"data_root": _marker_code(marker), "classes": ["benign", _marker_code(marker)], "output_dir": "@run"}
    cmd = bundle_command(bundle, "run", ["train.json"], values)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("GOT"))
    assert line == "GOT " + repr((values["data_root"], values["classes"], "@run"))
    assert not marker.exists()


def test_a_manifest_that_is_not_text_is_named(tmp_path):
    path = tmp_path / "scan.json"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00")
    with pytest.raises(ManifestError, match=r"scan\.json: not a manifest \(not UTF-8 text"):
        Manifest.load(path)
