"""InPlaceReseed gives MONAI's per-sample random streams without building new generators."""

import functools

import pytest
import torch
from monai.transforms import Compose, OneOf, RandFlipd, RandGaussianNoised

from monai_ssl_ext.keys import DataKeys
from monai_ssl_ext.transforms import InPlaceReseed, get_profile


def _views(transform, reseed, seed, image):
    reseed(seed=seed)
    out = transform({DataKeys.IMAGE: image.clone()})
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("modality", ["ultrasound", "dermoscopy", "histology", "xray"])
@pytest.mark.parametrize("strong_view", ["photometric", "randaugment"])
def test_reseeding_in_place_equals_monai_set_random_state(modality, strong_view):
    profile = get_profile(modality, image_size=24, strong_view=strong_view)
    image = torch.rand(profile.channels, 24, 24, generator=torch.Generator().manual_seed(1))
    contrastive = functools.partial(profile.unlabeled_transforms, views="contrastive")
    for build in (profile.unlabeled_transforms, profile.labeled_transforms, contrastive):
        ours, reference = build(), build()
        fast = InPlaceReseed(ours)
        for seed in (0, 5, 2**31 + 7, 5, 123456789):
            a = _views(ours, fast, seed, image)
            b = _views(reference, reference.set_random_state, seed, image)
            assert a.keys() == b.keys()
            for key in a:
                assert torch.equal(a[key], b[key]), (modality, strong_view, build, seed, key)


def _assert_same_streams(build, seeds) -> InPlaceReseed:
    """Two copies of ``build()``: one reseeded in place, one by MONAI; the outputs must be equal for every seed."""
    ours, reference = build(), build()
    fast = InPlaceReseed(ours)
    x = torch.rand(1, 8, 8)
    for seed in seeds:
        fast(seed)
        reference.set_random_state(seed=seed)
        assert torch.equal(ours({"x": x.clone()})["x"], reference({"x": x.clone()})["x"]), seed
    return fast


def test_nested_compose_and_one_of_follow_monai():
    def build():
        return Compose(
            [
                RandFlipd("x", prob=0.5),
                OneOf([RandGaussianNoised("x", prob=1.0), RandFlipd("x", prob=1.0, spatial_axis=0)]),
                Compose([RandGaussianNoised("x", prob=0.5)]),
            ]
        )

    _assert_same_streams(build, seeds=range(6))


class _SharesItsGenerator(RandGaussianNoised):
    """A transform whose child draws from the parent's generator: in-place reseeding cannot copy that."""

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.rand_gaussian_noise.set_random_state(state=self.R)
        return self


def test_shared_generators_fall_back_to_monai():
    def build():
        return Compose([RandGaussianNoised("x", prob=0.5), _SharesItsGenerator("x", prob=0.7)])

    fast = _assert_same_streams(build, seeds=range(4))
    assert fast._fallback
