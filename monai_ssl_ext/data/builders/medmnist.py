"""MedMNIST v2 ``.npz`` files (Yang et al., Scientific Data 10:41, 2023), at any of the released sizes.

A file holds ``{train,val,test}_images`` (``(N, H, W)`` greyscale or ``(N, H, W, 3)`` colour, uint8) and
``{train,val,test}_labels`` (``(N,)`` or ``(N, 1)``). The builder writes every image as a PNG file and
a manifest that keeps the official splits (``val`` becomes ``validation``), so published numbers stay
comparable. Class names come from the data set's name (``breastmnist_64.npz`` is BreastMNIST) or from
``classes``.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from monai_ssl_ext.data.manifest import SPLITS, Manifest, ManifestError
from monai_ssl_ext.keys import DataKeys
from monai_ssl_ext.utils.atomic import atomic_path

__all__ = ["MEDMNIST_CLASSES", "build_medmnist"]

logger = logging.getLogger(__name__)

# label names of the 2D single-label MedMNIST sets, in label order (medmnist/info.py)
MEDMNIST_CLASSES: dict[str, tuple[str, ...]] = {
    "breastmnist": ("malignant", "normal_or_benign"),
    "pneumoniamnist": ("normal", "pneumonia"),
    "dermamnist": ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"),
    "pathmnist": ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"),
    "bloodmnist": ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"),
    "octmnist": ("cnv", "dme", "drusen", "normal"),
    "organamnist": (
        "bladder",
        "femur_left",
        "femur_right",
        "heart",
        "kidney_left",
        "kidney_right",
        "liver",
        "lung_left",
        "lung_right",
        "pancreas",
        "spleen",
    ),
    "retinamnist": ("grade_0", "grade_1", "grade_2", "grade_3", "grade_4"),
}
_FILE_SPLITS = {"training": "train", "validation": "val", "test": "test"}
_CITATION = "Yang J et al. MedMNIST v2. Scientific Data 10, 41 (2023)."


def _dataset_key(path: Path) -> str:
    # "breastmnist_64.npz" -> "breastmnist"; "pneumoniamnist_28_kaggle_trainsubset.npz" -> "pneumoniamnist"
    match = re.match(r"^([a-z]+mnist)", path.stem.lower())
    return match.group(1) if match else path.stem.lower()


def _as_images(array: np.ndarray, where: str) -> np.ndarray:
    if array.ndim == 3 or (array.ndim == 4 and array.shape[-1] in (1, 3)):
        return array[..., 0] if array.ndim == 4 and array.shape[-1] == 1 else array
    raise ManifestError(
        f"{where}: images of shape {tuple(array.shape)} are not 2D (expected (N, H, W) or (N, H, W, 3); "
        "the 3D MedMNIST sets are volumes)."
    )


def _as_labels(array: np.ndarray, n: int, where: str) -> np.ndarray:
    labels = np.asarray(array)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ManifestError(
            f"{where}: labels of shape {tuple(array.shape)} are multi-label; one class per image is needed."
        )
    if labels.shape[0] != n:
        raise ManifestError(f"{where}: {labels.shape[0]} labels for {n} images.")
    return labels.astype(np.int64)


def build_medmnist(
    npz: str | os.PathLike,
    output_dir: str | os.PathLike,
    classes: Sequence[str] | None = None,
    name: str | None = None,
    overwrite: bool = False,
) -> Manifest:
    """Write the images of a MedMNIST ``.npz`` as PNG files under ``output_dir/images`` and return the manifest.

    Paths in the manifest are relative to ``output_dir`` (its data root); the manifest itself is not
    written (``manifest.save(output_dir / "datalist.json")`` does).

    Args:
        npz: the MedMNIST file.
        output_dir: folder for ``images/<split>_<index>.png``.
        classes: class names in label order (default: the official names of the data set, or ``"0"``,
            ``"1"``... for an unknown set).
        name: manifest name (default: the file name without suffix).
        overwrite: replace PNG files that already exist (otherwise they are kept; their content is
            a function of the ``.npz``).

    Raises:
        FileNotFoundError: the file does not exist.
        ManifestError: not a MedMNIST file (missing arrays), 3D or multi-label data, labels outside the classes.
    """
    npz = Path(npz).expanduser()
    if not npz.is_file():
        raise FileNotFoundError(f"MedMNIST file not found: {npz}")
    try:
        data = np.load(npz)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ManifestError(f"{npz}: not a readable .npz file ({e}).") from None
    with data:
        needed = [f"{s}_{k}" for s in _FILE_SPLITS.values() for k in ("images", "labels")]
        missing = [k for k in needed if k not in data.files]
        if missing:
            raise ManifestError(f"{npz}: not a MedMNIST file, arrays {missing} are missing (found {data.files}).")
        arrays = {
            split: (_as_images(data[f"{key}_images"], f"{npz}:{key}_images"), data[f"{key}_labels"])
            for split, key in _FILE_SPLITS.items()
        }
    key = _dataset_key(npz)
    num_classes = 1 + max(int(np.max(lab)) for _, lab in arrays.values() if lab.size)
    names = list(classes) if classes is not None else list(MEDMNIST_CLASSES.get(key, map(str, range(num_classes))))
    if num_classes > len(names):
        raise ManifestError(f"{npz}: label {num_classes - 1} has no name; classes are {names}.")

    out = Path(output_dir).expanduser()
    (out / "images").mkdir(parents=True, exist_ok=True)
    manifest_data: dict = {
        "name": name or npz.stem,
        "description": f"{key} from {npz.name}, official splits, images written as PNG. {_CITATION}",
        "classes": names,
        "source": {"builder": "medmnist", "file": npz.name, "image_shape": list(arrays["training"][0].shape[1:])},
    }
    for split, (images, raw_labels) in arrays.items():
        labels = _as_labels(raw_labels, len(images), f"{npz}:{_FILE_SPLITS[split]}_labels")
        entries = []
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            rel = f"images/{_FILE_SPLITS[split]}_{i:05d}.png"
            target = out / rel
            if overwrite or not target.is_file():
                with atomic_path(target) as tmp:
                    Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG")
            entries.append({DataKeys.IMAGE: rel, DataKeys.LABEL: int(label)})
        manifest_data[split] = entries
    logger.info("MedMNIST %s: %s", key, ", ".join(f"{s} {len(manifest_data[s])}" for s in SPLITS))
    return Manifest.from_dict(manifest_data)
