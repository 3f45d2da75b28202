"""The SEMISE bundle: its algorithm keys, severity orders, the HAM10000 overlay, the severity report, end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_helpers import (
    build_algorithm,
    bundle_parser,
    copy_images,
    exception_chain_messages,
    run_bundle,
    run_evaluation,
    run_inference,
    train_in_two_processes,
    training_checkpoint,
    workflow_overrides,
)
from monai.bundle import ConfigParser

from monai_ssl_ext.algorithms import SEMISE, FixMatch, FlexMatch, FreeMatch, MeanTeacher, SoftMatch, Supervised
from monai_ssl_ext.bundle import write_trained_config
from monai_ssl_ext.cli import main
from monai_ssl_ext.data import HAM10000_SEVERITY
from monai_ssl_ext.metrics import evaluate_predictions, format_report, headline_metrics, per_class_recall
from monai_ssl_ext.networks import JointClassSegNet

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "semise_ultrasound"
HAM_MANIFEST = REPO / "data_manifests" / "ham10000" / "ham10000.json"
BUSI_MANIFEST = REPO / "data_manifests" / "busi" / "busi.json"
TINY = {"image_size": 32, "backbone": "resnet10", "num_workers": 0, "labeled_batch_size": 4, "unlabeled_batch_size": 4}


def _parser(data: Path, configs: tuple[str, ...] = ("train.json",), **overrides) -> ConfigParser:
    return bundle_parser(BUNDLE, configs, data, settings=TINY, **overrides)


def test_every_algorithm_key_instantiates_on_the_same_network(small_data):
    parser = _parser(small_data)
    expected = {
        "semise": (SEMISE, 0.5),
        "semise_contrastive_only": (SEMISE, 1.0),
        "semise_frozen_encoder": (SEMISE, 0.5),
        "supervised": (Supervised, None),
        "mean_teacher": (MeanTeacher, None),
        "fixmatch": (FixMatch, None),
        "flexmatch": (FlexMatch, None),
        "freematch": (FreeMatch, None),
        "softmatch": (SoftMatch, None),
    }
    assert set(parser["algorithms"]) == set(expected)
    for name, (cls, alpha) in expected.items():
        algorithm = build_algorithm(parser, name)
        assert type(algorithm) is cls, name
        if alpha is not None:
            assert algorithm.alpha == alpha
            # the synthetic data set has no normal class: BUSI's order ranks benign (1) below malignant (2)
            assert algorithm.class_levels.tolist() == [1, 2] and algorithm.reference_level == 1
            assert (algorithm.phase1, algorithm.phase2) == (0.25, 0.5)
            assert algorithm.finetune_encoder is (name != "semise_frozen_encoder")
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, JointClassSegNet) and net.embed_dim == 128 and net.training_outputs
    out = net.eval()(torch.rand(2, 1, 32, 32))
    assert out["embedding"].shape == (2, 128) and out["class"].shape == (2, 2)


def test_semise_runs_learn_the_representation_from_level_stratified_labeled_batches(small_data):
    parser = _parser(small_data, algorithm_name="semise", num_iterations=20, val_interval=10)
    trainer = parser.get_parsed_content("train#trainer")
    loader = trainer.data_loader
    assert loader.stratified_steps == 10  # phases 0 and 1 of 20 steps
    levels = [1, 2]  # benign, malignant under BUSI's order
    for batch, _ in zip(loader, range(3), strict=False):
        assert sorted({levels[int(y)] for y in batch["labeled"]["label"]}) == levels
    parser = _parser(small_data, algorithm_name="supervised", num_iterations=20, val_interval=10)
    assert parser.get_parsed_content("train#trainer").data_loader.stratified_steps == 0


def test_representation_iterations_come_before_the_baselines_fine_tuning_schedule(small_data):
    overrides = {"num_iterations": 20, "val_interval": 10, "representation_iterations": 10}
    parser = _parser(small_data, algorithm_name="semise", **overrides)
    trainer = parser.get_parsed_content("train#trainer")
    assert trainer.state.max_epochs * trainer.state.epoch_length == 30  # 10 representation + 20 fine-tuning
    assert trainer.algorithm.phase_ends.tolist() == [5, 10] and trainer.data_loader.stratified_steps == 10
    scheduler = parser.get_parsed_content("lr_scheduler")
    assert isinstance(scheduler, torch.optim.lr_scheduler.SequentialLR) and scheduler._milestones == [10]
    # a baseline in the same bundle is not lengthened: the extra steps are SEMISE's
    parser = _parser(small_data, algorithm_name="fixmatch", **overrides)
    trainer = parser.get_parsed_content("train#trainer")
    assert trainer.state.max_epochs * trainer.state.epoch_length == 20
    assert isinstance(parser.get_parsed_content("lr_scheduler"), torch.optim.lr_scheduler.PolynomialLR)


def test_the_cpu_profile_runs_the_representation_before_the_baselines_1500_steps(small_data):
    # the profile's setting (chosen on validation, docs/benchmarks.md), not the algorithm's default shares
    def trainer_of(algorithm: str, **overrides) -> tuple:
        parser = _parser(small_data, ("train.json", "profiles/cpu.json"), algorithm_name=algorithm,
                         pretrained_weights=None, **overrides)  # fmt: skip
        trainer = parser.get_parsed_content("train#trainer")
        return trainer, trainer.state.max_epochs * trainer.state.epoch_length, parser.get_parsed_content("lr_scheduler")

    for algorithm in ("semise", "semise_contrastive_only"):
        trainer, steps, scheduler = trainer_of(algorithm)
        assert steps == 800 + 1500 and trainer.algorithm.phase_ends.tolist() == [400, 800]
        # the baselines' schedule starts again with fine-tuning
        assert isinstance(scheduler, torch.optim.lr_scheduler.SequentialLR) and scheduler._milestones == [800]
    _, steps, scheduler = trainer_of("supervised")
    assert steps == 1500 and isinstance(scheduler, torch.optim.lr_scheduler.PolynomialLR)
    # the shared schedule stays one setting away
    trainer, steps, _ = trainer_of("semise", representation_iterations=0)
    assert steps == 1500 and trainer.algorithm.phase_ends.tolist() == [375, 750]


def test_severity_key_accepts_a_name_groups_or_the_manifest_order(small_data):
    for severity, levels in (("busi", [1, 2]), (None, [0, 1]), ([["malignant"], ["benign"]], [1, 0])):
        parser = _parser(small_data, severity=severity)
        assert parser.get_parsed_content("severity_classes") == levels
    parser = _parser(small_data, severity="ham10000")
    with pytest.raises(Exception) as err:  # monai.bundle wraps the expression's error
        parser.get_parsed_content("severity_classes")
    messages = exception_chain_messages(err.value)
    assert any("benign" in m and "ham10000" in m for m in messages), messages


def test_busi_manifest_classes_map_to_normal_benign_malignant(small_data):
    classes = json.loads(BUSI_MANIFEST.read_text())["classes"]
    assert classes == ["normal", "benign", "malignant"]
    parser = _parser(small_data, class_names=classes)
    assert parser.get_parsed_content("severity_classes") == [0, 1, 2]
    assert parser.get_parsed_content("algorithm").reference_level == 0
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    channel_def = meta["network_data_format"]["outputs"]["class"]["channel_def"]
    assert [channel_def[str(i)] for i in range(len(classes))] == classes


def test_ham10000_overlay_with_the_real_manifest_classes(small_data):
    classes = json.loads(HAM_MANIFEST.read_text())["classes"]
    assert len(classes) == 7
    parser = _parser(small_data, ("train.json", "ham10000.json"), class_names=classes)
    assert parser["modality"] == "dermoscopy" and parser["severity"] == "ham10000"
    levels = parser.get_parsed_content("severity_classes")
    assert levels == HAM10000_SEVERITY.levels_for(classes).tolist()
    by_name = dict(zip(classes, levels, strict=True))
    # nv, bkl, df, vasc (benign) < akiec (pre-malignant) < bcc, mel (malignant)
    assert by_name == {"nv": 0, "bkl": 0, "df": 0, "vasc": 0, "akiec": 1, "bcc": 2, "mel": 2}
    assert parser.get_parsed_content("profile").name == "dermoscopy"
    net = parser.get_parsed_content("network_def")
    assert net.encoder.conv1.in_channels == 3 and net.head.out_features == 7
    algorithm = parser.get_parsed_content("algorithm")
    assert algorithm.class_levels.tolist() == levels and algorithm.reference_level == 0


def test_ham10000_export_declares_colour_input_and_seven_classes(tmp_path):
    from monai.bundle import verify_metadata

    from monai_ssl_ext.bundle.checks import DEFAULT_SCHEMA

    classes = json.loads(HAM_MANIFEST.read_text())["classes"]
    metas = ("metadata.json", "ham10000_metadata.json")
    if DEFAULT_SCHEMA.is_file():
        verify_metadata(meta_file=[str(BUNDLE / "configs" / m) for m in metas], filepath=str(DEFAULT_SCHEMA))
    # what training with the HAM10000 overlay writes beside the weights
    trained = {"modality": "dermoscopy", "in_channels": 3, "class_names": classes, "image_size": 32}
    write_trained_config(tmp_path / "models", {**trained, "backbone": "resnet10", "embed_dim": 128})
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), "checkpoint": str(tmp_path / "models" / "model.pt")})
    assert parser.get_parsed_content("class_names") == classes
    net = parser.get_parsed_content("network_def")
    ckpt = tmp_path / "models" / "model.pt"
    torch.save(net.state_dict(), ckpt)

    ts = tmp_path / "model.ts"
    # the command the README gives: no setting repeated, a descriptive metadata overlay
    main(["export", str(ckpt), str(ts), "--bundle", str(BUNDLE), "--metadata", ",".join(metas)])
    extra = {"metadata.json": "", "inference.json": ""}
    model = torch.jit.load(str(ts), _extra_files=extra)
    meta = json.loads(extra["metadata.json"])
    image_in = meta["network_data_format"]["inputs"]["image"]
    class_out = meta["network_data_format"]["outputs"]["class"]
    assert image_in["num_channels"] == 3 and image_in["modality"] == "XC" and image_in["spatial_shape"] == [32, 32]
    assert class_out["num_channels"] == 7 and [class_out["channel_def"][str(i)] for i in range(7)] == classes
    assert meta["network_data_format"]["outputs"]["seg"]["num_channels"] == 2
    assert "HAM10000" in meta["data_source"]
    embedded = json.loads(extra["inference.json"])
    assert embedded["class_names"] == classes and embedded["modality"] == "dermoscopy" and "trained" not in embedded
    out = model(torch.rand(1, 3, 32, 32))
    assert out["class"].shape == (1, 7) and out["seg"].shape == (1, 2, 32, 32)


def test_evaluation_report_has_a_severity_section(tmp_path):
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    labels = np.array([0, 2, 2, 1])
    report = evaluate_predictions(probs, labels, ["normal", "benign", "malignant"], tmp_path, class_levels=[0, 1, 2])
    severity = report["severity"]
    assert severity["class_levels"] == [0, 1, 2]
    assert severity["mae"] == pytest.approx((0 + 0 + 1 + 1) / 4)
    assert severity["level_accuracy"] == pytest.approx(0.5)
    assert json.loads((tmp_path / "metrics.json").read_text())["severity"]["mae"] == pytest.approx(0.5)
    assert "severity" in format_report(report) and "MAE 0.500" in format_report(report)
    without_levels = evaluate_predictions(probs, labels, None, None, logger_name=None)
    assert "severity" not in without_levels
    # the benchmark's figures: severity MAE only where the classes are ordered, recall of every class
    assert headline_metrics(report)["severity_mae"] == pytest.approx(0.5)
    assert "severity_mae" not in headline_metrics(without_levels)
    assert per_class_recall(report) == pytest.approx({"normal": 1.0, "benign": 0.0, "malignant": 0.5})


@pytest.mark.slow
def test_semise_train_evaluate_infer_export_end_to_end(tmp_path, small_data):
    base = workflow_overrides(small_data, tmp_path, settings=TINY, num_iterations=4, val_interval=2, label_budget=12)
    log = run_bundle(BUNDLE, tmp_path, "training", ["train.json"], base)
    assert "[train] 4/4 (100%)" in log
    for term in ("loss_nt_xent", "loss_margin", "loss_ranking", "reference_norm", "phase"):
        assert term in log, term
    assert "val_auc_dice" in log and "val_dice" in log and "val_severity_mae" in log
    assert "val_severity_rank_correlation" in log
    assert (tmp_path / "models" / "model.pt").is_file()

    metrics = run_evaluation(BUNDLE, tmp_path)
    assert {"accuracy", "macro_f1", "auc"} <= set(metrics["classification"])
    assert {"dice", "iou"} <= set(metrics["segmentation"])
    assert metrics["severity"]["class_levels"] == [1, 2] and 0 <= metrics["severity"]["mae"] <= 1
    # the encoder's representation is evaluated too (nan when the tiny test split lacks two images of a level)
    rho = metrics["severity"]["rank_correlation"]
    assert math.isnan(rho) or -1 <= rho <= 1
    assert metrics["extra"]["bundle"] == "semise_ultrasound" and metrics["extra"]["severity"] == "busi"

    inputs = tmp_path / "inputs"
    images = copy_images(small_data, 5, inputs)
    # the synthetic data set has two classes (the bundle's declared default is BUSI's three): inference
    # takes them, the image size and the backbone from the trained configuration
    rows = run_inference(BUNDLE, tmp_path, inputs)
    assert len(rows) == len(images)
    for row in rows:
        assert abs(float(row["prob_benign"]) + float(row["prob_malignant"]) - 1) < 1e-5
    assert (tmp_path / "infer" / "predictions_overlay.png").is_file()

    ts = tmp_path / "model.ts"
    main(["export", str(tmp_path / "models" / "model.pt"), str(ts), "--bundle", str(BUNDLE)])
    model = torch.jit.load(str(ts))
    out = model(torch.rand(2, 1, 32, 32))
    assert set(out) == {"class", "seg"}
    assert out["class"].shape == (2, 2) and out["seg"].shape == (2, 2, 32, 32)


@pytest.mark.slow
def test_two_process_semise_training_shares_the_budget_the_strata_and_the_reference(tmp_path, small_data):
    """8 iterations in two processes: 4 steps each, the representation phases the first 2 (shares of the steps each
    process runs); each global labeled batch (2 x 4) holds 4 images of each level, so the reference, reduced over
    both processes, has seen 4 benign images at each of the 2 representation steps."""
    log = train_in_two_processes(BUNDLE, small_data, tmp_path, settings=TINY, label_budget=12)
    assert "loss_ranking" in log
    algorithm = training_checkpoint(tmp_path, epoch=2)["algorithm"]
    assert algorithm["phase_ends"].tolist() == [1, 2]
    assert int(algorithm["reference_count"]) == 8
    assert 0 < float(algorithm["reference"].norm()) <= 1 + 1e-6  # a mean of unit embeddings
