"""Shared test configuration: the ``--slow`` switch and the location of the real data."""

from __future__ import annotations

from pathlib import Path

import pytest

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


def run_two_ranks(script: str, work_dir: Path, timeout: float = 120) -> None:
    """Run ``script`` as two processes (argv: rank, work_dir, a free TCP port) and fail with their stderr."""
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
