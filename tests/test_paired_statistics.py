"""Per-image predictions (predictions.json), paired bootstrap differences and the results.md difference table."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_ssl_ext.benchmark.tables import DIFFERENCE_TITLE, results_markdown
from monai_ssl_ext.engines import EvaluationReport
from monai_ssl_ext.metrics import (
    PairingError,
    SplitPredictions,
    classification_metrics,
    evaluate_predictions,
    headline_metrics,
    load_predictions,
    paired_difference,
    paired_difference_over_seeds,
    save_predictions,
    segmentation_metrics,
    segmentation_metrics_from_counts,
)
from monai_ssl_ext.metrics import paired as paired_module
from monai_ssl_ext.metrics.paired import DEFAULT_RESAMPLES, DEFAULT_SEED, bootstrap_indices, bootstrap_metrics

CLASSES = ["benign", "malignant", "normal"]
N = 40
B = 300  # resamples in the tests: enough for the checks, fast on 2 CPU cores
POINT_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc", "dice", "iou")


def _ids(n: int = N) -> list[str]:
    return [f"/data/busi/img{i:03d}.png" for i in range(n)]


def _labels(n: int = N) -> np.ndarray:
    return np.arange(n) % 3


def _probs(labels: np.ndarray, skill: float, seed: int) -> np.ndarray:
    """Random probabilities pulled towards the true class by ``skill``."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(3), size=labels.size)
    p[np.arange(labels.size), labels] += skill
    return p / p.sum(axis=1, keepdims=True)


