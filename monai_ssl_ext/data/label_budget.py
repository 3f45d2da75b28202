"""Label budgets and stratified, group-aware splits.

Semi-supervised results are quoted at a *label budget*: "216 labels" means 216 images of the
training split keep their labels and the rest are treated as unlabeled. Two rules make such numbers
comparable and honest:

- **Stratified**: each class gets a share of the budget proportional to its share of the training
  split (largest-remainder rounding; a class whose share rounds to zero still gets one image).
- **Group-aware**: images of one patient or lesion (``group``) are either all labeled or all
  unlabeled, and never cross training/validation/test. Otherwise near-duplicates leak labels.

The selection is a pure function of the entries, the budget and the seed.
"""

from __future__ import annotations

import copy
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from monai_ssl_ext.keys import DataKeys
from monai_ssl_ext.utils.seeding import derive_seed

__all__ = [
    "UNKNOWN_LABEL",
    "LabelBudgetError",
    "LabelSplit",
    "resolve_budget",
    "split_label_budget",
    "stratified_group_split",
]

# ``hidden_label`` of an image nobody labelled (benchmark mode): every entry of the unlabeled stream carries the
# key so batches collate; pseudo-label accuracy leaves these out
UNKNOWN_LABEL = -1

_BUDGET_STREAM = 0x1ABE1  # keeps label-budget draws independent of other uses of the same seed
_SPLIT_STREAM = 0x5B117


class LabelBudgetError(ValueError):
    """A label budget that cannot be met (too large, too small for the classes, a class left without labels)."""


@dataclass
class LabelSplit:
    """The labeled subset of a training split and the unlabeled rest.

    Attributes:
        labeled: entries that keep their ``label``.
        unlabeled: entries whose label is removed, or moved to ``hidden_label`` when ``hide_labels``
            was requested (benchmark mode: the trainer may then report pseudo-label accuracy).
        budget: the number of labeled images.
        seed: the seed of the draw.
        per_class: labeled images per class name.
        hide_labels: whether unlabeled entries keep their true label under ``hidden_label``.
    """

    labeled: list[dict]
    unlabeled: list[dict]
    budget: int
    seed: int
    per_class: dict[str, int] = field(default_factory=dict)
    hide_labels: bool = False

    def unlabeled_stream(self, include_labeled: bool = False) -> list[dict]:
        """The entries the unlabeled stream draws from.

        Args:
            include_labeled: also the labeled images, without their label (USB's default: consistency
                on the labeled images too); in benchmark mode their label is kept under ``hidden_label``
                like the others'. ``False``: the unlabeled images only.
        """
        if not include_labeled:
            return self.unlabeled
        extra = []
        for entry in self.labeled:
            u = copy.deepcopy(entry)
            label = u.pop(DataKeys.LABEL, None)
            if self.hide_labels and label is not None:
                u[DataKeys.HIDDEN_LABEL] = label
            extra.append(u)
        return [*self.unlabeled, *extra]

    def summary(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in self.per_class.items())
        return f"{len(self.labeled)} labeled ({counts}), {len(self.unlabeled)} unlabeled, seed {self.seed}"

    def to_dict(self) -> dict:
        """The split as stored in ``data_manifests``: image paths of the labeled subset, per class counts."""
        return {
            "budget": self.budget,
            "seed": self.seed,
            "per_class": self.per_class,
            "labeled": sorted(e[DataKeys.IMAGE] for e in self.labeled),
        }


def resolve_budget(budget: int | float | str, num_train: int, where: str = "") -> int:
    """Turn a count (``216``), a fraction (``0.2``, ``"20%"``) or ``"all"`` into a number of images.

    An ``int`` is a count; a ``float`` in (0, 1] is a fraction of ``num_train`` (so ``1`` is one image
    and ``1.0`` is all of them); strings are parsed the same way, and ``"all"`` labels the whole training split
    (a site whose unlabeled images are listed apart, under the manifest's ``unlabeled``).
    """
    value: int | float
    if isinstance(budget, str) and budget.strip().lower() == "all":
        return num_train
    if isinstance(budget, str):
        text = budget.strip()
        try:
            value = float(text[:-1]) / 100.0 if text.endswith("%") else (int(text) if text.isdigit() else float(text))
        except ValueError:
            raise LabelBudgetError(
                f"{where}label budget '{budget}' is not a count, a fraction or a percentage."
            ) from None
    elif isinstance(budget, bool) or not isinstance(budget, (int, float, np.integer, np.floating)):
        raise LabelBudgetError(f"{where}label budget {budget!r} is not a count or a fraction.")
    else:
        value = budget
    if isinstance(value, (float, np.floating)):
        if not 0.0 < value <= 1.0:
            raise LabelBudgetError(
                f"{where}label budget fraction {value} must be in (0, 1]; give a count as an integer."
            )
        count = round(float(value) * num_train)
    else:
        count = int(value)
    if count < 1:
        raise LabelBudgetError(f"{where}label budget {budget} gives no labeled image out of {num_train}.")
    if count > num_train:
        raise LabelBudgetError(f"{where}label budget {budget} is larger than the training split ({num_train} images).")
    return count


