"""Scaffolding shared by the bundle tests: a bundle's config parser with tiny settings, building an algorithm key, the
overrides and runs of a bundle's workflows (``monai.bundle run`` in a subprocess, two processes under torchrun), and
the read-back of a trained two-class classification bundle by its evaluation, inference and export.

Imported as ``from bundle_helpers import ...`` like conftest's helpers; conftest registers it for pytest's assertion
rewriting, so a failing check here reports its values as one in a test module does.

The layout of a test run under its ``work_dir`` (a test's ``tmp_path``): checkpoints and ``train_config.json`` in
``models``, the run's history and logs in ``run``, evaluation in ``eval``, inference inputs in ``inputs`` and its
predictions in ``infer``, each workflow's log as ``<run_id>.log`` and a torchrun's as ``ddp.log``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from monai_ssl_ext.algorithms import FixMatch, FlexMatch, FreeMatch, MeanTeacher, SoftMatch, Supervised
from monai_ssl_ext.bundle import BundleRunError, bundle_command, run_workflow
from monai_ssl_ext.cli import main
from monai_ssl_ext.engines import load_model_weights

# a network and batches small enough for a CPU test; everything else is the bundle's own default
TINY = {"image_size": 32, "backbone": "resnet10", "num_workers": 0, "labeled_batch_size": 4, "unlabeled_batch_size": 8}
# the baseline algorithm keys that a method's bundle offers beside its own, on the same network, and their classes
BASELINE_ALGORITHMS = {
    "supervised": Supervised,
    "mean_teacher": MeanTeacher,
    "fixmatch": FixMatch,
    "flexmatch": FlexMatch,
    "freematch": FreeMatch,
    "softmatch": SoftMatch,
}
# the synthetic data set's classes (ensure_synthetic_dataset), in its manifest's order
SYNTHETIC_CLASSES = ["benign", "malignant"]


def bundle_parser(
    bundle: Path,
    configs: tuple[str, ...] = ("train.json",),
    data: Path | None = None,
    *,
    settings: dict | None = None,
    **overrides: object,
) -> ConfigParser:
    """A bundle's ``configs`` (merged left to right) as a test runs them in this process.

    On top of the files: ``bundle_root``, the CPU as the device, ``settings`` (``TINY`` when not given), the manifest
    ``data`` as ``datalist`` with its folder as ``data_root`` (when given), and ``overrides`` last.
    """
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / c) for c in configs])
    where = {"datalist": str(data), "data_root": str(data.parent)} if data is not None else {}
    settings = TINY if settings is None else settings
    parser.update({"bundle_root": str(bundle), "device": "$torch.device('cpu')", **settings, **where, **overrides})
    return parser


def build_algorithm(parser: ConfigParser, name: str) -> torch.nn.Module:
    """Select the algorithm key ``name`` (``algorithm_name``), parse the config again and build its ``algorithm``."""
    parser["algorithm_name"] = name
    parser.parse()
    return parser.get_parsed_content("algorithm")


def exception_chain_messages(error: BaseException) -> list[str]:
    """The messages of ``error`` and of each exception it was raised from or while handling, outermost first.

    monai.bundle wraps the error of a config expression in its own, so the message that names the fault is a cause's.
    """
    messages = []
    cause: BaseException | None = error
    while cause is not None:
        messages.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    return messages


def check_two_class_embedding_outputs(net: torch.nn.Module, in_channels: int = 3) -> None:
    """In eval mode ``net`` maps two 32 px images to the logits of two classes and 128-d embeddings."""
    out = net.eval()(torch.rand(2, in_channels, 32, 32))
    assert out["class"].shape == (2, 2) and out["embedding"].shape == (2, 128)


def check_embedding_network(parser: ConfigParser, network_class: type) -> None:
    """The bundle's ``network_def`` is a ``network_class`` with a 128-d embedding head that returns a dict of outputs,
    and on RGB images gives the synthetic data's two classes and the embeddings."""
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, network_class) and net.embed_dim == 128 and net.return_dict
    check_two_class_embedding_outputs(net)


def check_grey_data_reaches_the_network_as_rgb(parser: ConfigParser, profile: str) -> None:
    """Under the RGB modality ``profile`` the greyscale synthetic data reaches the network as three equal channels:
    the network takes three, a labeled batch's channels are equal, and a ``TINY`` batch of strong unlabeled views
    stays within [0, 1]."""
    assert parser.get_parsed_content("profile").name == profile
    assert parser.get_parsed_content("network_def").encoder.conv1.in_channels == 3
    batch = next(iter(parser.get_parsed_content("train#dataloader")))
    image = batch["labeled"]["image"]
    assert image.shape[1] == 3 and torch.equal(image[:, 0], image[:, 1]) and torch.equal(image[:, 1], image[:, 2])
    strong = batch["unlabeled"]["image_strong"]
    assert strong.shape == (8, 3, 32, 32) and float(strong.min()) >= 0.0 and float(strong.max()) <= 1.0


