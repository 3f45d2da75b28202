"""EvaluationReport on a real MONAI SupervisedEvaluator, and evaluate_predictions without an engine."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from conftest import run_two_ranks
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator
from PIL import Image
from torch import nn

from monai_ssl_ext.engines import EvaluationReport
from monai_ssl_ext.metrics import (
    classification_metrics,
    evaluate_predictions,
    format_report,
    segmentation_metrics,
)

CLASSES = ["benign", "malignant", "normal"]
N = 10  # batches of 4: the last one is smaller


def _dataset(n: int = N, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        image = torch.rand(1, 16, 16, generator=g) * 0.3
        mask = torch.zeros(1, 16, 16)
        label = i % 3
        if label != 2:  # "normal" images have empty masks, as in BUSI
            r, c = 2 + i % 6, 3 + (i * 5) % 7
            mask[:, r : r + 6, c : c + 5] = 1
            image = image + 0.6 * mask
        items.append({"image": image, "label": label, "mask": mask})
    return items


class ClsNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class JointNet(ClsNet):
    """Returns ``{"class", "seg", "features"}``; the seg logits favour bright pixels, so masks are not trivial."""

    def __init__(self) -> None:
        super().__init__()
        self.seg = nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            self.seg.weight.copy_(torch.tensor([-4.0, 4.0]).view(2, 1, 1, 1))
            self.seg.bias.copy_(torch.tensor([3.0, -3.0]))  # threshold 0.75 cuts through the squares

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return {"class": self.fc(features), "seg": self.seg(x), "features": features}


def _expected(net: nn.Module, data: list[dict]) -> tuple[dict, dict | None]:
    """Metrics computed directly from the network's outputs on the whole data set."""
    images = torch.stack([d["image"] for d in data])
    labels = np.array([d["label"] for d in data])
    net.eval()
    with torch.no_grad():
        out = net(images)
    logits = out["class"] if isinstance(out, dict) else out
    cls = classification_metrics(torch.softmax(logits, 1).numpy(), labels, CLASSES)
    seg = None
    if isinstance(out, dict):
        pred = out["seg"].argmax(1).numpy() > 0
        seg = segmentation_metrics(pred, torch.stack([d["mask"][0] for d in data]).numpy())
    return cls, seg


def assert_close(a, b):
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (sorted(a), sorted(b))
        for k in a:
            assert_close(a[k], b[k])
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_close(x, y)
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-7, nan_ok=True)
    else:
        assert a == b


def _assert_png(path):
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) > 100
        im.verify()


def _run(net: nn.Module, tmp_path, decollate: bool, **kwargs) -> tuple[SupervisedEvaluator, EvaluationReport]:
    torch.manual_seed(0)
    loader = DataLoader(_dataset(), batch_size=4, shuffle=False, num_workers=0)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=loader, network=net, decollate=decollate
    )
    report = EvaluationReport(tmp_path, CLASSES, extra={"checkpoint": "models/model.pt", "bundle": "demo"}, **kwargs)
    report.attach(evaluator)
    evaluator.run()
    return evaluator, report


@pytest.mark.parametrize("decollate", [True, False])
def test_classification_network(tmp_path, decollate, caplog):
    torch.manual_seed(0)
    net = ClsNet()
    with caplog.at_level(logging.INFO, logger="monai_ssl_ext.evaluation"):
        evaluator, _ = _run(net, tmp_path, decollate, split="val")
    expected_cls, _ = _expected(net, _dataset())

    data = json.loads((tmp_path / "metrics.json").read_text())
    assert set(data) == {"split", "class_names", "num_samples", "positive_class", "classification", "extra"}
    assert data["split"] == "val" and data["class_names"] == CLASSES and data["num_samples"] == N
    assert data["extra"] == {"checkpoint": "models/model.pt", "bundle": "demo"}
    assert_close(expected_cls, data["classification"])
    assert_close(data, evaluator.state.metrics_report)
    for name in ("confusion_matrix.png", "reliability_diagram.png"):
        _assert_png(tmp_path / name)
    assert not (tmp_path / "mask_overlays.png").exists()
    assert "[val] 10 samples" in caplog.text and "malignant" in caplog.text


@pytest.mark.parametrize("decollate", [True, False])
def test_joint_network_with_masks(tmp_path, decollate):
    torch.manual_seed(0)
    net = JointNet()
    _run(net, tmp_path, decollate, prefix="test_")
    expected_cls, expected_seg = _expected(net, _dataset())

    data = json.loads((tmp_path / "test_metrics.json").read_text())
    assert_close(expected_cls, data["classification"])
    assert_close(expected_seg, data["segmentation"])
    assert data["segmentation"]["num_images"] == N and data["segmentation"]["num_nonempty"] == 7
    assert 0.2 < data["segmentation"]["dice_nonempty"] < 0.95  # the seg head finds part of each square
    for name in ("confusion_matrix.png", "reliability_diagram.png", "mask_overlays.png"):
        _assert_png(tmp_path / f"test_{name}")
    assert not (tmp_path / "metrics.json").exists()


