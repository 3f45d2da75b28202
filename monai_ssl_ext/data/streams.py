"""Iteration-indexed data streams for semi-supervised training.

Semi-supervised training is counted in iterations, not epochs: each iteration takes one labeled and
one unlabeled batch, and the (small) labeled set cycles many times while the unlabeled set cycles
once. The pieces here make the content of every batch a pure function of ``(seed, step)``:

- :class:`IterationBatchSampler` yields, for step ``t``, the sample indices of that step (a fresh
  permutation per pass over the data) together with one augmentation seed per sample, and shards
  each global batch across distributed ranks.
- :class:`SeededTransformDataset` applies a random transform after seeding it with the sample's seed.
- :class:`ClassBalancedBatchSampler` is the same with class-balanced draws (an option of the
  labeled stream for imbalanced label sets), and :class:`StratifiedBatchSampler` with every stratum
  (severity level) in every batch, for the first steps an algorithm asks for (SEMISE's ranking phases).
- :class:`SemiSupervisedLoader` zips a labeled and an unlabeled stream into
  ``{"labeled": batch, "unlabeled": batch}`` and can start at any step.

Consequences: a run resumed at step ``k`` sees exactly the batches and augmentations of the
uninterrupted run; results do not depend on the number of data-loading workers; and with ``W``
ranks the union of the per-rank batches equals the single-process global batch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from itertools import count
from typing import Any, ClassVar

import numpy as np
import torch
from monai.data import get_track_meta, list_data_collate, set_track_meta
from monai.transforms import Randomizable, apply_transform
from torch.utils.data import DataLoader

from monai_ssl_ext.keys import DataKeys
from monai_ssl_ext.transforms.reseed import InPlaceReseed
from monai_ssl_ext.utils.distributed import get_rank, get_world_size
from monai_ssl_ext.utils.seeding import derive_seed

__all__ = [
    "LABELED_SAMPLING",
    "ClassBalancedBatchSampler",
    "IterationBatchSampler",
    "SeededTransformDataset",
    "SemiSupervisedLoader",
    "StratifiedBatchSampler",
    "SwitchingBatchSampler",
    "dataset_labels",
]

LABELED_STREAM = 1
UNLABELED_STREAM = 2
# what a derived seed is for, so that the order of pass c and the augmentation of sample c never share one
_ORDER = 0
_AUGMENT = 1
_BALANCED = 2  # the class-balanced draw of a step
_STRATIFIED = 3  # the stratified draw of a step
# how the labeled stream picks its samples (see SemiSupervisedLoader)
LABELED_SAMPLING = ("uniform", "class_balanced")


class IterationBatchSampler(torch.utils.data.Sampler):
    """An endless batch sampler whose batch at step ``t`` depends only on ``(seed, stream, t)``.

    Samples are taken from consecutive random permutations of ``range(num_samples)`` (one per pass),
    so every sample is seen once per pass even when ``num_samples`` is not a multiple of the batch.
    Each yielded item is ``(index, augmentation_seed)``, for :class:`SeededTransformDataset`.

    Args:
        num_samples: size of the data set.
        batch_size: samples per rank per step.
        seed: run seed.
        stream: distinguishes streams drawn with the same seed (labeled vs unlabeled).
        shuffle: permute each pass (``False`` keeps the data order, for debugging).
        rank, world_size: distributed sharding; default to the current process group.
        start_step: first step to yield (set by the trainer when it resumes).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int = 0,
        stream: int = 0,
        shuffle: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        start_step: int = 0,
    ) -> None:
        if num_samples < 1:
            raise ValueError("IterationBatchSampler needs at least one sample.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.stream = int(stream)
        self.shuffle = shuffle
        self.rank = get_rank() if rank is None else int(rank)
        self.world_size = get_world_size() if world_size is None else int(world_size)
        self.start_step = int(start_step)
        self._perm_cache: dict[int, np.ndarray] = {}

    def _permutation(self, cycle: int) -> np.ndarray:
        perm = self._perm_cache.get(cycle)
        if perm is None:
            if self.shuffle:
                perm = np.random.default_rng(derive_seed(self.seed, self.stream, _ORDER, cycle)).permutation(
                    self.num_samples
                )
            else:
                perm = np.arange(self.num_samples)
            # a step never spans more than a few passes: keep only the most recent permutations
            if len(self._perm_cache) > 4:
                self._perm_cache.pop(min(self._perm_cache))
            self._perm_cache[cycle] = perm
        return perm

    def batch_at(self, step: int) -> list[tuple[int, int]]:
        """Indices and augmentation seeds of this rank's share of the global batch at ``step``."""
        first = (step * self.world_size + self.rank) * self.batch_size
        out = []
        for position in range(first, first + self.batch_size):
            cycle, offset = divmod(position, self.num_samples)
            out.append((int(self._permutation(cycle)[offset]), derive_seed(self.seed, self.stream, _AUGMENT, position)))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in count(self.start_step):
            yield self.batch_at(step)


class _GroupDrawBatchSampler(IterationBatchSampler):
    """Base of the samplers that draw each step's global batch, with replacement, from the samples' groups.

    The global batch of step ``t`` (``batch_size * world_size`` draws, :meth:`draw`) comes from a generator
    seeded with ``(seed, stream, t)`` and rank ``r`` takes its ``r``-th slice, so, as with
    :class:`IterationBatchSampler`, a resumed run sees the same batches and the union of the per-rank batches
    is the single-process global batch. Augmentation seeds are those of the same batch positions in
    :class:`IterationBatchSampler`.
    """

    _draw_purpose: ClassVar[int]
    _group_name: ClassVar[str]

    def __init__(
        self,
        groups: Sequence[int],
        batch_size: int,
        seed: int = 0,
        stream: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        start_step: int = 0,
    ) -> None:
        groups_arr = np.asarray([int(g) for g in groups], dtype=np.int64)
        if groups_arr.size and groups_arr.min() < 0:
            raise ValueError(f"{type(self).__name__} needs a {self._group_name} >= 0 for every sample.")
        super().__init__(
            int(groups_arr.size),
            batch_size,
            seed=seed,
            stream=stream,
            rank=rank,
            world_size=world_size,
            start_step=start_step,
        )
        self.groups = groups_arr

    def draw(self, rng: np.random.Generator, global_batch: int, step: int) -> np.ndarray:
        """The sample indices ``(global_batch,)`` of step ``step``."""
        raise NotImplementedError

    def batch_at(self, step: int) -> list[tuple[int, int]]:
        """Indices and augmentation seeds of this rank's share of the global batch at ``step``."""
        global_batch = self.batch_size * self.world_size
        drawn = self.draw(
            np.random.default_rng(derive_seed(self.seed, self.stream, self._draw_purpose, step)), global_batch, step
        )
        first = self.rank * self.batch_size
        return [
            (int(drawn[j]), derive_seed(self.seed, self.stream, _AUGMENT, step * global_batch + j))
            for j in range(first, first + self.batch_size)
        ]


class ClassBalancedBatchSampler(_GroupDrawBatchSampler):
    """An endless batch sampler drawing every class equally often; batch ``t`` depends only on ``(seed, stream, t)``.

    Sample ``i`` of class ``y_i`` is drawn, with replacement, with probability proportional to
    ``1 / n_{y_i}`` (``n_c``: samples of class ``c``), so each class present has probability
    ``1 / C_present`` per draw and samples are uniform within their class. Sharding, resume and
    augmentation seeds as in :class:`IterationBatchSampler`.

    Args:
        labels: class index (``>= 0``) of every sample, in dataset order.
        batch_size, seed, stream, rank, world_size, start_step: as in :class:`IterationBatchSampler`.
    """

    _draw_purpose = _BALANCED
    _group_name = "class index"

    def __init__(self, labels: Sequence[int], batch_size: int, **kwargs: Any) -> None:
        super().__init__(labels, batch_size, **kwargs)
        self.labels = self.groups
        self.class_counts = np.bincount(self.labels)
        weights = 1.0 / self.class_counts[self.labels]
        self.probabilities = weights / weights.sum()

    def draw(self, rng: np.random.Generator, global_batch: int, step: int) -> np.ndarray:
        return rng.choice(self.num_samples, size=global_batch, replace=True, p=self.probabilities)


class StratifiedBatchSampler(_GroupDrawBatchSampler):
    """An endless batch sampler whose every batch holds every stratum in (nearly) equal numbers.

    With ``G`` strata present (severity levels, say) and a global batch of ``B`` (``batch_size *
    world_size``), each stratum gets ``B // G`` draws and the ``B % G`` left over go to strata in turn (from
    stratum ``t mod G`` at step ``t``), so no stratum is left out of a batch as long as ``B >= G``. Within a
    stratum samples are drawn uniformly with replacement; the global batch is then shuffled. A ranking loss
    over pairs of different strata (SEMISE's preference term) then has pairs in every batch, however
    imbalanced the labeled set. Sharding, resume and augmentation seeds as in :class:`IterationBatchSampler`.

    Args:
        strata: stratum (``>= 0``) of every sample, in dataset order.
        batch_size, seed, stream, rank, world_size, start_step: as in :class:`IterationBatchSampler`.
    """

    _draw_purpose = _STRATIFIED
    _group_name = "stratum"

    def __init__(self, strata: Sequence[int], batch_size: int, **kwargs: Any) -> None:
        super().__init__(strata, batch_size, **kwargs)
        self.strata = self.groups
        self.members = [np.flatnonzero(self.strata == g) for g in np.unique(self.strata)]

    def draw(self, rng: np.random.Generator, global_batch: int, step: int) -> np.ndarray:
        n_strata = len(self.members)
        quota = np.full(n_strata, global_batch // n_strata)
        quota[(step + np.arange(global_batch % n_strata)) % n_strata] += 1
        drawn = np.concatenate([rng.choice(m, size=q, replace=True) for m, q in zip(self.members, quota, strict=True)])
        return rng.permutation(drawn)


class SwitchingBatchSampler(torch.utils.data.Sampler):
    """``first``'s batches for the steps before ``switch_step``, ``then``'s from it on (both step-indexed)."""

    def __init__(self, first: IterationBatchSampler, then: IterationBatchSampler, switch_step: int) -> None:
        self.first, self.then, self.switch_step = first, then, int(switch_step)
        self.start_step = then.start_step

    def batch_at(self, step: int) -> list[tuple[int, int]]:
        return (self.first if step < self.switch_step else self.then).batch_at(step)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in count(self.start_step):
            yield self.batch_at(step)


def dataset_labels(dataset: Any, key: str = DataKeys.LABEL) -> list[int]:
    """The class index under ``key`` of every item of ``dataset``, read from its list of dicts without transforms.

    Follows ``.data`` through wrappers (:class:`SeededTransformDataset` around a MONAI ``CacheDataset``
    around the labeled entries) down to a list of dicts; raises ``ValueError`` when there is none or
    an entry lacks ``key``.
    """
    obj = dataset
    for _ in range(8):
        if isinstance(obj, (list, tuple)):
            if not all(isinstance(e, dict) and key in e for e in obj):
                break
            return [int(e[key]) for e in obj]
        if not hasattr(obj, "data"):
            break
        obj = obj.data
    raise ValueError(
        f"cannot read the '{key}' of every labeled item from {type(dataset).__name__}; "
        "pass the class indices as labeled_labels."
    )


class SeededTransformDataset(torch.utils.data.Dataset):
    """``dataset[(i, seed)]``: item ``i`` of ``data`` passed through ``transform`` seeded with ``seed``.

    ``data`` may be a list of dicts or a dataset (for example a MONAI ``CacheDataset`` holding the
    deterministic loading and resizing); ``transform`` then holds only the random augmentations.
    The item's position is stored under ``index`` (FlexMatch keeps a per-sample learning status).

    Args:
        data: a sequence of items or a ``Dataset``.
        transform: a MONAI transform (usually a ``Compose``); random transforms in it are seeded per sample.
        index_key: key under which the item's index is stored (``None`` to skip).
        track_meta: let MONAI transforms make and update ``MetaTensor`` metadata while ``transform`` runs.
            Off by default: training items need no metadata, and tracking it (a ``MetaTensor`` per
            output, the applied-operation stack) costs about 40 % of the random views' time at 64 px.
            The values are the same either way.
    """

    def __init__(
        self,
        data: Sequence | torch.utils.data.Dataset,
        transform: Callable | None = None,
        index_key: str | None = DataKeys.INDEX,
        track_meta: bool = False,
    ) -> None:
        self.data = data
        self.transform = transform
        self.index_key = index_key
        self.track_meta = track_meta
        self._reseed = InPlaceReseed(transform) if isinstance(transform, Randomizable) else None

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        index, seed = key if isinstance(key, tuple) else (key, None)
        item = self.data[index]
        if isinstance(self.data, (list, tuple)):
            item = copy.deepcopy(item)  # transforms may edit the dict in place
        if self.transform is not None:
            if seed is not None and self._reseed is not None:
                self._reseed(seed)  # = self.transform.set_random_state(seed=seed), without new generators
            # MONAI's switch is process-global: set it around this call only (a loader worker or the
            # training process between steps, so nothing else runs meanwhile)
            tracking = get_track_meta()
            set_track_meta(self.track_meta)
            try:
                item = apply_transform(self.transform, item)
            finally:
                set_track_meta(tracking)
        if self.index_key is not None and isinstance(item, dict):
            item[self.index_key] = index
        return item


class SemiSupervisedLoader:
    """Yields ``{"labeled": batch, "unlabeled": batch}`` for every training step, endlessly.

    Args:
        labeled_dataset: dataset indexed by ``(index, seed)`` (see :class:`SeededTransformDataset`).
        unlabeled_dataset: same for unlabeled items (each holding a weak and a strong view), or ``None``.
        labeled_batch_size, unlabeled_batch_size: per-rank batch sizes.
        seed: run seed; the stream is a function of it.
        num_workers: data-loading worker processes per stream.
        pin_memory: pin host memory for faster GPU copies.
        collate_fn: batch collation (MONAI's ``list_data_collate`` by default).
        labeled_sampling: ``"uniform"`` (default): every labeled sample once per pass, in a fresh random
            order per pass (:class:`IterationBatchSampler`); ``"class_balanced"``: draws with probability
            inversely proportional to the sample's class frequency, so every class is equally frequent
            in the labeled batches (:class:`ClassBalancedBatchSampler`; with replacement).
        labeled_labels: class index of every labeled item, in dataset order, for ``"class_balanced"`` and
            ``labeled_strata``; ``None`` reads them from the dataset's entries (:func:`dataset_labels`).
        labeled_strata: stratum of each class (SEMISE's severity levels): for the first ``stratified_steps``
            steps the labeled batches are drawn by :class:`StratifiedBatchSampler` over the strata of the
            items' classes, then by ``labeled_sampling``. ``None``: no stratified steps.

    ``stratified_steps`` (default 0) is set by the trainer from the algorithm
    (:meth:`~monai_ssl_ext.algorithms.SemiSupervisedAlgorithm.stratified_steps`).

    ``start_step`` is the first step the next iterator yields; the trainer sets it from its
    iteration counter when a run resumes. ``use_unlabeled`` is switched off by the trainer for
    algorithms that ignore unlabeled data, so that supervised-only runs do not load it. With
    ``unlabeled_dataset`` (``None`` when empty) these make the loader a
    :class:`monai_ssl_ext.engines.SemiSupervisedStream`, the protocol the trainer checks.
    """

    unlabeled_dataset: torch.utils.data.Dataset | None
    use_unlabeled: bool
    start_step: int

    def __init__(
        self,
        labeled_dataset: torch.utils.data.Dataset,
        unlabeled_dataset: torch.utils.data.Dataset | None,
        labeled_batch_size: int,
        unlabeled_batch_size: int = 0,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        collate_fn: Callable = list_data_collate,
        labeled_sampling: str = "uniform",
        labeled_labels: Sequence[int] | None = None,
        labeled_strata: Sequence[int] | None = None,
    ) -> None:
        if len(labeled_dataset) == 0:
            raise ValueError("The labeled dataset is empty.")
        if labeled_sampling not in LABELED_SAMPLING:
            raise ValueError(f"labeled_sampling must be one of {LABELED_SAMPLING}, got {labeled_sampling!r}.")
        self.labeled_sampling = labeled_sampling
        self.labeled_labels: list[int] | None = None
        self.labeled_strata: list[int] | None = None
        if labeled_sampling == "class_balanced" or labeled_strata is not None:
            labels = dataset_labels(labeled_dataset) if labeled_labels is None else [int(y) for y in labeled_labels]
            if len(labels) != len(labeled_dataset):
                raise ValueError(f"{len(labels)} labeled_labels for {len(labeled_dataset)} labeled items.")
            if labeled_sampling == "class_balanced":
                self.labeled_labels = labels
            if labeled_strata is not None:
                strata = [int(g) for g in labeled_strata]
                unknown = sorted({y for y in labels if not 0 <= y < len(strata)})
                if unknown:
                    raise ValueError(f"labeled_strata has {len(strata)} classes; labeled items have class {unknown}.")
                self.labeled_strata = [strata[y] for y in labels]
        self.labeled_dataset = labeled_dataset
        self.unlabeled_dataset = unlabeled_dataset if unlabeled_dataset is not None and len(unlabeled_dataset) else None
        self.labeled_batch_size = int(labeled_batch_size)
        self.unlabeled_batch_size = int(unlabeled_batch_size)
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.pin_memory = pin_memory
        self.collate_fn = collate_fn
        self.start_step = 0
        self.stratified_steps = 0
        self.use_unlabeled = self.unlabeled_dataset is not None and self.unlabeled_batch_size > 0

    def _loader(self, dataset: torch.utils.data.Dataset, batch_size: int, stream: int) -> DataLoader:
        # torch's DataLoader, not MONAI's: every sample is seeded explicitly, and MONAI's loader resets
        # the global torch generator when it has no workers
        sampler: IterationBatchSampler | SwitchingBatchSampler
        if stream == LABELED_STREAM and self.labeled_labels is not None:
            sampler = ClassBalancedBatchSampler(
                self.labeled_labels, batch_size, seed=self.seed, stream=stream, start_step=self.start_step
            )
        else:
            sampler = IterationBatchSampler(
                len(dataset), batch_size, seed=self.seed, stream=stream, start_step=self.start_step
            )
        if stream == LABELED_STREAM and self.labeled_strata is not None and self.stratified_steps > 0:
            stratified = StratifiedBatchSampler(
                self.labeled_strata, batch_size, seed=self.seed, stream=stream, start_step=self.start_step
            )
            sampler = SwitchingBatchSampler(stratified, sampler, self.stratified_steps)
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=self.collate_fn,
            persistent_workers=False,
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        labeled = iter(self._loader(self.labeled_dataset, self.labeled_batch_size, LABELED_STREAM))
        if not self.use_unlabeled:
            for batch in labeled:
                yield {DataKeys.LABELED: batch, DataKeys.UNLABELED: None}
            return
        unlabeled = iter(self._loader(self.unlabeled_dataset, self.unlabeled_batch_size, UNLABELED_STREAM))
        for lb, ub in zip(labeled, unlabeled, strict=False):
            yield {DataKeys.LABELED: lb, DataKeys.UNLABELED: ub}
