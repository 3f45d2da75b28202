"""Groups of near-duplicate images: the same lesion captured twice, to be kept on one side of a split.

Data sets released without patient identifiers (BUSI) hold several captures of one lesion, often a frame apart:
split by image, one lands in training and its twin in test. :func:`near_duplicate_groups` finds them by a
difference hash (Krawetz's dHash: the grey image resized to ``(size, size + 1)``, one bit per horizontal gradient
sign) and joins every pair within ``max_bits`` into one group (connected components), which a group-aware split
(:func:`~monai_ssl_ext.data.label_budget.stratified_group_split`) then keeps whole. The hash ignores small
differences of calipers and text and is blind to a flip or a crop: it finds twins, not every image of a patient.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

__all__ = ["difference_hash", "near_duplicate_groups"]


def difference_hash(path: str | os.PathLike, size: int = 16) -> np.ndarray:
    """The ``size * size`` bits (bool) of the image's difference hash."""
    from PIL import Image

    with Image.open(path) as image:
        grey = np.asarray(image.convert("L").resize((size + 1, size), Image.BILINEAR), dtype=np.int16)
    return grey[:, 1:] > grey[:, :-1]


def near_duplicate_groups(paths: Sequence[str | os.PathLike], max_bits: int = 32, size: int = 16) -> list[int]:
    """A group number per path: paths whose hashes differ in at most ``max_bits`` bits (directly or through a chain
    of such pairs) share one. Groups are numbered in the order of their first path; a path alone is its own group.

    Args:
        paths: image files.
        max_bits: largest Hamming distance (of ``size * size`` bits) still counted as the same capture. On BUSI
            (256 bits) same-lesion pairs lie at 4-24 bits and unrelated images above 64.
        size: hash side (``size * size`` bits).
    """
    if not paths:
        return []
    bits = np.stack([difference_hash(p, size).ravel() for p in paths]).astype(np.uint8)
    # Hamming distances of every pair at once: bits differ where exactly one of the two is set
    ones = bits.sum(axis=1).astype(np.int32)
    distance = ones[:, None] + ones[None, :] - 2 * (bits.astype(np.int32) @ bits.T.astype(np.int32))
    parent = list(range(len(paths)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(distance <= max_bits, k=1)), strict=True):
        a, b = root(int(i)), root(int(j))
        if a != b:
            parent[max(a, b)] = min(a, b)
    numbers: dict[int, int] = {}
    return [numbers.setdefault(root(i), len(numbers)) for i in range(len(paths))]
