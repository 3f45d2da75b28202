"""Pieces shared by the data set builders: the split, the skip report, CSV reading and file checks.

Every builder takes ``on_error``:

- ``"raise"`` (default): the first problem (a missing image, an unknown class, a duplicate id...)
  stops the build with a :class:`~monai_ssl_ext.data.ManifestError` whose one-line message names the
  file (or the CSV row) and the problem.
- ``"skip"``: the file is left out and recorded in a :class:`BuildReport`, which
  :func:`~monai_ssl_ext.data.builders.build_manifest` writes beside the manifest (JSON or CSV).

Some files are left out in either mode because a data set as distributed is expected to hold them
(a non-DICOM file in a DICOM folder, a structured report without pixels, an image without a label
row): they are recorded in the report too, with ``problem`` false.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from monai_ssl_ext.data.label_budget import stratified_group_split
from monai_ssl_ext.data.manifest import SPLITS, Manifest, ManifestError
from monai_ssl_ext.io.reader import IMAGE_SUFFIXES
from monai_ssl_ext.keys import DataKeys
from monai_ssl_ext.utils.atomic import atomic_open, write_json

__all__ = [
    "DEFAULT_FRACTIONS",
    "IMAGE_SUFFIXES",
    "ON_ERROR",
    "BuildReport",
    "SkippedFile",
    "check_on_error",
    "image_suffix",
    "pick_column",
    "read_csv_rows",
    "split_entries",
    "write_report",
]

logger = logging.getLogger(__name__)

DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
ON_ERROR = ("raise", "skip")
# what monai_ssl_ext.io reads: Pillow rasters, DICOM and NIfTI
_REPORT_FIELDS = ("path", "kind", "problem", "reason")


def check_on_error(on_error: str) -> str:
    """``on_error`` if it is ``"raise"`` or ``"skip"``; a ``ValueError`` otherwise."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}.")
    return on_error


def image_suffix(name: str) -> str:
    """The lower-case image suffix of a file name (``.nii.gz`` counts as one), or ``""``."""
    lower = name.lower()
    if lower.endswith(".nii.gz"):
        return ".nii.gz"
    return os.path.splitext(lower)[1]


@dataclass(frozen=True)
class SkippedFile:
    """One file (or CSV row) left out of a manifest.

    Attributes:
        path: the file, relative to the data root when it lies under it (a CSV row reads ``labels.csv:7``).
        kind: a short code (``missing_image``, ``unknown_class``, ``duplicate``, ``not_dicom``...).
        reason: one line saying what is wrong; never holds a patient identifier in clear.
        problem: ``True`` for a problem skipped because ``on_error="skip"``; ``False`` for a file the
            builder always leaves out (not an image, no pixel data, no label).
    """

    path: str
    kind: str
    reason: str
    problem: bool = True


class BuildReport:
    """The files a builder left out, and why; written as JSON or CSV by :meth:`write`.

    A builder calls :meth:`problem` for anything wrong with the data (it raises unless
    ``on_error="skip"``) and :meth:`exclude` for files it always leaves out.

    Args:
        builder: the builder's name (``ham10000``...).
        root: the data root; recorded paths are made relative to it.
        on_error: ``"raise"`` or ``"skip"``.
    """

    def __init__(self, builder: str = "", root: str | os.PathLike = "", on_error: str = "raise") -> None:
        self.builder = builder
        self.root = str(root)
        self.on_error = check_on_error(on_error)
        self.skipped: list[SkippedFile] = []

    @classmethod
    def attach(cls, report: BuildReport | None, builder: str, root: str | os.PathLike, on_error: str) -> BuildReport:
        """``report`` set up for a build (a new one when ``None``), so a caller can pass its own and read it after."""
        if report is None:
            return cls(builder, root, on_error)
        report.builder, report.root, report.on_error = builder, str(root), check_on_error(on_error)
        return report

    def _shown(self, path: str | os.PathLike) -> str:
        text = str(path)
        if self.root:
            try:
                return Path(text).relative_to(self.root).as_posix()
            except ValueError:
                pass
        return text

    def problem(self, path: str | os.PathLike, kind: str, reason: str) -> None:
        """Stop with ``ManifestError("<path>: <reason>")``, or record the file when ``on_error="skip"``."""
        if self.on_error == "raise":
            raise ManifestError(f"{path}: {reason}")
        self.skipped.append(SkippedFile(self._shown(path), kind, reason, problem=True))

    def exclude(self, path: str | os.PathLike, kind: str, reason: str) -> None:
        """Record a file that is left out in either mode (not an image, no pixel data, no label)."""
        self.skipped.append(SkippedFile(self._shown(path), kind, reason, problem=False))

    @property
    def problems(self) -> list[SkippedFile]:
        return [s for s in self.skipped if s.problem]

    def counts(self) -> dict[str, int]:
        """Skipped files per ``kind``, in sorted order."""
        return dict(sorted(Counter(s.kind for s in self.skipped).items()))

    def summary(self) -> str:
        if not self.skipped:
            return f"{self.builder}: nothing skipped"
        counts = ", ".join(f"{k} {n}" for k, n in self.counts().items())
        return f"{self.builder}: {len(self.skipped)} file(s) left out ({counts})"

    def to_dict(self) -> dict:
        return {
            "builder": self.builder,
            "root": self.root,
            "on_error": self.on_error,
            "counts": self.counts(),
            "skipped": [asdict(s) for s in self.skipped],
        }

    def write(self, path: str | os.PathLike) -> Path:
        """Write the report atomically: CSV (``path,kind,problem,reason``) for a ``.csv`` path, JSON otherwise."""
        path = Path(path)
        if path.suffix.lower() == ".csv":
            with atomic_open(path, "w", encoding="utf-8", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=_REPORT_FIELDS)
                writer.writeheader()
                writer.writerows(asdict(s) for s in self.skipped)
            return path
        return write_json(path, self.to_dict(), indent=1)


