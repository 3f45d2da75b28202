"""The CLCP-MT bundle: its algorithm keys and ablations, the default data under the dermoscopy profile, a short run
that evaluation, inference and export read back, the chest X-ray overlay, the real manifests, and two processes."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import shared_data
from monai.bundle import ConfigParser

from monai_ssl_ext.algorithms import (
    CLCPMT,
    ClassAdaptiveThreshold,
    FixedThreshold,
    FixMatch,
    FlexMatch,
    FreeMatch,
    MeanTeacher,
    SoftMatch,
    Supervised,
)
from monai_ssl_ext.bundle import bundle_command, run_workflow
from monai_ssl_ext.cli import main
from monai_ssl_ext.data.synthetic import ensure_synthetic_dataset
from monai_ssl_ext.engines import load_model_weights
from monai_ssl_ext.networks import Classifier

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "clcpmt_dermoscopy"
HAM_MANIFEST = REPO / "data_manifests" / "ham10000" / "ham10000.json"
CXR_MANIFEST = REPO / "data_manifests" / "chest_xray" / "kermany_pneumonia128.json"
TINY = {"image_size": 32, "backbone": "resnet10", "num_workers": 0, "labeled_batch_size": 4, "unlabeled_batch_size": 8}
# the two components and the ablation that switches each off
SWITCHES = ("use_sde", "use_capr")
ABLATIONS = {"clcpmt": None, "clcpmt_no_sde": "use_sde", "clcpmt_no_capr": "use_capr"}


def _parser(configs: tuple[str, ...] = ("train.json",), data: Path | None = None, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / c) for c in configs])
    where = {"datalist": str(data), "data_root": str(data.parent)} if data is not None else {}
    parser.update({"bundle_root": str(BUNDLE), "device": "$torch.device('cpu')", **TINY, **where, **overrides})
    return parser


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    # the bundle's default data: the generated greyscale ultrasound-like set, two classes
    return ensure_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), num_images=40, image_size=48)


def test_every_algorithm_key_builds_on_the_same_network(small_data):
    parser = _parser(data=small_data)
    baselines = {
        "supervised": Supervised,
        "mean_teacher": MeanTeacher,
        "fixmatch": FixMatch,
        "flexmatch": FlexMatch,
        "freematch": FreeMatch,
        "softmatch": SoftMatch,
    }
    assert parser["algorithm_name"] == "clcpmt" and parser["modality"] == "dermoscopy"
    assert set(parser["algorithms"]) == {*ABLATIONS, *baselines}
    for name, off in ABLATIONS.items():
        parser["algorithm_name"] = name
        parser.parse()
        algorithm = parser.get_parsed_content("algorithm")
        assert type(algorithm) is CLCPMT and algorithm.num_classes == 2, name
        # each ablation switches exactly its own component off, and only that one
        assert {s: getattr(algorithm, s) for s in SWITCHES} == {s: s != off for s in SWITCHES}, name
        # CAPR off: one fixed bar at the class's threshold default instead of the class-adaptive ones
        selector = ClassAdaptiveThreshold if off != "use_capr" else FixedThreshold
        assert type(algorithm.selector) is selector, name
    for name, cls in baselines.items():
        parser["algorithm_name"] = name
        parser.parse()
        assert type(parser.get_parsed_content("algorithm")) is cls, name
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, Classifier) and net.embed_dim == 128 and net.return_dict
    out = net.eval()(torch.rand(2, 3, 32, 32))
    assert out["class"].shape == (2, 2) and out["embedding"].shape == (2, 128)


def test_default_grey_data_reaches_the_dermoscopy_network_as_three_equal_channels(small_data):
    # the synthetic default is greyscale; the dermoscopy profile replicates it to RGB, so the bundle runs with
    # its defaults on a fresh machine
    parser = _parser(data=small_data, label_budget=12)
    assert parser.get_parsed_content("profile").name == "dermoscopy"
    assert parser.get_parsed_content("network_def").encoder.conv1.in_channels == 3
    batch = next(iter(parser.get_parsed_content("train#dataloader")))
    image = batch["labeled"]["image"]
    assert image.shape[1] == 3 and torch.equal(image[:, 0], image[:, 1]) and torch.equal(image[:, 1], image[:, 2])
    strong = batch["unlabeled"]["image_strong"]
    assert strong.shape == (8, 3, 32, 32) and float(strong.min()) >= 0.0 and float(strong.max()) <= 1.0


def test_clcpmt_trains_and_evaluation_inference_and_export_read_the_trained_model(tmp_path, small_data):
    where = {"ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "run")}
    # the training workflow's own steps (the config's "training" list), in this process
    train = _parser(data=small_data, num_iterations=4, val_interval=2, label_budget=12, **where)
    train.get_parsed_content("training")
    trained = json.loads((tmp_path / "models" / "train_config.json").read_text())
    assert (trained["algorithm_name"], trained["modality"], trained["in_channels"]) == ("clcpmt", "dermoscopy", 3)
    assert (trained["embed_dim"], trained["image_size"], trained["backbone"]) == (128, 32, "resnet10")
    assert trained["class_names"] == ["benign", "malignant"]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    # every component ran: Mean Teacher's consistency, CAPR's pseudo labels and thresholds, SDE's contrast
    for term in ("loss_consistency", "loss_capr", "loss_sde", "threshold_mean", "threshold_min"):
        assert math.isfinite(history["scalars"][term][-1]), term
    # CAPR's progress and ramp step are in the training checkpoint, so a resumed run keeps its thresholds
    state = torch.load(tmp_path / "models" / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=False)
    algorithm = state["algorithm"]
    assert algorithm["selector.progress"].shape == (2,) and int(algorithm["selector.current_step"]) == 3
    assert not torch.equal(algorithm["selector.progress"], torch.full((2,), 0.5))

    # evaluation: the data, modality and network from train_config.json, nothing repeated but where to write
    evaluate = ConfigParser()
    evaluate.read_config([str(BUNDLE / "configs" / c) for c in ("train.json", "evaluate.json")])
    runtime = {"bundle_root": str(BUNDLE), "device": "$torch.device('cpu')", "num_workers": 0}
    evaluate.update({**runtime, **where, "eval_output_dir": str(tmp_path / "eval")})
    assert evaluate.get_parsed_content("embed_dim") == 128 and evaluate.get_parsed_content("modality") == "dermoscopy"
    evaluate.get_parsed_content("evaluating")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["num_samples"] == 8
    assert metrics["extra"]["bundle"] == "clcpmt_dermoscopy" and metrics["extra"]["algorithm"] == "clcpmt"

    # inference: the plain-logits network with the projection head takes the trained weights as they are
    images = sorted((small_data.parent / "images").glob("*.png"))[:3]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for image in images:
        (inputs / image.name).write_bytes(image.read_bytes())
    checkpoint = tmp_path / "models" / "model.pt"
    infer = ConfigParser()
    infer.read_config(str(BUNDLE / "configs" / "inference.json"))
    infer.update(
        {
            "bundle_root": str(BUNDLE),
            "device": "$torch.device('cpu')",
            "checkpoint": str(checkpoint),
            "input_dir": str(inputs),
            "output_dir": str(tmp_path / "infer"),
        }
    )
    assert infer.get_parsed_content("class_names") == ["benign", "malignant"]
    infer.get_parsed_content("inferring")
    with open(tmp_path / "infer" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(images)
    assert all(abs(float(r["prob_benign"]) + float(r["prob_malignant"]) - 1) < 1e-5 for r in rows)

    # export: the trained weights in TorchScript, plain logits, the trained input declared
    ts = tmp_path / "model.ts"
    main(["export", str(checkpoint), str(ts), "--bundle", str(BUNDLE)])
    extra = {"metadata.json": "", "inference.json": ""}
    model = torch.jit.load(str(ts), _extra_files=extra)
    image_in = json.loads(extra["metadata.json"])["network_data_format"]["inputs"]["image"]
    assert image_in["num_channels"] == 3 and image_in["spatial_shape"] == [32, 32] and image_in["modality"] == "XC"
    net = load_model_weights(infer.get_parsed_content("network_def"), checkpoint).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), net(x), atol=1e-5) and model(x).shape == (2, 2)


def test_default_classes_are_ham10000s_in_the_manifests_order():
    inference = json.loads((BUNDLE / "configs" / "inference.json").read_text())
    assert inference["fallback"]["class_names"] == json.loads(HAM_MANIFEST.read_text())["classes"]
    assert inference["fallback"]["modality"] == "dermoscopy"
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 7 and "eval_metrics" not in meta


def test_chest_xray_overlay_trains_clcpmt_on_one_grey_channel_with_two_classes(small_data):
    from monai.bundle import verify_metadata

    from monai_ssl_ext.bundle.checks import DEFAULT_SCHEMA

    classes = json.loads(CXR_MANIFEST.read_text())["classes"]
    assert classes == ["normal", "pneumonia"]
    parser = _parser(("train.json", "chest_xray.json"), data=small_data, class_names=classes)
    assert parser["modality"] == "xray" and parser["algorithm_name"] == "clcpmt"
    profile = parser.get_parsed_content("profile")
    assert profile.name == "xray" and profile.channels == 1
    net = parser.get_parsed_content("network_def")
    assert net.encoder.conv1.in_channels == 1 and net.head.out_features == 2
    out = net.eval()(torch.rand(2, 1, 32, 32))
    assert out["class"].shape == (2, 2) and out["embedding"].shape == (2, 128)
    algorithm = parser.get_parsed_content("algorithm")
    assert type(algorithm) is CLCPMT and algorithm.selector.num_classes == 2
    if DEFAULT_SCHEMA.is_file():
        metas = [str(BUNDLE / "configs" / m) for m in ("metadata.json", "chest_xray_metadata.json")]
        verify_metadata(meta_file=metas, filepath=str(DEFAULT_SCHEMA))


@pytest.mark.real_data
def test_chest_xray_manifest_splits_and_loads_the_real_radiographs():
    root = shared_data("chest_xray", "kermany_pneumonia128")
    parser = _parser(("train.json", "chest_xray.json"), datalist=str(CXR_MANIFEST), data_root=str(root))
    parser["label_budget"] = 0.05
    split = parser.get_parsed_content("label_split")
    assert set(split.per_class) == {"normal", "pneumonia"} and all(n > 0 for n in split.per_class.values())
    preprocess = parser.get_parsed_content("validate#preprocessing")
    item = preprocess(dict(parser.get_parsed_content("manifest").validation[0]))
    assert tuple(item["image"].shape) == (1, 32, 32)


@pytest.mark.slow
def test_two_process_clcpmt_training_keeps_one_set_of_thresholds(tmp_path, small_data):
    overrides = {
        **TINY,
        "datalist": str(small_data),
        "data_root": str(small_data.parent),
        "ckpt_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "run"),
        "num_iterations": 4,
        "val_interval": 2,
        "label_budget": 12,
    }
    cmd = bundle_command(BUNDLE, "training", ["train.json", "multi_gpu_train.json"], overrides, nproc=2)
    run_workflow(cmd, tmp_path / "ddp.log")
    assert "[train] 4/4 (100%)" in (tmp_path / "ddp.log").read_text()
    state = torch.load(tmp_path / "models" / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=False)
    # CAPR's class progress (reduced over both processes), its ramp step and the teacher are in the checkpoint
    algorithm = state["algorithm"]
    assert algorithm["selector.progress"].shape == (2,) and int(algorithm["selector.current_step"]) == 3
    assert not torch.equal(algorithm["selector.progress"], torch.full((2,), 0.5))
    assert any(key.startswith("teacher.") for key in algorithm)
