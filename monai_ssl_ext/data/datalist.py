"""The datalist of a run: a manifest loaded, resolved against its data root and expanded per frame.

- :func:`load_manifest`: a manifest file, a :class:`~monai_ssl_ext.data.manifest.Manifest` or the
  generated ``"synthetic"`` data set, with classes kept, paths resolved and frames expanded.
- :func:`expand_frames`: with a ``"every:k"`` frame policy (:mod:`monai_ssl_ext.io.frames`), one entry
  per ``k``-th frame of each multi-frame file, each carrying its index under ``"frame"``; the readers
  then load that frame (an entry's own ``"frame"`` wins).
- :func:`add_mask_rules`: what the mask reader needs to know of the manifest, carried by each entry.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from monai_ssl_ext.data.manifest import ENTRY_LISTS, HEALTHY_CLASSES, Manifest
from monai_ssl_ext.data.synthetic import ensure_synthetic_dataset
from monai_ssl_ext.io.frames import FrameSpec, frame_indices, parse_frame_policy
from monai_ssl_ext.io.reader import count_frames
from monai_ssl_ext.keys import DataKeys

__all__ = ["add_mask_rules", "expand_frames", "load_manifest"]


def add_mask_rules(manifest: Manifest, healthy_classes: Sequence[str] = HEALTHY_CLASSES) -> Manifest:
    """Give every entry of ``manifest`` (in place) its ``mask_rules``, and return the manifest.

    The transforms see entries, not the manifest, so what they need of it travels with each entry:
    ``{"resize": manifest.mask_resize, "lesion_class": <class name, or None for a healthy class>}``.
    :class:`~monai_ssl_ext.transforms.ReadMaskd` then refuses or resizes a mask of another size, and
    logs an empty mask on a lesion class; the profiles remove the key before batching. Every entry gets
    it, with or without a mask, so that the entries of a batch keep the same keys.
    """
    for split in ENTRY_LISTS:
        for entry in manifest.split(split):
            label = entry.get(DataKeys.LABEL)
            name = manifest.classes[label] if isinstance(label, int) else None
            lesion = name if name is not None and name not in healthy_classes else None
            entry[DataKeys.MASK_RULES] = {"resize": manifest.mask_resize, "lesion_class": lesion}
    return manifest


def expand_frames(
    entries: Iterable[Mapping[str, Any]],
    policy: FrameSpec,
    key: str = "image",
    frame_key: str = "frame",
    count: Callable[[str], int] | None = None,
    group_key: str = "group",
) -> list[dict[str, Any]]:
    """Expand manifest entries for a frame policy: with ``"every:k"`` one entry per ``k``-th frame.

    Each new entry is a copy of its source with ``frame_key`` set to the frame index; entries that
    already carry a frame index are kept as they are. Other policies return copies of the entries
    unchanged (the reader applies them). ``count(path)`` gives the number of frames of a file
    (default :func:`monai_ssl_ext.io.count_frames`, which reads headers only). The frames of one file
    keep its ``group_key`` (or, without one, get the file's path as their group), so that splits and
    label budgets keep the frames of a clip together.
    """
    p = parse_frame_policy(policy)
    if p.every is None:
        return [dict(e) for e in entries]
    if count is None:
        count = count_frames
    out: list[dict[str, Any]] = []
    for entry in entries:
        if entry.get(frame_key) is not None:
            out.append(dict(entry))
            continue
        group = entry.get(group_key, f"file:{entry[key]}")
        for index in frame_indices(p, count(entry[key])):
            out.append({**entry, frame_key: index, group_key: group})
    return out


def load_manifest(
    datalist: str | os.PathLike | Manifest,
    data_root: str | os.PathLike | None = None,
    check_files: bool = True,
    classes: Iterable[str] | None = None,
    frames: Any = None,
) -> Manifest:
    """Load a manifest and resolve its paths against ``data_root``.

    Args:
        datalist: a manifest JSON path, a :class:`Manifest`, or ``"synthetic"`` for the project's
            generated ultrasound-like data set, which is created under ``data_root`` on first use.
        data_root: folder that relative paths are relative to (``None``: the manifest's folder).
        check_files: verify that every listed file exists.
        classes: keep only these classes (for example ``["benign", "malignant"]``).
        frames: frame policy of multi-frame images (see :mod:`monai_ssl_ext.io.frames`); with ``"every:k"``
            each multi-frame entry becomes one entry per k-th frame, all in the split of their file and
            sharing its group, so a label budget never separates the frames of one clip.

    Every entry carries the manifest's mask rules (:func:`add_mask_rules`).
    """
    if isinstance(datalist, Manifest):
        manifest = datalist
    elif str(datalist) == "synthetic":
        if data_root is None:
            raise ValueError("datalist 'synthetic' needs a data_root to generate the data set into.")
        manifest = Manifest.load(ensure_synthetic_dataset(data_root))
    else:
        manifest = Manifest.load(datalist)
    if classes is not None:
        manifest = manifest.with_classes(list(classes))
    manifest = manifest.resolve(data_root, check_files=check_files)
    if frames is not None:
        for split in ENTRY_LISTS:
            setattr(manifest, split, expand_frames(manifest.split(split), frames))
    return add_mask_rules(manifest)