def _masks(labels: np.ndarray, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """True squares (none for "normal") and predictions shifted by ``shift`` rows."""
    true = np.zeros((labels.size, 12, 12), dtype=bool)
    true[labels != 2, 3:9, 3:9] = True
    return np.roll(true, shift, axis=1), true


def _evaluate(out, skill: float, seed: int, shift: int = 1, ids=None, labels=None) -> dict:
    labels = _labels() if labels is None else labels
    pred, true = _masks(labels, shift)
    return evaluate_predictions(
        _probs(labels, skill, seed),
        labels,
        CLASSES,
        out,
        pred_masks=pred,
        true_masks=true,
        image_ids=_ids(labels.size) if ids is None else ids,
        plots=False,
        logger_name=None,
    )


def _run(probs, labels, ids=None, seg=None, names=("neg", "pos")) -> SplitPredictions:
    labels = np.asarray(labels, dtype=np.int64)
    return SplitPredictions(
        np.asarray(ids if ids is not None else _ids(labels.size), dtype=str),
        labels,
        np.asarray(probs, dtype=np.float64),
        tuple(names),
        1,
        seg,
    )


def test_evaluation_writes_predictions_that_reproduce_the_report(tmp_path):
    report = _evaluate(tmp_path, skill=0.5, seed=0)
    run = load_predictions(tmp_path)  # the folder: its predictions.json
    assert run.source == str(tmp_path / "predictions.json")
    assert run.image_ids.tolist() == _ids() and run.labels.tolist() == _labels().tolist()
    assert run.class_names == tuple(CLASSES) and run.probs.shape == (N, 3) and run.seg_counts is not None
    assert not list(tmp_path.glob(".*"))  # atomic write: no temporary file left
    assert classification_metrics(run.probs, run.labels, CLASSES) == report["classification"]
    pred, true = _masks(_labels(), 1)
    recomputed, direct = segmentation_metrics_from_counts(*run.seg_counts), segmentation_metrics(pred, true)
    assert recomputed == direct and recomputed == report["segmentation"]


def test_point_estimate_is_the_difference_of_the_reported_metrics(tmp_path):
    better = headline_metrics(_evaluate(tmp_path / "a", skill=0.6, seed=1, shift=1))
    worse = headline_metrics(_evaluate(tmp_path / "b", skill=0.2, seed=2, shift=2))
    diffs = paired_difference(tmp_path / "a", tmp_path / "b" / "predictions.json", n_resamples=B)
    assert tuple(diffs) == POINT_METRICS
    for m in POINT_METRICS:
        assert diffs[m].estimate == better[m] - worse[m]
        assert diffs[m].low <= diffs[m].estimate <= diffs[m].high
        assert diffs[m].n_resamples == B and diffs[m].per_seed == (diffs[m].estimate,)
    # the baseline written in another image order is paired by image id: same figures
    order = np.random.default_rng(0).permutation(N)
    labels, ids = _labels()[order], [_ids()[i] for i in order]
    _evaluate(tmp_path / "c", skill=0.2, seed=2, shift=2, ids=ids, labels=labels)
    shuffled = paired_difference(tmp_path / "a", tmp_path / "c", n_resamples=B)
    assert shuffled["dice"].estimate == diffs["dice"].estimate
    assert shuffled["accuracy"].estimate != 0


def test_identical_runs_give_zero_difference_and_zero_width_interval(tmp_path):
    _evaluate(tmp_path, skill=0.4, seed=3)
    diffs = paired_difference(tmp_path, tmp_path, n_resamples=B)
    for d in diffs.values():
        assert (d.estimate, d.low, d.high, d.n_undefined) == (0.0, 0.0, 0.0, 0)
        assert not d.excludes_zero


def test_a_run_better_on_every_image_has_an_interval_above_zero():
    labels = np.arange(30) % 2
    onehot = np.eye(2)[labels]
    good = 0.9 * onehot + 0.05  # confident and right on every image
    bad = np.where(np.arange(30)[:, None] % 3 == 0, 1 - good, 0.6 * onehot + 0.2)  # a third wrong, the rest unsure
    inter, size = np.full(30, 8), np.full(30, 10)
    run = _run(good, labels, seg=(inter, size, size))  # Dice 0.8 on every image
    baseline = _run(bad, labels, seg=(inter - 4, size, size))  # Dice 0.4 on every image
    diffs = paired_difference(run, baseline, n_resamples=B)
    for m in ("accuracy", "balanced_accuracy", "macro_f1", "auc", "dice", "iou"):
        assert diffs[m].low > 0 and diffs[m].excludes_zero, diffs[m]
    assert diffs["dice"].low == pytest.approx(0.4) and diffs["dice"].high == pytest.approx(0.4)
    reverse = paired_difference(baseline, run, n_resamples=B)
    assert reverse["accuracy"].high < 0 and reverse["accuracy"].estimate == -diffs["accuracy"].estimate


def test_mismatched_runs_raise_a_clear_error(tmp_path):
    labels = np.arange(10) % 2
    probs = np.full((10, 2), 0.5)
    run = _run(probs, labels)
    other_images = _run(probs, labels, ids=[*_ids(9), "/data/busi/elsewhere.png"])
    message = (
        "not evaluated on the same test images (10 vs 10 images; 1 only in the run, e.g. '/data/busi/img009.png'; "
        "1 only in the baseline, e.g. '/data/busi/elsewhere.png'): run and baseline"
    )
    with pytest.raises(PairingError, match=re.escape(message)):
        paired_difference(run, other_images, n_resamples=B)
    with pytest.raises(
        PairingError, match=re.escape("(10 vs 9 images; 1 only in the run, e.g. '/data/busi/img009.png')")
    ):
        paired_difference(run, _run(probs[:9], labels[:9]), n_resamples=B)
    with pytest.raises(
        PairingError, match=re.escape("different labels for 10 images, e.g. '/data/busi/img000.png': 0 vs 1")
    ):
        paired_difference(run, _run(probs, 1 - labels), n_resamples=B)
    with pytest.raises(PairingError, match="different classes"):
        paired_difference(run, _run(probs, labels, names=("a", "b")), n_resamples=B)
    assert issubclass(PairingError, ValueError)
    with pytest.raises(KeyError, match="dice"):
        paired_difference(run, run, metrics=["dice"], n_resamples=B)  # no segmentation counts
    with pytest.raises(FileNotFoundError, match="predictions"):
        paired_difference(tmp_path, run)


def test_fixed_seed_makes_the_interval_reproducible(tmp_path):
    _evaluate(tmp_path / "a", skill=0.5, seed=4)
    _evaluate(tmp_path / "b", skill=0.3, seed=5)
    assert (DEFAULT_RESAMPLES, DEFAULT_SEED) == (2000, 0)
    np.testing.assert_array_equal(bootstrap_indices(N, B), bootstrap_indices(N, B))
    first = paired_difference(tmp_path / "a", tmp_path / "b", n_resamples=B)
    paired_module._CACHE.clear()  # recomputed from scratch, not read back from the cache
    assert paired_difference(tmp_path / "a", tmp_path / "b", n_resamples=B) == first
    other = paired_difference(tmp_path / "a", tmp_path / "b", n_resamples=B, seed=1)
    assert other["accuracy"].estimate == first["accuracy"].estimate
    assert (other["accuracy"].low, other["accuracy"].high) != (first["accuracy"].low, first["accuracy"].high)


def test_resamples_use_the_report_functions_and_survive_a_missing_class():
    labels = np.array([1] + [0] * 11)  # one positive: many resamples hold none
    rng = np.random.default_rng(6)
    run, baseline = (_run(rng.dirichlet(np.ones(2), 12), labels) for _ in range(2))
    idx = bootstrap_indices(12, 50)
    dist = bootstrap_metrics(run, idx, ["accuracy", "balanced_accuracy", "auc"])
    for b in range(50):
        expected = classification_metrics(run.probs[idx[b]], labels[idx[b]])
        assert dist["accuracy"][b] == expected["accuracy"]
        assert dist["balanced_accuracy"][b] == expected["balanced_accuracy"]
        assert np.isnan(dist["auc"][b]) == np.isnan(expected["auc"])
    diffs = paired_difference(run, baseline, n_resamples=B)
    undefined = int(np.sum(np.all(bootstrap_indices(12, B) != 0, axis=1)))  # resamples without the positive
    assert diffs["auc"].n_undefined == undefined > 0
    assert np.isfinite(diffs["auc"].low) and diffs["auc"].low <= diffs["auc"].high
    assert diffs["balanced_accuracy"].n_undefined == 0 and np.isfinite(diffs["balanced_accuracy"].low)


def test_over_seeds_averages_the_seeds_on_one_joint_image_draw(tmp_path):
    for s in (0, 1, 2):
        _evaluate(tmp_path / f"ssl{s}", skill=0.6, seed=10 + s, shift=1)
        _evaluate(tmp_path / f"sup{s}", skill=0.3, seed=20 + s, shift=2)
    runs = [tmp_path / f"ssl{s}" for s in (0, 1, 2)]
    baselines = [tmp_path / f"sup{s}" for s in (0, 1, 2)]
    pooled = paired_difference_over_seeds(runs, baselines, n_resamples=B)
    single = [paired_difference(r, b, n_resamples=B) for r, b in zip(runs, baselines, strict=True)]
    for m in POINT_METRICS:
        assert pooled[m].per_seed == tuple(d[m].estimate for d in single)
        assert pooled[m].estimate == pytest.approx(np.mean(pooled[m].per_seed), abs=1e-15)
    # one seed alone is the single-seed comparison
    assert paired_difference_over_seeds(runs[:1], baselines[:1], n_resamples=B) == single[0]
    crossed = paired_difference_over_seeds(runs, baselines, n_resamples=B, resample_seeds=True)
    assert crossed["accuracy"].estimate == pooled["accuracy"].estimate and crossed["accuracy"].resample_seeds
    # every seed must be tested on the same images
    labels = _labels(N - 1)
    _evaluate(tmp_path / "ssl_other", skill=0.6, seed=30, labels=labels)
    _evaluate(tmp_path / "sup_other", skill=0.3, seed=31, labels=labels)
    with pytest.raises(PairingError, match="seed 1 was tested on other images"):
        paired_difference_over_seeds([runs[0], tmp_path / "ssl_other"], [baselines[0], tmp_path / "sup_other"])
    with pytest.raises(ValueError, match="one baseline per run"):
        paired_difference_over_seeds(runs, baselines[:2])


def test_evaluation_report_handler_stores_the_source_paths(tmp_path):
    names = ["neg", "pos"]
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    images = [MetaTensor(torch.zeros(1, 8, 8), meta={"filename_or_obj": f"/d/img{i}.png"}) for i in range(3)]
    seg = torch.zeros(3, 2, 8, 8)
    seg[:, 1, 2:5, 2:5] = 5.0
    masks = torch.zeros(3, 1, 8, 8)
    masks[:, :, 2:6, 2:6] = 1
    report = EvaluationReport(tmp_path / "decollated", names, plots=False)
    report.collect(
        [
            {"pred": {"class": logits[i], "seg": seg[i]}, "label": i % 2, "image": images[i], "mask": masks[i]}
            for i in range(2)
        ]
    )
    batched = MetaTensor(torch.zeros(1, 1, 8, 8), meta={"filename_or_obj": ["/d/img2.png"]})
    report.collect({"pred": {"class": logits[2:], "seg": seg[2:]}, "label": torch.tensor([0]), "image": batched},
                   {"mask": masks[2:]})  # fmt: skip
    out = report.complete()
    run = load_predictions(tmp_path / "decollated")
    assert run.image_ids.tolist() == ["/d/img0.png", "/d/img1.png", "/d/img2.png"]
    assert run.labels.tolist() == [0, 1, 0] and run.class_names == ("neg", "pos")
    np.testing.assert_allclose(run.probs, torch.softmax(logits, 1).numpy(), rtol=1e-6)
    assert run.seg_counts is not None and [c.tolist() for c in run.seg_counts] == [[9] * 3, [9] * 3, [16] * 3]
    recomputed = segmentation_metrics_from_counts(*run.seg_counts)
    assert (recomputed["dice"], recomputed["iou"]) == (out["segmentation"]["dice"], out["segmentation"]["iou"])
    # no file name in the batch: positions
    plain = EvaluationReport(tmp_path / "plain", names, plots=False)
    plain.collect({"pred": logits, "label": torch.tensor([0, 1, 0])})
    plain.complete()
    assert load_predictions(tmp_path / "plain").image_ids.tolist() == ["#0", "#1", "#2"]


# ---------------------------------------------------------------- results.md


def _record(algorithm: str, seed: int, eval_dir=None, run_dir=None) -> dict:
    record = {
        "bundle": "b",
        "algorithm": algorithm,
        "dataset": "d",
        "labels": 16,
        "seed": seed,
        "profile": "smoke",
        "metrics": {"accuracy": 0.5, "balanced_accuracy": 0.5, "macro_f1": 0.5, "auc": 0.5},
        "train_images_per_s": 10.0,
        "peak_memory_mb": 500.0,
        "wall_s": 60.0,
    }
    if eval_dir is not None:
        record["eval_dir"] = str(eval_dir)
    if run_dir is not None:
        record["run_dir"] = str(run_dir)
    return record


def _save(folder, skill: float, seed: int) -> None:
    labels = _labels()
    save_predictions(folder / "predictions.json", _probs(labels, skill, seed), labels, CLASSES, _ids())


_CELL = r"[+\u2212]\d+\.\d\d \[[+\u2212]\d+\.\d\d, [+\u2212]\d+\.\d\d\]"


def _points(x: float) -> str:
    text = f"{x * 100:+.2f}"
    return "+0.00" if text == "-0.00" else text.replace("-", "\u2212")


def test_results_markdown_shows_the_paired_difference_to_supervised(tmp_path):
    for s in (0, 1):
        _save(tmp_path / f"sup{s}", skill=0.2, seed=40 + s)
        _save(tmp_path / f"fix{s}", skill=0.6, seed=50 + s)
        _save(tmp_path / "mt" / f"seed{s}" / "eval_test", skill=0.25, seed=60 + s)  # found through run_dir
    records = [
        _record("supervised", 0, tmp_path / "sup0"),
        _record("supervised", 1, tmp_path / "sup1"),
        _record("fixmatch", 0, tmp_path / "fix0"),
        _record("fixmatch", 1, tmp_path / "fix1"),
        _record("mean_teacher", 0, run_dir=tmp_path / "mt" / "seed0"),
        _record("mean_teacher", 1, run_dir=tmp_path / "mt" / "seed1"),
        _record("mean_teacher", 2, run_dir=tmp_path / "mt" / "seed2"),  # no supervised run of seed 2
    ]
    text = results_markdown(records, n_resamples=B)
    section = text.split(DIFFERENCE_TITLE, 1)[1]
    header = next(line for line in section.splitlines() if line.startswith("| Algorithm"))
    assert header == "| Algorithm | Seeds | Accuracy | Balanced acc. | Macro-F1 | AUC |"  # no Dice: no segmentation
    rows = {
        line.split(" | ")[0][2:]: line for line in section.splitlines() if line.startswith("| ") and "---" not in line
    }
    assert set(rows) == {
        "Algorithm", "fixmatch", "fixmatch (seed 0)", "fixmatch (seed 1)",
        "mean_teacher", "mean_teacher (seed 0)", "mean_teacher (seed 1)",
    }  # fmt: skip
    assert "supervised" not in rows
    assert rows["fixmatch"].startswith("| fixmatch | 0,1 | ")
    assert rows["mean_teacher"].startswith("| mean_teacher | 0,1 | ")
    expected = paired_difference_over_seeds(
        [tmp_path / "fix0", tmp_path / "fix1"], [tmp_path / "sup0", tmp_path / "sup1"], n_resamples=B
    )
    cells = rows["fixmatch"].strip("| ").split(" | ")[2:]
    assert len(cells) == 4 and all(re.fullmatch(_CELL, c) for c in cells), cells
    acc = expected["accuracy"]
    assert cells[0] == f"{_points(acc.estimate)} [{_points(acc.low)}, {_points(acc.high)}]"
    assert acc.low > 0 and cells[0].startswith("+")
    assert "percentile bootstrap over the test images (300 resamples, RNG seed 0)" in section
    # rendering again gives the same table (fixed RNG seed)
    assert results_markdown(records, n_resamples=B) == text


def test_difference_table_absent_without_supervised_and_notes_old_records(tmp_path):
    _save(tmp_path / "fix0", skill=0.6, seed=1)
    no_baseline = results_markdown([_record("fixmatch", 0, tmp_path / "fix0")], n_resamples=B)
    assert DIFFERENCE_TITLE not in no_baseline
    only_baseline = results_markdown([_record("supervised", 0, tmp_path / "fix0")], n_resamples=B)
    assert DIFFERENCE_TITLE not in only_baseline

    # old records (no predictions file) are left out with a note; seed 0 still has both runs
    _save(tmp_path / "sup0", skill=0.2, seed=2)
    records = [
        _record("supervised", 0, tmp_path / "sup0"),
        _record("supervised", 1),  # written before predictions.json existed
        _record("fixmatch", 0, tmp_path / "fix0"),
        _record("fixmatch", 1, run_dir=tmp_path / "old_run"),
    ]
    text = results_markdown(records, n_resamples=B)
    section = text.split(DIFFERENCE_TITLE, 1)[1]
    assert re.search(rf"^\| fixmatch \| 0 \| {_CELL} \|", section, flags=re.M)
    assert "(seed" not in section  # one seed compared: no per-seed rows
    assert "Left out, no per-image predictions" in section and "fixmatch seed 1, supervised seed 1." in section

    # nothing to compare at all: the note, no table
    only_old = results_markdown([_record("supervised", 0), _record("fixmatch", 0)], n_resamples=B)
    section = only_old.split(DIFFERENCE_TITLE, 1)[1]
    assert "fixmatch seed 0, supervised seed 0." in section
    assert not any(line.startswith("| fixmatch") for line in section.splitlines())

    # runs on different test sets: a note instead of a crash
    labels = _labels(N - 1)
    save_predictions(tmp_path / "sup_other" / "predictions.json", _probs(labels, 0.2, 3), labels, CLASSES, _ids(N - 1))
    mismatched = results_markdown(
        [_record("supervised", 0, tmp_path / "sup_other"), _record("fixmatch", 0, tmp_path / "fix0")], n_resamples=B
    )
    assert "fixmatch: not compared, not evaluated on the same test images" in mismatched


# ---------------------------------------------------------------- the demo's comparison


def test_comparison_table_gives_both_runs_and_their_paired_difference(tmp_path):
    from monai_ssl_ext.benchmark.comparison import comparison_table

    _save(tmp_path / "sup", skill=0.2, seed=40)
    _save(tmp_path / "fix", skill=0.6, seed=50)
    sup, fix = _record("supervised", 0, tmp_path / "sup"), _record("fixmatch", 0, tmp_path / "fix")
    fix["metrics"] = {**fix["metrics"], "accuracy": 0.75}
    text = comparison_table([sup, fix, _record("fixmatch", 1)], "fixmatch", "supervised", seed=0)
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["supervised", "fixmatch"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert list(rows) == ["accuracy", "balanced_accuracy", "macro_f1", "auc"]
    expected = paired_difference(tmp_path / "fix", tmp_path / "sup")["auc"]
    assert rows["auc"].endswith(f"{_points(expected.estimate)} [{_points(expected.low)}, {_points(expected.high)}]")
    assert rows["accuracy"].split()[1:3] == ["50.00", "75.00"]  # the recorded figures, side by side
    with pytest.raises(KeyError, match="no fixmatch run with seed 3"):
        comparison_table([sup, fix], "fixmatch", "supervised", seed=3)


def test_run_comparison_draws_every_runs_validation_curves(tmp_path):
    from monai_ssl_ext.benchmark.comparison import plot_run_comparison

    for name, auc in (("supervised", [0.6, 0.7]), ("fixmatch", [0.65, 0.8])):
        (tmp_path / name).mkdir()
        history = {"validation": {"iteration": [50, 100], "metrics": {"val_auc": auc, "val_accuracy": [0.5, 0.6]}}}
        (tmp_path / name / "history.json").write_text(json.dumps(history))
    path = plot_run_comparison({n: tmp_path / n for n in ("supervised", "fixmatch")}, tmp_path / "both.png")
    from PIL import Image

    image = Image.open(path)
    assert image.format == "PNG" and image.size[0] > image.size[1]  # two panels side by side
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    for colour in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):  # matplotlib's first two line colours: one per run
        assert (np.abs(pixels - colour).sum(axis=1) < 30).sum() > 50, colour


def test_predictions_file_is_text_and_reads_back_the_same_values(tmp_path):
    labels = _labels()
    single = _probs(labels, 0.4, 5).astype(np.float32)  # a network's softmax: written as short float32 text
    save_predictions(tmp_path / "a.json", single, labels, CLASSES, _ids())
    run = load_predictions(tmp_path / "a.json")
    assert json.loads((tmp_path / "a.json").read_text())["probs_dtype"] == "float32"
    assert np.array_equal(run.probs, single.astype(np.float64)) and run.probs.dtype == np.float64
    double = _probs(labels, 0.4, 5)  # not float32 values: kept at full precision
    assert not np.array_equal(double.astype(np.float32), double)
    save_predictions(tmp_path / "b.json", double, labels, CLASSES, _ids())
    assert np.array_equal(load_predictions(tmp_path / "b.json").probs, double)
    (tmp_path / "c.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"c\.json: not a predictions file"):
        load_predictions(tmp_path / "c.json")


def test_runs_evaluated_before_the_text_format_are_still_read(tmp_path):
    labels = _labels()
    probs = _probs(labels, 0.4, 6)
    np.savez_compressed(
        tmp_path / "predictions.npz",
        format_version=np.asarray(1),
        image_ids=np.asarray(_ids(), dtype=str),
        labels=labels,
        probs=probs,
        class_names=np.asarray(CLASSES, dtype=str),
        positive_class=np.asarray(1),
        split=np.asarray("test"),
    )
    run = load_predictions(tmp_path)  # the folder: no predictions.json, its predictions.npz
    assert run.source == str(tmp_path / "predictions.npz") and run.split == "test"
    assert np.array_equal(run.probs, probs) and run.labels.tolist() == labels.tolist()
    assert run.class_names == tuple(CLASSES) and run.image_ids.tolist() == _ids()
