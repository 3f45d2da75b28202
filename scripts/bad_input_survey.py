"""Try bad inputs through the ``monai-ssl`` commands as a hospital user would, and count how each is met.

Each case builds one bad input from the generated data set (a manifest cell, an image, a weights file, a
command line), runs the command a user would run and sorts the outcome:

- ``clear``: the command fails with one line on stderr that names the file or setting, and no traceback;
- ``warned``: (cases where the data may be right) the run goes on and a line names the file;
- ``traceback``: a traceback reached the user; ``silent``: nothing said; ``code ran``: a marker file was made.

Run from the repository root with the package installed (a few minutes on two cores):

    python scripts/bad_input_survey.py [work folder]

It prints a line per case and the tally ``bad inputs tried N, clear errors N, ...``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from monai_ssl_ext.data.synthetic import ensure_synthetic_dataset

TINY = ["--profile", "smoke", "--image_size", "32", "--num_iterations", "2", "--val_interval", "2"]
TINY += ["--labeled_batch_size", "4", "--unlabeled_batch_size", "8", "--num_workers", "0"]


@dataclass
class Case:
    name: str
    args: list[str]
    token: str  # what the line must name (a file name or a setting)
    expect: str = "error"  # "error", "warning" or "help"
    marker: Path | None = None


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _monai_ssl(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai_ssl_ext.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _outcome(case: Case, run: subprocess.CompletedProcess) -> str:
    text = run.stdout + run.stderr
    if case.marker is not None and case.marker.exists():
        return "code ran"
    if "Traceback (most recent call last)" in text:
        return "traceback"
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    if case.expect == "help":
        shown = "SYNOPSIS" in text or "usage" in text.lower()  # Fire's help page (on stderr), and nothing run
        return "clear" if run.returncode == 0 and shown and "[train]" not in text else "silent"
    if case.expect == "warning":
        named = [line for line in text.splitlines() if case.token in line and "warn" in line.lower()]
        return "warned" if run.returncode == 0 and named else ("clear" if run.returncode == 2 else "silent")
    if run.returncode == 0:
        return "silent"
    return "clear" if len(lines) == 1 and case.token in lines[0] else f"unclear ({len(lines)} lines)"


def _cases(work: Path) -> list[Case]:
    manifest_path = ensure_synthetic_dataset(work / "data", num_images=40, image_size=48)
    root = manifest_path.parent
    base = json.loads(manifest_path.read_text())
    train = ["train", "--data_root", str(root), *TINY]

    def manifest(name: str, edit: Callable[[dict], None]) -> Path:
        data = json.loads(json.dumps(base))
        edit(data)
        path = work / f"{name}.json"
        path.write_text(json.dumps(data))
        return path

    def image(name: str, array: np.ndarray) -> str:
        (root / "bad").mkdir(exist_ok=True)
        Image.fromarray(array).save(root / "bad" / name)
        return f"bad/{name}"

    def entry(data: dict, split: str = "training", **values) -> None:
        data[split][0].update(values)

    small_mask = image("small_mask.png", np.zeros((24, 24), np.uint8))  # half size, same aspect
    empty_lesion = image("empty_mask.png", np.zeros((48, 48), np.uint8))
    nan_file = root / "bad" / "nan.tif"
    Image.fromarray(np.full((48, 48), np.nan, np.float32)).save(nan_file)
    corrupt = root / "bad" / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16)

    marker = work / "code_ran"
    unsafe = work / "unsafe.pt"
    torch.save({"network": _RunsCode(str(marker)), "w": torch.zeros(1)}, unsafe)
    truncated = work / "truncated.pt"
    torch.save({"w": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])

    # a trained model for the inference and export cases
    model_dir = work / "trained"
    reference = ["--datalist", str(manifest_path), "--ckpt_dir", str(model_dir), "--output_dir", str(work / "run")]
    ok = _monai_ssl([*train, *reference], work)
    if ok.returncode != 0:
        raise SystemExit(f"the reference training failed:\n{ok.stderr[-2000:]}")
    checkpoint = model_dir / "model.pt"
    export_dir = work / "export"
    export_dir.mkdir(exist_ok=True)
    shutil.copy(root / base["test"][0]["image"], export_dir / "good.png")
    shutil.copy(corrupt, export_dir / "corrupt.png")

    # every mask is read: all images labeled, so a run of supervised-only
    segmenting = ("--bundle", "hermes_ultrasound", "--label_budget", "1.0", "--algorithm", "supervised")

    def train_with(path: Path, *extra: str) -> list[str]:
        return [*train, "--datalist", str(path), "--output_dir", str(work / "runs" / path.stem), *extra]

    cases = [
        Case("label 1.7", train_with(manifest("label_frac", lambda d: entry(d, label=1.7))), "label_frac.json"),
        Case("label true", train_with(manifest("label_bool", lambda d: entry(d, label=True))), "label_bool.json"),
        Case("label unknown class", train_with(manifest("label_name", lambda d: entry(d, label="cyst"))), "cyst"),
        Case("label out of range", train_with(manifest("label_range", lambda d: entry(d, label=7))), "label_range"),
        # masks are read by the bundles that segment
        Case(
            "mask half size",
            train_with(manifest("mask_small", lambda d: entry(d, mask=small_mask)), *segmenting),
            "small_mask",
        ),
        Case(
            "empty lesion mask",
            train_with(manifest("mask_empty", lambda d: entry(d, mask=empty_lesion)), *segmenting),
            "empty_mask",
            expect="warning",
        ),
        Case("NaN pixels", train_with(manifest("nan", lambda d: entry(d, image="bad/nan.tif"))), "nan.tif"),
        Case(
            "corrupt image", train_with(manifest("corrupt", lambda d: entry(d, image="bad/corrupt.png"))), "corrupt.png"
        ),
        Case("missing image", train_with(manifest("missing", lambda d: entry(d, image="images/none.png"))), "none.png"),
        Case("empty validation split", train_with(manifest("no_val", lambda d: d.update(validation=[]))), "no_val"),
        Case(
            "manifest name $",
            train_with(manifest("name_expr", lambda d: d.update(name=f"$__import__('os').system('touch {marker}')"))),
            "name_expr",
            marker=marker,
        ),
        Case("manifest name ../", train_with(manifest("name_up", lambda d: d.update(name="../../outside"))), "name_up"),
        Case("manifest not JSON", train_with(Path(shutil.copy(corrupt, work / "broken.json"))), "broken.json"),
        Case("manifest missing", train_with(work / "nowhere.json"), "nowhere.json"),
        Case("data root missing", [*train_with(manifest_path), "--data_root", str(work / "no_root")], "no_root"),
        Case("misspelled setting", [*train_with(manifest_path), "--algoritm_name", "flexmatch"], "algoritm_name"),
        Case("unknown algorithm", [*train_with(manifest_path), "--algorithm", "fixmach"], "fixmach"),
        Case("label budget 2.5", ["split", str(manifest_path), "2.5"], "2.5"),
        Case("label budget too large", [*train_with(manifest_path), "--label_budget", "10000"], "10000"),
        Case(
            "unsafe pretrained weights",
            [*train_with(manifest_path), "--pretrained_weights", str(unsafe)],
            "unsafe.pt",
            marker=marker,
        ),
        Case("unsafe resume", [*train_with(manifest_path), "--resume_from", str(unsafe)], "unsafe.pt", marker=marker),
        Case("truncated resume", [*train_with(manifest_path), "--resume_from", str(truncated)], "truncated.pt"),
        Case(
            "resume with other settings",
            [*train_with(manifest_path), "--ckpt_dir", str(model_dir), "--resume_from", "latest", "--image_size", "48"],
            "image_size",
        ),
        Case(
            "unsafe inference checkpoint",
            ["infer", str(export_dir), "--checkpoint", str(unsafe)],
            "unsafe.pt",
            marker=marker,
        ),
        Case("unsafe export", ["export", str(unsafe), str(work / "x.ts")], "unsafe.pt", marker=marker),
        Case("missing inference checkpoint", ["infer", str(export_dir), "--checkpoint", str(work / "no.pt")], "no.pt"),
        Case(
            "corrupt file in an export",
            ["infer", str(export_dir), "--checkpoint", str(checkpoint), "--output", str(work / "infer_out")],
            "corrupt.png",
        ),
        Case("inference input missing", ["infer", str(work / "no_input"), "--checkpoint", str(checkpoint)], "no_input"),
        Case("inspect a corrupt file", ["inspect", str(corrupt)], "corrupt.png"),
        Case("demo --help", ["demo", "--help"], "", expect="help"),
        Case("train --help", ["train", "--help"], "", expect="help"),
        Case("infer --help", ["infer", "--help"], "", expect="help"),
        Case("benchmark --help", ["benchmark", "--help"], "", expect="help"),
    ]
    return cases


def main() -> None:
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="bad_inputs_"))
    work.mkdir(parents=True, exist_ok=True)
    cwd = Path.cwd()
    cases = _cases(work)
    tally: dict[str, int] = {}
    for n, case in enumerate(cases, 1):
        run = _monai_ssl(case.args, cwd)
        outcome = _outcome(case, run)
        tally[outcome] = tally.get(outcome, 0) + 1
        shown = (run.stderr.strip().splitlines() or [""])[-1][:150]
        print(f"[{n}/{len(cases)}] {case.name}: {outcome} | {shown}", flush=True)
    tracebacks = tally.get("traceback", 0)
    print(
        f"bad inputs tried {len(cases)}, clear errors {tally.get('clear', 0)}, warned {tally.get('warned', 0)}, "
        f"tracebacks {tracebacks}, silent {tally.get('silent', 0)}, unclear "
        f"{sum(v for k, v in tally.items() if k.startswith('unclear'))}, code ran {tally.get('code ran', 0)}"
    )


if __name__ == "__main__":
    main()
