"""Ordinal severity levels of class names, for severity representation learning (SEMISE, arXiv 2501.03848).

A :class:`SeverityOrder` maps each class name to an ordinal level, 0 being healthy (or the least
severe kind). Several classes may share a level: HAM10000's benign kinds (nv, bkl, df, vasc) are all
below actinic keratosis (akiec, pre-malignant), itself below the malignant bcc and mel. The order is
clinical judgement, not data: any data set must state the one it uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import torch

__all__ = ["BUSI_SEVERITY", "HAM10000_SEVERITY", "SEVERITY_ORDERS", "SeverityOrder", "get_severity_order"]


class SeverityOrder:
    """Class name -> ordinal severity level, with levels ``0 .. num_levels - 1`` and 0 the healthy level.

    Args:
        levels: either a mapping ``{class_name: level}`` with integer levels that cover ``0..L-1``
            without gaps, or a sequence of groups ``[[names at level 0], [names at level 1], ...]``.
            A class name may appear only once.
        name: an optional label for messages.

    :meth:`levels_for` turns a manifest's ``classes`` list (``C`` names) into a ``(C,)`` long tensor
    so that ``levels_for(classes)[labels]`` gives the ``(N,)`` severities of ``(N,)`` class indices.
    """

    healthy_level: int = 0

    def __init__(self, levels: Mapping[str, int] | Sequence[Sequence[str]], name: str | None = None) -> None:
        self.name = name
        mapping = self._from_mapping(levels) if isinstance(levels, Mapping) else self._from_groups(levels)
        if not mapping:
            raise ValueError("a severity order needs at least one class.")
        used = sorted(set(mapping.values()))
        if used != list(range(len(used))):
            raise ValueError(f"severity levels must cover 0..{max(used)} without gaps, got levels {used}.")
        self._levels = MappingProxyType(mapping)

    @staticmethod
    def _from_mapping(levels: Mapping[str, int]) -> dict[str, int]:
        mapping: dict[str, int] = {}
        for cls, level in levels.items():
            if not isinstance(cls, str):
                raise TypeError(f"class names must be strings, got {cls!r}.")
            if isinstance(level, bool) or not isinstance(level, int):
                raise TypeError(f"the level of '{cls}' must be an int, got {level!r}.")
            if level < 0:
                raise ValueError(f"the level of '{cls}' must be >= 0, got {level}.")
            mapping[cls] = level
        return mapping

    @staticmethod
    def _from_groups(groups: Sequence[Sequence[str]]) -> dict[str, int]:
        if isinstance(groups, str):
            raise TypeError("severity groups must be a sequence of sequences of class names, got a string.")
        mapping: dict[str, int] = {}
        for level, group in enumerate(groups):
            # a bare string would otherwise be read as a group of one-letter class names
            if isinstance(group, str) or not isinstance(group, Sequence) or len(group) == 0:
                raise ValueError(f"severity level {level} must be a non-empty list of class names, got {group!r}.")
            for cls in group:
                if not isinstance(cls, str):
                    raise TypeError(f"class names must be strings, got {cls!r} at level {level}.")
                if cls in mapping:
                    raise ValueError(f"class '{cls}' is listed at levels {mapping[cls]} and {level}.")
                mapping[cls] = level
        return mapping

    @property
    def classes(self) -> tuple[str, ...]:
        """The known class names, by level then in the given order."""
        return tuple(sorted(self._levels, key=self._levels.__getitem__))

    @property
    def num_levels(self) -> int:
        """The number of distinct levels ``L``."""
        return max(self._levels.values()) + 1

    @property
    def groups(self) -> tuple[tuple[str, ...], ...]:
        """The class names of each level, ``L`` tuples."""
        return tuple(tuple(c for c in self.classes if self._levels[c] == level) for level in range(self.num_levels))

    def as_dict(self) -> dict[str, int]:
        """A copy of the ``{class_name: level}`` mapping."""
        return dict(self._levels)

    def level(self, class_name: str) -> int:
        """The level of ``class_name``; ``KeyError`` naming it and the known classes when unknown."""
        try:
            return self._levels[class_name]
        except KeyError:
            known = list(self.classes)
            message = f"class '{class_name}' has no severity level in {self._describe()}; known classes: {known}."
            raise KeyError(message) from None

    def levels_for(self, classes: Sequence[str]) -> torch.Tensor:
        """``(C,)`` long tensor of the levels of a manifest's class list (index ``k`` = level of ``classes[k]``).

        Raises ``ValueError`` naming every class of ``classes`` that the order does not know, so that
        a manifest with an extra or misspelt class fails before training rather than being mis-ranked.
        """
        if isinstance(classes, str):
            raise TypeError("classes must be a sequence of class names, got a string.")
        names = list(classes)
        if not names:
            raise ValueError("classes is empty.")
        unknown = [c for c in names if c not in self._levels]
        if unknown:
            raise ValueError(
                f"classes {unknown} have no severity level in {self._describe()}; known classes: {list(self.classes)}."
            )
        return torch.tensor([self._levels[c] for c in names], dtype=torch.long)

    def __contains__(self, class_name: object) -> bool:
        return class_name in self._levels

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SeverityOrder):
            return NotImplemented
        return dict(self._levels) == dict(other._levels)

    def __hash__(self) -> int:
        return hash(frozenset(self._levels.items()))

    def __repr__(self) -> str:
        label = f"{self.name!r}, " if self.name else ""
        return f"SeverityOrder({label}{[list(g) for g in self.groups]})"

    def _describe(self) -> str:
        return f"the severity order '{self.name}'" if self.name else "the severity order"


# BUSI (Al-Dhabyani et al. 2020): normal < benign < malignant
BUSI_SEVERITY = SeverityOrder([["normal"], ["benign"], ["malignant"]], name="busi")

# HAM10000 (Tschandl et al. 2018): benign kinds (melanocytic nevi, benign keratosis-like lesions,
# dermatofibroma, vascular lesions) < actinic keratoses / intraepithelial carcinoma (pre-malignant)
# < basal cell carcinoma and melanoma (malignant)
HAM10000_SEVERITY = SeverityOrder([["nv", "bkl", "df", "vasc"], ["akiec"], ["bcc", "mel"]], name="ham10000")

SEVERITY_ORDERS: Mapping[str, SeverityOrder] = MappingProxyType({"busi": BUSI_SEVERITY, "ham10000": HAM10000_SEVERITY})


def get_severity_order(name: str) -> SeverityOrder:
    """The registered severity order of a data set (``"busi"``, ``"ham10000"``; case-insensitive)."""
    key = str(name).lower()
    if key not in SEVERITY_ORDERS:
        raise KeyError(f"no severity order registered for '{name}'; known: {sorted(SEVERITY_ORDERS)}.")
    return SEVERITY_ORDERS[key]
