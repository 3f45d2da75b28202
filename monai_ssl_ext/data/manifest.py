"""Manifests: MONAI datalist JSON with a class list, resolved against a data root at run time.

A manifest is the datalist format MONAI's ``load_decathlon_datalist`` reads, with a few additions::

    {
        "name": "busi_binary",
        "description": "...",
        "classes": ["benign", "malignant"],
        "source": {"builder": "busi", "seed": 0, ...},
        "training":   [{"image": "benign/benign (1).png", "label": 0, "mask": ["benign/benign (1)_mask.png"],
                        "group": "3f2a..."}, ...],
        "validation": [...],
        "test":       [...],
        "unlabeled":  [{"image": "archive/img_0001.png", "group": "9c1e..."}, ...]
    }

- ``image`` and ``mask`` paths are relative to a *data root* given at run time (absolute paths are kept);
  ``mask`` is one path or a list of paths whose union is the lesion mask.
- ``label`` is an index into ``classes`` (a class name is accepted on input and converted).
- ``group`` is an optional patient or lesion id (salted hash, never a name in clear). Label budgets and
  splits keep a group on one side.
- ``unlabeled`` (optional) lists images that have no label at all: a hospital's archive beside the images an
  expert labelled. Its entries take ``image`` (and ``group``, ``frame``), never ``label`` or ``mask``; training
  adds them to the unlabeled stream after the label budget is drawn from ``training``. A group of theirs in
  ``validation`` or ``test`` is refused like any other leak (training on a test patient's images, even
  without labels, lets the model fit that patient).
- ``"mask_resize": true`` (optional, top level) declares that masks come at another resolution than their
  images, with the same aspect ratio (HAM10000); they are then resized to their image. Without it a mask
  of another size than its image is an error.
- Images of the classes in :data:`HEALTHY_CLASSES` (BUSI "normal") show no lesion: their masks are empty
  by right. An empty mask on any other class is suspect.

:class:`Manifest` checks all of this when loaded and when resolved, so a bad data root, a missing
file or an unknown label stops a run before training starts, with a message that names the entry.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monai_ssl_ext.keys import DataKeys
from monai_ssl_ext.utils.atomic import write_json

if TYPE_CHECKING:
    from monai_ssl_ext.data.label_budget import LabelSplit

__all__ = ["ENTRY_LISTS", "HEALTHY_CLASSES", "SPLITS", "UNLABELED", "Manifest", "ManifestError"]

SPLITS = ("training", "validation", "test")
# the list of images without labels: not a split (no label budget, no evaluation), read by training only
UNLABELED = "unlabeled"
# every list of entries a manifest holds: the three splits, then the images without labels
ENTRY_LISTS = (*SPLITS, UNLABELED)
_PATH_KEYS = (DataKeys.IMAGE, DataKeys.MASK)
_MAX_LISTED = 10
# classes whose images show no lesion, so an all-zero mask is the correct mask (BUSI "normal")
HEALTHY_CLASSES = ("normal",)


# a manifest's name becomes a folder of results: no separators, no "..", nothing MONAI would evaluate
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ManifestError(ValueError):
    """A manifest or its data does not meet the format; the message names the file and the entries."""


@dataclass
class Manifest:
    """A labelled data set split into ``training``, ``validation`` and ``test`` lists of entries.

    Attributes:
        name: short identifier, used in results tables.
        classes: class names; an entry's ``label`` indexes this list.
        training, validation, test: entries (dicts with ``image``, ``label`` and optional ``mask``, ``group``).
        unlabeled: entries of images without a label (``image``, optional ``group``): extra unlabeled images.
        description: free text.
        source: how the manifest was built (builder name, split seed, fractions, ...).
        path: the file it was read from, if any (named in error messages).
        data_root: the folder relative paths were resolved against, once :meth:`resolve` has run.
        mask_resize: masks may come at another resolution than their images (same aspect ratio) and
            are resized to them; otherwise a mask must have its image's size.
    """

    name: str
    classes: list[str]
    training: list[dict] = field(default_factory=list)
    validation: list[dict] = field(default_factory=list)
    test: list[dict] = field(default_factory=list)
    unlabeled: list[dict] = field(default_factory=list)
    description: str = ""
    source: dict = field(default_factory=dict)
    path: str | None = None
    data_root: str | None = None
    mask_resize: bool = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: dict, path: str | None = None) -> Manifest:
        where = path or "<manifest>"
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: a manifest is a JSON object, got {type(data).__name__}.")
        classes = data.get("classes")
        if not classes or not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise ManifestError(f"{where}: 'classes' must be a non-empty list of class names.")
        if len(set(classes)) != len(classes):
            dup = [c for c, n in Counter(classes).items() if n > 1]
            raise ManifestError(f"{where}: 'classes' lists {dup} more than once.")
        unknown = set(data) - {"name", "description", "classes", "source", "mask_resize", *ENTRY_LISTS}
        if unknown:
            raise ManifestError(
                f"{where}: unknown top-level keys {sorted(unknown)}; expected {list(ENTRY_LISTS)} and metadata."
            )
        # without a name, the file's (made safe); a name given is checked, not silently changed
        name = str(data.get("name") or re.sub(r"[^A-Za-z0-9._-]", "_", Path(where).stem).lstrip("._-")[:64] or "data")
        if not _SAFE_NAME.fullmatch(name):
            raise ManifestError(
                f"{where}: name {name[:60]!r} is not a safe identifier (letters, digits, '.', '_', '-'; starting "
                "with a letter or digit; at most 64): it names result folders and tables"
            )
        mask_resize = data.get("mask_resize", False)
        if not isinstance(mask_resize, bool):
            raise ManifestError(f"{where}: 'mask_resize' must be true or false, got {json.dumps(mask_resize)}.")
        manifest = cls(
            name=name,
            classes=list(classes),
            description=str(data.get("description", "")),
            source=dict(data.get("source", {})),
            path=path,
            mask_resize=mask_resize,
        )
        for split in SPLITS:
            entries = data.get(split, [])
            if not isinstance(entries, list):
                raise ManifestError(f"{where}: '{split}' must be a list of entries.")
            setattr(manifest, split, [manifest._checked_entry(e, split, i) for i, e in enumerate(entries)])
        if not manifest.training:
            raise ManifestError(f"{where}: the 'training' split is empty.")
        entries = data.get(UNLABELED, [])
        if not isinstance(entries, list):
            raise ManifestError(f"{where}: '{UNLABELED}' must be a list of entries.")
        manifest.unlabeled = [manifest._checked_unlabeled_entry(e, i) for i, e in enumerate(entries)]
        manifest.check_group_leakage()
        return manifest

    @classmethod
    def load(cls, path: str | os.PathLike) -> Manifest:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Manifest not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}).") from e
        except UnicodeDecodeError:
            raise ManifestError(f"{path}: not a manifest (not UTF-8 text; a manifest is a JSON file).") from None
        return cls.from_dict(data, path=str(path))

    def _checked_entry(self, entry: Any, split: str, index: int) -> dict:
        where = f"{self.path or self.name}: {split}[{index}]"
        if not isinstance(entry, dict) or DataKeys.IMAGE not in entry:
            raise ManifestError(f"{where} must be an object with an 'image' path, got {entry!r}.")
        entry = dict(entry)
        if DataKeys.LABEL not in entry:
            raise ManifestError(f"{where} ({entry[DataKeys.IMAGE]}) has no 'label'.")
        entry[DataKeys.LABEL] = self.label_index(entry[DataKeys.LABEL], where=f"{where} ({entry[DataKeys.IMAGE]})")
        mask = entry.get(DataKeys.MASK)
        if mask is not None and not isinstance(mask, (str, list)):
            raise ManifestError(f"{where}: 'mask' must be a path or a list of paths, got {type(mask).__name__}.")
        if isinstance(mask, list) and not mask:
            raise ManifestError(f"{where}: 'mask' is an empty list; leave the key out when there is no mask.")
        return entry

    def _checked_unlabeled_entry(self, entry: Any, index: int) -> dict:
        where = f"{self.path or self.name}: {UNLABELED}[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get(DataKeys.IMAGE), str):
            raise ManifestError(f"{where} must be an object with an 'image' path, got {entry!r}.")
        for key, fix in ((DataKeys.LABEL, "move it to 'training'"), (DataKeys.MASK, "masks need a labelled entry")):
            if key in entry:
                image = entry[DataKeys.IMAGE]
                raise ManifestError(f"{where} ({image}) has a '{key}': unlabeled images have none; {fix}.")
        return dict(entry)

    def label_index(self, label: Any, where: str = "") -> int:
        """Class index of ``label`` (an index or a class name); raises :class:`ManifestError` if unknown.

        A whole number (``1``, ``"1"``, ``1.0``) is an index; a fraction (``1.7``) or a boolean (``true``) is
        refused rather than truncated to a class.
        """
        if isinstance(label, str) and not label.strip().lstrip("-").isdigit():
            if label not in self.classes:
                raise ManifestError(f"{where}: label '{label}' is not one of the classes {self.classes}.")
            return self.classes.index(label)
        if isinstance(label, bool) or (isinstance(label, float) and not label.is_integer()):
            raise ManifestError(
                f"{where}: label {json.dumps(label)} is neither a class index (a whole number) nor a class name "
                f"of {self.classes}."
            )
        try:
            idx = int(label)
        except (TypeError, ValueError, OverflowError):
            raise ManifestError(f"{where}: label {label!r} is neither a class index nor a class name.") from None
        if not 0 <= idx < len(self.classes):
            raise ManifestError(f"{where}: label {idx} is outside 0..{len(self.classes) - 1} (classes {self.classes}).")
        return idx

    # ------------------------------------------------------------------ views
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> list[dict]:
        """The entries of a split, or of the ``unlabeled`` list."""
        if name not in ENTRY_LISTS:
            raise KeyError(f"Unknown split '{name}'; expected one of {ENTRY_LISTS}.")
        return getattr(self, name)

    @property
    def has_masks(self) -> bool:
        return any(DataKeys.MASK in e for split in SPLITS for e in self.split(split))

    def class_counts(self, split: str = "training") -> dict[str, int]:
        counts = Counter(e[DataKeys.LABEL] for e in self.split(split))
        return {c: counts.get(i, 0) for i, c in enumerate(self.classes)}

    def summary(self) -> str:
        lines = [f"{self.name}: {self.num_classes} classes {self.classes}"]
        for split in SPLITS:
            counts = self.class_counts(split)
            lines.append(
                f"  {split:<10} {len(self.split(split)):>6}  " + ", ".join(f"{k}={v}" for k, v in counts.items())
            )
        if self.unlabeled:
            lines.append(f"  {UNLABELED:<10} {len(self.unlabeled):>6}  (no labels)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "description": self.description, "classes": list(self.classes)}
        if self.source:
            out["source"] = self.source
        if self.mask_resize:  # written only when set, so manifests without it keep their bytes
            out["mask_resize"] = True
        for split in SPLITS:
            out[split] = [dict(e) for e in self.split(split)]
        if self.unlabeled:  # written only when there are any, so manifests without them keep their bytes
            out[UNLABELED] = [dict(e) for e in self.unlabeled]
        return out

    def save(self, path: str | os.PathLike) -> Path:
        return write_json(path, self.to_dict(), indent=1)

    # ------------------------------------------------------------------ checks
    def check_group_leakage(self) -> None:
        """Raise if one ``group`` (patient/lesion) appears in more than one split.

        The ``unlabeled`` list counts as part of training: a group of it may have labelled training images too,
        never validation or test ones.
        """
        seen: dict[str, str] = {}
        for split in ENTRY_LISTS:
            for e in self.split(split):
                g = e.get(DataKeys.GROUP)
                if g is None:
                    continue
                first = seen.setdefault(str(g), split)
                if first != split and {first, split} != {"training", UNLABELED}:
                    raise ManifestError(
                        f"{self.path or self.name}: group '{g}' appears in both '{first}' and '{split}'; "
                        "a patient or lesion must stay in one split or results leak."
                    )

    def with_classes(self, keep: Sequence[str]) -> Manifest:
        """A copy restricted to the classes ``keep`` (in that order), labels re-indexed."""
        missing = [c for c in keep if c not in self.classes]
        if missing:
            raise ManifestError(f"{self.name}: cannot keep classes {missing}; the manifest has {self.classes}.")
        old_to_new = {self.classes.index(c): i for i, c in enumerate(keep)}
        out = copy.deepcopy(self)
        out.classes = list(keep)
        for split in SPLITS:
            kept = [
                dict(e, label=old_to_new[e[DataKeys.LABEL]])
                for e in self.split(split)
                if e[DataKeys.LABEL] in old_to_new
            ]
            setattr(out, split, kept)
        return out

    # ------------------------------------------------------------------ paths
    def resolve(self, data_root: str | os.PathLike | None, check_files: bool = True) -> Manifest:
        """A copy whose relative paths are joined to ``data_root``; missing files raise one clear error.

        Args:
            data_root: folder that relative paths are relative to. ``None`` resolves against the
                manifest's own folder.
            check_files: verify that every image and mask file exists.
        """
        where = self.path or self.name
        if data_root is None:
            root = Path(self.path).parent if self.path else Path.cwd()
        else:
            root = Path(data_root).expanduser()
            if not root.is_dir():
                raise FileNotFoundError(
                    f"Data root '{data_root}' does not exist or is not a folder (needed by manifest {where})."
                )
        out = copy.deepcopy(self)
        out.data_root = str(root)
        missing: list[str] = []
        for split in ENTRY_LISTS:
            for entry in out.split(split):
                for key in _PATH_KEYS:
                    if key not in entry:
                        continue
                    value = entry[key]
                    paths = [value] if isinstance(value, str) else list(value)
                    resolved = [str(p if os.path.isabs(p) else root / p) for p in paths]
                    if check_files:
                        missing.extend(f"{split}: {key} {p}" for p in resolved if not os.path.isfile(p))
                    entry[key] = resolved[0] if isinstance(value, str) else resolved
        if missing:
            listed = "\n  ".join(missing[:_MAX_LISTED])
            more = f"\n  ... and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
            raise FileNotFoundError(
                f"{len(missing)} file(s) listed in {where} are missing under data root '{root}':\n  {listed}{more}"
            )
        return out

    # ------------------------------------------------------------------ label budgets
    def check_validation(self) -> None:
        """Raise :class:`ManifestError` if the ``validation`` split is empty.

        Training selects and saves its model (``model.pt``) on the validation split: without one a run
        would end successfully having saved no model.
        """
        if not self.validation:
            raise ManifestError(
                f"{self.path or self.name}: the 'validation' split is empty, so training would select and save no "
                "model (model.pt); add validation entries, or build the manifest with a validation fraction "
                "(monai-ssl manifest splits 70/10/20 by default)"
            )

    def label_split(
        self,
        budget: int | float,
        seed: int = 0,
        hide_labels: bool = False,
        group_key: str = DataKeys.GROUP,
        require_validation: bool = True,
    ) -> LabelSplit:
        """Split ``training`` into a labeled subset of size ``budget`` and the unlabeled rest, to which the
        ``unlabeled`` list is added.

        See :func:`monai_ssl_ext.data.label_budget.split_label_budget`. This is the step a training run
        takes before it starts, so it also refuses a manifest without validation entries
        (:meth:`check_validation`) unless ``require_validation`` is false.
        """
        from monai_ssl_ext.data.label_budget import split_label_budget

        if require_validation:
            self.check_validation()

        return split_label_budget(
            self.training,
            budget,
            seed=seed,
            classes=self.classes,
            group_key=group_key,
            hide_labels=hide_labels,
            source=self.path or self.name,
            extra_unlabeled=self.unlabeled,
        )
