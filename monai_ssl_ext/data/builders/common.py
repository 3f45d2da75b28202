"""Pieces shared by the data set builders."""

from __future__ import annotations

from collections.abc import Sequence

from monai_ssl_ext.data.label_budget import stratified_group_split
from monai_ssl_ext.data.manifest import SPLITS, Manifest, ManifestError

__all__ = ["DEFAULT_FRACTIONS", "split_entries"]

DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)


def split_entries(
    entries: Sequence[dict],
    classes: Sequence[str],
    name: str,
    description: str = "",
    source: dict | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> Manifest:
    """A manifest whose ``training``/``validation``/``test`` are a stratified, group-aware split of ``entries``.

    Args:
        entries: dicts with ``image``, an integer ``label`` and optional ``mask`` and ``group``.
        classes: class names indexed by ``label``.
        name, description: stored in the manifest.
        source: how the entries were found (builder name and options); the split is added to it.
        fractions: shares of the three splits, in ``SPLITS`` order.
        seed: split seed.
    """
    if len(fractions) != len(SPLITS):
        raise ValueError(f"give {len(SPLITS)} split fractions ({', '.join(SPLITS)}), got {list(fractions)}.")
    if not entries:
        raise ManifestError(f"{name}: no image found to build a manifest from.")
    parts = stratified_group_split(entries, fractions, seed=seed)
    info = {**(source or {}), "split_seed": seed, "split_fractions": list(fractions)}
    data = {"name": name, "description": description, "classes": list(classes), "source": info}
    data.update(dict(zip(SPLITS, parts, strict=True)))
    return Manifest.from_dict(data)
