"""Iteration-indexed streams: batches and augmentations are pure functions of (seed, step)."""

from __future__ import annotations

import pytest
import torch

from monai_ssl_ext.data import (
    IterationBatchSampler,
    SeededTransformDataset,
    SemiSupervisedLoader,
    StratifiedBatchSampler,
)
from monai_ssl_ext.keys import DataKeys
from monai_ssl_ext.transforms import get_profile


def test_each_pass_visits_every_sample_once():
    sampler = IterationBatchSampler(num_samples=10, batch_size=5, seed=3, rank=0, world_size=1)
    it = iter(sampler)
    first_pass = [i for _ in range(2) for i, _ in next(it)]
    second_pass = [i for _ in range(2) for i, _ in next(it)]
    assert sorted(first_pass) == list(range(10)) and sorted(second_pass) == list(range(10))
    assert first_pass != second_pass  # a new permutation per pass


def test_batch_at_is_independent_of_history_and_start():
    a = IterationBatchSampler(7, 3, seed=1, rank=0, world_size=1)
    b = IterationBatchSampler(7, 3, seed=1, rank=0, world_size=1, start_step=5)
    sequence = [next(x) for x in [iter(a)] for _ in range(8)]
    assert next(iter(b)) == sequence[5]
    assert a.batch_at(5) == sequence[5]
    c = IterationBatchSampler(7, 3, seed=2, rank=0, world_size=1)
    assert c.batch_at(5) != sequence[5]


def test_rank_shards_union_equals_single_process_global_batch():
    single = IterationBatchSampler(20, 8, seed=0, rank=0, world_size=1)
    shards = [IterationBatchSampler(20, 4, seed=0, rank=r, world_size=2) for r in range(2)]
    for step in range(6):
        merged = shards[0].batch_at(step) + shards[1].batch_at(step)
        assert merged == single.batch_at(step)


def test_seeded_dataset_is_deterministic_per_seed():
    profile = get_profile("ultrasound", image_size=16)
    data = [{DataKeys.IMAGE: torch.rand(1, 16, 16)} for _ in range(3)]
    ds = SeededTransformDataset(data, profile.unlabeled_transforms())
    a, b, c = ds[(1, 42)], ds[(1, 42)], ds[(1, 43)]
    assert torch.equal(a[DataKeys.IMAGE_STRONG], b[DataKeys.IMAGE_STRONG])
    assert not torch.equal(a[DataKeys.IMAGE_STRONG], c[DataKeys.IMAGE_STRONG])
    assert a[DataKeys.INDEX] == 1
    assert torch.equal(data[1][DataKeys.IMAGE], data[1][DataKeys.IMAGE].clone())  # source untouched


@pytest.mark.parametrize("strong_view", ["photometric", "randaugment"])
def test_views_without_metadata_tracking_have_the_same_values(strong_view):
    from monai.data import MetaTensor, get_track_meta

    profile = get_profile("dermoscopy", image_size=24, strong_view=strong_view)
    data = [{DataKeys.IMAGE: torch.rand(3, 24, 24)} for _ in range(4)]
    plain = SeededTransformDataset(data, profile.unlabeled_transforms())
    tracked = SeededTransformDataset(data, profile.unlabeled_transforms(), track_meta=True)
    for i in range(4):
        a, b = plain[(i, 7 + i)], tracked[(i, 7 + i)]
        for key in (DataKeys.IMAGE_WEAK, DataKeys.IMAGE_STRONG):
            assert not isinstance(a[key], MetaTensor) and isinstance(b[key], MetaTensor)
            assert torch.equal(a[key], b[key].as_tensor())
    assert get_track_meta()  # the process-wide switch is restored


def _loader(seed=0, workers=0):
    profile = get_profile("ultrasound", image_size=16)
    g = torch.Generator().manual_seed(0)
    lab = [{DataKeys.IMAGE: torch.rand(1, 16, 16, generator=g), DataKeys.LABEL: i % 2} for i in range(5)]
    unl = [{DataKeys.IMAGE: torch.rand(1, 16, 16, generator=g)} for _ in range(9)]
    return SemiSupervisedLoader(
        SeededTransformDataset(lab, profile.labeled_transforms()),
        SeededTransformDataset(unl, profile.unlabeled_transforms()),
        labeled_batch_size=2,
        unlabeled_batch_size=4,
        seed=seed,
        num_workers=workers,
    )


def test_loader_restarts_exactly_at_a_step():
    full = _loader()
    it = iter(full)
    batches = [next(it) for _ in range(5)]
    resumed = _loader()
    resumed.start_step = 3
    b = next(iter(resumed))
    assert torch.equal(b[DataKeys.LABELED][DataKeys.IMAGE], batches[3][DataKeys.LABELED][DataKeys.IMAGE])
    assert torch.equal(
        b[DataKeys.UNLABELED][DataKeys.IMAGE_STRONG], batches[3][DataKeys.UNLABELED][DataKeys.IMAGE_STRONG]
    )


