"""``monai-ssl demo``: supervised-only and a semi-supervised method on one generated labeled subset, compared."""

from __future__ import annotations

import json

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
def test_the_demo_defaults_gain_over_supervised_only_pooled_over_three_seeds(tmp_path, monkeypatch):
    """The README's command, as a new user runs it, for the first three seeds of docs/benchmarks.md.

    One thread per run, as the documented figures were measured (PyTorch's CPU kernels are not bit-identical
    across thread counts). Measured there: AUC +4.00, +2.38 and -1.11 points, pooled +1.76 [+0.12, +3.47]; the
    test asks for the direction on the pool and on two seeds of three, not for the interval's last decimals,
    which another processor's arithmetic could move.
    """
    from monai_ssl_ext.metrics.paired import paired_difference_over_seeds

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    seeds = (0, 1, 2)
    for seed in seeds:
        main(["demo", "--output", str(tmp_path), "--seed", str(seed)])
    run = tmp_path / "synthetic_ultrasound" / "labels42" / "{}" / "seed{}" / "eval_test"
    difference = paired_difference_over_seeds(
        [str(run).format("fixmatch", s) for s in seeds], [str(run).format("supervised", s) for s in seeds], ["auc"]
    )["auc"]
    # FixMatch ahead of supervised-only on the same labeled subsets: on the pool and on most seeds
    assert difference.estimate > 0.005, difference
    assert sum(d > 0 for d in difference.per_seed) >= 2, difference
