"""An exported model run on a DICOM folder, step by step: what the MONAI Deploy operators call.

The three steps of ``monai-ssl predict``, without the bundle and without a file loader in the model's pipeline:

1. :func:`~monai_ssl_ext.deploy.selection.load_instances`: the images the model declares it reads, read with
   its own reader (``deploy_reader`` embedded in ``model.ts``); every other file with its reason;
2. :meth:`DeployedModel.predict`: the embedded preprocessing after the reader (``deploy_preprocessing``, on the
   image in memory), the network, the embedded post-processing (``postprocessing``: class probabilities, the
   lesion probabilities of a model that segments);
3. :func:`write_results`: ``predictions.csv``, masks, ``skipped.csv`` and, per image, a DICOM SR and (for a model
   that segments) a DICOM SEG, by the writers ``monai-ssl predict`` uses
   (:class:`~monai_ssl_ext.engines.PredictionWriter` with a
   :class:`~monai_ssl_ext.deploy.dicom_results.DicomResultWriter`).

:func:`run` chains them; :mod:`monai_ssl_ext.deploy.operators` wraps each in a MONAI Deploy operator.

Everything the steps need comes from the exported file (``monai-ssl export``): the configuration it embeds with
the trained settings written in, and its metadata (classes, the DICOM selection, the bundle's version). The
embedded configuration is code as much as the network is: load only models you trust.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from monai_ssl_ext.data.inputs import SkippedInput
from monai_ssl_ext.deploy.selection import DicomSelection, load_instances
from monai_ssl_ext.keys import DataKeys

__all__ = ["DeployedModel", "find_model_file", "predict_instances", "run", "write_results"]

logger = logging.getLogger("monai_ssl_ext.deploy")

#: what a model exported by ``monai-ssl export`` embeds and an application needs
_REQUIRED = ("deploy_reader", "deploy_preprocessing", "postprocessing", "class_names")
_MODEL_SUFFIXES = (".ts", ".pt", ".pth")


def find_model_file(path: str | os.PathLike) -> Path:
    """The TorchScript file at ``path``: the file itself, or in a folder ``model.ts``, else the one model file in
    it or in one of its sub-folders (a MONAI Application Package keeps ``<models>/<name>/model.ts``).

    Raises:
        FileNotFoundError: no model there, or several (named).
    """
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"model not found: {p}")
    if (p / "model.ts").is_file():
        return p / "model.ts"
    found = sorted(f for f in (*p.glob("*"), *p.glob("*/*")) if f.is_file() and f.suffix in _MODEL_SUFFIXES)
    if len(found) != 1:
        what = ", ".join(str(f.relative_to(p)) for f in found) if found else "none"
        raise FileNotFoundError(f"expected one TorchScript model (model.ts) in {p}, found {what}")
    return found[0]


class DeployedModel:
    """A TorchScript model exported by ``monai-ssl export``, with what its embedded configuration describes.

    Args:
        path: the ``.ts`` file, or a folder holding it (:func:`find_model_file`).
        device: where the network runs (default: the first GPU when there is one, else the CPU).

    Attributes:
        path: the model file.
        network: the TorchScript network, in evaluation mode.
        metadata: the embedded metadata.
        class_names: the classes, in the order of the network's outputs.
        selection: the DICOM images the model reads (:class:`DicomSelection` from its metadata).
        frames: the frame policy it was trained with (``"first"``, ``"every:k"``...).
        frame_aggregation: how the frames of a cine loop predicted one by one make the loop's result.
        segments: whether it outputs a lesion segmentation (a metadata output of type ``image``).
        reader: reads an entry ``{"image": path}`` into ``{"image": MetaTensor}``, as training read it.
        preprocessing: the rest of the preprocessing, on an image in memory (no file loader).
        postprocessing, inferer: as the bundle's inference config.
        bundle, version, algorithm: the bundle's name and version, the trained algorithm.

    Raises:
        FileNotFoundError: no model at ``path``.
        ValueError: a model without the embedded configuration an application needs (exported otherwise than
            by ``monai-ssl export``, or by a version before it embedded the Deploy entries).
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device | None = None) -> None:
        from monai.bundle import ConfigParser
        from monai.inferers import SimpleInferer

        self.path = find_model_file(path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        extra = {"metadata.json": "", "inference.json": ""}
        try:
            self.network = torch.jit.load(str(self.path), map_location=self.device, _extra_files=extra).eval()
        except RuntimeError as err:
            raise ValueError(f"{self.path}: not a TorchScript model ({str(err).strip().splitlines()[0]})") from err
        self.metadata: dict[str, Any] = json.loads(extra["metadata.json"] or "{}")
        config = json.loads(extra["inference.json"] or "{}")
        missing = [key for key in _REQUIRED if key not in config]
        if missing:
            raise ValueError(
                f"{self.path}: its embedded configuration has no {missing[0]!r}; export the checkpoint with "
                "`monai-ssl export CKPT model.ts --bundle BUNDLE`, which embeds what a deployed model needs"
            )
        parser = ConfigParser(config)
        self.class_names = [str(c) for c in parser.get_parsed_content("class_names")]
        self.reader = parser.get_parsed_content("deploy_reader")
        self.preprocessing = parser.get_parsed_content("deploy_preprocessing")
        self.postprocessing = parser.get_parsed_content("postprocessing")
        self.inferer = parser.get_parsed_content("inferer") if "inferer" in parser else SimpleInferer()
        self.frames = parser.get_parsed_content("frame") if "frame" in parser else "first"
        self.frame_aggregation = str(config.get("frame_aggregation") or "mean")
        self.algorithm = str(parser.get_parsed_content("algorithm_name")) if "algorithm_name" in parser else ""
        self.bundle = str(parser.get_parsed_content("bundle_name")) if "bundle_name" in parser else self.path.stem
        self.version = str(self.metadata.get("version", ""))
        data_format = self.metadata.get("network_data_format", {})
        image_in = data_format.get("inputs", {}).get("image", {})
        self.selection = DicomSelection.from_metadata(image_in.get("dicom_selection"))
        self.segments = any(spec.get("type") == "image" for spec in data_format.get("outputs", {}).values())

    def description(self) -> Any:
        """The :class:`~monai_ssl_ext.deploy.dicom_results.ModelDescription` its results name."""
        from monai_ssl_ext.deploy.dicom_results import ModelDescription

        return ModelDescription(self.bundle, self.version, self.algorithm, tuple(self.class_names))

    def predict(self, item: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """One image read by :attr:`reader` -> ``(preprocessed item, post-processed output)``.

        The output holds ``probs`` (class probabilities), ``pred`` (the class index) and, for a model that
        segments, ``seg`` (lesion probabilities at network resolution), as the bundle's inference gives them.
        """
        from monai.data import decollate_batch

        data = self.preprocessing(dict(item))
        image = data[DataKeys.IMAGE]
        batch = (image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image))[None]
        with torch.no_grad():
            pred = self.inferer(batch.to(self.device), self.network)
        output = self.postprocessing({DataKeys.IMAGE: image, "pred": decollate_batch(pred)[0]})
        return data, output

    def __repr__(self) -> str:
        kind = "classification and segmentation" if self.segments else "classification"
        return f"DeployedModel({self.path.name}: {self.bundle} {self.algorithm}, {kind}, classes {self.class_names})"


def predict_instances(
    model: DeployedModel, items: Sequence[Mapping[str, Any]]
) -> tuple[list[tuple[dict, dict]], list[SkippedInput]]:
    """:meth:`DeployedModel.predict` on every read image: the ``(item, output)`` pairs, and the images that could
    not be predicted on (failed, with the error)."""
    predictions, failed = [], []
    for item in items:
        source = str(getattr(item.get(DataKeys.IMAGE), "meta", {}).get("filename_or_obj", ""))
        try:
            predictions.append(model.predict(item))
        except Exception as err:  # one image the network cannot take must not stop the others
            text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            failed.append(SkippedInput(source, f"cannot be predicted on ({text})", failed=True))
            logger.error(f"{source}: skipped, cannot be predicted on ({text})")
    return predictions, failed


def write_results(
    output_dir: str | os.PathLike,
    model: DeployedModel,
    predictions: Sequence[tuple[Mapping, Mapping]],
    skipped: Sequence[SkippedInput] = (),
    input_root: str | os.PathLike | None = None,
    segmentation: bool | None = None,
    frame_aggregation: str | None = None,
    mask_format: str = "auto",
) -> list[dict[str, Any]]:
    """Write the results of an application run as ``monai-ssl predict`` writes them; returns the rows.

    ``<output_dir>/dicom/SR_<n>.dcm`` per image (and ``SEG_<n>.dcm`` with ``segmentation``), ``predictions.csv``
    and ``predictions.json`` (one row per image with its Study, Series and SOP Instance UIDs and the files written
    for it), the mask files of a model that segments, and ``skipped.csv`` (every file without a result, with the
    reason). An image that failed is logged and listed; the others' results are written all the same.

    Args:
        segmentation: write masks and SEG objects (default: when the model segments).
        frame_aggregation: how the frames of a cine loop predicted one by one make the loop's result (default:
            the model's).
        mask_format: as :class:`~monai_ssl_ext.engines.PredictionWriter`.
    """
    from monai_ssl_ext.deploy.dicom_results import DicomResultWriter
    from monai_ssl_ext.engines.prediction_writer import PredictionWriter, SkippedInputsError

    segmentation = model.segments if segmentation is None else bool(segmentation)
    if segmentation and not model.segments:
        raise ValueError(f"{model.path}: the model does not segment (no image output in its metadata)")
    dicom = DicomResultWriter(output_dir, model.description(), frame_aggregation or model.frame_aggregation)
    writer = PredictionWriter(
        output_dir,
        model.class_names,
        seg_key="seg" if segmentation else None,
        mask_format=mask_format,
        overlay=False,
        input_root=input_root,
        skipped=skipped,
        result_sinks=[dicom],
    )
    writer.start()
    for item, output in predictions:
        writer.add(output, item)
    try:
        writer.complete()
    except SkippedInputsError as err:  # the others' results are written: an application run still succeeds
        logger.error(str(err))
    return list(writer.rows)


def run(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    model: DeployedModel | str | os.PathLike,
    segmentation: bool | None = None,
) -> list[dict[str, Any]]:
    """The three steps on ``input_dir`` (what the MONAI Deploy application runs, without the SDK)."""
    model = model if isinstance(model, DeployedModel) else DeployedModel(model)
    items, skipped = load_instances(input_dir, model.selection, model.reader, model.frames)
    predictions, failed = predict_instances(model, items)
    root = Path(input_dir) if Path(input_dir).is_dir() else Path(input_dir).parent
    return write_results(output_dir, model, predictions, [*skipped, *failed], root, segmentation)
