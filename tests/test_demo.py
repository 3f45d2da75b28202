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
