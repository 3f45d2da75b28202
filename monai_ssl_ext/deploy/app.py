"""MONAI Deploy applications (App SDK 4.0) for models exported by ``monai-ssl export``: results a PACS displays.

- :class:`ClassificationApp`: a DICOM SR per image (TID 1500: the finding, the probability of every class, the
  model, the image referenced), in the image's study.
- :class:`ClassificationSegmentationApp`: the same and a DICOM SEG of the lesion on the image's own grid, for a
  model that segments (Hermes, SEMISE and the baselines on their networks).

Both run one graph: :class:`~monai_ssl_ext.deploy.operators.DicomInstanceLoaderOperator` ->
:class:`~monai_ssl_ext.deploy.operators.ExportedModelInferenceOperator` ->
:class:`~monai_ssl_ext.deploy.operators.DicomResultWriterOperator`, and take the SDK's standard arguments
(``-i`` input folder, ``-o`` output folder, ``-m`` model file or folder; else the environment variables
``HOLOSCAN_INPUT_PATH``, ``HOLOSCAN_OUTPUT_PATH``, ``HOLOSCAN_MODEL_PATH``, as in a MONAI Application Package)::

    python -m monai_ssl_ext.deploy.app -i dicom_folder -o results -m model.ts

runs the application that fits the model (:func:`main`). ``monai-ssl deploy_app`` writes an application folder
for ``monai-deploy package`` (:mod:`monai_ssl_ext.deploy.app_package`). Needs the ``dicom`` and ``deploy`` extras.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

try:
    from monai.deploy.conditions import CountCondition
    from monai.deploy.core import AppContext, Application
except ImportError as err:  # pragma: no cover - the package itself imports without the SDK
    raise ImportError(
        "the MONAI Deploy applications need the MONAI Deploy App SDK: pip install 'monai-ssl-ext[dicom,deploy]'"
    ) from err

from monai_ssl_ext.deploy.operators import (
    DicomInstanceLoaderOperator,
    DicomResultWriterOperator,
    ExportedModelInferenceOperator,
)
from monai_ssl_ext.deploy.runtime import DeployedModel

__all__ = ["ClassificationApp", "ClassificationSegmentationApp", "app_for", "main"]

logger = logging.getLogger("monai_ssl_ext.deploy")


class ClassificationApp(Application):
    """A DICOM SR per selected image of the input folder (see the module description).

    Args:
        model: the deployed model; default: the one at the application context's model path (``-m``).
        args, kwargs: those of the SDK's ``Application``.
    """

    #: write lesion masks and DICOM SEG objects
    segmentation = False

    def __init__(self, *args, model: DeployedModel | None = None, **kwargs) -> None:
        self._model = model
        super().__init__(*args, **kwargs)

    def compose(self) -> None:
        context: AppContext = Application.init_app_context(self.argv)
        logging.getLogger("highdicom").setLevel(logging.WARNING)  # a line per copied module otherwise
        model = self._model or DeployedModel(context.model_path)
        if self.segmentation and not model.segments:
            raise ValueError(f"{model.path}: the model does not segment; run it with ClassificationApp")
        input_folder, output_folder = Path(context.input_path), Path(context.output_path)
        logger.info(f"{type(self).__name__}: {model}; input {input_folder}, output {output_folder}")
        loader = DicomInstanceLoaderOperator(
            self, CountCondition(self, 1), input_folder=input_folder, model=model, name="dicom_instance_loader"
        )
        inference = ExportedModelInferenceOperator(self, model=model, name="model_inference")
        writer = DicomResultWriterOperator(
            self,
            output_folder=output_folder,
            model=model,
            input_folder=input_folder if input_folder.is_dir() else input_folder.parent,
            segmentation=self.segmentation,
            name="dicom_result_writer",
        )
        self.add_flow(loader, inference, {("instances", "instances"), ("skipped", "skipped")})
        self.add_flow(inference, writer, {("predictions", "predictions"), ("skipped", "skipped")})


class ClassificationSegmentationApp(ClassificationApp):
    """A DICOM SR and a DICOM SEG of the lesion per selected image, from a model that segments."""

    segmentation = True


def app_for(model: DeployedModel) -> type[ClassificationApp]:
    """The application that writes everything ``model`` predicts."""
    return ClassificationSegmentationApp if model.segments else ClassificationApp


def main(argv: Sequence[str] | None = None) -> None:
    """Run the application that fits the model at ``-m`` (``python -m monai_ssl_ext.deploy.app -i -o -m``).

    Args:
        argv: the command line, program first (default ``sys.argv``).
    """
    from monai.deploy.core import init_app_context

    argv = list(sys.argv if argv is None else argv)
    model = DeployedModel(init_app_context(argv).model_path)
    app_for(model)([sys.executable, *argv], model=model).run()


if __name__ == "__main__":
    main()
