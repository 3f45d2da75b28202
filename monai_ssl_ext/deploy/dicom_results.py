"""Results a PACS can display: a classification as DICOM SR, a lesion mask as DICOM SEG (highdicom).

Both are new series in the study of the image they describe, marked for research use in their Series
Description, and reference that image (Study, Series and SOP Instance UIDs; the frame of a multi-frame
image), so a viewer shows them with it.

- :func:`classification_report`: a Comprehensive SR holding a TID 1500 Measurement Report with one image
  measurement group: the finding (the predicted class) as a qualitative evaluation, the probability of every
  class as a measurement (UCUM ``1``), the algorithm (TID 4019: the bundle, the trained algorithm, the bundle
  version) and the source image. Class names have no standard code here, so they are coded in a private
  coding scheme (:data:`CODING_SCHEME`; DICOM PS3.16 8.2: designators beginning with ``99`` are private),
  the class name being both code value and meaning. :func:`read_classification_report` reads one back.
- :func:`lesion_segmentation`: a binary SEG of one segment (lesion) on the source image's own pixel grid:
  the mask must already be at the size of the image as stored (:func:`mask_on_source_grid` undoes the
  ultrasound region crop).
- :class:`DicomResultWriter`: both, for every DICOM input of an inference run (a result sink of
  :class:`~monai_ssl_ext.engines.PredictionWriter`), with the UIDs that link each row of ``predictions.csv``
  to its study.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from highdicom.utils import is_multiframe_image
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from monai_ssl_ext.io.dicom import read_dicom_header
from monai_ssl_ext.utils.atomic import atomic_path

logger = logging.getLogger("monai_ssl_ext.inference")

__all__ = [
    "CODING_SCHEME",
    "FRAME_AGGREGATIONS",
    "RESEARCH_USE",
    "DicomResultWriter",
    "ModelDescription",
    "aggregate_frames",
    "classification_report",
    "lesion_segmentation",
    "mask_on_source_grid",
    "read_classification_report",
]

#: private coding scheme of the class names and their probabilities
CODING_SCHEME = "99MONAISSL"
#: the start of every result series' description
RESEARCH_USE = "RESEARCH USE ONLY"
_MANUFACTURER = "MONAI semi-supervised models"
_IMAGING = hd.sr.CodedConcept("363679005", "SCT", "Imaging")  # SNOMED CT: imaging (procedure)
_RATIO = hd.sr.CodedConcept("1", "UCUM", "no units")


@dataclass(frozen=True)
class ModelDescription:
    """The model behind a result, as a result names it.

    Attributes:
        bundle: the bundle's name (``baselines_ultrasound``).
        version: the bundle's version (metadata ``version``).
        algorithm: the trained algorithm (``fixmatch``).
        class_names: the classes, in the order of the network's outputs.
    """

    bundle: str
    version: str
    algorithm: str
    class_names: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.bundle} {self.algorithm}"


def _class_code(name: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(name[:16], CODING_SCHEME, name)  # a code value holds at most 16 characters


def _probability_code(name: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(f"P:{name}"[:16], CODING_SCHEME, f"Probability of {name}")


def _frames(source: Dataset, frame: int | None) -> list[int] | None:
    """The 1-based frame numbers a result of ``frame`` (0-based; ``None``: the whole image) refers to.

    Only a multi-frame SOP class takes frame numbers (PS3.3 C.18.3.1): an image of a single-frame class that
    holds several frames anyway is referenced whole.
    """
    if frame is None:
        return None
    count = int(source.get("NumberOfFrames", 1) or 1)
    if not 0 <= frame < count:
        raise ValueError(f"frame {frame} is outside the {count} frame(s) of {source.SOPInstanceUID}")
    return [frame + 1] if count > 1 and is_multiframe_image(source) else None


def _description(model: ModelDescription, what: str) -> str:
    return f"{RESEARCH_USE} {model.name} {what}"[:64]  # Series Description is a LO: 64 characters


def classification_report(
    source: Dataset,
    probs: Sequence[float],
    model: ModelDescription,
    *,
    frame: int | None = None,
    series_instance_uid: str | None = None,
    series_number: int = 990,
    instance_number: int = 1,
) -> hd.sr.ComprehensiveSR:
    """A Comprehensive SR stating the predicted class of ``source`` and the probability of every class.

    Args:
        source: the image the prediction was made on (its pixel data need not be loaded).
        probs: ``C`` class probabilities, in the order of ``model.class_names``.
        model: the model that made it.
        frame: 0-based frame of a multi-frame image the prediction belongs to; ``None``: the whole image
            (a single-frame image, or a result aggregated over the frames).
        series_instance_uid: the result series (new when ``None``): one series can gather the reports of a run.
        series_number, instance_number: the result's numbers in its series.

    Raises:
        ValueError: ``probs`` does not match the classes or is not a probability vector.
    """
    p = [float(v) for v in probs]
    if len(p) != len(model.class_names):
        raise ValueError(f"{len(p)} probabilities for the {len(model.class_names)} classes {model.class_names}")
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in p) or abs(sum(p) - 1.0) > 1e-3:
        raise ValueError(f"not class probabilities (each in [0, 1], summing to 1): {p}")
    predicted = model.class_names[int(np.argmax(p))]
    algorithm = hd.sr.AlgorithmIdentification(name=model.name, version=model.version)
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=model.bundle, manufacturer_name=_MANUFACTURER, model_name=model.algorithm
        ),
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="image classification"),
        algorithm_id=algorithm,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.DCM.Finding, value=_class_code(predicted))],
        measurements=[
            hd.sr.Measurement(name=_probability_code(c), value=v, unit=_RATIO, algorithm_id=algorithm)
            for c, v in zip(model.class_names, p, strict=True)
        ],
        source_images=[
            hd.sr.SourceImageForMeasurementGroup.from_source_image(
                source, referenced_frame_numbers=_frames(source, frame)
            )
        ],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=_IMAGING,
        imaging_measurements=[group],
    )
    return hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report[0],
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=_MANUFACTURER,
        series_description=_description(model, "classification"),
    )


def read_classification_report(report: Dataset) -> dict:
    """What :func:`classification_report` wrote: ``{"finding", "probabilities", "algorithm", "study_uid",
    "series_uid", "sop_uid", "frames"}`` (the last four of the source image)."""
    content = hd.sr.MeasurementReport.from_sequence([report], is_root=True)
    (group,) = content.get_image_measurement_groups()
    items = {(item.ValueType, item.ConceptNameCodeSequence[0].CodeValue): item for item in group[0].ContentSequence}
    finding = items[("CODE", codes.DCM.Finding.value)].ConceptCodeSequence[0].CodeMeaning
    algorithm = items.get(("TEXT", codes.DCM.AlgorithmName.value))
    probabilities = {
        m.name.meaning.removeprefix("Probability of "): float(m.value)
        for m in group.get_measurements()
        if m.name.scheme_designator == CODING_SCHEME
    }
    evidence = report.CurrentRequestedProcedureEvidenceSequence[0]
    (image,) = group.source_images
    return {
        "finding": finding,
        "probabilities": probabilities,
        "algorithm": algorithm.TextValue if algorithm is not None else None,
        "study_uid": evidence.StudyInstanceUID,
        "series_uid": evidence.ReferencedSeriesSequence[0].SeriesInstanceUID,
        "sop_uid": image.referenced_sop_instance_uid,
        "frames": list(image.referenced_frame_numbers or []),
    }


def lesion_segmentation(
    source: Dataset,
    mask: np.ndarray,
    model: ModelDescription,
    *,
    series_instance_uid: str | None = None,
    series_number: int = 991,
    instance_number: int = 1,
) -> hd.seg.Segmentation:
    """A binary DICOM SEG of the lesion in ``source``.

    Args:
        source: the segmented image, with its pixel data.
        mask: ``(H, W)`` for a single-frame image, ``(F, H, W)`` for one of ``F`` frames: non-zero is lesion, at the
            image's stored size (``Rows`` x ``Columns``).
        model: the model that made it.
        series_instance_uid, series_number, instance_number: as :func:`classification_report`.

    Raises:
        ValueError: a mask of another size or number of frames than the image.
    """
    frames = int(source.get("NumberOfFrames", 1) or 1)
    array = np.asarray(mask) > 0
    array = array[None] if array.ndim == 2 else array
    if array.shape != (frames, int(source.Rows), int(source.Columns)):
        raise ValueError(
            f"mask {tuple(np.asarray(mask).shape)} does not fit {source.SOPInstanceUID}: {frames} frame(s) of "
            f"{source.Rows} x {source.Columns} (resize it to the stored image first)"
        )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=model.name, family=codes.cid7162.ArtificialIntelligence, version=model.version
        ),
    )
    return hd.seg.Segmentation(
        source_images=[source],
        pixel_array=array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        manufacturer=_MANUFACTURER,
        manufacturer_model_name=model.name[:64],
        software_versions=model.version,
        device_serial_number="none",
        omit_empty_frames=False,  # an empty mask is a result too: "no lesion found"
        series_description=_description(model, "lesion segmentation"),
    )


#: how :class:`DicomResultWriter` makes one result of a cine loop's per-frame results
FRAME_AGGREGATIONS = ("mean", "max")


def aggregate_frames(per_frame: Sequence[Sequence[float]], how: str = "mean") -> list[float]:
    """One probability vector from the ``F x C`` probabilities of a loop's frames (see :class:`DicomResultWriter`)."""
    p = np.asarray(per_frame, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"per-frame probabilities must be F x C with F >= 1, got shape {p.shape}")
    if how == "mean":
        return p.mean(axis=0).tolist()
    if how == "max":
        top = p.max(axis=0)
        return (top / top.sum()).tolist()
    raise ValueError(f"frame aggregation must be one of {FRAME_AGGREGATIONS}, got {how!r}")


