"""A failed run says what is wrong in one line: the monai-ssl commands, and the last line of a bundle run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from monai_ssl_ext.bundle import BundleRunError, bundle_command, find_bundle
from monai_ssl_ext.bundle.errors import _hook
from monai_ssl_ext.utils import innermost_cause


def _wrapped() -> BaseException:
    try:
        try:
            raise FileNotFoundError("Manifest not found: /data/site.json")
        except FileNotFoundError as e:
            raise RuntimeError("Failed to evaluate ConfigExpression: $load_manifest(...)") from e
    except RuntimeError as outer:
        return outer


def test_the_innermost_error_is_found_under_monai_s_wrappers():
    error = _wrapped()
    assert str(innermost_cause(error)) == "Manifest not found: /data/site.json"
    plain = ValueError("no wrapper")
    assert innermost_cause(plain) is plain


def test_the_hook_keeps_the_traceback_and_ends_with_the_cause(capsys):
    error = _wrapped()
    _hook(type(error), error, error.__traceback__)
    lines = capsys.readouterr().err.strip().splitlines()
    assert "Traceback (most recent call last):" in lines
    assert lines[-1] == "error: FileNotFoundError: Manifest not found: /data/site.json"


def test_a_failed_workflow_reads_as_its_cause_and_its_log():
    error = BundleRunError("long", "monai_ssl_ext.data.ManifestError: /d/m.json: label 1.7 ...", "/r/train.log", 1)
    assert error.one_line() == "/d/m.json: label 1.7 ... (full log: /r/train.log)"
    assert (
        BundleRunError("x", None, "/r/t.log", 3).one_line()
        == "the workflow failed with exit code 3 (full log: /r/t.log)"
    )


@pytest.mark.slow
def test_bad_input_is_one_line_from_the_command_and_the_last_line_of_the_bundle_run(tmp_path):
    missing = tmp_path / "site.json"
    # through monai.bundle: MONAI's traceback as it is, our line last
    cmd = bundle_command(find_bundle("baselines_ultrasound"), "training", ["train.json"], {"datalist": str(missing)})
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines()[-1] == f"error: FileNotFoundError: Manifest not found: {missing}"
    # through monai-ssl: one line on stderr, exit status 2, no traceback on either stream
    cli = [sys.executable, "-m", "monai_ssl_ext.cli", "train", "--datalist", str(missing)]
    cli += ["--output_dir", str(tmp_path / "run")]
    run = subprocess.run(cli, capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"monai-ssl train: error: Manifest not found: {missing} (full log: {tmp_path / 'run' / 'train.log'})"
    ]
    assert "Traceback" not in run.stdout and "Traceback" in (tmp_path / "run" / "train.log").read_text()