# ---------------------------------------------------------------- runs of a bundle's workflows
def run_dirs(work_dir: Path) -> dict[str, str]:
    """Where a test's training writes: ``ckpt_dir`` (``work_dir/models``) and ``output_dir`` (``work_dir/run``)."""
    return {"ckpt_dir": str(work_dir / "models"), "output_dir": str(work_dir / "run")}


def workflow_overrides(data: Path, work_dir: Path, *, settings: dict | None = None, **overrides: object) -> dict:
    """The command-line overrides of a training on the manifest ``data``: ``settings`` (``TINY`` when not given), the
    data and its folder, :func:`run_dirs` of ``work_dir``, then ``overrides``."""
    settings = TINY if settings is None else settings
    where = {"datalist": str(data), "data_root": str(data.parent)}
    return {**settings, **where, **run_dirs(work_dir), **overrides}


def run_bundle(
    bundle: Path, work_dir: Path, run_id: str, configs: list[str], overrides: dict, expect_fail: bool = False
) -> str:
    """``python -m monai.bundle run <run_id>`` of ``configs`` with ``overrides``, logged to ``work_dir/<run_id>.log``.

    Returns the log; with ``expect_fail``, checks that the run fails and returns the error's message instead.
    """
    cmd = bundle_command(bundle, run_id, configs, overrides)
    if expect_fail:
        with pytest.raises(BundleRunError) as err:
            run_workflow(cmd, work_dir / f"{run_id}.log")
        return str(err.value)
    run_workflow(cmd, work_dir / f"{run_id}.log")
    return (work_dir / f"{run_id}.log").read_text()


def run_evaluation(bundle: Path, work_dir: Path) -> dict:
    """The evaluating workflow (``train.json`` + ``evaluate.json``) in a subprocess, after a training into
    :func:`run_dirs` of ``work_dir``, with nothing repeated but where to read and write; returns the
    ``work_dir/eval/metrics.json`` it wrote."""
    where = {**run_dirs(work_dir), "eval_output_dir": str(work_dir / "eval")}
    run_bundle(bundle, work_dir, "evaluating", ["train.json", "evaluate.json"], where)
    return json.loads((work_dir / "eval" / "metrics.json").read_text())


def run_inference(bundle: Path, work_dir: Path, inputs: Path) -> list[dict[str, str]]:
    """The inference workflow (``inference.json``) in a subprocess, of the images in ``inputs`` by the trained
    ``work_dir/models/model.pt``; returns the rows of the ``work_dir/infer/predictions.csv`` it wrote."""
    run_bundle(bundle, work_dir, "run", ["inference.json"], inference_overrides(work_dir, inputs))
    return read_predictions(work_dir / "infer")


def train_in_two_processes(
    bundle: Path, data: Path, work_dir: Path, *, settings: dict | None = None, **overrides: object
) -> str:
    """A training budget of 8 iterations (validated every 4) in two processes under torchrun: ``train.json`` and
    ``multi_gpu_train.json`` with :func:`workflow_overrides` and ``overrides``. Checks that the budget is shared: each
    process runs 4 steps (validating every 2) and the two together see the images one process sees in 8 steps;
    returns the log (``work_dir/ddp.log``)."""
    overrides = workflow_overrides(data, work_dir, settings=settings, num_iterations=8, val_interval=4, **overrides)
    cmd = bundle_command(bundle, "training", ["train.json", "multi_gpu_train.json"], overrides, nproc=2)
    run_workflow(cmd, work_dir / "ddp.log")
    log = (work_dir / "ddp.log").read_text()
    assert "[train] 4/4 (100%)" in log and "[train] 4 iterations (2 x 2)" in log
    summary = json.loads((Path(overrides["output_dir"]) / "train_summary.json").read_text())
    one_step = overrides["labeled_batch_size"] + overrides["unlabeled_batch_size"]  # images of one process's step
    assert (summary["processes"], summary["iterations"], summary["images_this_run"]) == (2, 4, 8 * one_step)
    return log


def train_in_process(parser: ConfigParser, work_dir: Path) -> dict:
    """Run the training workflow's own steps (the config's ``training`` list) of ``parser`` in this process, writing
    into :func:`run_dirs` of ``work_dir``; returns the run's ``history.json``."""
    parser.update(run_dirs(work_dir))
    parser.get_parsed_content("training")
    return json.loads((work_dir / "run" / "history.json").read_text())


def trained_config(work_dir: Path) -> dict:
    """The ``train_config.json`` that a training into :func:`run_dirs` of ``work_dir`` wrote beside its weights."""
    return json.loads((work_dir / "models" / "train_config.json").read_text())


def training_checkpoint(work_dir: Path, epoch: int = 2) -> dict:
    """The training checkpoint (network, optimiser, algorithm state...) saved at ``epoch`` into ``work_dir/models``."""
    path = work_dir / "models" / f"checkpoint_epoch={epoch}.pt"
    return torch.load(path, map_location="cpu", weights_only=False)


