"""The benchmark harness, its tables, and how the ``monai-ssl`` command reports failures."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from monai_ssl_ext.benchmark import BenchmarkSpec, run_benchmark
from monai_ssl_ext.benchmark.harness import load_results
from monai_ssl_ext.benchmark.tables import mean_std, results_markdown
from monai_ssl_ext.bundle.runner import BundleRunError, root_cause, run_workflow
from monai_ssl_ext.data.synthetic import ensure_synthetic_dataset

REQUIRED_RECORD_KEYS = {
    "bundle",
    "algorithm",
    "dataset",
    "labels",
    "seed",
    "profile",
    "metrics",
    "train_images_per_s",
    "peak_memory_mb",
    "wall_s",
}


def test_mean_std_is_sample_std_over_finite_values():
    mean, std = mean_std([0.8, 0.9, 1.0, float("nan"), None])
    assert mean == pytest.approx(0.9) and std == pytest.approx(0.1)
    assert mean_std([0.5]) == (0.5, 0.0)
    assert all(math.isnan(v) for v in mean_std([float("nan")]))


def _record(algorithm: str, seed: int, accuracy: float, dice: float | None = None) -> dict:
    metrics = {"accuracy": accuracy, "balanced_accuracy": accuracy, "macro_f1": accuracy, "auc": accuracy}
    if dice is not None:
        metrics["dice"] = dice
    return {
        "bundle": "b",
        "algorithm": algorithm,
        "dataset": "d",
        "labels": 216,
        "seed": seed,
        "profile": "smoke",
        "metrics": metrics,
        "train_images_per_s": 10.0,
        "peak_memory_mb": 500.0,
        "wall_s": 120.0,
    }


def test_results_markdown_has_one_row_per_algorithm_with_mean_and_std():
    results = [_record("fixmatch", 0, 0.8), _record("fixmatch", 1, 0.9), _record("supervised", 0, 0.7)]
    text = results_markdown(results, command="monai-ssl benchmark --seeds 0,1")
    assert "monai-ssl benchmark --seeds 0,1" in text
    rows = [line for line in text.splitlines() if line.startswith("| fixmatch") or line.startswith("| supervised")]
    assert len(rows) == 2
    assert "| fixmatch | 0,1 | 85.00 ± 7.07 |" in rows[0]
    assert "| supervised | 0 | 70.00 ± 0.00 |" in rows[1]
    assert "Dice" not in text  # no segmentation metric in any run: no empty column
    assert "Dice" in results_markdown([_record("fixmatch", 0, 0.8, dice=0.7)])
    assert "Recall per class" not in text  # no run records it


def test_results_markdown_gives_severity_mae_in_levels_and_recall_per_class():
    runs = [_record("semise", 0, 0.8), _record("semise", 1, 0.6)]
    for run, mae, recalls in zip(runs, (0.25, 0.75), ((1.0, 0.5), (0.5, 0.5)), strict=True):
        run["metrics"]["severity_mae"] = mae
        run["per_class_recall"] = dict(zip(("benign", "malignant"), recalls, strict=True))
    text = results_markdown(runs)
    header = next(line for line in text.splitlines() if line.startswith("| Algorithm | Seeds"))
    assert header.split(" | ")[6] == "Severity MAE"
    row = next(line for line in text.splitlines() if line.startswith("| semise | 0,1"))
    assert row.split(" | ")[6] == "0.500 ± 0.354"  # levels, not %
    recall_rows = text.split("Recall per class (%):", 1)[1].splitlines()
    assert "| Algorithm | benign | malignant |" in recall_rows
    assert "| semise | 75.00 ± 35.36 | 50.00 ± 0.00 |" in recall_rows


def test_root_cause_skips_the_bundle_wrapper_and_keeps_the_message_lines():
    log = [
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "monai_ssl_ext.data.label_budget.LabelBudgetError: label budget 10000 is larger than the training split",
        "  (453 images).",
        "",
        "The above exception was the direct cause of the following exception:",
        "RuntimeError: Failed to evaluate ConfigExpression: ...",
    ]
    cause = root_cause(log)
    assert cause.startswith("monai_ssl_ext.data.label_budget.LabelBudgetError: label budget 10000")
    assert cause.endswith("(453 images).")
    assert root_cause(["RuntimeError: Failed to evaluate ConfigExpression"]) is None
    assert root_cause(["all good"]) is None


def test_failed_workflow_error_starts_with_the_cause_and_names_the_log(tmp_path):
    cmd = [sys.executable, "-c", "raise FileNotFoundError('Data root /x does not exist')"]
    with pytest.raises(BundleRunError) as err:
        run_workflow(cmd, tmp_path / "w.log")
    message = str(err.value)
    assert message.startswith("FileNotFoundError: Data root /x does not exist")
    assert str(tmp_path / "w.log") in message


def test_command_reports_input_errors_in_one_line_with_exit_status_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "monai_ssl_ext.cli", "split", str(tmp_path / "missing.json"), "--budget", "10"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "missing.json" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_benchmark_runs_every_algorithm_and_seed_and_resumes(tmp_path):
    data = ensure_synthetic_dataset(tmp_path / "data", num_images=60, image_size=48)
    spec = BenchmarkSpec(
        bundle="baselines_ultrasound",
        algorithms=["supervised", "fixmatch"],
        seeds=[0, 1],
        labels=16,
        profile="smoke",
        datalist=str(data),
        data_root=str(data.parent),
        output_dir=str(tmp_path / "bench"),
        overrides={"image_size": 32, "num_iterations": 4, "val_interval": 2, "unlabeled_batch_size": 8},
        command="monai-ssl benchmark (test)",
    )
    results = run_benchmark(spec)
    assert [(r["algorithm"], r["seed"]) for r in results] == [
        ("supervised", 0),
        ("supervised", 1),
        ("fixmatch", 0),
        ("fixmatch", 1),
    ]
    for record in results:
        assert record.keys() >= REQUIRED_RECORD_KEYS
        assert {"accuracy", "balanced_accuracy", "macro_f1", "auc"} <= record["metrics"].keys()
        assert set(record["per_class_recall"]) == {"benign", "malignant"}
        assert 0.0 <= record["metrics"]["accuracy"] <= 1.0
        assert record["train_images_per_s"] > 0 and record["peak_memory_mb"] > 0 and record["wall_s"] > 0
        assert record["labels"] == 16 and record["profile"] == "smoke"
    assert load_results(tmp_path / "bench" / "results.json") == results
    # on disk the run folders are relative to results.json, so the folder can move (or be versioned) and resume
    on_disk = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert on_disk[0]["run_dir"] == "synthetic_ultrasound/labels16/supervised/seed0"
    assert on_disk[0]["eval_dir"] == "synthetic_ultrasound/labels16/supervised/seed0/eval_test"
    table = (tmp_path / "bench" / "results.md").read_text()
    assert "| supervised | 0,1 |" in table and "| fixmatch | 0,1 |" in table
    assert "| fixmatch | 0,1 |" in table.split("Difference to supervised-only")[1]  # paired, from predictions.json
    # a repeated command skips the finished runs and leaves the records as they were
    again = run_benchmark(spec)
    assert again == results
    # moved elsewhere, it still resumes (nothing retrained) and finds every run's predictions
    (tmp_path / "bench").rename(tmp_path / "moved")
    spec.output_dir = str(tmp_path / "moved")
    moved = run_benchmark(spec)
    assert [r["wall_s"] for r in moved] == [r["wall_s"] for r in results]
    assert all(Path(r["eval_dir"]).parents[4] == tmp_path / "moved" for r in moved)
    assert (tmp_path / "moved" / "results.md").read_text() == table


def test_overrides_reach_the_bundle_with_their_python_types(tmp_path):
    # monai.bundle reads command-line values with Fire: JSON's true/null would arrive as strings ("false" is
    # truthy), and a plain None is ignored as "no override"
    from monai_ssl_ext.bundle.runner import _override_value

    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "flag": True,
                "off": True,
                "weights": "a.pt",
                "ratio": 0.1,
                "names": ["x"],
                "run": "$print('GOT', repr((@flag, @off, @weights, @ratio, @names)))",
            }
        )
    )
    import numpy as np

    values = {"flag": False, "off": True, "weights": None, "ratio": np.float64(0.25), "names": ["a", None, True]}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "run", "--config_file", str(config)]
    for key, value in values.items():
        cmd += [f"--{key}", _override_value(value)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("GOT"))
    assert line == "GOT (False, True, None, 0.25, ['a', None, True])"


def test_command_line_json_literals_become_python_values(monkeypatch, tmp_path):
    import monai_ssl_ext.bundle as bundle_api
    from monai_ssl_ext import cli

    seen = {}

    def command(bundle, workflow, profile, overlays, settings, nproc=1):
        seen.update(settings)
        return ["python"]

    monkeypatch.setattr(bundle_api, "workflow_command", command)
    monkeypatch.setattr(bundle_api, "run_workflow", lambda *a, **k: 0.0)
    monkeypatch.chdir(tmp_path)
    cli.main(["train", "--ema_eval", "false", "--pretrained_weights", "null", "--strong_view", "randaugment"])
    assert seen["ema_eval"] is False and seen["pretrained_weights"] is None and seen["strong_view"] == "randaugment"


def test_misspelled_setting_is_refused_with_the_closest_key(tmp_path, capsys):
    from monai_ssl_ext.bundle import UnknownSettingError, bundle_command, find_bundle
    from monai_ssl_ext.cli import main

    bundle = find_bundle("baselines_ultrasound")
    with pytest.raises(UnknownSettingError, match=r"unknown setting 'algoritm_name'.*did you mean 'algorithm_name'"):
        bundle_command(bundle, "training", ["train.json"], {"algoritm_name": "flexmatch"})
    # deeper components may name a class argument left at its Python default; the first one must exist
    bundle_command(bundle, "training", ["train.json"], {"algorithms#fixmatch#threshold": 0.9})
    bundle_command(bundle, "training", ["train.json"], {"tracking": "mlflow"})  # an argument of monai.bundle run
    with pytest.raises(UnknownSettingError, match="'algorithmz'"):
        bundle_command(bundle, "training", ["train.json"], {"algorithmz#fixmatch#threshold": 0.9})
    # through the command: one line, exit status 2, nothing trained
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--algoritm_name", "flexmatch", "--output_dir", str(tmp_path / "run")])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean 'algorithm_name'" in err[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_run_cut_off_mid_training_continues_from_its_checkpoint_to_the_uninterrupted_result(tmp_path):
    data = ensure_synthetic_dataset(tmp_path / "data", num_images=60, image_size=48)
    settings = {"image_size": 32, "num_iterations": 40, "val_interval": 2, "unlabeled_batch_size": 8}

    def spec(output: Path) -> BenchmarkSpec:
        return BenchmarkSpec(bundle="baselines_ultrasound", algorithms=["fixmatch"], seeds=[0], labels=16,
                             datalist=str(data), data_root=str(data.parent), output_dir=str(output),
                             overrides=dict(settings))  # fmt: skip

    whole = run_benchmark(spec(tmp_path / "whole"))[0]
    # the same benchmark from the command line, killed with its training once that has written a few checkpoints
    options = [f"--{k}={v}" for k, v in settings.items()]
    cmd = [sys.executable, "-m", "monai_ssl_ext.cli", "benchmark", "--bundle", "baselines_ultrasound",
           "--algorithms", "fixmatch", "--seeds", "0", "--labels", "16", "--datalist", str(data),
           "--data_root", str(data.parent), "--output", str(tmp_path / "cut"), *options]  # fmt: skip
    run_dir = tmp_path / "cut" / whole["dataset"] / "labels16" / "fixmatch" / "seed0"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while proc.poll() is None and not list((run_dir / "models").glob("checkpoint_epoch=[3-9].pt")):
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (run_dir / "train_summary.json").exists(), "the training ended before it could be cut off"
    assert not load_results(tmp_path / "cut" / "results.json")

    resumed = run_benchmark(spec(tmp_path / "cut"))[0]
    assert 6 <= resumed["resumed_at_iteration"] < 40 and resumed["iterations"] == 40
    assert resumed["metrics"] == whole["metrics"]  # the trainer's resume is exact
    assert resumed["wall_s"] > 0
    log = (run_dir / "train.log").read_text()
    assert log.count("$ ") == 2 and "resuming from" in log  # the cut-off attempt's log is kept
