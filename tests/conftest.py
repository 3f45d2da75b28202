"""Shared test configuration: the ``--slow`` switch, the location of the real data, and small helpers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

# the bundle tests' shared checks (tests/bundle_helpers.py) report their values on failure, as a test module's do
pytest.register_assert_rewrite("bundle_helpers")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow test: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module of tiny-tensor tests: avoids thread-pool contention on a shared CPU."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundles' default data, once a module: the generated greyscale ultrasound-like set of two classes (benign,
    malignant), 40 images of 48 px; returns its manifest. A module that wants another set defines its own."""
    from monai_ssl_ext.data.synthetic import ensure_synthetic_dataset

    return ensure_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), num_images=40, image_size=48)


def run_two_ranks(script: str, work_dir: Path, timeout: float = 120) -> list:
    """Run ``script`` as two processes (argv: rank, work_dir, a free TCP port) and fail with their stderr.

    Returns what each rank wrote as JSON to ``work_dir/rank<r>.json`` (``None`` for a rank that wrote none)."""
    import os
    import socket
    import subprocess
    import sys

    path = work_dir / "worker.py"
    path.write_text(script)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, str(path), str(r), str(work_dir), port], env=env, stderr=subprocess.PIPE)
        for r in (0, 1)
    ]
    errors = [p.communicate(timeout=timeout)[1].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    written = [work_dir / f"rank{r}.json" for r in (0, 1)]
    return [json.loads(path.read_text()) if path.is_file() else None for path in written]


def export_torchscript(bundle: Path, ckpt: Path, ts: Path, **overrides: object) -> None:
    """``python -m monai.bundle ckpt_export network_def`` of a bundle's inference config, as its README shows."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts)]
    cmd += ["--ckpt_file", str(ckpt), "--meta_file", str(bundle / "configs" / "metadata.json")]
    cmd += ["--config_file", str(bundle / "configs" / "inference.json"), "--bundle_root", str(bundle)]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    subprocess.run(cmd, check=True, capture_output=True)


def shared_data(*parts: str) -> Path:
    """A path under ``../shared/data``; skips the calling test with a reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent (tests read ../shared/data beside the repository)")
    return path


def three_class_batches(seed: int) -> tuple[dict, dict]:
    """One step's random batches for an algorithm of three classes, from a generator seeded with ``seed``: labeled,
    4 RGB 32 px images of classes 0, 1, 2, 0; unlabeled, 6 images with a weak and a strong view and indices 0-5."""
    import torch

    g = torch.Generator().manual_seed(seed)
    labeled = {"image": torch.rand(4, 3, 32, 32, generator=g), "label": torch.tensor([0, 1, 2, 0])}
    unlabeled = {
        "image_weak": torch.rand(6, 3, 32, 32, generator=g),
        "image_strong": torch.rand(6, 3, 32, 32, generator=g),
        "index": torch.arange(6),
    }
    return labeled, unlabeled


def train_steps(algorithm: torch.nn.Module, net: torch.nn.Module, steps: range) -> list[float]:
    """Train ``net`` with a semi-supervised ``algorithm`` as the trainer does, and return each step's loss.

    Each step: the algorithm's ``train_step`` on the :func:`three_class_batches` of ``step``, a step of SGD (learning
    rate 0.01, one optimiser for the whole call) and the algorithm's ``after_optimizer_step`` (an EMA teacher's update,
    for example; a no-op for the algorithms without one).
    """
    import torch

    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    losses = []
    for step in steps:
        out = algorithm.train_step(net, *three_class_batches(step), step)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        algorithm.after_optimizer_step(net, step)
        losses.append(out.loss.item())
    return losses


def checkpoint_round_trip(state: dict) -> dict:
    """``state`` saved with ``torch.save`` and loaded back with ``weights_only=True``, as a checkpoint file holds it."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)


def check_resumes_exactly(
    algorithm: torch.nn.Module,
    net: torch.nn.Module,
    fresh_algorithm: Callable[[], torch.nn.Module],
    fresh_network: Callable[[], torch.nn.Module],
    steps: range,
) -> torch.nn.Module:
    """A checkpoint of a set-up ``algorithm``'s state and ``net``'s continues as the uninterrupted run does.

    Both states go through :func:`checkpoint_round_trip` into a fresh network and a fresh algorithm set up on it (10
    total steps, the 6 unlabeled images of :func:`three_class_batches`); :func:`train_steps` over ``steps`` must give
    the same losses for the resumed pair as for ``algorithm`` on a copy of ``net``. Returns the resumed algorithm.
    """
    import copy

    state = checkpoint_round_trip({"algorithm": algorithm.state_dict(), "network": net.state_dict()})
    resumed_net = fresh_network()
    resumed_net.load_state_dict(state["network"])
    resumed = fresh_algorithm()
    resumed.setup(resumed_net, total_steps=10, num_unlabeled=6)
    resumed.load_state_dict(state["algorithm"])
    original_net = copy.deepcopy(net)
    assert train_steps(resumed, resumed_net, steps) == train_steps(algorithm, original_net, steps)
    return resumed
