"""The CLCP-MT bundle: its algorithm keys and ablations, the default data under the dermoscopy profile, a short run
that evaluation, inference and export read back, the chest X-ray overlay, the real manifests, and two processes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from bundle_helpers import (
    BASELINE_ALGORITHMS,
    build_algorithm,
    bundle_parser,
    check_embedding_network,
    check_export_matches_trained_network,
    check_grey_data_reaches_the_network_as_rgb,
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

from monai_ssl_ext.algorithms import CLCPMT, ClassAdaptiveThreshold, FixedThreshold
from monai_ssl_ext.networks import Classifier

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "clcpmt_dermoscopy"
HAM_MANIFEST = REPO / "data_manifests" / "ham10000" / "ham10000.json"
CXR_MANIFEST = REPO / "data_manifests" / "chest_xray" / "kermany_pneumonia128.json"
# the two components and the ablation that switches each off
SWITCHES = ("use_sde", "use_capr")
ABLATIONS = {"clcpmt": None, "clcpmt_no_sde": "use_sde", "clcpmt_no_capr": "use_capr"}


def _parser(configs: tuple[str, ...] = ("train.json",), data: Path | None = None, **overrides) -> ConfigParser:
    return bundle_parser(BUNDLE, configs, data, **overrides)


def test_every_algorithm_key_builds_on_the_same_network(small_data):
    parser = _parser(data=small_data)
    assert parser["algorithm_name"] == "clcpmt" and parser["modality"] == "dermoscopy"
    assert set(parser["algorithms"]) == {*ABLATIONS, *BASELINE_ALGORITHMS}
    for name, off in ABLATIONS.items():
        algorithm = build_algorithm(parser, name)
        assert type(algorithm) is CLCPMT and algorithm.num_classes == 2, name
        # each ablation switches exactly its own component off, and only that one
        assert {s: getattr(algorithm, s) for s in SWITCHES} == {s: s != off for s in SWITCHES}, name
        # CAPR off: one fixed bar at the class's threshold default instead of the class-adaptive ones
        selector = ClassAdaptiveThreshold if off != "use_capr" else FixedThreshold
        assert type(algorithm.selector) is selector, name
    for name, cls in BASELINE_ALGORITHMS.items():
        assert type(build_algorithm(parser, name)) is cls, name
    check_embedding_network(parser, Classifier)


def test_default_grey_data_reaches_the_dermoscopy_network_as_three_equal_channels(small_data):
    # the synthetic default is greyscale; the dermoscopy profile replicates it to RGB, so the bundle runs with
    # its defaults on a fresh machine
    check_grey_data_reaches_the_network_as_rgb(_parser(data=small_data, label_budget=12), "dermoscopy")


def test_clcpmt_trains_and_evaluation_inference_and_export_read_the_trained_model(tmp_path, small_data):
    # the training workflow's own steps (the config's "training" list), in this process
    train = _parser(data=small_data, num_iterations=4, val_interval=2, label_budget=12)
    history = train_in_process(train, tmp_path)
    check_tiny_trained_config(tmp_path, algorithm="clcpmt", modality="dermoscopy")
    # every component ran: Mean Teacher's consistency, CAPR's pseudo labels and thresholds, SDE's contrast
    for term in ("loss_consistency", "loss_capr", "loss_sde", "threshold_mean", "threshold_min"):
        assert math.isfinite(history["scalars"][term][-1]), term
    # CAPR's progress and ramp step are in the training checkpoint, so a resumed run keeps its thresholds
    algorithm = training_checkpoint(tmp_path)["algorithm"]
    assert algorithm["selector.progress"].shape == (2,) and int(algorithm["selector.current_step"]) == 3
    assert not torch.equal(algorithm["selector.progress"], torch.full((2,), 0.5))

    # evaluation: the data, modality and network from train_config.json, nothing repeated but where to write
    evaluate_trained_bundle(BUNDLE, tmp_path, algorithm="clcpmt", modality="dermoscopy")
    # inference: the plain-logits network with the projection head takes the trained weights as they are
    infer = infer_with_trained_bundle(BUNDLE, tmp_path, small_data, count=3)
    # export: the trained weights in TorchScript, plain logits, the trained input declared
    check_export_matches_trained_network(BUNDLE, tmp_path, infer, image_modality="XC")


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
    check_two_class_embedding_outputs(net, in_channels=1)
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
    train_in_two_processes(BUNDLE, small_data, tmp_path, label_budget=12)
    state = training_checkpoint(tmp_path)
    # CAPR's class progress (reduced over both processes), its ramp step and the teacher are in the checkpoint
    algorithm = state["algorithm"]
    assert algorithm["selector.progress"].shape == (2,) and int(algorithm["selector.current_step"]) == 3
    assert not torch.equal(algorithm["selector.progress"], torch.full((2,), 0.5))
    assert any(key.startswith("teacher.") for key in algorithm)
