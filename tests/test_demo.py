"""``monai-ssl demo`` shows what unlabeled images give: FixMatch against supervised-only on the same labels."""

from __future__ import annotations

import json

import pytest

from monai_ssl_ext.cli import main
from monai_ssl_ext.metrics.paired import paired_difference_over_seeds

SEEDS = (0, 1, 2)


@pytest.mark.slow
def test_demo_gain_over_supervised_holds_on_three_label_draws(tmp_path, capsys):
    # the demo exactly as the README runs it, for three seeds (three labeled subsets); the gain pooled over
    # the seeds, paired image by image, must be above zero with its 95 % interval
    for seed in SEEDS:
        main(["demo", "--output", str(tmp_path), "--seed", str(seed)])
        out = capsys.readouterr().out
        assert "supervised" in out and "fixmatch" in out and "difference, points [95 % interval]" in out
    assert (tmp_path / "comparison_curves.png").is_file()
    records = json.loads((tmp_path / "results.json").read_text())
    runs = {(r["algorithm"], r["seed"]): r["eval_dir"] for r in records}
    assert set(runs) == {(a, s) for a in ("supervised", "fixmatch") for s in SEEDS}
    diff = paired_difference_over_seeds(
        [runs["fixmatch", s] for s in SEEDS], [runs["supervised", s] for s in SEEDS], metrics=["macro_f1"]
    )["macro_f1"]
    assert diff.estimate > 0.02 and diff.low > 0, diff
