"""The HSC bundle: its algorithm keys and ablations, the default data under the histology profile, a short run
that evaluation, inference and export read back, the HAM10000 overlay, the real sample tiles, and two processes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from bundle_helpers import (
    BASELINE_ALGORITHMS,
    build_algorithm,
    bundle_parser,
    check_embedding_network,
    check_export_matches_trained_network,
    check_grey_data_reaches_the_network_as_rgb,
    check_tiny_trained_config,
    evaluate_trained_bundle,
    infer_with_trained_bundle,
    run_dirs,
    train_in_process,
    train_in_two_processes,
    trained_config,
    training_checkpoint,
)
from conftest import shared_data
from monai.bundle import ConfigParser

from monai_ssl_ext.algorithms import HSC
from monai_ssl_ext.networks import Classifier

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "hsc_histology"
HAM_MANIFEST = REPO / "data_manifests" / "ham10000" / "ham10000.json"
CRC_MANIFEST = REPO / "data_manifests" / "nct_crc_he" / "crc_he_9class_samples.json"
# the three components and the ablation that switches each off
SWITCHES = ("use_neighbourhood", "use_prototypes", "use_consistency")
ABLATIONS = {"hsc": None, "hsc_no_neighbourhood": "use_neighbourhood"}
ABLATIONS.update(hsc_no_prototypes="use_prototypes", hsc_no_consistency="use_consistency")


def _parser(configs: tuple[str, ...] = ("train.json",), data: Path | None = None, **overrides) -> ConfigParser:
    return bundle_parser(BUNDLE, configs, data, **overrides)


def test_every_algorithm_key_builds_on_the_same_network(small_data):
    parser = _parser(data=small_data)
    assert parser["algorithm_name"] == "hsc"
    assert set(parser["algorithms"]) == {*ABLATIONS, "hsc_no_labeled_prototypes", *BASELINE_ALGORITHMS}
    for name, off in ABLATIONS.items():
        algorithm = build_algorithm(parser, name)
        assert type(algorithm) is HSC and algorithm.embed_dim == 128 and algorithm.num_classes == 2, name
        # each ablation switches exactly its own component off, and only that one
        assert {s: getattr(algorithm, s) for s in SWITCHES} == {s: s != off for s in SWITCHES}, name
        assert algorithm.lambda_s == 1.0, name
    algorithm = build_algorithm(parser, "hsc_no_labeled_prototypes")
    assert type(algorithm) is HSC and algorithm.lambda_s == 0.0 and all(getattr(algorithm, s) for s in SWITCHES)
    for name, cls in BASELINE_ALGORITHMS.items():
        assert type(build_algorithm(parser, name)) is cls, name
    check_embedding_network(parser, Classifier)


def test_default_grey_data_reaches_the_histology_network_as_three_equal_channels(small_data):
    # the synthetic default is greyscale; the histology profile replicates it to RGB, so the bundle runs with
    # its defaults on a fresh machine (the strong view's stain jitter then tints the grey)
    check_grey_data_reaches_the_network_as_rgb(_parser(data=small_data, label_budget=12), "histology")


def test_hsc_trains_and_evaluation_inference_and_export_read_the_trained_model(tmp_path, small_data):
    # the training workflow's own steps (the config's "training" list), in this process
    train = _parser(data=small_data, num_iterations=6, val_interval=3, label_budget=12)
    history = train_in_process(train, tmp_path)
    check_tiny_trained_config(tmp_path, algorithm="hsc", modality="histology")
    assert history["iteration"] == [6]
    # every component ran: prototype alignment and consistency losses, a bank filling, its neighbourhoods
    for term in ("loss_prototype", "loss_consistency", "bank_filled", "compactness", "neighbour_agreement"):
        assert math.isfinite(history["scalars"][term][-1]), term
    # bank and prototypes are in the training checkpoint, so a resumed run finds the same neighbours
    algorithm = training_checkpoint(tmp_path)["algorithm"]
    assert int(algorithm["bank.filled"]) == 6 * (4 + 8) and bool(algorithm["prototypes.seen"].all())

    # evaluation: the data, modality and network from train_config.json, nothing repeated but where to write
    evaluate = evaluate_trained_bundle(BUNDLE, tmp_path, algorithm="hsc", modality="histology")
    assert evaluate.get_parsed_content("image_size") == 32
    # inference: the plain-logits network with the projection head takes the trained weights as they are
    infer = infer_with_trained_bundle(BUNDLE, tmp_path, small_data, count=5)
    # export: the trained weights in TorchScript, plain logits, the trained input declared
    check_export_matches_trained_network(BUNDLE, tmp_path, infer, image_modality="SM")


def test_ham10000_overlay_trains_hsc_on_dermoscopy_with_the_manifest_classes(small_data):
    from monai.bundle import verify_metadata

    from monai_ssl_ext.bundle.checks import DEFAULT_SCHEMA

    classes = json.loads(HAM_MANIFEST.read_text())["classes"]
    assert len(classes) == 7
    parser = _parser(("train.json", "ham10000.json"), data=small_data, class_names=classes)
    assert parser["modality"] == "dermoscopy" and parser["algorithm_name"] == "hsc"
    assert parser.get_parsed_content("profile").name == "dermoscopy"
    net = parser.get_parsed_content("network_def")
    assert net.encoder.conv1.in_channels == 3 and net.head.out_features == 7
    algorithm = parser.get_parsed_content("algorithm")
    assert type(algorithm) is HSC and algorithm.num_classes == 7 and algorithm.bank.num_classes == 7
    if DEFAULT_SCHEMA.is_file():
        metas = [str(BUNDLE / "configs" / m) for m in ("metadata.json", "ham10000_metadata.json")]
        verify_metadata(meta_file=metas, filepath=str(DEFAULT_SCHEMA))


@pytest.mark.real_data
def test_hsc_runs_on_the_real_crc_he_sample_tiles(tmp_path):
    root = shared_data("histology", "crc_he_9class_samples")
    where = {"datalist": str(CRC_MANIFEST), "data_root": str(root), **run_dirs(tmp_path)}
    parser = _parser(num_iterations=2, val_interval=2, **where)
    assert all(n > 0 for n in parser.get_parsed_content("label_split").per_class.values())
    parser.get_parsed_content("training")
    trained = trained_config(tmp_path)
    assert len(trained["class_names"]) == 9 and trained["modality"] == "histology"
    assert (tmp_path / "models" / "model.pt").is_file()


@pytest.mark.slow
def test_two_process_hsc_training_keeps_one_bank(tmp_path, small_data):
    train_in_two_processes(BUNDLE, small_data, tmp_path, label_budget=12)
    state = training_checkpoint(tmp_path)
    # each step's entries of both processes went into the bank: 4 steps x 2 processes x (4 + 8) embeddings
    assert int(state["algorithm"]["bank.filled"]) == 4 * 2 * (4 + 8)