def write_report(report: BuildReport, path: str | os.PathLike) -> Path:
    """Write ``report`` to ``path`` (``.csv`` or ``.json``); see :meth:`BuildReport.write`."""
    return report.write(path)


def read_csv_rows(path: str | os.PathLike) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and ``(line number, row)`` pairs of a CSV file; cells and header names stripped of spaces.

    The delimiter is a comma, or a tab or semicolon when the header line has those and no comma
    (Dataverse serves HAM10000's metadata as a tab-separated ``.tab`` file). Line numbers count the
    header as line 1, as a spreadsheet shows them.

    Raises:
        FileNotFoundError: no such file.
        ManifestError: the file has no header line or cannot be decoded as UTF-8.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start}).") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise ManifestError(f"{path}: empty file, expected a header line.")
    header = lines[0]
    delimiter = "," if "," in header else ("\t" if "\t" in header else (";" if ";" in header else ","))
    reader = csv.reader(lines, delimiter=delimiter)
    fields = [h.strip() for h in next(reader)]
    rows = []
    for number, cells in enumerate(reader, start=2):
        if not any(c.strip() for c in cells):
            continue
        if len(cells) > len(fields):
            raise ManifestError(f"{path}:{number}: {len(cells)} cells for {len(fields)} columns.")
        rows.append((number, {f: (cells[i].strip() if i < len(cells) else "") for i, f in enumerate(fields)}))
    return fields, rows


def pick_column(
    fields: Sequence[str], candidates: Iterable[str], where: str, what: str, required: bool = True
) -> str | None:
    """The first of ``candidates`` among ``fields`` (case-insensitive), or ``None`` / a ``ManifestError``."""
    lower = {f.lower(): f for f in fields}
    candidates = list(candidates)
    for c in candidates:
        if c.lower() in lower:
            return lower[c.lower()]
    if required:
        raise ManifestError(f"{where}: no {what} column (looked for {', '.join(candidates)}; found {list(fields)}).")
    return None


def split_entries(
    entries: Sequence[dict],
    classes: Sequence[str],
    name: str,
    description: str = "",
    source: dict | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    report: BuildReport | None = None,
    keep: Sequence[str] | None = None,
    strata_key: str | None = None,
) -> Manifest:
    """A manifest whose ``training``/``validation``/``test`` are a stratified, group-aware split of ``entries``.

    A class with too few images (or groups) to appear in every split is not forced into one: it is
    named in ``source["classes_missing_from"]``, in the description and in a warning.

    Args:
        entries: dicts with ``image``, an integer ``label`` and optional ``mask`` and ``group``.
        classes: class names indexed by ``label``.
        name, description: stored in the manifest.
        source: how the entries were found (builder name and options); the split is added to it.
        fractions: shares of the three splits, in ``SPLITS`` order.
        seed: split seed.
        report: the build's report; the number of files left out per kind goes to ``source["skipped"]``.
        keep: restrict the manifest to these classes, in this order, *after* splitting all of them, so an
            image is in the same split in the manifests of every class subset (``source["classes_kept"]``).
        strata_key: an entry key to stratify by besides the class (``stratum``: a source centre), see
            :func:`~monai_ssl_ext.data.label_budget.stratified_group_split`.
    """
    if len(fractions) != len(SPLITS):
        raise ValueError(f"give {len(SPLITS)} split fractions ({', '.join(SPLITS)}), got {list(fractions)}.")
    if not entries:
        raise ManifestError(f"{name}: no image found to build a manifest from.")
    parts = stratified_group_split(entries, fractions, seed=seed, strata_key=strata_key)
    info = {**(source or {}), "split_seed": seed, "split_fractions": list(fractions)}
    present = {int(e[DataKeys.LABEL]) for e in entries}
    missing = {}
    for split, part, share in zip(SPLITS, parts, fractions, strict=True):
        have = {int(e[DataKeys.LABEL]) for e in part}
        lacking = [classes[c] for c in sorted(present - have)]
        if lacking and share > 0:
            missing[split] = lacking
            logger.warning(
                "%s: no %s image of class(es) %s (too few images or groups to fill every split)", name, split, lacking
            )
    if missing:
        info["classes_missing_from"] = missing
        lacking = "; ".join(f"no {split} image of {', '.join(names)}" for split, names in missing.items())
        description = f"{description} Too few images or groups to fill every split: {lacking}.".strip()
    if report is not None and report.skipped:
        info["skipped"] = report.counts()
    data = {"name": name, "description": description, "classes": list(classes), "source": info}
    data.update(dict(zip(SPLITS, parts, strict=True)))
    manifest = Manifest.from_dict(data)
    if keep is not None and list(keep) != list(classes):
        manifest = manifest.with_classes(list(keep))
        manifest.source["classes_kept"] = list(keep)
    return manifest
