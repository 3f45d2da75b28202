"""Bundles: model-zoo checks for every bundle, and the workflows a user runs, end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from bundle_helpers import (
    build_algorithm,
    bundle_parser,
    exception_chain_messages,
    inference_overrides,
    read_predictions,
    run_bundle,
    run_evaluation,
    train_in_two_processes,
    trained_config,
    workflow_overrides,
)
from conftest import export_torchscript, shared_data

from monai_ssl_ext.bundle.checks import check_bundle
from monai_ssl_ext.cli import main
from monai_ssl_ext.data.synthetic import ensure_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p for p in (REPO / "bundles").iterdir() if (p / "configs").is_dir())
SCHEMA = REPO.parent / "shared" / "schemas" / "meta_schema_20240725.json"
BASELINES = REPO / "bundles" / "baselines_ultrasound"


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_bundle_passes_model_zoo_checks(bundle):
    # files, metadata, workflow properties, README (sections and a command for every workflow), shapes, export
    if not SCHEMA.is_file():
        pytest.skip(f"metadata schema absent: {SCHEMA}")
    report = check_bundle(bundle, schema=SCHEMA)
    assert report["metadata"] == "ok" and report["readme"] == "ok" and report["properties"] == ["train", "infer"]
    assert report["net_in_out"] in ("verify_net_in_out", "named outputs")
    assert report["export"]["ts_bytes"] > 0


def test_every_algorithm_key_of_the_bundle_instantiates(tmp_path):
    data = ensure_synthetic_dataset(tmp_path / "data", num_images=40, image_size=32)
    parser = bundle_parser(BASELINES, data=data)
    for name in ("supervised", "mean_teacher", "fixmatch", "flexmatch", "freematch", "softmatch"):
        algorithm = build_algorithm(parser, name)
        assert type(algorithm).__name__.lower().replace("_", "") == name.replace("_", "")
    # one key selects the modality; the network's input channels follow its profile
    for modality, channels in (("ultrasound", 1), ("dermoscopy", 3), ("histology", 3)):
        parser["algorithm_name"] = "supervised"
        parser["modality"] = modality
        parser.parse()
        assert parser.get_parsed_content("profile").name == modality
        assert parser.get_parsed_content("network_def").encoder.conv1.in_channels == channels
    parser["modality"] = "ultrasound"
    parser["algorithm_name"] = "fixmach"
    parser.parse()
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("algorithm")
    # monai.bundle wraps the error of a config expression; the cause names the choices
    messages = exception_chain_messages(err.value)
    assert any("choose one of" in m and "flexmatch" in m for m in messages), messages


def _run(tmp_path, run_id, configs, overrides, expect_fail=False):
    return run_bundle(BASELINES, tmp_path, run_id, configs, overrides, expect_fail=expect_fail)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    # 60 images rather than conftest's 40: the end-to-end run's test split is 12 of them
    root = tmp_path_factory.mktemp("synthetic")
    return ensure_synthetic_dataset(root, num_images=60, image_size=48)


def _tensorboard_tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for events in run_dir.glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    return tags


@pytest.mark.slow
def test_train_resume_evaluate_infer_export_end_to_end(tmp_path, small_data):
    # the README's sequence: smoke profile (64 px, ResNet-10), then every other workflow with no setting repeated
    base = {
        "num_workers": 0,
        "labeled_batch_size": 4,
        "unlabeled_batch_size": 8,
        "datalist": str(small_data),
        "data_root": str(small_data.parent),
        "ckpt_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "run"),
        "algorithm_name": "mean_teacher",
        "val_interval": 2,
    }
    smoke = ["train.json", "profiles/smoke.json"]
    log = _run(tmp_path, "training", smoke, {**base, "num_iterations": 4})
    assert "[train] 4/4 (100%)" in log and "ETA" in log
    assert (tmp_path / "models" / "model.pt").is_file()
    assert (tmp_path / "models" / "checkpoint_epoch=2.pt").is_file()
    for name in ("history.json", "training_curves.png", "train_summary.json"):
        assert (tmp_path / "run" / name).is_file(), name
    trained = trained_config(tmp_path)
    assert (trained["image_size"], trained["backbone"], trained["in_channels"]) == (64, "resnet10", 1)
    assert trained["class_names"] == ["benign", "malignant"] and trained["algorithm_name"] == "mean_teacher"
    # TensorBoard: training scalars and learning rate per iteration, validation metrics at each validation
    assert {"loss", "loss_sup", "lr", "val_auc", "val_accuracy"} <= _tensorboard_tags(tmp_path / "run")

    # resume: same run extended to 8 iterations continues from iteration 4
    log = _run(tmp_path, "training", smoke, {**base, "num_iterations": 8, "resume_from": "latest"})
    assert "resuming at iteration 4/8" in log and "[train] 8/8 (100%)" in log
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["validation"]["epoch"] == [1, 2, 3, 4]

    metrics = run_evaluation(BASELINES, tmp_path)
    assert metrics["split"] == "test" and metrics["num_samples"] == 12
    assert metrics["extra"]["algorithm"] == "mean_teacher" and metrics["extra"]["bundle"] == "baselines_ultrasound"
    assert {"accuracy", "balanced_accuracy", "macro_f1", "auc", "sensitivity", "specificity", "ece"} <= set(
        metrics["classification"]
    )
    assert (tmp_path / "eval" / "confusion_matrix.png").is_file()
    assert (tmp_path / "eval" / "reliability_diagram.png").is_file()

    images = small_data.parent / "images"
    checkpoint = str(tmp_path / "models" / "model.pt")
    infer = inference_overrides(tmp_path, images)
    _run(tmp_path, "run", ["inference.json"], infer)
    rows = read_predictions(tmp_path / "infer")
    assert len(rows) == len(list(images.glob("*.png")))
    assert abs(float(rows[0]["prob_benign"]) + float(rows[0]["prob_malignant"]) - 1) < 1e-5
    assert all(r["image"] == Path(r["image"]).name for r in rows)  # named relative to the input folder
    # a hospital export: a corrupt file is named and fails the run, after the others' predictions are written
    export = tmp_path / "exports" / "DOE^JANE"
    shutil.copytree(images, export)
    (export / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    second = {**infer, "input_dir": str(export), "output_dir": str(tmp_path / "infer2")}
    error = _run(tmp_path, "run", ["inference.json"], second, expect_fail=True)
    assert "1 input(s) got no prediction (corrupt.png: cannot be read" in error.splitlines()[0]
    assert len(read_predictions(tmp_path / "infer2")) == len(rows)
    assert "DOE" not in (tmp_path / "infer2" / "predictions.csv").read_text()
    assert "corrupt.png,failed,cannot be read" in (tmp_path / "infer2" / "skipped.csv").read_text()
    # a DICOM export through monai-ssl predict: an SR in the image's study, linked from the row by its UIDs
    pydicom = pytest.importorskip("pydicom")
    from monai_ssl_ext.deploy.dicom_results import read_classification_report

    scanner = tmp_path / "scanner"
    scanner.mkdir()
    shutil.copy(shared_data("dicom", "US1_UNCR.dcm"), scanner / "IM0001")  # as a PACS names them: no suffix
    main(["predict", str(scanner), "--checkpoint", checkpoint, "--output", str(tmp_path / "dicom_out")])
    (row,) = read_predictions(tmp_path / "dicom_out")
    source = pydicom.dcmread(scanner / "IM0001", stop_before_pixels=True)
    assert (row["image"], row["sop_uid"]) == ("IM0001", source.SOPInstanceUID)
    assert row["study_uid"] == source.StudyInstanceUID
    report = read_classification_report(pydicom.dcmread(tmp_path / "dicom_out" / row["dicom_sr"]))
    assert report["finding"] == row["prediction"] and report["algorithm"] == "baselines_ultrasound mean_teacher"
    # a network that does not fit the weights: one line naming the checkpoint and the first differing key
    error = _run(tmp_path, "run", ["inference.json"], {**infer, "backbone": "resnet18"}, expect_fail=True)
    first = error.splitlines()[0]
    assert checkpoint in first and "do not fit the network" in first
    assert "CheckpointMismatchError" in first and "encoder." in first

    ts = tmp_path / "model.ts"
    main(["export", checkpoint, str(ts), "--bundle", str(BASELINES)])
    extra = {"metadata.json": "", "inference.json": ""}
    model = torch.jit.load(str(ts), _extra_files=extra)
    image_in = json.loads(extra["metadata.json"])["network_data_format"]["inputs"]["image"]
    pred_out = json.loads(extra["metadata.json"])["network_data_format"]["outputs"]["pred"]
    assert image_in["spatial_shape"] == [64, 64] and image_in["num_channels"] == 1
    assert pred_out["channel_def"] == {"0": "benign", "1": "malignant"}
    embedded = json.loads(extra["inference.json"])
    assert (embedded["image_size"], embedded["backbone"], embedded["in_channels"]) == (64, "resnet10", 1)
    probs = torch.softmax(model(torch.rand(2, 1, 64, 64)), dim=1)
    assert probs.shape == (2, 2) and torch.allclose(probs.sum(1), torch.ones(2))

    # model-zoo's own export command builds the trained network too (it reads the file beside the weights)
    export_torchscript(BASELINES, tmp_path / "models" / "model.pt", tmp_path / "raw.ts", checkpoint=checkpoint)
    assert torch.jit.load(str(tmp_path / "raw.ts"))(torch.rand(1, 1, 64, 64)).shape == (1, 2)


@pytest.mark.slow
def test_two_process_torchrun_training_completes(tmp_path, small_data):
    train_in_two_processes(BASELINES, small_data, tmp_path, algorithm_name="flexmatch")
    assert (tmp_path / "models" / "model.pt").is_file()
    assert trained_config(tmp_path)["algorithm_name"] == "flexmatch"
    # TensorBoard from rank 0 only: every events file comes from one process
    writers = {p.name.split(".")[-2] for p in (tmp_path / "run").glob("events.out.tfevents.*")}
    assert len(writers) == 1, sorted(p.name for p in (tmp_path / "run").glob("events.out.tfevents.*"))
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["iterations"] == 4


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"data_root": "/nonexistent/busi"}, "does not exist"),
        ({"label_budget": 10_000}, "larger than the training split"),
        ({"label_budget": 1}, "smaller than the number of classes"),
        ({"algorithm_name": "fixmach"}, "choose one of"),
    ],
    ids=["missing-data-root", "budget-too-large", "budget-below-classes", "algorithm-typo"],
)
def test_bad_input_fails_before_training_with_a_clear_message(tmp_path, small_data, overrides, message):
    base = workflow_overrides(small_data, tmp_path, num_iterations=2)
    text = _run(tmp_path, "training", ["train.json"], {**base, **overrides}, expect_fail=True)
    assert message in text
    assert "[train]" not in (tmp_path / "training.log").read_text()  # nothing trained
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_missing_manifest_file_is_named(tmp_path, small_data):
    data = json.loads(small_data.read_text())
    data["training"][0]["image"] = "images/does_not_exist.png"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))
    from monai_ssl_ext.data import load_manifest

    with pytest.raises(FileNotFoundError, match=r"does_not_exist\.png"):
        load_manifest(broken, small_data.parent)


@pytest.mark.slow
def test_tracking_mlflow_records_the_run_that_mlflow_reads_back(tmp_path, small_data):
    mlflow = pytest.importorskip("mlflow")
    tracking = {"tracking": "mlflow", "experiment_name": "baselines_test"}
    overrides = workflow_overrides(small_data, tmp_path, num_iterations=4, val_interval=2, **tracking)
    _run(tmp_path, "training", ["train.json"], overrides)
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'run' / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("baselines_test")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 4
    assert len(client.get_metric_history(run.info.run_id, "val_auc")) == 2