@pytest.mark.slow
def test_loader_output_does_not_depend_on_worker_count():
    a, b = iter(_loader(workers=0)), iter(_loader(workers=2))
    for _ in range(3):
        x, y = next(a), next(b)
        assert torch.equal(x[DataKeys.UNLABELED][DataKeys.IMAGE_STRONG], y[DataKeys.UNLABELED][DataKeys.IMAGE_STRONG])


def test_loader_can_skip_unlabeled_stream():
    loader = _loader()
    loader.use_unlabeled = False
    batch = next(iter(loader))
    assert batch[DataKeys.UNLABELED] is None and batch[DataKeys.LABELED][DataKeys.IMAGE].shape == (2, 1, 16, 16)


def test_sampler_rejects_empty_dataset():
    with pytest.raises(ValueError, match="at least one sample"):
        IterationBatchSampler(0, 2)


# ---------------------------------------------------------------- severity-stratified labeled batches
# an imbalanced labeled set as HAM10000's severity levels: 40 at level 0, 3 at level 1, 5 at level 2
STRATA = [0] * 40 + [1] * 3 + [2] * 5


def _strata_of(batch):
    return [STRATA[i] for i, _ in batch]


def _pairs_of_different_severity(batch) -> int:
    levels = _strata_of(batch)
    return sum(a != b for i, a in enumerate(levels) for b in levels[i + 1 :])


def test_stratified_batches_hold_every_level_in_near_equal_numbers():
    sampler = StratifiedBatchSampler(STRATA, batch_size=8, seed=0, stream=1)
    for step in range(30):
        counts = sorted(_strata_of(sampler.batch_at(step)).count(g) for g in range(3))
        assert counts == [2, 3, 3]  # 8 = 3 + 3 + 2, the extra draws rotating over the levels
    extra = [max(range(3), key=_strata_of(sampler.batch_at(t)).count) for t in range(6)]
    assert len(set(extra[:3])) > 1


def test_stratified_batches_give_pairs_of_different_severity_where_uniform_batches_often_do_not():
    stratified = StratifiedBatchSampler(STRATA, batch_size=8, seed=0, stream=1)
    uniform = IterationBatchSampler(len(STRATA), batch_size=8, seed=0, stream=1)
    pairs_stratified = [_pairs_of_different_severity(stratified.batch_at(t)) for t in range(60)]
    pairs_uniform = [_pairs_of_different_severity(uniform.batch_at(t)) for t in range(60)]
    assert min(pairs_stratified) == 3 * 3 + 3 * 2 + 3 * 2  # every batch: 21 of its 28 pairs
    assert sum(p == 0 for p in pairs_uniform) > 10  # many uniform batches are all level 0


def test_stratified_sampler_is_a_function_of_the_step_and_shards_across_ranks():
    one = StratifiedBatchSampler(STRATA, batch_size=4, seed=3, stream=1)
    again = StratifiedBatchSampler(STRATA, batch_size=4, seed=3, stream=1, start_step=5)
    assert next(iter(again)) == one.batch_at(5)
    ranks = [StratifiedBatchSampler(STRATA, batch_size=2, seed=3, stream=1, rank=r, world_size=2) for r in range(2)]
    assert sorted(ranks[0].batch_at(7) + ranks[1].batch_at(7)) == sorted(one.batch_at(7))
    with pytest.raises(ValueError, match="stratum >= 0"):
        StratifiedBatchSampler([0, -1], batch_size=2)


def test_loader_stratifies_the_first_steps_then_samples_as_configured():
    data = [{DataKeys.IMAGE: torch.full((1, 4, 4), float(i)), DataKeys.LABEL: y} for i, y in enumerate(STRATA)]
    levels = [0, 1, 2]  # class k at level k
    loader = SemiSupervisedLoader(SeededTransformDataset(data), None, labeled_batch_size=8, labeled_strata=levels)
    plain = SemiSupervisedLoader(SeededTransformDataset(data), None, labeled_batch_size=8)
    assert loader.stratified_steps == 0  # until the trainer sets it from the algorithm
    loader.stratified_steps = 3
    got = [b[DataKeys.LABELED][DataKeys.LABEL].tolist() for b, _ in zip(loader, range(6), strict=False)]
    expected = [b[DataKeys.LABELED][DataKeys.LABEL].tolist() for b, _ in zip(plain, range(6), strict=False)]
    assert all(sorted(set(labels)) == levels for labels in got[:3])
    assert got[3:] == expected[3:]
    loader.start_step = 4  # a resumed run: the switch is a function of the step
    resumed = [b[DataKeys.LABELED][DataKeys.LABEL].tolist() for b, _ in zip(loader, range(2), strict=False)]
    assert resumed == got[4:]
    with pytest.raises(ValueError, match="labeled_strata has 2 classes"):
        SemiSupervisedLoader(SeededTransformDataset(data), None, labeled_batch_size=8, labeled_strata=[0, 1])