def _largest_remainder(total: int, weights: Sequence[int], minimum: int = 0) -> list[int]:
    """Integer shares of ``total`` proportional to ``weights`` (largest-remainder rounding), each at least
    ``minimum`` where the weight is positive; shares raised to the minimum are taken from the largest ones."""
    weights = np.asarray(weights, dtype=float)
    active = weights > 0
    if minimum * int(active.sum()) > total:
        raise LabelBudgetError(f"cannot give {minimum} image(s) to each of {int(active.sum())} classes with {total}.")
    raw = total * weights / weights.sum()
    shares = np.floor(raw).astype(int)
    order = np.argsort(-(raw - shares), kind="stable")
    for i in order[: total - int(shares.sum())]:
        shares[i] += 1
    for i in np.flatnonzero(active & (shares < minimum)):
        while shares[i] < minimum:
            shares[int(np.argmax(shares))] -= 1
            shares[i] += 1
    return shares.tolist()


def _groups_by_class(entries: Sequence[dict], group_key: str) -> dict[int, list[tuple[str, list[int]]]]:
    """Group entry indices by ``group_key`` (entries without one form their own group), keyed by class.

    A group's class is the most frequent label of its entries (a patient with several lesions of
    different classes is rare; the majority keeps stratification close).
    """
    members: dict[str, list[int]] = {}
    for i, e in enumerate(entries):
        g = e.get(group_key)
        key = f"g:{g}" if g is not None else f"i:{i}"
        members.setdefault(key, []).append(i)
    by_class: dict[int, list[tuple[str, list[int]]]] = defaultdict(list)
    for key, idx in members.items():
        labels = Counter(int(entries[i][DataKeys.LABEL]) for i in idx)
        top = max(labels.values())
        cls = min(c for c, n in labels.items() if n == top)
        by_class[cls].append((key, idx))
    return by_class


def _fill(groups: list[tuple[str, list[int]]], target: int) -> tuple[list[int], list[tuple[str, list[int]]]]:
    """Take groups in order while they fit in ``target`` images; return chosen indices and the groups left."""
    chosen: list[int] = []
    left = []
    for key, idx in groups:
        if len(chosen) + len(idx) <= target:
            chosen.extend(idx)
        else:
            left.append((key, idx))
    return chosen, left


def split_label_budget(
    entries: Sequence[dict],
    budget: int | float | str,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    group_key: str = DataKeys.GROUP,
    hide_labels: bool = False,
    source: str = "",
    extra_unlabeled: Sequence[dict] = (),
) -> LabelSplit:
    """Draw a stratified, group-aware labeled subset of ``entries``; the rest becomes unlabeled.

    Args:
        entries: training entries with an integer ``label`` and optional ``group``.
        budget: number of labeled images (``216``) or a fraction of the entries (``0.2``).
        seed: the draw is a pure function of ``(entries, budget, seed)``.
        classes: class names (for messages and ``per_class``); defaults to ``0..C-1`` from the labels.
        group_key: entry key holding the patient/lesion id.
        hide_labels: keep the true label of unlabeled entries under ``hidden_label`` (benchmark mode).
        source: name of the manifest, used in error messages.
        extra_unlabeled: images without any label (a manifest's ``unlabeled`` list), appended to the unlabeled
            rest; with ``hide_labels`` their ``hidden_label`` is :data:`UNKNOWN_LABEL`.

    Raises:
        LabelBudgetError: the budget exceeds the entries, is below the number of classes, or leaves a
            class without any labeled image.
    """
    where = f"{source}: " if source else ""
    entries = list(entries)
    if not entries:
        raise LabelBudgetError(f"{where}the training split is empty; nothing to label.")
    n_budget = resolve_budget(budget, len(entries), where)
    num_classes = len(classes) if classes is not None else 1 + max(int(e[DataKeys.LABEL]) for e in entries)
    names = list(classes) if classes is not None else [str(c) for c in range(num_classes)]
    counts = Counter(int(e[DataKeys.LABEL]) for e in entries)
    present = [c for c in range(num_classes) if counts.get(c, 0) > 0]
    if n_budget < len(present):
        raise LabelBudgetError(
            f"{where}label budget {n_budget} is smaller than the number of classes present ({len(present)}); "
            "every class needs at least one labeled image."
        )
    targets = _largest_remainder(n_budget, [counts.get(c, 0) for c in range(num_classes)], minimum=1)

    rng = np.random.default_rng(derive_seed(seed, _BUDGET_STREAM))
    by_class = _groups_by_class(entries, group_key)
    chosen: list[int] = []
    leftovers: list[tuple[str, list[int]]] = []
    for c in range(num_classes):
        groups = by_class.get(c, [])
        order = rng.permutation(len(groups))
        picked, left = _fill([groups[i] for i in order], targets[c])
        chosen.extend(picked)
        leftovers.extend(left)
    # groups larger than a class's remaining share can leave the total short: top it up with whatever fits
    if len(chosen) < n_budget and leftovers:
        order = rng.permutation(len(leftovers))
        extra, _ = _fill([leftovers[i] for i in order], n_budget - len(chosen))
        chosen.extend(extra)

    chosen_set = set(chosen)
    labeled = [copy.deepcopy(entries[i]) for i in sorted(chosen_set)]
    per_class = Counter(int(e[DataKeys.LABEL]) for e in labeled)
    empty = [names[c] for c in present if per_class.get(c, 0) == 0]
    if empty:
        raise LabelBudgetError(
            f"{where}after the split, class(es) {empty} have no labeled image (budget {n_budget}, seed {seed}); "
            "raise the budget or check the group sizes."
        )
    unlabeled = []
    for i, e in enumerate(entries):
        if i in chosen_set:
            continue
        u = copy.deepcopy(e)
        label = u.pop(DataKeys.LABEL, None)
        if hide_labels and label is not None:
            u[DataKeys.HIDDEN_LABEL] = label
        unlabeled.append(u)
    for entry in extra_unlabeled:
        u = copy.deepcopy(entry)
        if hide_labels:
            u[DataKeys.HIDDEN_LABEL] = UNKNOWN_LABEL
        unlabeled.append(u)
    return LabelSplit(
        labeled=labeled,
        unlabeled=unlabeled,
        budget=len(labeled),
        seed=seed,
        per_class={names[c]: per_class.get(c, 0) for c in range(num_classes)},
        hide_labels=hide_labels,
    )


