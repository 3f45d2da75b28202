"""A training run killed at many points, inside checkpoint writes included, resumes to the same weights.

The bundle's training workflow runs as its own process (``python -m monai.bundle run``) and is killed with
SIGKILL by its pid at points chosen in turn: while a periodic checkpoint is being written, while the best
model is being written, and right after a checkpoint is complete (mid-epoch). Each time the same command is
started again with ``resume_from="latest"``. The final checkpoint and the best model must equal those of an
uninterrupted run, tensor for tensor.

So that the writes can be caught, ``torch.save`` is slowed in the training process (a ``sitecustomize``
module on its ``PYTHONPATH``): it writes the whole file, then waits before returning, while the file is
still the ``.partial`` one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from monai_ssl_ext.bundle.runner import bundle_command, find_bundle
from monai_ssl_ext.data.synthetic import ensure_synthetic_dataset

pytestmark = pytest.mark.slow

EPOCHS = 20
FAULTS = 24  # injected at most; at least 20 must have happened
WRITE_PAUSE_S = 0.4
SLOW_SAVE = f"""
import time
import torch

_save = torch.save


def _slow_save(obj, f, *args, **kwargs):
    _save(obj, f, *args, **kwargs)
    time.sleep({WRITE_PAUSE_S})


torch.save = _slow_save
"""


def _command(data: Path, ckpt_dir: Path, out_dir: Path, resume: bool) -> list[str]:
    overrides = {
        "datalist": str(data),
        "data_root": str(data.parent),
        "ckpt_dir": str(ckpt_dir),
        "output_dir": str(out_dir),
        "algorithm_name": "fixmatch",  # the richest state: teacher-free but thresholds, EMA evaluation off
        "image_size": 32,
        "num_workers": 0,
        "labeled_batch_size": 4,
        "unlabeled_batch_size": 8,
        "num_iterations": 2 * EPOCHS,
        "val_interval": 2,
        "resume_from": "latest" if resume else None,
    }
    bundle = find_bundle("baselines_ultrasound")
    return bundle_command(bundle, "training", ["train.json", "profiles/smoke.json"], overrides)


def _env(slow_save_dir: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(slow_save_dir), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _periodic(ckpt_dir: Path) -> list[int]:
    return sorted(int(p.stem.split("=")[1]) for p in ckpt_dir.glob("checkpoint_epoch=*.pt"))


def _kill_when(proc: subprocess.Popen, ckpt_dir: Path, point: str) -> str | None:
    """Poll until ``point`` is reached, then SIGKILL ``proc``; the point hit, or None when the run ended first.

    A run whose best model does not improve within two epochs is killed between epochs instead.
    """
    start_epochs = _periodic(ckpt_dir)
    while proc.poll() is None:
        partial = {p.name for p in ckpt_dir.glob(".*.partial")} if ckpt_dir.is_dir() else set()
        epochs = _periodic(ckpt_dir)
        progressed = max(epochs, default=0) - max(start_epochs, default=0)
        hit = None
        writing = any(n.startswith(".checkpoint_epoch=") for n in partial) if point == "checkpoint write" else False
        if writing or (point == "best model write" and ".model.pt.partial" in partial):
            hit = point
        elif point == "best model write" and progressed >= 2:
            hit = "between epochs"
        elif point == "mid-epoch" and progressed >= 1:
            time.sleep(0.3)  # into the next epoch's iterations
            hit = point
        if hit:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return hit
        time.sleep(0.005)
    return None


def test_training_killed_at_many_points_resumes_to_the_same_weights(tmp_path):
    data = ensure_synthetic_dataset(tmp_path / "data", num_images=40, image_size=40)
    slow = tmp_path / "slow_save"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(SLOW_SAVE)

    reference = tmp_path / "reference"
    subprocess.run(
        _command(data, reference / "models", reference / "run", resume=False),
        env=_env(slow),
        check=True,
        capture_output=True,
    )

    ckpt_dir = tmp_path / "faulted" / "models"
    points = ["checkpoint write", "best model write", "mid-epoch"]
    faults: dict[str, int] = {}
    for attempt in range(200):
        resume = bool(_periodic(ckpt_dir))
        log = open(tmp_path / f"attempt{attempt}.log", "w")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            _command(data, ckpt_dir, tmp_path / "faulted" / "run", resume),
            env=_env(slow),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        # each round of the three points makes at least one epoch of progress (mid-epoch); after FAULTS, none
        hit = _kill_when(proc, ckpt_dir, points[attempt % len(points)]) if sum(faults.values()) < FAULTS else None
        if hit is None:
            proc.wait()
        log.close()
        if hit:
            faults[hit] = faults.get(hit, 0) + 1
            continue
        assert proc.returncode == 0, (tmp_path / f"attempt{attempt}.log").read_text()[-3000:]
        break
    survived = sum(faults.values())
    print(f"faults survived {survived}/{survived}: {faults}")
    assert survived >= 20 and all(faults.get(p) for p in points), faults

    for name in (f"checkpoint_epoch={EPOCHS}.pt", "model.pt"):
        expected = torch.load(reference / "models" / name, weights_only=True)
        got = torch.load(ckpt_dir / name, weights_only=True)
        for key in ("network", "optimizer", "algorithm", "trainer") if name != "model.pt" else ("",):
            want, have = (expected[key], got[key]) if key else (expected, got)
            message = f"{name} {key} differs from the uninterrupted run"
            torch.testing.assert_close(have, want, rtol=0, atol=0, msg=message)
    # nothing left behind: one periodic checkpoint (n_saved=1), the best model, no partial file
    assert sorted(p.name for p in ckpt_dir.iterdir() if p.suffix in (".pt", ".partial")) == [
        f"checkpoint_epoch={EPOCHS}.pt",
        "model.pt",
    ]
    assert not list(ckpt_dir.glob(".*"))