def mask_on_source_grid(mask: np.ndarray, rows: int, columns: int, region: Sequence[int] | None = None) -> np.ndarray:
    """A label map at the image's size after reading, put back on the stored image's ``rows x columns`` grid.

    Args:
        mask: ``(h, w)`` labels (non-zero: lesion).
        rows, columns: the stored image's size.
        region: ``[x0, y0, x1, y1]`` (inclusive) of the ultrasound region the image was cropped to; ``None``
            when it was not cropped (the mask is then already on the stored grid).

    Raises:
        ValueError: the mask does not fit the region (or the image).
    """
    mask = np.asarray(mask)
    if region is None:
        if mask.shape != (rows, columns):
            raise ValueError(f"mask {mask.shape} is not on the image's {rows} x {columns} grid")
        return mask > 0
    x0, y0, x1, y1 = (int(v) for v in region)
    if mask.shape != (y1 - y0 + 1, x1 - x0 + 1) or x1 >= columns or y1 >= rows:
        raise ValueError(f"mask {mask.shape} does not fit the region {list(region)} of a {rows} x {columns} image")
    full = np.zeros((rows, columns), dtype=bool)
    full[y0 : y1 + 1, x0 : x1 + 1] = mask > 0
    return full


class DicomResultWriter:
    """Writes, for every DICOM input of an inference run, its SR (and SEG when the model segments).

    A result sink of :class:`~monai_ssl_ext.engines.PredictionWriter`: called per image, it writes
    ``<output_dir>/dicom/SR_<n>.dcm`` (and ``SEG_<n>.dcm``) for DICOM sources and returns the row fields that
    link the result to its study: ``study_uid``, ``series_uid``, ``sop_uid``, ``dicom_sr``, ``dicom_seg``.
    Other sources get no DICOM output (their PNG/NIfTI outputs stay as they are). The results of one study
    share one SR series and one SEG series. A SEG is written for single-frame images only. Each frame of a
    cine loop predicted on its own (the ``every:k`` frame policy) gets its SR, which names the frame, and at the
    end of the run every such loop gets one more SR for the whole loop: the frames' probabilities aggregated
    (``frame_aggregation``), referencing the image without a frame.

    Args:
        output_dir: the run's output folder.
        model: the model that made the predictions.
        frame_aggregation: ``"mean"`` (the mean of the frames' probabilities) or ``"max"`` (each class's
            largest probability over the frames, renormalised to sum to 1: a class any frame shows strongly).
    """

    def __init__(self, output_dir: str | os.PathLike, model: ModelDescription, frame_aggregation: str = "mean") -> None:
        if frame_aggregation not in FRAME_AGGREGATIONS:
            raise ValueError(f"frame_aggregation must be one of {FRAME_AGGREGATIONS}, got {frame_aggregation!r}")
        self.folder = Path(output_dir) / "dicom"
        self.model = model
        self.frame_aggregation = frame_aggregation
        self.reset()

    def reset(self) -> None:
        """Forget the results of a previous run (new series, numbering from 1)."""
        self._series: dict[tuple[str, str], str] = {}
        self._count = 0
        self._loops: dict[str, tuple[str, Dataset, list[list[float]]]] = {}

    def finish(self) -> list[tuple[str, list[float], dict[str, Any]]]:
        """The whole-loop result of every cine loop whose frames were predicted one by one: its SR is written,
        and ``(source, probabilities, row fields)`` returned for ``predictions.csv``."""
        results = []
        for source, ds, per_frame in self._loops.values():
            if len(per_frame) < 2:
                continue
            probs = aggregate_frames(per_frame, self.frame_aggregation)
            self._count += 1
            results.append((source, probs, self._write(ds, probs, None, 2, None, None)))
        self._loops.clear()
        return results

    def _series_uid(self, study: str, kind: str) -> str:
        return self._series.setdefault((study, kind), hd.UID())

    def __call__(
        self,
        source: str,
        meta: Mapping[str, Any],
        probs: Sequence[float],
        mask: np.ndarray | None = None,
        region: Sequence[int] | None = None,
    ) -> dict[str, Any]:
        if meta.get("format") != "dicom" or not source:
            return {}
        ds = read_dicom_header(source)
        missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID") if not ds.get(k)]
        if missing:  # a result must reference its image: without these it could not be linked to anything
            logger.warning(f"{source}: no DICOM SR/SEG written, the file has no {', '.join(missing)}")
            return {}
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        frame = meta.get("frame")
        frame = int(frame.item() if hasattr(frame, "item") else frame) if frame is not None and frames > 1 else None
        if frame is not None:
            self._loops.setdefault(str(ds.SOPInstanceUID), (source, ds, []))[2].append([float(p) for p in probs])
        self._count += 1
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            fields = self._write(ds, probs, frame, frames, mask, region)
        except (AttributeError, KeyError, TypeError, ValueError) as err:  # an image highdicom cannot reference
            logger.warning(f"{source}: no DICOM SR/SEG written ({type(err).__name__}: {err})")
            return {}
        return fields

    def _write(
        self,
        ds: Dataset,
        probs: Sequence[float],
        frame: int | None,
        frames: int,
        mask: np.ndarray | None,
        region: Sequence[int] | None,
    ) -> dict[str, Any]:
        study = str(ds.StudyInstanceUID)
        series, n = self._series_uid(study, "SR"), self._count
        sr = classification_report(ds, probs, self.model, frame=frame, series_instance_uid=series, instance_number=n)
        sr_path = self.folder / f"SR_{n:05d}.dcm"
        with atomic_path(sr_path) as tmp:
            sr.save_as(tmp, enforce_file_format=True)
        fields: dict[str, Any] = {
            "study_uid": study,
            "series_uid": str(ds.SeriesInstanceUID),
            "sop_uid": str(ds.SOPInstanceUID),
            "dicom_sr": sr_path.relative_to(self.folder.parent).as_posix(),
        }
        if mask is not None and frames == 1:
            grid = mask_on_source_grid(np.asarray(mask), int(ds.Rows), int(ds.Columns), region)
            seg = lesion_segmentation(
                ds, grid, self.model, series_instance_uid=self._series_uid(study, "SEG"), instance_number=n
            )
            seg_path = self.folder / f"SEG_{n:05d}.dcm"
            with atomic_path(seg_path) as tmp:
                seg.save_as(tmp, enforce_file_format=True)
            fields["dicom_seg"] = seg_path.relative_to(self.folder.parent).as_posix()
        return fields
