"""Write an inference run's predictions: one row per image with the class and its probabilities and, for
networks that also segment, a lesion mask file per image at the image's original resolution."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events

from monai_ssl_ext.utils.atomic import atomic_path, save_figure, write_json, write_text

__all__ = ["MaskWriteError", "PredictionWriter", "SkippedInputsError"]

MASK_FORMATS = ("auto", "png", "nifti")
_VOLUME_FORMATS = ("dicom", "nifti", "nifti1", "nifti2")


class MaskWriteError(OSError):
    """A mask file that could not be written; ``str(err)`` names the mask and the image it belongs to."""

    def __init__(self, path: str | os.PathLike, source: str, cause: BaseException) -> None:
        self.path, self.source = str(path), source
        super().__init__(f"{self.path}: cannot write the mask of {source or 'an unnamed image'} ({cause})")


class SkippedInputsError(RuntimeError):
    """Some inputs got no prediction (unreadable, or of another modality); the others' predictions are written."""


def _plain(value: Any) -> Any:
    # collation turns meta values into tensors; decollation does not always turn them back
    return value.tolist() if hasattr(value, "tolist") else value


def _tensor(value: Any) -> torch.Tensor:
    # a plain tensor: MetaTensor operations would carry (and copy) the metadata along
    value = value.as_tensor() if hasattr(value, "as_tensor") else torch.as_tensor(value)
    return value.detach().float().cpu()


def _meta(item: Mapping, key: str) -> dict:
    value = item.get(key)
    return dict(getattr(value, "meta", None) or item.get(f"{key}_meta_dict") or {})


def _source(item: Mapping, key: str) -> str:
    src = _meta(item, key).get("filename_or_obj", "")
    return str(src[0] if isinstance(src, (list, tuple)) else src)


def _frame_of(meta: Mapping) -> int | None:
    """The frame an item holds, when it is one frame of a multi-frame file (``None`` otherwise)."""
    frame, frames = _plain(meta.get("frame")), _plain(meta.get("frames"))
    if frame is None or frames is None or int(frames) <= 1:
        return None
    return int(frame)


def _stem(source: str) -> str:
    name = Path(source).name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else Path(name).stem


def _original_shape(meta: Mapping, image: Any) -> tuple[int, int] | None:
    """The image's spatial shape before resizing: after reading (and cropping to an ultrasound region)."""
    shape = _plain(meta.get("spatial_shape"))
    if shape is not None and len(shape) >= 2:
        return int(shape[-2]), int(shape[-1])
    # the first traced transform saw the image as read
    for op in getattr(image, "applied_operations", None) or []:
        size = op.get("orig_size") if isinstance(op, Mapping) else None
        if size is not None and len(size) >= 2:
            return int(size[-2]), int(size[-1])
    return None


