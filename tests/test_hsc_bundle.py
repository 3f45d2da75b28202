"""The HSC bundle: its algorithm keys and ablations, the default data under the histology profile, a short run
that evaluation, inference and export read back, the HAM10000 overlay, the real sample tiles, and two processes."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import shared_data
from monai.bundle import ConfigParser

from monai_ssl_ext.algorithms import HSC, FixMatch, FlexMatch, FreeMatch, MeanTeacher, SoftMatch, Supervised
from monai_ssl_ext.bundle import bundle_command, run_workflow
from monai_ssl_ext.cli import main
from monai_ssl_ext.data.synthetic import ensure_synthetic_dataset
from monai_ssl_ext.engines import load_model_weights
from monai_ssl_ext.networks import Classifier

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "hsc_histology"
HAM_MANIFEST = REPO / "data_manifests" / "ham10000" / "ham10000.json"
CRC_MANIFEST = REPO / "data_manifests" / "nct_crc_he" / "crc_he_9class_samples.json"
TINY = {"image_size": 32, "backbone": "resnet10", "num_workers": 0, "labeled_batch_size": 4, "unlabeled_batch_size": 8}
# the three components and the ablation that switches each off
SWITCHES = ("use_neighbourhood", "use_prototypes", "use_consistency")
ABLATIONS = {"hsc": None, "hsc_no_neighbourhood": "use_neighbourhood"}
ABLATIONS.update(hsc_no_prototypes="use_prototypes", hsc_no_consistency="use_consistency")


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
    assert parser["algorithm_name"] == "hsc"
    assert set(parser["algorithms"]) == {*ABLATIONS, "hsc_no_labeled_prototypes", *baselines}
    for name, off in ABLATIONS.items():
        parser["algorithm_name"] = name
        parser.parse()
        algorithm = parser.get_parsed_content("algorithm")
        assert type(algorithm) is HSC and algorithm.embed_dim == 128 and algorithm.num_classes == 2, name
        # each ablation switches exactly its own component off, and only that one
        assert {s: getattr(algorithm, s) for s in SWITCHES} == {s: s != off for s in SWITCHES}, name
        assert algorithm.lambda_s == 1.0, name
    parser["algorithm_name"] = "hsc_no_labeled_prototypes"
    parser.parse()
    algorithm = parser.get_parsed_content("algorithm")
    assert type(algorithm) is HSC and algorithm.lambda_s == 0.0 and all(getattr(algorithm, s) for s in SWITCHES)
    for name, cls in baselines.items():
        parser["algorithm_name"] = name
        parser.parse()
        assert type(parser.get_parsed_content("algorithm")) is cls, name
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, Classifier) and net.embed_dim == 128 and net.return_dict
    out = net.eval()(torch.rand(2, 3, 32, 32))
    assert out["class"].shape == (2, 2) and out["embedding"].shape == (2, 128)


def test_default_grey_data_reaches_the_histology_network_as_three_equal_channels(small_data):
    # the synthetic default is greyscale; the histology profile replicates it to RGB, so the bundle runs with
    # its defaults on a fresh machine (the strong view's stain jitter then tints the grey)
    parser = _parser(data=small_data, label_budget=12)
    assert parser.get_parsed_content("profile").name == "histology"
    assert parser.get_parsed_content("network_def").encoder.conv1.in_channels == 3
    batch = next(iter(parser.get_parsed_content("train#dataloader")))
    image = batch["labeled"]["image"]
    assert image.shape[1] == 3 and torch.equal(image[:, 0], image[:, 1]) and torch.equal(image[:, 1], image[:, 2])
    strong = batch["unlabeled"]["image_strong"]
    assert strong.shape == (8, 3, 32, 32) and float(strong.min()) >= 0.0 and float(strong.max()) <= 1.0


def test_hsc_trains_and_evaluation_inference_and_export_read_the_trained_model(tmp_path, small_data):
    where = {"ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "run")}
    # the training workflow's own steps (the config's "training" list), in this process
    train = _parser(data=small_data, num_iterations=6, val_interval=3, label_budget=12, **where)
    train.get_parsed_content("training")
    trained = json.loads((tmp_path / "models" / "train_config.json").read_text())
    assert (trained["algorithm_name"], trained["modality"], trained["in_channels"]) == ("hsc", "histology", 3)
    assert (trained["embed_dim"], trained["image_size"], trained["backbone"]) == (128, 32, "resnet10")
    assert trained["class_names"] == ["benign", "malignant"]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert history["iteration"] == [6]
    # every component ran: prototype alignment and consistency losses, a bank filling, its neighbourhoods
    for term in ("loss_prototype", "loss_consistency", "bank_filled", "compactness", "neighbour_agreement"):
        assert math.isfinite(history["scalars"][term][-1]), term
    # bank and prototypes are in the training checkpoint, so a resumed run finds the same neighbours
    state = torch.load(tmp_path / "models" / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=False)
    algorithm = state["algorithm"]
    assert int(algorithm["bank.filled"]) == 6 * (4 + 8) and bool(algorithm["prototypes.seen"].all())

    # evaluation: the data, modality and network from train_config.json, nothing repeated but where to write
    evaluate = ConfigParser()
    evaluate.read_config([str(BUNDLE / "configs" / c) for c in ("train.json", "evaluate.json")])
    # num_workers is how this machine loads data, not a setting of the model
    runtime = {"bundle_root": str(BUNDLE), "device": "$torch.device('cpu')", "num_workers": 0}
    evaluate.update({**runtime, **where, "eval_output_dir": str(tmp_path / "eval")})
    assert evaluate.get_parsed_content("embed_dim") == 128 and evaluate.get_parsed_content("image_size") == 32
    assert evaluate.get_parsed_content("modality") == "histology"
    evaluate.get_parsed_content("evaluating")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["num_samples"] == 8
    assert metrics["extra"]["bundle"] == "hsc_histology" and metrics["extra"]["algorithm"] == "hsc"

    # inference: the plain-logits network with the projection head takes the trained weights as they are
    images = sorted((small_data.parent / "images").glob("*.png"))[:5]
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
    assert image_in["num_channels"] == 3 and image_in["spatial_shape"] == [32, 32] and image_in["modality"] == "SM"
    net = load_model_weights(infer.get_parsed_content("network_def"), checkpoint).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), net(x), atol=1e-5) and model(x).shape == (2, 2)


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
    overrides = {"datalist": str(CRC_MANIFEST), "data_root": str(root), "ckpt_dir": str(tmp_path / "models")}
    parser = _parser(num_iterations=2, val_interval=2, output_dir=str(tmp_path / "run"), **overrides)
    assert all(n > 0 for n in parser.get_parsed_content("label_split").per_class.values())
    parser.get_parsed_content("training")
    trained = json.loads((tmp_path / "models" / "train_config.json").read_text())
    assert len(trained["class_names"]) == 9 and trained["modality"] == "histology"
    assert (tmp_path / "models" / "model.pt").is_file()


@pytest.mark.slow
def test_two_process_hsc_training_keeps_one_bank(tmp_path, small_data):
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
    # each step's entries of both processes went into the bank: 4 steps x 2 processes x (4 + 8) embeddings
    assert int(state["algorithm"]["bank.filled"]) == 4 * 2 * (4 + 8)
