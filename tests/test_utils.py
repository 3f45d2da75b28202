"""Atomic writers (no partial files, no leftovers) and derived seeds."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_ssl_ext.utils import atomic as atomic_module
from monai_ssl_ext.utils import (
    atomic_open,
    derive_seed,
    finish_process_group,
    save_torch,
    seed_everything,
    write_json,
    write_text,
)
from monai_ssl_ext.utils import distributed as distributed_module


def _names(folder):
    return sorted(p.name for p in Path(folder).iterdir())


# ---------------------------------------------------------------- atomic writers


def test_write_json_creates_file_without_leftovers(tmp_path):
    path = tmp_path / "metrics.json"
    data = {"auc": np.float32(0.75), "counts": np.array([1, 2]), "where": Path("/x"), "t": torch.tensor(3)}
    assert write_json(path, data) == path
    assert _names(tmp_path) == ["metrics.json"]
    assert json.loads(path.read_text()) == {"auc": 0.75, "counts": [1, 2], "where": "/x", "t": 3}
    assert path.read_text().endswith("\n")


def test_write_json_allows_nan(tmp_path):
    path = write_json(tmp_path / "nan.json", {"ece": float("nan")})
    assert math.isnan(json.loads(path.read_text())["ece"])


def test_write_text_creates_parents_and_file(tmp_path):
    path = tmp_path / "a" / "b" / "notes.txt"
    assert write_text(path, "héllo\nworld") == path
    assert path.read_text(encoding="utf-8") == "héllo\nworld"
    assert _names(path.parent) == ["notes.txt"]


def test_write_text_file_mode_follows_umask(tmp_path):
    path = write_text(tmp_path / "mode.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_save_torch_round_trip(tmp_path):
    path = tmp_path / "ckpt.pt"
    state = {"weight": torch.arange(6.0).view(2, 3), "step": 5}
    assert save_torch(state, path) == path
    assert _names(tmp_path) == ["ckpt.pt"]
    loaded = torch.load(path, weights_only=True)
    assert loaded["step"] == 5
    assert torch.equal(loaded["weight"], state["weight"])


def test_overwrite_replaces_content(tmp_path):
    path = tmp_path / "out.json"
    write_json(path, {"v": 1})
    write_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 2}
    assert _names(tmp_path) == ["out.json"]


def test_write_json_failure_keeps_previous_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"auc": 0.5})
    before = path.read_bytes()
    # the first entries are written before the unserialisable one is reached
    with pytest.raises(TypeError, match="object is not JSON serialisable"):
        write_json(path, {"auc": 0.9, "a_long_list": list(range(1000)), "bad": object()})
    assert path.read_bytes() == before
    assert _names(tmp_path) == ["metrics.json"]


def test_write_json_failure_without_previous_file_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        write_json(tmp_path / "new.json", {"bad": {1, 2}})
    assert _names(tmp_path) == []


def test_write_text_failure_keeps_previous_file(tmp_path):
    path = write_text(tmp_path / "log.txt", "old")
    with pytest.raises(TypeError):
        write_text(path, b"bytes are not text")
    assert path.read_text() == "old"
    assert _names(tmp_path) == ["log.txt"]


def test_save_torch_failure_mid_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_torch({"step": 1}, path)
    before = path.read_bytes()

    def broken_save(obj, f):
        Path(f).write_bytes(b"partial checkpoint")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_torch({"step": 2}, path)
    assert path.read_bytes() == before
    assert _names(tmp_path) == ["ckpt.pt"]


def test_failed_replace_leaves_no_temp_file(tmp_path, monkeypatch):
    path = write_text(tmp_path / "keep.txt", "old")

    def refuse(src, dst):
        raise OSError("cross-device link")

    monkeypatch.setattr(atomic_module.os, "replace", refuse)
    with pytest.raises(OSError, match="cross-device"):
        write_text(path, "new")
    assert path.read_text() == "old"
    assert _names(tmp_path) == ["keep.txt"]


def test_atomic_open_is_invisible_until_the_block_exits(tmp_path):
    path = tmp_path / "stream.txt"
    with atomic_open(path) as f:
        f.write("partial")
        assert not path.exists()
        assert Path(f.name).parent == tmp_path
    assert path.read_text() == "partial"

    with pytest.raises(KeyError), atomic_open(path) as f:
        f.write("never seen")
        raise KeyError("boom")
    assert path.read_text() == "partial"
    assert _names(tmp_path) == ["stream.txt"]


# ---------------------------------------------------------------- seeds


def test_derive_seed_is_deterministic_and_32_bit():
    assert derive_seed(42, 3, 1) == derive_seed(42, 3, 1)
    seeds = [derive_seed(42, step, rank) for step in range(50) for rank in range(2)]
    assert all(isinstance(s, int) and 0 <= s < 2**32 for s in seeds)


def test_derive_seed_differs_for_nearby_inputs():
    seeds = {derive_seed(7, step) for step in range(1, 200)}
    assert len(seeds) == 199
    assert derive_seed(1, 2) != derive_seed(2, 1)
    assert derive_seed(1) != derive_seed(2)
    assert derive_seed(0, 1, 2) != derive_seed(0, 1, 3)
    # well mixed: consecutive inputs do not give consecutive or nearby outputs
    a, b = derive_seed(100, 5), derive_seed(100, 6)
    assert abs(a - b) > 1000
    assert bin(a ^ b).count("1") > 4


def test_derive_seed_trailing_zero_is_a_different_input():
    assert derive_seed(5, 0) != derive_seed(5)


@pytest.fixture
def _restore_global_rngs():
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    yield
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.random.set_rng_state(states[2])


@pytest.mark.usefixtures("_restore_global_rngs")
def test_seed_everything_reseeds_all_generators():
    seed_everything(123)
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(123)
    again = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(124)
    other = (random.random(), np.random.rand(), torch.rand(1).item())
    assert first == again
    assert all(x != y for x, y in zip(first, other, strict=True))


@pytest.mark.parametrize("rank, ends_process", [(0, False), (1, True)])
def test_finish_process_group_waits_destroys_and_ends_every_rank_but_0(monkeypatch, rank, ends_process):
    calls: list[str] = []
    dist = distributed_module.dist
    monkeypatch.setattr(distributed_module, "is_dist", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(dist, "get_rank", lambda: rank)
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroy_process_group"))
    monkeypatch.setattr(distributed_module.os, "_exit", lambda code: calls.append(f"exit {code}"))
    finish_process_group()
    assert calls == ["barrier", "destroy_process_group"] + (["exit 0"] if ends_process else [])


def test_finish_process_group_does_nothing_without_dist():
    assert not distributed_module.is_dist()
    finish_process_group()  # no process group: no barrier to wait at, the process goes on