def _label_map(
    seg: torch.Tensor, shape: tuple[int, int], classes: int | None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``seg`` ``(K, h, w)`` -> label maps at network resolution and at ``shape``, and the number of classes.

    Probabilities (K > 1) are resized bilinearly before the argmax, which gives smoother boundaries than
    resizing the label map. A single channel is a label map when integer-valued, else a lesion probability.
    """
    size = tuple(seg.shape[-2:])
    if seg.shape[0] > 1:
        if classes is not None and classes != seg.shape[0]:
            raise ValueError(f"seg has {seg.shape[0]} channels but seg_classes={classes}")
        up = seg if size == shape else F.interpolate(seg[None], size=shape, mode="bilinear", align_corners=False)[0]
        return seg.argmax(0), up.argmax(0), int(seg.shape[0])
    if torch.equal(seg, seg.round()):
        labels = seg[0].long()
        k = classes or 2
        if int(labels.min()) < 0 or int(labels.max()) >= k:
            lo, hi = int(labels.min()), int(labels.max())
            raise ValueError(f"seg label map holds labels {lo}..{hi}, expected 0..{k - 1} (seg_classes={k})")
        # nearest-exact samples pixel centres, the geometry of the area resize on the way in
        up = labels if size == shape else F.interpolate(seg[None], size=shape, mode="nearest-exact")[0, 0].long()
        return labels, up, k
    up = seg if size == shape else F.interpolate(seg[None], size=shape, mode="bilinear", align_corners=False)[0]
    return (seg[0] > 0.5).long(), (up[0] > 0.5).long(), 2


def _write_png(path: Path, labels: np.ndarray, classes: int) -> None:
    from PIL import Image

    # spread the labels over 0..255 so that a binary mask is visible in any viewer (0/255)
    step = 255 // max(classes - 1, 1)
    with atomic_path(path) as tmp:
        Image.fromarray((labels * step).astype(np.uint8)).save(tmp, format="PNG")


def _nifti_image(labels: np.ndarray, source: str, meta: Mapping) -> Any:
    import nibabel as nib

    from monai_ssl_ext.io.nifti import slice_to_nifti

    fmt = str(meta.get("format", ""))
    if fmt.startswith("nifti") and "slice_axis" in meta and source:
        return slice_to_nifti(labels, source, _plain(meta["slice_axis"]), _plain(meta["slice_index"]))
    affine = meta.get("original_affine")
    if affine is not None and fmt.startswith("nifti"):
        # loaded by a MONAI reader: the array is in the file's voxel order
        return nib.Nifti1Image(labels.astype(np.uint8), np.asarray(_plain(affine), dtype=np.float64))
    spacing = _plain(meta.get("spacing")) or (1.0, 1.0)
    # rows and columns scaled by the pixel spacing, as the image's own affine after reading
    affine = np.diag([float(spacing[0]), float(spacing[1]), 1.0, 1.0])
    out = nib.Nifti1Image(labels.astype(np.uint8), affine)
    if meta.get("spacing") is not None:
        out.header.set_xyzt_units("mm")
    return out


class PredictionWriter:
    """Collects per-image class probabilities from an inference evaluator; writes ``predictions.csv`` and
    ``predictions.json`` into ``output_dir`` at the end of the run (atomically).

    Expects the evaluator's decollated output to hold ``probs`` (class probabilities ``(C,)``) and
    ``pred`` (class index, as MONAI Deploy requires postprocessing to end in), with the source file
    taken from the image's metadata.

    Items that also hold ``seg`` (segmentation probabilities ``(K, h, w)`` at network resolution, K
    classes with 0 the background; or a label map ``(1, h, w)``) get a mask file, written as soon as
    their iteration ends:

    - the probabilities are resized bilinearly to the image's shape *after reading* (and after cropping
      an ultrasound DICOM to its imaging region), i.e. before the network resize, then argmax-ed;
    - ``<stem>_mask.png`` for raster inputs (uint8, class index times ``255 // (K - 1)``: 0/255 when
      binary) and ``<stem>_mask.nii.gz`` for NIfTI and DICOM inputs (uint8 class indices). A mask of a
      NIfTI input has the input file's voxel grid and affine (one volume; the slice that was read holds the
      labels); other NIfTI masks have the pixel spacing on the diagonal of the affine (1 when unknown);
    - a stem seen before for another file gets a short hash of the source path (``<stem>_<hash>_mask``),
      and frames of a multi-frame file get ``_frame<i>``, so no mask overwrites another;
    - the row gains ``mask`` (path, relative to ``output_dir`` when inside it), ``mask_shape``
      (``[H, W]`` the mask refers to), ``mask_region`` (the ultrasound region's bbox ``[x0, y0, x1, y1]``
      in the full frame when the image was cropped to it, else empty), ``lesion_pixels`` (non-background
      pixels) and ``lesion_fraction``.

    Inputs are named relative to ``input_root`` (the input folder): an absolute path would carry folder names,
    which at a hospital are often a patient's. Files that got no prediction (``skipped``, from
    :class:`~monai_ssl_ext.data.InferenceInputs`) are listed in ``skipped.csv`` with the reason; when any of
    them failed (an image that could not be read or was refused), the run ends with
    :class:`SkippedInputsError` after every file is written, so the exit status says so.

    With masks and ``overlay``, ``predictions_overlay.png`` shows the first ``max_overlays`` preprocessed
    (network-size) images with the predicted mask's contour and the predicted class and probability.

    Args:
        output_dir: folder for the files.
        class_names: names of the classes, in the order of the network's outputs.
        probs_key, pred_key, image_key: keys in the decollated output/batch.
        seg_key: key of the segmentation output; ``None`` never writes masks.
        mask_dir: folder of the mask files (default ``output_dir/masks``).
        mask_format: ``"auto"`` (PNG for raster inputs, NIfTI for NIfTI and DICOM), ``"png"`` or ``"nifti"``.
        overlay: write ``predictions_overlay.png`` when masks were written.
        max_overlays: images in that figure.
        seg_classes: segmentation classes (background included) of a ``(1, h, w)`` label map (default 2);
            for probabilities, their channels.
        input_root: the folder inputs are named relative to; ``None``: their file names only.
        skipped: the inputs that got no prediction (objects with ``path``, ``reason`` and ``failed``).
        result_sinks: further writers of each image's result, called as ``sink(source=, meta=, probs=, mask=,
            region=)`` (the source file, its reader metadata, the ``C`` probabilities, the label map at the image's
            size after reading or ``None``, the ultrasound region's bbox or ``None``); the fields each returns are
            added to the image's row. A sink with ``finish()`` is asked at the end of the run for results of its
            own (``(source, probs, fields)``: the frames of a cine loop aggregated, say), each written as a row
            with ``frame`` ``all``; one with ``reset()`` is reset when a run starts
            (:class:`~monai_ssl_ext.deploy.dicom_results.DicomResultWriter`: DICOM SR and SEG).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_names: list[str],
        probs_key: str = "probs",
        pred_key: str = "pred",
        image_key: str = "image",
        seg_key: str | None = "seg",
        mask_dir: str | os.PathLike | None = None,
        mask_format: str = "auto",
        overlay: bool = True,
        max_overlays: int = 16,
        seg_classes: int | None = None,
        input_root: str | os.PathLike | None = None,
        skipped: Sequence[Any] = (),
        result_sinks: Sequence[Callable[..., Mapping[str, Any]]] = (),
    ) -> None:
        if mask_format.lower() not in MASK_FORMATS:
            raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.probs_key, self.pred_key, self.image_key = probs_key, pred_key, image_key
        self.seg_key = seg_key
        self.mask_dir = Path(mask_dir) if mask_dir is not None else self.output_dir / "masks"
        self.mask_format = mask_format.lower()
        self.overlay = bool(overlay)
        self.max_overlays = int(max_overlays)
        self.seg_classes = seg_classes
        self.input_root = Path(input_root).resolve() if input_root is not None else None
        self.skipped = list(skipped)
        self.result_sinks = list(result_sinks)
        self.rows: list[dict[str, Any]] = []
        self.logger = logging.getLogger("monai_ssl_ext.inference")
        self._names: dict[str, tuple[str, Any]] = {}
        self._overlays: list[tuple[np.ndarray, np.ndarray, str]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    # the same steps without an engine, for a pipeline that runs the network itself (MONAI Deploy operators)
    def start(self) -> None:
        """Begin a run: forget a previous one (rows, mask names, result sinks)."""
        self._reset(None)

    def add(self, output: Mapping, item: Mapping) -> dict[str, Any]:
        """Write the results of one image and keep its row; returns the row.

        Args:
            output: the post-processed output of the image (``probs``, and ``seg`` for a network that segments).
            item: the preprocessed item (its image carries the reader's metadata).
        """
        self._add(output, item)
        return self.rows[-1]

    def complete(self) -> None:
        """End the run: ``predictions.csv``, ``predictions.json``, ``skipped.csv`` (see the class description;
        raises :class:`SkippedInputsError` after writing them when an input failed)."""
        self._write(None)

    def _reset(self, engine: Engine | None) -> None:
        self.rows.clear()
        self._names.clear()
        self._overlays.clear()
        for sink in self.result_sinks:
            if hasattr(sink, "reset"):
                sink.reset()

    def _collect(self, engine: Engine) -> None:
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch] * len(outputs)
        for out, item in zip(outputs, batch, strict=True):
            self._add(out, item)

    def _add(self, out: Mapping, item: Mapping) -> None:
        probs = torch.as_tensor(out[self.probs_key]).detach().float().reshape(-1).cpu()
        if probs.numel() != len(self.class_names):
            raise ValueError(
                f"the network gives {probs.numel()} class probabilities but {len(self.class_names)} class names "
                f"are configured ({self.class_names})"
            )
        source = _source(item, self.image_key) or _source(out, self.image_key)
        meta = _meta(item, self.image_key) or _meta(out, self.image_key)
        row = self._row(source, probs.tolist(), _frame_of(meta))
        index = int(row["class_index"])
        labels, region = None, None
        if self.seg_key is not None and out.get(self.seg_key) is not None:
            title = f"{row['prediction']} {float(probs[index]):.2f}"
            fields, labels = self._write_mask(out, item, meta, source, title)
            row.update(fields)
            region = fields["mask_region"]
        for sink in self.result_sinks:
            row.update(sink(source=source, meta=meta, probs=probs.tolist(), mask=labels, region=region))
        self.rows.append(row)

    def _row(self, source: str, probs: Sequence[float], frame: int | str | None) -> dict[str, Any]:
        """A row of ``predictions.csv``: the image (its frame, for a multi-frame file), the class, the probabilities."""
        index = int(np.argmax(probs))
        row: dict[str, Any] = {"image": self._shown(source)}
        if frame is not None:
            row["frame"] = frame
        row.update(
            {
                "prediction": self.class_names[index],
                "class_index": index,
                **{f"prob_{c}": float(p) for c, p in zip(self.class_names, probs, strict=True)},
            }
        )
        return row

    def _shown(self, source: str) -> str:
        """``source`` relative to the input root (its file name when outside it, or without a root)."""
        if not source:
            return ""
        if self.input_root is not None:
            try:
                return Path(source).resolve().relative_to(self.input_root).as_posix()
            except ValueError:
                pass
        return Path(source).name

    # ---------------------------------------------------------------- masks
    def _mask_path(self, source: str, meta: Mapping, suffix: str) -> Path:
        frame = _frame_of(meta)
        stem = _stem(source) if source else f"image{len(self.rows):05d}"
        if frame is not None:
            stem += f"_frame{frame}"
        key = (str(Path(source).resolve()) if source else f"#{len(self.rows)}", frame)
        name, attempt = stem, 0
        # case-insensitive: two stems differing in case are one file on macOS and Windows
        while self._names.setdefault(name.lower(), key) != key:
            attempt += 1
            digest = hashlib.sha1(f"{key[0]}|{key[1]}|{attempt}".encode()).hexdigest()[:8]
            name = f"{stem}_{digest}"
        return self.mask_dir / f"{name}_mask{suffix}"

    def _write_mask(
        self, out: Mapping, item: Mapping, meta: Mapping, source: str, title: str
    ) -> tuple[dict[str, Any], np.ndarray]:
        """Write the mask of one image; its row's fields and the label map at the image's size after reading."""
        image = item.get(self.image_key)
        seg = _tensor(out[self.seg_key])
        seg = seg[None] if seg.ndim == 2 else seg
        if seg.ndim != 3:
            raise ValueError(f"{source}: '{self.seg_key}' must be (K, h, w) per image, got {tuple(seg.shape)}")
        shape = _original_shape(meta, image)
        if shape is None:
            self.logger.warning(f"{source}: the original image size is not recorded; mask written at network size")
            shape = (int(seg.shape[-2]), int(seg.shape[-1]))
        try:
            net_labels, labels, classes = _label_map(seg, shape, self.seg_classes)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
        labels_np = labels.numpy().astype(np.uint8)

        fmt = self.mask_format
        if fmt == "auto":
            kind = str(meta.get("format", ""))
            if not kind and source:
                from monai_ssl_ext.io import image_format

                kind = image_format(source) or ""
            fmt = "nifti" if kind in _VOLUME_FORMATS else "png"
        path = self._mask_path(source, meta, ".png" if fmt == "png" else ".nii.gz")
        try:
            if fmt == "png":
                _write_png(path, labels_np, classes)
            else:
                import nibabel as nib

                nii = _nifti_image(labels_np, source, meta)
                with atomic_path(path, suffix=".nii.gz") as tmp:
                    nib.save(nii, tmp)
        except Exception as e:
            raise MaskWriteError(path, source, e) from e

        if self.overlay and len(self._overlays) < self.max_overlays:
            shown = out.get(self.image_key)
            shown = shown if shown is not None else image
            if shown is not None:
                label = f"{_stem(source)[:24]}\n{title}"
                self._overlays.append((_tensor(shown).numpy(), net_labels.numpy(), label))

        region = None
        if bool(_plain(meta.get("cropped", False))):
            # crop_box: stated by every image the package reads, so it survives a batch that mixes cropped and
            # uncropped images, which loses us_region for all of them
            box = _plain(meta.get("crop_box"))
            if box is None and isinstance(meta.get("us_region"), Mapping):
                box = _plain(meta["us_region"].get("bbox"))
            region = [int(_plain(v)) for v in box or []] or None
        lesion = int(np.count_nonzero(labels_np))
        try:
            shown_path = str(path.relative_to(self.output_dir))
        except ValueError:
            shown_path = str(path)
        fields = {
            "mask": shown_path,
            "mask_shape": list(shape),
            "mask_region": region,
            "lesion_pixels": lesion,
            "lesion_fraction": lesion / labels_np.size,
        }
        return fields, labels_np

    def _write_overlay(self) -> Path:
        import math

        from monai_ssl_ext.metrics.plots import PRED_COLOUR, _contour, _display_image, _figure

        n = len(self._overlays)
        cols = min(n, 4)
        rows = math.ceil(n / cols)
        fig, axes = _figure(rows, cols, figsize=(2.8 * cols, 3.0 * rows), squeeze=False)
        colours = [PRED_COLOUR, "#ffd600", "#00b0ff", "#ff6d00", "#76ff03"]
        for k, ax in enumerate(axes.flat):
            ax.axis("off")
            if k >= n:
                continue
            image, labels, title = self._overlays[k]
            shown, cmap = _display_image(image)
            ax.imshow(shown, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            if labels.shape != shown.shape[:2]:
                # a network whose seg output is smaller than its input
                t = torch.as_tensor(labels, dtype=torch.float32)[None, None]
                labels = F.interpolate(t, size=shown.shape[:2], mode="nearest-exact")[0, 0].long().numpy()
            for c in range(1, int(labels.max()) + 1):
                _contour(ax, labels == c, colours[(c - 1) % len(colours)])
            ax.set_title(title, fontsize=8)
        fig.tight_layout()
        return save_figure(fig, self.output_dir / "predictions_overlay.png", close=False)

    # ---------------------------------------------------------------- end of run
    def _write(self, engine: Engine | None) -> None:
        for sink in self.result_sinks:
            for source, probs, fields in sink.finish() if hasattr(sink, "finish") else ():
                self.rows.append({**self._row(source, probs, "all"), **fields})
        self._write_skipped()
        if not self.rows:
            self.logger.warning("no image was processed; nothing written")
            return
        # rows with and without masks may mix; every column appears once, in first-seen order
        fields = list(dict.fromkeys(k for row in self.rows for k in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.output_dir / "predictions.csv", buffer.getvalue())
        write_json(self.output_dir / "predictions.json", {"classes": self.class_names, "predictions": self.rows})
        self.logger.info(f"wrote {len(self.rows)} predictions to {self.output_dir / 'predictions.csv'}")
        masks = sum(1 for row in self.rows if "mask" in row)
        if masks:
            self.logger.info(f"wrote {masks} masks to {self.mask_dir}")
        if masks and self.overlay and self._overlays:
            self._write_overlay()
        failed = [s for s in self.skipped if s.failed]
        if failed:
            first = failed[0]
            raise SkippedInputsError(
                f"{len(failed)} input(s) got no prediction ({self._shown(first.path)}: {first.reason}"
                f"{'; ...' if len(failed) > 1 else ''}); all are listed in {self.output_dir / 'skipped.csv'}, the "
                f"{len(self.rows)} predictions of the others are in {self.output_dir / 'predictions.csv'}"
            )

    def _write_skipped(self) -> None:
        """``skipped.csv``: every input file without a prediction, why, and whether that failed the run."""
        path = self.output_dir / "skipped.csv"
        if not self.skipped:
            path.unlink(missing_ok=True)  # a previous run's list would describe other inputs
            return
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["image", "status", "reason"])
        for skip in self.skipped:
            writer.writerow([self._shown(skip.path), "failed" if skip.failed else "ignored", skip.reason])
        write_text(path, buffer.getvalue())
