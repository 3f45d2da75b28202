"""Read every image and mask of a freshly built manifest, so that bad files are found before training.

Builders only list files; a corrupt PNG, a DICOM without pixel data, a mask of another size or an empty
lesion mask would otherwise surface hours later, in the middle of a run. :func:`verify_manifest` loads
each entry the way the training pipeline does (:func:`~monai_ssl_ext.io.read_image`,
:class:`~monai_ssl_ext.transforms.ReadMask`) and reports each bad entry through a
:class:`~monai_ssl_ext.data.builders.common.BuildReport`: an error naming the file, or, with
``on_error="skip"``, the entry left out of the manifest and listed in the report.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from monai_ssl_ext.data.builders.common import BuildReport
from monai_ssl_ext.data.manifest import ENTRY_LISTS, HEALTHY_CLASSES, Manifest
from monai_ssl_ext.io import ImageReadError, read_image
from monai_ssl_ext.keys import DataKeys

__all__ = ["HEALTHY_CLASSES", "verify_manifest"]


def _paths(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def verify_manifest(
    manifest: Manifest,
    data_root: str | os.PathLike,
    report: BuildReport,
    empty_mask_classes: Sequence[str] = HEALTHY_CLASSES,
) -> Manifest:
    """Load every image (and its masks) of ``manifest``; return the manifest without the entries that failed.

    An entry fails when its image cannot be read (missing, truncated, not an image, no pixel data, a
    compression without decoder), when a mask cannot be read or matched to the image's size, or when
    its mask is empty although its class is not one of ``empty_mask_classes``. Each failure goes to
    ``report.problem``, which raises ``ManifestError("<file>: <cause>")`` unless the report skips.

    Args:
        manifest: a manifest with paths relative to ``data_root``.
        data_root: the folder the paths are relative to.
        report: where failures go (its ``on_error`` decides between stopping and skipping).
        empty_mask_classes: classes whose masks may be all zero.
    """
    from monai_ssl_ext.transforms.loading import ReadMask  # transforms import torch: only when verifying

    root = Path(data_root)
    read_mask = ReadMask(resize=manifest.mask_resize)
    kept: dict[str, list[dict]] = {}
    for split in ENTRY_LISTS:
        kept[split] = []
        for entry in manifest.split(split):
            image = root / entry[DataKeys.IMAGE]
            try:
                array, _ = read_image(image, frame=entry.get("frame"))
            except ImageReadError as e:
                report.problem(image, "unreadable_image", e.cause)
                continue
            masks = entry.get(DataKeys.MASK)
            if masks:
                paths = [root / p for p in _paths(masks)]
                try:
                    mask = read_mask([str(p) for p in paths], spatial_shape=array.shape[-2:], image=image)
                except ImageReadError as e:
                    report.problem(e.path, "bad_mask", e.cause)
                    continue
                label = entry.get(DataKeys.LABEL)
                name = manifest.classes[label] if isinstance(label, int) else label
                if not bool(mask.any()) and name not in empty_mask_classes:
                    report.problem(paths[0], "empty_mask", f"empty mask (all zero) for an image of class '{name}'.")
                    continue
            kept[split].append(entry)
    data = manifest.to_dict()
    data.update(kept)
    return Manifest.from_dict(data)
