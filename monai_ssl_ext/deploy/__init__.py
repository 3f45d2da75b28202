"""Export and deployment: TorchScript export of a trained bundle model, results as DICOM, MONAI Deploy.

- :mod:`.export`: ``model.ts`` described by the trained settings (``monai-ssl export``), with what an inference
  application needs embedded (a reader, a preprocessing without file loaders, the DICOM images it reads).
- :mod:`.dicom_results`: a classification as DICOM SR, a lesion mask as DICOM SEG (needs the ``dicom`` extra,
  highdicom; imported on use).
- :mod:`.selection`: the DICOM instances a model reads (Modality, SOP Class) and why every other file is not read.
- :mod:`.runtime`: an exported model run on a DICOM folder step by step, as ``monai-ssl predict`` runs a bundle.
- :mod:`.operators`, :mod:`.app`: MONAI Deploy App SDK operators and applications over :mod:`.runtime` (need the
  ``deploy`` extra; imported only by name, so this package imports without the SDK).
- :mod:`.app_package`: an application folder for ``monai-deploy package`` (``monai-ssl deploy_app``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .export import export_bundle, merged_metadata

__all__ = ["dicom_result_writers", "export_bundle", "merged_metadata"]


def dicom_result_writers(
    enabled: bool,
    output_dir: str | os.PathLike,
    bundle_root: str | os.PathLike,
    class_names: Sequence[str],
    algorithm: str,
    frame_aggregation: str = "mean",
) -> list[Any]:
    """The DICOM result sinks of an inference run (``dicom_results`` of the inference config): a
    :class:`~monai_ssl_ext.deploy.dicom_results.DicomResultWriter` naming the bundle (its folder and metadata
    version) and the trained algorithm, aggregating the frames of a cine loop by ``frame_aggregation``, or none
    when ``enabled`` is false (highdicom is then not imported)."""
    if not enabled:
        return []
    from .dicom_results import DicomResultWriter, ModelDescription

    metadata = Path(bundle_root) / "configs" / "metadata.json"
    version = json.loads(metadata.read_text()).get("version", "") if metadata.is_file() else ""
    model = ModelDescription(Path(bundle_root).resolve().name, str(version), str(algorithm), tuple(class_names))
    return [DicomResultWriter(output_dir, model, frame_aggregation)]