def test_rerun_resets_and_probabilities_mode(tmp_path):
    torch.manual_seed(0)
    net = ClsNet()
    evaluator, _ = _run(net, tmp_path, True)
    evaluator.run()  # a second validation round must not accumulate the first one's samples
    assert json.loads((tmp_path / "metrics.json").read_text())["num_samples"] == N
    # already-softmaxed predictions with logits=False give the same figures
    report2 = EvaluationReport(tmp_path / "probs", CLASSES, logits=False, plots=False)
    logits = torch.randn(6, 3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    report2.collect({"pred": torch.softmax(logits, 1), "label": labels})
    out = report2.complete()
    assert_close(classification_metrics(torch.softmax(logits, 1), labels, CLASSES), out["classification"])
    assert not list((tmp_path / "probs").glob("*.png"))


def test_collect_reads_batch_labels_and_one_hot(tmp_path):
    report = EvaluationReport(tmp_path, ["a", "b"], plots=False)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    # label missing from the output: taken from the batch; one-hot labels are reduced with argmax
    report.collect([{"pred": logits[0]}, {"pred": logits[1]}], [{"label": 0}, {"label": 1}])
    report.collect({"pred": {"class": logits[2:]}, "label": torch.tensor([[0.0, 1.0]])})
    out = report.complete()
    assert out["classification"]["confusion_matrix"] == [[1, 0], [1, 1]]
    with pytest.raises(KeyError, match="class"):
        report.collect({"pred": {"seg": torch.zeros(1, 2, 4, 4)}, "label": torch.tensor([0])})
    with pytest.raises(ValueError, match="3 class outputs for 2"):
        report.collect({"pred": torch.zeros(1, 3), "label": torch.tensor([0])})


def test_evaluate_predictions_without_engine(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(2), size=20)
    labels = rng.integers(0, 2, 20)
    true = np.zeros((20, 8, 8), dtype=bool)
    true[:10, 2:6, 2:6] = True
    pred = np.roll(true, 1, axis=1)
    report = evaluate_predictions(probs, labels, ["neg", "pos"], tmp_path, pred_masks=pred, true_masks=true,
                                  images=rng.random((4, 1, 8, 8)), split="external", extra={"site": "B"})  # fmt: skip
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert_close(report, on_disk)
    assert on_disk["positive_class"] == 1 and on_disk["extra"] == {"site": "B"}
    assert_close(segmentation_metrics(pred, true), on_disk["segmentation"])
    for name in ("confusion_matrix.png", "reliability_diagram.png", "mask_overlays.png"):
        _assert_png(tmp_path / name)
    table = format_report(report)
    assert "sensitivity" in table and "Dice" in table and "[external] 20 samples" in table

    quiet = tmp_path / "none"
    evaluate_predictions(probs, labels, None, None, logger_name=None)
    assert not quiet.exists()
    with pytest.raises(ValueError, match="both"):
        evaluate_predictions(probs, labels, None, None, pred_masks=pred)


# ---------------------------------------------------------------- two ranks (gloo, CPU)
# the worker feeds saved network outputs to the handler: no evaluator, no data loading
_WORKER = r"""
import json, sys
import torch, torch.distributed as dist
from monai_ssl_ext.engines import EvaluationReport

rank, out = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[3], rank=rank, world_size=2)
saved = torch.load(out + "/outputs.pt")
shard = slice(0, 7) if rank == 0 else slice(7, None)  # uneven shards: 7 and 3 samples
report = EvaluationReport(out + f"/rank{rank}", saved["classes"])
for start in range(shard.start or 0, shard.stop or len(saved["label"]), 4):
    stop = min(start + 4, shard.stop or len(saved["label"]))
    pred = {"class": saved["class"][start:stop], "seg": saved["seg"][start:stop]}
    report.collect({"pred": pred, "label": saved["label"][start:stop], "image": saved["image"][start:stop]},
                   {"mask": saved["mask"][start:stop]})
json.dump(report.complete(), open(out + f"/state{rank}.json", "w"))
dist.destroy_process_group()
"""


@pytest.mark.slow  # two fresh interpreters importing torch: ~10 s on 2 CPU cores
def test_two_ranks_gather_uneven_shards(tmp_path):

    torch.manual_seed(0)
    net = JointNet().eval()
    data = _dataset()
    images = torch.stack([d["image"] for d in data])
    with torch.no_grad():
        out = net(images)
    labels = torch.tensor([d["label"] for d in data])
    masks = torch.stack([d["mask"] for d in data])
    saved = {
        "classes": CLASSES,
        "class": out["class"],
        "seg": out["seg"],
        "image": images,
        "label": labels,
        "mask": masks,
    }
    torch.save(saved, tmp_path / "outputs.pt")
    run_two_ranks(_WORKER, tmp_path)

    expected_cls, expected_seg = _expected(net, data)
    written = json.loads((tmp_path / "rank0" / "metrics.json").read_text())
    assert written["num_samples"] == N
    assert_close(expected_cls, written["classification"])
    assert_close(expected_seg, written["segmentation"])
    _assert_png(tmp_path / "rank0" / "mask_overlays.png")
    assert not (tmp_path / "rank1").exists()  # only rank 0 writes
    for r in (0, 1):  # every rank holds the full report
        assert_close(written, json.loads((tmp_path / f"state{r}.json").read_text()))


def test_selection_value_reads_a_key_metric_or_the_mean_of_several_from_a_report():
    from monai_ssl_ext.metrics.report import selection_value

    report = {"classification": {"auc": 0.8, "accuracy": 0.7}, "segmentation": {"dice": 0.6, "iou": 0.4}}
    assert selection_value(report, "auc") == pytest.approx(0.8)
    assert selection_value(report, "auc+dice") == pytest.approx(0.7)
    assert selection_value(report, "accuracy + iou + dice") == pytest.approx(0.5666667)
    with pytest.raises(KeyError, match="the report has no dice"):
        selection_value({"classification": {"auc": 0.8}}, "auc+dice")
    with pytest.raises(ValueError, match="empty"):
        selection_value(report, " + ")