def stratified_group_split(
    entries: Sequence[dict],
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    group_key: str = DataKeys.GROUP,
    strata_key: str | None = None,
) -> list[list[dict]]:
    """Split ``entries`` into parts of the given fractions, stratified by class, whole groups per part.

    Used by data set builders for the ``training``/``validation``/``test`` split. Each class's groups
    are shuffled and dealt to the part that is furthest below its target count for that class.

    With ``strata_key`` the split is also stratified by that entry key (a source centre, a scanner):
    each ``(stratum, class)`` cell is dealt on its own, so every part holds each class from every stratum
    that has it (when the cell is large enough), in about the proportions of the whole: where the class is
    confounded with the source, no split can then be told apart by its sources alone. A group must lie
    within one stratum (``ValueError`` otherwise); every entry needs the key.
    """
    if not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions {list(fractions)} must sum to 1.")
    rng = np.random.default_rng(derive_seed(seed, _SPLIT_STREAM))
    parts: list[list[int]] = [[] for _ in fractions]
    for members in _strata(entries, group_key, strata_key):
        subset = [entries[i] for i in members]
        for _, groups in sorted(_groups_by_class(subset, group_key).items()):
            total = sum(len(idx) for _, idx in groups)
            targets = np.asarray(fractions) * total
            filled = np.zeros(len(fractions))
            # a random order, not big groups first: dealing the big groups first would send every one of them
            # to the largest part (training), and the splits would differ in how many images a patient has
            for i in rng.permutation(len(groups)):
                idx = groups[i][1]
                k = int(np.argmax(targets - filled))
                parts[k].extend(members[j] for j in idx)
                filled[k] += len(idx)
    return [[copy.deepcopy(entries[i]) for i in sorted(p)] for p in parts]


def _strata(entries: Sequence[dict], group_key: str, strata_key: str | None) -> list[list[int]]:
    """Indices of ``entries`` per value of ``strata_key``, in sorted order of the values (one stratum without it)."""
    if strata_key is None:
        return [list(range(len(entries)))]
    members: dict[str, list[int]] = {}
    stratum_of_group: dict[str, str] = {}
    for i, e in enumerate(entries):
        if e.get(strata_key) is None:
            raise ValueError(f"entry {e.get(DataKeys.IMAGE, i)!r} has no '{strata_key}' to stratify by.")
        stratum = str(e[strata_key])
        group = e.get(group_key)
        if group is not None and stratum_of_group.setdefault(str(group), stratum) != stratum:
            raise ValueError(
                f"group '{group}' lies in two '{strata_key}' strata; a group must stay whole, so it cannot be "
                "split by stratum."
            )
        members.setdefault(stratum, []).append(i)
    return [members[k] for k in sorted(members)]
