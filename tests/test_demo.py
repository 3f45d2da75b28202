"""``monai-ssl demo``: supervised-only and a semi-supervised method on one generated labeled subset, compared."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from monai_ssl_ext.cli import main


@pytest.mark.slow
def test_demo_trains_both_on_one_labeled_subset_and_prints_the_difference(tmp_path, capsys):
    tiny = ["--num_images", "60", "--render_size", "48", "--labels", "16", "--image_size", "32"]
    schedule = ["--num_iterations", "4", "--val_interval", "2", "--unlabeled_batch_size", "8"]
    main(["demo", "--output", str(tmp_path), "--seed", "3", *tiny, *schedule])
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "difference, points [95 % interval]" in line)
    assert header.split()[:2] == ["supervised", "fixmatch"]
    rows = [line for line in out.splitlines() if line.split()[:1] in (["accuracy"], ["macro_f1"], ["auc"])]
    assert len(rows) == 3 and all("[" in r and "]" in r for r in rows)
    records = json.loads((tmp_path / "results.json").read_text())
    assert sorted((r["algorithm"], r["seed"], r["labels"]) for r in records) == [
        ("fixmatch", 3, 16),
        ("supervised", 3, 16),
    ]
    # both runs trained on the same labeled subset, the one seed 3 draws
    splits = [
        json.loads(
            (tmp_path / "synthetic_ultrasound" / "labels16" / a / "seed3" / "models" / "train_config.json").read_text()
        )
        for a in ("supervised", "fixmatch")
    ]
    assert splits[0]["split_seed"] == splits[1]["split_seed"] == 3 and splits[0]["label_budget"] == 16
    assert (tmp_path / "comparison_curves.png").stat().st_size > 0
    assert (tmp_path / "data" / "synthetic_ultrasound" / "datalist.json").is_file()


@pytest.mark.slow
def test_the_demo_defaults_gain_over_supervised_only_pooled_over_three_seeds(tmp_path):
    """The README's command, as a new user runs it, for the first three seeds of docs/benchmarks.md.

    One thread per run, as the documented figures were measured (PyTorch's CPU kernels are not bit-identical
    across thread counts); the three seeds run side by side, each in its own folder. Measured there: AUC
    +4.00, +2.38 and -1.11 points, pooled +1.76 [+0.12, +3.47]; the test asks for the direction on the pool and
    on two seeds of three, not for the interval's last decimals, which another processor's arithmetic could move.
    """
    from monai_ssl_ext.metrics.paired import paired_difference_over_seeds

    seeds = (0, 1, 2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = {s: tmp_path / f"seed{s}.log" for s in seeds}
    demos = {}
    for s in seeds:
        command = ["demo", "--output", str(tmp_path / f"seed{s}"), "--seed", str(s)]
        with logs[s].open("w") as log:  # a file, not a pipe: a full pipe would stall a demo
            demos[s] = subprocess.Popen(
                [sys.executable, "-m", "monai_ssl_ext.cli", *command], env=env, stdout=log, stderr=subprocess.STDOUT
            )
    for s, demo in demos.items():
        assert demo.wait() == 0, logs[s].read_text()[-2000:]
    run = "{root}/seed{seed}/synthetic_ultrasound/labels42/{algorithm}/seed{seed}/eval_test"
    difference = paired_difference_over_seeds(
        [run.format(root=tmp_path, seed=s, algorithm="fixmatch") for s in seeds],
        [run.format(root=tmp_path, seed=s, algorithm="supervised") for s in seeds],
        ["auc"],
    )["auc"]
    # FixMatch ahead of supervised-only on the same labeled subsets: on the pool and on most seeds
    assert difference.estimate > 0.005, difference
    assert sum(d > 0 for d in difference.per_seed) >= 2, difference
