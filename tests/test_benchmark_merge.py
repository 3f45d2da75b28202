"""Merging the benchmark folders of bundles that train the same network into one table."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from monai_ssl_ext.benchmark import BenchmarkSpec, run_benchmark
from monai_ssl_ext.benchmark.harness import load_results, save_results
from monai_ssl_ext.benchmark.merge import merge_results
from monai_ssl_ext.metrics.predictions import save_predictions

CLASSES = ["benign", "malignant"]
LABELS = np.array([0, 1] * 20)


def _probs(seed: int) -> np.ndarray:
    p1 = np.random.default_rng(seed).uniform(0.05, 0.95, size=len(LABELS)).astype(np.float32)
    return np.stack([1 - p1, p1], axis=1)


def _bench(folder: Path, bundle: str, runs: dict[str, int]) -> Path:
    """A benchmark folder of ``bundle``: one seed-0 run per algorithm, its test probabilities from an RNG seed."""
    records = []
    for algorithm, rng_seed in runs.items():
        run_dir = folder / "data" / "labels16" / algorithm / "seed0"
        save_predictions(run_dir / "eval_test" / "predictions.json", _probs(rng_seed), LABELS, CLASSES)
        records.append(
            {
                "bundle": bundle,
                "algorithm": algorithm,
                "dataset": "data",
                "labels": 16,
                "seed": 0,
                "profile": "cpu",
                "metrics": {"accuracy": 0.5 + rng_seed / 100},
                "run_dir": str(run_dir),
                "eval_dir": str(run_dir / "eval_test"),
            }
        )
    save_results(folder / "results.json", records)
    return folder


def test_merge_keeps_a_repeated_identical_run_once_and_compares_every_method_in_one_table(tmp_path):
    a = _bench(tmp_path / "a", "method_a", {"supervised": 1, "fixmatch": 2, "method_a": 3})
    b = _bench(tmp_path / "b", "method_b", {"supervised": 1, "method_b": 4})
    records = merge_results([a, b], tmp_path / "merged", baselines=["supervised", "fixmatch"])
    assert [r["algorithm"] for r in records] == ["supervised", "fixmatch", "method_a", "method_b"]
    assert {r["bundle"] for r in records} == {"method_a + method_b"}
    table = (tmp_path / "merged" / "results.md").read_text()
    assert table.count("## data, 16 labels") == 1  # one table, not one per bundle
    to_supervised = table.split("Difference to supervised-only")[1].split("Difference to fixmatch")[0]
    assert "| method_b | 0 |" in to_supervised and "| method_a | 0 |" in to_supervised
    assert "| method_b | 0 |" in table.split("Difference to fixmatch")[1]
    # the merged records point at the original runs, relative to the merged folder, and read back
    on_disk = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert on_disk[3]["run_dir"] == "../b/data/labels16/method_b/seed0"
    assert load_results(tmp_path / "merged" / "results.json")[3]["run_dir"] == str(
        tmp_path / "merged" / "../b/data/labels16/method_b/seed0"
    )


def test_merge_refuses_bundles_whose_shared_run_predicts_differently(tmp_path):
    a = _bench(tmp_path / "a", "method_a", {"supervised": 1, "method_a": 3})
    b = _bench(tmp_path / "b", "method_b", {"supervised": 5, "method_b": 4})
    with pytest.raises(ValueError, match=r"supervised seed 0: .* predict the test images differently"):
        merge_results([a, b], tmp_path / "merged")
    assert not (tmp_path / "merged" / "results.md").exists()


def test_merge_refuses_a_folder_that_shares_no_run(tmp_path):
    a = _bench(tmp_path / "a", "method_a", {"supervised": 1})
    b = _bench(tmp_path / "b", "method_b", {"method_b": 4})
    with pytest.raises(ValueError, match="shares no run"):
        merge_results([a, b], tmp_path / "merged")
    with pytest.raises(FileNotFoundError, match=r"no results\.json"):
        merge_results([a, tmp_path / "missing"], tmp_path / "merged")


def test_an_ablation_folder_is_merged_under_its_variant_name_and_paired_with_the_method(tmp_path):
    main = _bench(tmp_path / "main", "hermes_busi", {"supervised": 1, "hermes": 3})
    # the same algorithm retrained with the bundle's settings changed: its own folder, no shared run
    ablation = _bench(tmp_path / "ablation", "hermes_busi", {"hermes": 6})
    with pytest.raises(ValueError, match="predict the test images differently"):
        merge_results([main, ablation], tmp_path / "merged")  # unnamed, it would pass for the method's own run
    records = merge_results(
        [main, ablation], tmp_path / "merged", baselines=["supervised", "hermes"],
        variants={str(ablation): "one_optimizer"},
    )  # fmt: skip
    assert [r["algorithm"] for r in records] == ["supervised", "hermes", "hermes (one_optimizer)"]
    table = (tmp_path / "merged" / "results.md").read_text()
    assert "| hermes (one_optimizer) | 0 |" in table.split("Difference to hermes")[1]
    with pytest.raises(ValueError, match="variant names for folders not merged"):
        merge_results([main, ablation], tmp_path / "merged", variants={str(tmp_path / "other"): "x"})
    with pytest.raises(ValueError, match="must not be empty"):
        merge_results([main, ablation], tmp_path / "merged", variants={str(ablation): ""})


def test_an_unnamed_folder_of_the_same_bundle_still_needs_a_shared_run(tmp_path):
    # seeds 1-2 of an ablation merged unnamed would pass for the method's own runs
    main = _bench(tmp_path / "main", "hermes_busi", {"supervised": 1, "hermes": 3})
    ablation = _bench(tmp_path / "ablation", "hermes_busi", {"hermes_pixel_rule_and": 6})
    with pytest.raises(ValueError, match=r"shares no run .* NAME=FOLDER"):
        merge_results([main, ablation], tmp_path / "merged")
    save_results(tmp_path / "empty" / "results.json", [])
    with pytest.raises(ValueError, match="holds no runs"):
        merge_results([main, tmp_path / "empty"], tmp_path / "merged")


def test_a_named_folder_must_be_of_a_bundle_given_before_it(tmp_path):
    main = _bench(tmp_path / "main", "hermes_busi", {"supervised": 1, "hermes": 3})
    other = _bench(tmp_path / "other", "semise_busi", {"semise": 6})
    with pytest.raises(ValueError, match=r"must hold runs of a bundle given before it \(hermes_busi\), not of semise"):
        merge_results([main, other], tmp_path / "merged", variants={str(other): "x"})


def test_the_command_line_takes_an_ablation_folder_as_name_equals_folder(tmp_path, monkeypatch):
    from monai_ssl_ext.cli import Commands

    main = _bench(tmp_path / "main", "hermes_busi", {"supervised": 1, "hermes": 3})
    _bench(tmp_path / "ablation", "hermes_busi", {"hermes": 6})
    monkeypatch.chdir(tmp_path)
    Commands.benchmark_merge("main", "one_optimizer=ablation", output="merged")
    names = [r["algorithm"] for r in load_results(tmp_path / "merged" / "results.json")]
    assert names == ["supervised", "hermes", "hermes (one_optimizer)"]
    for entries, message in [
        (("main", "=ablation"), "both non-empty"),
        (("main", "x="), "both non-empty"),
        (("main", "one=ablation", "two=ablation"), "given twice"),
    ]:
        with pytest.raises(ValueError, match=message):
            Commands.benchmark_merge.__wrapped__(*entries, output="merged2")
    assert main.is_dir() and not (tmp_path / "merged2").exists()


def test_benchmark_refuses_an_output_folder_holding_another_bundles_runs(tmp_path):
    _bench(tmp_path / "bench", "hermes_busi", {"supervised": 1})
    spec = BenchmarkSpec(
        bundle="baselines_ultrasound",
        algorithms=["supervised"],
        seeds=[0],
        labels=16,
        profile="smoke",
        datalist="synthetic",
        output_dir=str(tmp_path / "bench"),
    )
    with pytest.raises(ValueError, match="holds runs of the bundle hermes_busi, not baselines_ultrasound"):
        run_benchmark(spec)


def test_a_second_benchmark_on_the_same_folder_is_refused_while_the_first_writes(tmp_path):
    from monai_ssl_ext.benchmark.harness import OutputFolderBusyError, only_writer

    spec = BenchmarkSpec(bundle="baselines_ultrasound", algorithms=["supervised"], seeds=[0], labels=16,
                         profile="smoke", datalist="synthetic", output_dir=str(tmp_path / "bench"))  # fmt: skip
    (tmp_path / "bench").mkdir()
    busy = rf"another benchmark \(pid {os.getpid()}\) is writing"
    with only_writer(tmp_path / "bench"), pytest.raises(OutputFolderBusyError, match=busy):  # the first one runs
        run_benchmark(spec)
    assert not (tmp_path / "bench" / "results.json").exists()