def copy_images(data: Path, count: int, inputs: Path) -> list[Path]:
    """Copy the first ``count`` images of the synthetic data set of manifest ``data`` into a new folder ``inputs`` (an
    inference input); returns the copied images' sources."""
    images = sorted((data.parent / "images").glob("*.png"))[:count]
    inputs.mkdir()
    for image in images:
        (inputs / image.name).write_bytes(image.read_bytes())
    return images


def inference_overrides(work_dir: Path, inputs: Path) -> dict[str, str]:
    """Overrides of an inference of the images in ``inputs`` by the trained ``work_dir/models/model.pt``, into
    ``work_dir/infer``."""
    checkpoint = str(work_dir / "models" / "model.pt")
    return {"checkpoint": checkpoint, "input_dir": str(inputs), "output_dir": str(work_dir / "infer")}


def read_predictions(infer_dir: Path) -> list[dict[str, str]]:
    """The rows of the ``predictions.csv`` that an inference wrote into ``infer_dir``."""
    with open(infer_dir / "predictions.csv") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- a trained classification bundle, read back
def check_tiny_trained_config(work_dir: Path, *, algorithm: str, modality: str) -> None:
    """A ``TINY`` training on the synthetic data recorded, beside the weights, ``algorithm``, ``modality``, RGB input,
    the 128-d embedding, the image size and backbone, and the data's classes."""
    trained = trained_config(work_dir)
    assert (trained["algorithm_name"], trained["modality"], trained["in_channels"]) == (algorithm, modality, 3)
    assert (trained["embed_dim"], trained["image_size"], trained["backbone"]) == (128, 32, "resnet10")
    assert trained["class_names"] == SYNTHETIC_CLASSES


def evaluate_trained_bundle(bundle: Path, work_dir: Path, *, algorithm: str, modality: str) -> ConfigParser:
    """Evaluate, in this process, what a ``TINY`` training into :func:`run_dirs` of ``work_dir`` trained.

    The data, modality and network come from ``train_config.json``: nothing is repeated but where to read and write
    (and ``num_workers``, which is how this machine loads data, not a setting of the model). Checks that the trained
    embedding and ``modality`` were read and that ``work_dir/eval/metrics.json`` is of the synthetic test split's 8
    images, from this bundle and ``algorithm``. Returns the evaluation's parser.
    """
    where = {**run_dirs(work_dir), "eval_output_dir": str(work_dir / "eval")}
    evaluate = bundle_parser(bundle, ("train.json", "evaluate.json"), settings={"num_workers": 0}, **where)
    assert evaluate.get_parsed_content("embed_dim") == 128 and evaluate.get_parsed_content("modality") == modality
    evaluate.get_parsed_content("evaluating")
    metrics = json.loads((work_dir / "eval" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["num_samples"] == 8
    assert metrics["extra"]["bundle"] == bundle.name and metrics["extra"]["algorithm"] == algorithm
    return evaluate


def infer_with_trained_bundle(bundle: Path, work_dir: Path, data: Path, count: int) -> ConfigParser:
    """Infer, in this process, the first ``count`` synthetic images with the trained ``work_dir/models/model.pt``.

    The class names come from ``train_config.json``; checks that there is a row an image and that each row's two
    probabilities sum to one. Returns the inference's parser (its ``network_def``: the plain-logits network).
    """
    images = copy_images(data, count, work_dir / "inputs")
    where = inference_overrides(work_dir, work_dir / "inputs")
    infer = bundle_parser(bundle, ("inference.json",), settings={}, **where)
    assert infer.get_parsed_content("class_names") == SYNTHETIC_CLASSES
    infer.get_parsed_content("inferring")
    rows = read_predictions(work_dir / "infer")
    assert len(rows) == len(images)
    assert all(abs(float(r["prob_benign"]) + float(r["prob_malignant"]) - 1) < 1e-5 for r in rows)
    return infer


def check_export_matches_trained_network(
    bundle: Path, work_dir: Path, infer: ConfigParser, image_modality: str
) -> None:
    """``monai-ssl export`` of the trained weights to ``work_dir/model.ts``: the metadata declares the trained input
    (three channels, 32 px, DICOM modality ``image_modality``) and the TorchScript model gives the plain logits of
    the inference ``network_def`` loaded with the same weights."""
    checkpoint = work_dir / "models" / "model.pt"
    ts = work_dir / "model.ts"
    main(["export", str(checkpoint), str(ts), "--bundle", str(bundle)])
    extra = {"metadata.json": "", "inference.json": ""}
    model = torch.jit.load(str(ts), _extra_files=extra)
    image_in = json.loads(extra["metadata.json"])["network_data_format"]["inputs"]["image"]
    assert image_in["num_channels"] == 3 and image_in["spatial_shape"] == [32, 32]
    assert image_in["modality"] == image_modality
    net = load_model_weights(infer.get_parsed_content("network_def"), checkpoint).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), net(x), atol=1e-5) and model(x).shape == (2, 2)
