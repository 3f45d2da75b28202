"""MONAI Deploy App SDK operators over :mod:`monai_ssl_ext.deploy.runtime` (needs the ``deploy`` extra).

Each operator is one step of ``monai-ssl predict`` on a model exported by ``monai-ssl export``:

- :class:`DicomInstanceLoaderOperator`: the DICOM images of the input folder the model declares it reads
  (Modality and SOP Class UID from its metadata), read one instance at a time with the model's reader; a 2D
  or cine ultrasound image needs no volume geometry (no Image Position or Orientation). Every other file is
  passed on with the reason it was not read.
- :class:`ExportedModelInferenceOperator`: the model's embedded preprocessing (no file loader), the network,
  its post-processing: class probabilities and, for a model that segments, lesion probabilities.
- :class:`DicomResultWriterOperator`: per image a DICOM SR (the finding, every class probability, the image
  referenced) and, for a model that segments, a DICOM SEG on the image's own grid; ``predictions.csv`` and
  ``skipped.csv``.

Ports carry Python lists in memory: ``instances`` (items ``{"image": MetaTensor}``), ``predictions``
(``(item, output)`` pairs) and ``skipped`` (:class:`~monai_ssl_ext.data.SkippedInput`).
"""

from __future__ import annotations

import logging
from pathlib import Path

try:
    from monai.deploy.core import Fragment, Operator, OperatorSpec
except ImportError as err:  # pragma: no cover - the package itself imports without the SDK
    raise ImportError(
        "the MONAI Deploy operators need the MONAI Deploy App SDK: pip install 'monai-ssl-ext[dicom,deploy]'"
    ) from err

from monai_ssl_ext.deploy.runtime import DeployedModel, predict_instances, write_results
from monai_ssl_ext.deploy.selection import load_instances

__all__ = ["DicomInstanceLoaderOperator", "DicomResultWriterOperator", "ExportedModelInferenceOperator"]

logger = logging.getLogger("monai_ssl_ext.deploy")


class DicomInstanceLoaderOperator(Operator):
    """Reads the DICOM instances a model declares under a folder, one image at a time.

    Output ports: ``instances`` (the read images), ``skipped`` (every other file, with its reason).

    Args:
        fragment: the application.
        input_folder: the folder (a study, or any folder of DICOM files; searched recursively).
        model: the deployed model (its selection, reader and frame policy).
    """

    def __init__(self, fragment: Fragment, *args, input_folder: Path, model: DeployedModel, **kwargs) -> None:
        self.input_folder = Path(input_folder)
        self.model = model
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("instances")
        spec.output("skipped")

    def compute(self, op_input, op_output, context) -> None:
        logger.info(f"{self.input_folder}: selecting {self.model.selection.describe()}")
        items, skipped = load_instances(self.input_folder, self.model.selection, self.model.reader, self.model.frames)
        logger.info(f"{len(items)} image(s) read, {len(skipped)} file(s) passed over")
        op_output.emit(items, "instances")
        op_output.emit(skipped, "skipped")


class ExportedModelInferenceOperator(Operator):
    """Runs a model exported by ``monai-ssl export`` on images read by :class:`DicomInstanceLoaderOperator`.

    Input ports: ``instances``, ``skipped``. Output ports: ``predictions`` (``(item, output)`` pairs),
    ``skipped`` (those received, and the images the network could not take).
    """

    def __init__(self, fragment: Fragment, *args, model: DeployedModel, **kwargs) -> None:
        self.model = model
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("instances")
        spec.input("skipped")
        spec.output("predictions")
        spec.output("skipped")

    def compute(self, op_input, op_output, context) -> None:
        items = op_input.receive("instances")
        skipped = list(op_input.receive("skipped"))
        predictions, failed = predict_instances(self.model, items)
        op_output.emit(predictions, "predictions")
        op_output.emit([*skipped, *failed], "skipped")


class DicomResultWriterOperator(Operator):
    """Writes the DICOM SR (and SEG) of every prediction, ``predictions.csv`` and ``skipped.csv``.

    Input ports: ``predictions``, ``skipped``.

    Args:
        fragment: the application.
        output_folder: where the results go (SR and SEG under ``dicom/``).
        model: the deployed model (classes, the bundle and algorithm the results name).
        input_folder: the folder inputs are named relative to in the tables.
        segmentation: write masks and SEG objects (default: when the model segments).
    """

    def __init__(
        self,
        fragment: Fragment,
        *args,
        output_folder: Path,
        model: DeployedModel,
        input_folder: Path | None = None,
        segmentation: bool | None = None,
        **kwargs,
    ) -> None:
        self.output_folder = Path(output_folder)
        self.model = model
        self.input_folder = input_folder
        self.segmentation = segmentation
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("predictions")
        spec.input("skipped")

    def compute(self, op_input, op_output, context) -> None:
        predictions = op_input.receive("predictions")
        skipped = op_input.receive("skipped")
        rows = write_results(self.output_folder, self.model, predictions, skipped, self.input_folder, self.segmentation)
        written = sum(1 for row in rows if row.get("dicom_sr"))
        logger.info(f"{self.output_folder}: {written} DICOM SR written for {len(rows)} prediction(s)")
