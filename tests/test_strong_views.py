"""RandAugment-style strong views with geometry (``strong_view="randaugment"``) and :func:`warp_to_strong`."""

from __future__ import annotations

import pytest
import torch
from monai.data import list_data_collate
from monai.transforms import Compose, CopyItemsd, DeleteItemsd

from monai_ssl_ext.data.streams import SeededTransformDataset
from monai_ssl_ext.keys import DataKeys
from monai_ssl_ext.transforms import (
    ALL_OPS,
    COLOUR_OPS,
    GEOMETRIC_OPS,
    RandAugmentd,
    get_profile,
    warp_to_strong,
)

CHANNELS = {"ultrasound": 1, "dermoscopy": 3, "histology": 3, "xray": 1}
SIZE = (32, 40)  # non-square on purpose: the affine must stay rigid in pixels
IDENTITY = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])

pytestmark = pytest.mark.usefixtures("one_thread")


def _rand(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _run(transform, image, seed):
    transform.set_random_state(seed)
    return transform({DataKeys.IMAGE: image.clone()})


def _views(profile, image, seed):
    out = _run(profile.unlabeled_transforms(), image, seed)
    return torch.as_tensor(out[DataKeys.IMAGE_WEAK]), torch.as_tensor(out[DataKeys.IMAGE_STRONG]), out


def _scene(channels, size=SIZE, background=0.3, lesion=0.9):
    """A grey image with an off-centre rectangle (every geometric change moves it) and its mask."""
    h, w = size
    mask = torch.zeros(1, h, w)
    mask[:, 5 : h // 2 + 3, 6 : w // 2 + 4] = 1.0
    image = (background + (lesion - background) * mask).expand(channels, h, w).clone()
    return image, mask


# ---------------------------------------------------------------- default behaviour unchanged


@pytest.mark.parametrize("name", sorted(CHANNELS))
def test_default_strong_view_is_the_photometric_one_bit_for_bit(name):
    default = get_profile(name, image_size=SIZE)
    explicit = get_profile(name, image_size=SIZE, strong_view="photometric")
    assert default.strong_view == "photometric"
    # the pipeline as it was before the option existed
    before = Compose(
        [
            *explicit.weak([DataKeys.IMAGE]),
            CopyItemsd(DataKeys.IMAGE, times=2, names=[DataKeys.IMAGE_WEAK, DataKeys.IMAGE_STRONG]),
            DeleteItemsd(DataKeys.IMAGE),
            *explicit.strong([DataKeys.IMAGE_STRONG]),
        ]
    )
    image = _rand((CHANNELS[name], *SIZE), seed=3)
    for seed in range(6):
        outs = [_run(t, image, seed) for t in (default.unlabeled_transforms(), explicit.unlabeled_transforms(), before)]
        for out in outs:
            assert set(out) == {DataKeys.IMAGE_WEAK, DataKeys.IMAGE_STRONG}  # no strong_affine by default
        for key in (DataKeys.IMAGE_WEAK, DataKeys.IMAGE_STRONG):
            ref = torch.as_tensor(outs[2][key])
            assert torch.equal(torch.as_tensor(outs[0][key]), ref) and torch.equal(torch.as_tensor(outs[1][key]), ref)


@pytest.mark.parametrize("name", sorted(CHANNELS))
def test_randaugment_keeps_the_weak_view_of_the_same_seed(name):
    image = _rand((CHANNELS[name], *SIZE), seed=4)
    photometric = get_profile(name, image_size=SIZE)
    randaugment = get_profile(name, image_size=SIZE, strong_view="randaugment")
    for seed in range(4):
        assert torch.equal(_views(photometric, image, seed)[0], _views(randaugment, image, seed)[0])


# ---------------------------------------------------------------- randaugment views


@pytest.mark.parametrize("name", sorted(CHANNELS))
def test_randaugment_views_shapes_ranges_and_geometry(name):
    profile = get_profile(name, image_size=SIZE, strong_view="randaugment")
    image = _rand((CHANNELS[name], *SIZE), seed=5)
    moved = 0
    for seed in range(20):
        weak, strong, out = _views(profile, image, seed)
        assert strong.shape == weak.shape == (CHANNELS[name], *SIZE) and strong.dtype == torch.float32
        assert strong.min() >= 0.0 and strong.max() <= 1.0
        affine = out[DataKeys.STRONG_AFFINE]
        assert affine.shape == (2, 3) and affine.dtype == torch.float32
        moved += not torch.allclose(affine, IDENTITY)
        assert not torch.equal(weak, strong)  # Cutout at least
    # two of 14-16 operations per view, six of them geometric: P(no geometry) ~ 0.4
    assert moved >= 8


@pytest.mark.parametrize("name", sorted(CHANNELS))
def test_geometric_strong_views_are_not_pixel_aligned_without_the_warp(name):
    profile = get_profile(name, image_size=SIZE, strong_view="randaugment", strong_op_pool=GEOMETRIC_OPS)
    image, _ = _scene(CHANNELS[name])
    for seed in range(6):
        weak, strong, out = _views(profile, image, seed)
        assert not torch.allclose(out[DataKeys.STRONG_AFFINE], IDENTITY)
        assert not torch.allclose(weak, strong, atol=0.05)


@pytest.mark.parametrize("name", sorted(CHANNELS))
def test_randaugment_views_are_reproducible(name):
    image = _rand((CHANNELS[name], *SIZE), seed=6)
    a = _views(get_profile(name, image_size=SIZE, strong_view="randaugment"), image, 31)
    b = _views(get_profile(name, image_size=SIZE, strong_view="randaugment"), image, 31)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(a[2][DataKeys.STRONG_AFFINE], b[2][DataKeys.STRONG_AFFINE])
    profile = get_profile(name, image_size=SIZE, strong_view="randaugment")
    others = [_views(profile, image, seed) for seed in (32, 33, 34)]
    assert any(not torch.equal(other[1], a[1]) for other in others)


def test_randaugment_through_the_seeded_dataset_and_collation():
    profile = get_profile("ultrasound", image_size=SIZE, strong_view="randaugment")
    data = [{DataKeys.IMAGE: _rand((1, *SIZE), seed=i)} for i in range(3)]
    ds = SeededTransformDataset(data, profile.unlabeled_transforms())
    first = [ds[(i, 100 + i)] for i in range(3)]
    again = [ds[(i, 100 + i)] for i in range(3)]
    for x, y in zip(first, again, strict=True):
        for key in (DataKeys.IMAGE_STRONG, DataKeys.STRONG_AFFINE):
            assert torch.equal(torch.as_tensor(x[key]), torch.as_tensor(y[key]))
    batch = list_data_collate(first)
    assert tuple(batch[DataKeys.STRONG_AFFINE].shape) == (3, 2, 3)
    assert tuple(batch[DataKeys.IMAGE_STRONG].shape) == (3, 1, *SIZE)


# ---------------------------------------------------------------- alignment


@pytest.mark.parametrize("name", sorted(CHANNELS))
def test_warped_weak_mask_matches_the_strong_view(name):
    """The weak-view mask moved with ``strong_affine`` covers the lesion of the strong view."""
    profile = get_profile(name, image_size=SIZE, strong_view="randaugment", strong_op_pool=GEOMETRIC_OPS)
    image, _ = _scene(CHANNELS[name])
    fill = profile.cutout_fill
    items = []
    for seed in range(12):
        weak, strong, out = _views(profile, image, seed)
        items.append(out)
        weak_mask = (weak.mean(dim=0) > 0.6).long()  # lesion 0.9, background 0.3, padding 0
        warped, valid = warp_to_strong(weak_mask, out[DataKeys.STRONG_AFFINE], ignore_value=-1)
        assert warped.dtype == torch.long and set(warped.unique().tolist()) <= {-1, 0, 1}
        assert torch.equal(warped == -1, ~valid)
        strong_grey = strong.mean(dim=0)
        # compare where the strong pixel has a source and is not cut out; bilinear edges of the lesion
        # take intermediate values, so allow the boundary pixels a small share of disagreement
        keep = valid & (strong != fill).any(dim=0)
        agree = ((strong_grey > 0.6).long() == warped)[keep].float().mean()
        assert float(agree) > 0.97, (seed, float(agree))
        # pixels that are clearly lesion (bilinear weight >= 0.9 from lesion pixels) or clearly background
        # in the strong view carry exactly that label after the nearest-neighbour warp
        assert bool((warped[keep & (strong_grey > 0.85)] == 1).all()), seed
        assert bool((warped[keep & (strong_grey > 0.25) & (strong_grey < 0.35)] == 0).all()), seed
        # where the source lies outside the weak view the strong view is zero padding (at most half of an
        # edge pixel leaks in through the bilinear resampling): the invalid pixels are truly without content
        outside = ~valid & (strong != fill).any(dim=0)
        assert bool((strong_grey[outside] <= 0.5 * 0.9 + 1e-5).all())
        # without the warp the lesion is misplaced (the geometry is not the identity)
        unwarped = ((strong_grey > 0.6).long() == weak_mask)[keep].float().mean()
        assert float(unwarped) < float(agree)
    # the documented batch use: weak-view probabilities, warped with the collated affines
    batch = list_data_collate(items)
    weak, strong = torch.as_tensor(batch[DataKeys.IMAGE_WEAK]), torch.as_tensor(batch[DataKeys.IMAGE_STRONG])
    lesion = (weak.mean(dim=1, keepdim=True) > 0.6).float()
    probs = torch.cat([1.0 - lesion, lesion], dim=1)  # (B, 2, H, W), as a softmax output
    moved, valid = warp_to_strong(probs, batch[DataKeys.STRONG_AFFINE], mode="nearest")
    assert moved.shape == probs.shape and valid.shape == (len(items), *SIZE)
    keep = valid & (strong != fill).any(dim=1)
    agree = ((strong.mean(dim=1) > 0.6).long() == moved.argmax(dim=1))[keep].float().mean()
    assert float(agree) > 0.97


@pytest.mark.parametrize("name", sorted(CHANNELS))
def test_full_pool_strong_view_follows_the_warped_weak_view(name):
    """With photometric operations too, the warped weak view predicts the strong one far better than the unwarped."""
    profile = get_profile(name, image_size=SIZE, strong_view="randaugment")
    image, _ = _scene(CHANNELS[name])
    fill = profile.cutout_fill
    better = 0
    for seed in range(16):
        weak, strong, out = _views(profile, image, seed)
        affine = out[DataKeys.STRONG_AFFINE]
        warped, valid = warp_to_strong(weak, affine, mode="bilinear")
        keep = valid & (strong != fill).any(dim=0)
        corr = torch.corrcoef(torch.stack([warped.mean(dim=0)[keep], strong.mean(dim=0)[keep]]))[0, 1]
        if float(strong.mean(dim=0)[keep].std()) > 0.05:  # not flattened by an extreme contrast draw
            assert float(corr) > 0.9, (seed, float(corr))
        if not torch.allclose(affine, IDENTITY):
            plain = torch.corrcoef(torch.stack([weak.mean(dim=0)[keep], strong.mean(dim=0)[keep]]))[0, 1]
            better += float(corr) > float(plain) + 0.1
    assert better >= 4


def test_warp_to_strong_conventions():
    labels = torch.arange(16).view(4, 4)
    # identity: exact, all valid
    out, valid = warp_to_strong(labels, IDENTITY)
    assert torch.equal(out, labels) and bool(valid.all())
    # +90 degrees of RandAugmentd's "rotate" turns the content clockwise on screen (y points down)
    rot = RandAugmentd("x", ops=["rotate"], num_ops=1, random_magnitude=False, op_max={"rotate": 90.0})
    rot._draws = [("rotate", 1.0, 1.0, None)]
    out, valid = warp_to_strong(labels, rot.affine((4, 4)))
    assert torch.equal(out, torch.rot90(labels, -1, (-2, -1))) and bool(valid.all())
    # a shift by half the width: the uncovered columns are invalid and get the ignore value
    shift = RandAugmentd("x", ops=["translate_x"], num_ops=1, random_magnitude=False, op_max={"translate_x": 0.5})
    shift._draws = [("translate_x", 1.0, 1.0, None)]
    labels = torch.arange(24).view(1, 4, 6)
    out, valid = warp_to_strong(labels, shift.affine((4, 6))[None], ignore_value=-1)
    assert torch.equal(out[..., 3:], labels[..., :3]) and bool((out[..., :3] == -1).all())
    assert bool(valid[..., 3:].all()) and not bool(valid[..., :3].any())
    # probabilities: bilinear, shape (B, C, H, W) kept; integer tensors refuse bilinear
    probs = torch.softmax(_rand((2, 3, 4, 6)), dim=1)
    out, valid = warp_to_strong(probs, torch.stack([IDENTITY, IDENTITY]), mode="bilinear")
    assert out.shape == probs.shape and valid.shape == (2, 4, 6) and torch.allclose(out, probs, atol=1e-6)
    with pytest.raises(ValueError, match="nearest"):
        warp_to_strong(labels, IDENTITY[None], mode="bilinear")
    with pytest.raises(ValueError, match="affines for a batch"):
        warp_to_strong(probs, IDENTITY[None])


# ---------------------------------------------------------------- grey stays grey; every operation


@pytest.mark.parametrize("profile_kwargs", [("ultrasound", 1), ("ultrasound", 3), ("xray", 1), ("xray", 3)])
def test_grey_modalities_never_change_hue(profile_kwargs):
    name, channels = profile_kwargs
    profile = get_profile(name, image_size=SIZE, channels=channels, strong_view="randaugment", strong_ops=3)
    assert not set(profile.strong_op_pool) & set(COLOUR_OPS)
    grey = _rand((1, *SIZE), seed=8).expand(channels, *SIZE).clone()
    for seed in range(16):
        _, strong, _ = _views(profile, grey, seed)
        assert strong.shape[0] == channels
        assert torch.equal(strong, strong[:1].expand_as(strong)), seed


def test_grey_profiles_refuse_colour_operations():
    for op in COLOUR_OPS:
        with pytest.raises(ValueError, match="hue of a grey image"):
            get_profile("ultrasound", strong_view="randaugment", strong_op_pool=[*GEOMETRIC_OPS, op])
    # the colour profiles have them
    assert {"saturation", "hue"} <= set(get_profile("dermoscopy", strong_view="randaugment").strong_op_pool)
    assert "hed" in get_profile("histology", strong_view="randaugment").strong_op_pool


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_operation_in_range_and_identity_at_magnitude_zero(op, channels):
    if op in COLOUR_OPS and channels == 1:
        pytest.skip("colour operations need RGB")
    grey = op not in COLOUR_OPS
    image = 0.2 + 0.6 * _rand((channels, *SIZE), seed=9)  # not spanning [0, 1]: autocontrast has work to do
    if grey:
        image = image[:1].expand(channels, *SIZE).clone()
    strong = RandAugmentd(DataKeys.IMAGE, ops=[op], num_ops=1, random_magnitude=False, grey=grey, cutout_prob=0.0)
    for seed in range(3):
        strong.set_random_state(seed)
        out = strong({DataKeys.IMAGE: image})
        x = out[DataKeys.IMAGE]
        assert x.shape == image.shape and x.dtype == torch.float32 and x.min() >= 0.0 and x.max() <= 1.0
        if grey:
            assert torch.equal(x, x[:1].expand_as(x))
        if op in GEOMETRIC_OPS:
            assert not torch.allclose(out[DataKeys.STRONG_AFFINE], IDENTITY)
        elif op != "identity":
            assert not torch.allclose(x, image, atol=1e-3), (op, seed)
    zero = RandAugmentd(DataKeys.IMAGE, ops=[op], num_ops=1, magnitude=0.0, grey=grey, cutout_prob=0.0)
    zero.set_random_state(0)
    out = zero({DataKeys.IMAGE: image})
    assert torch.allclose(out[DataKeys.IMAGE], image, atol=1e-5) and torch.allclose(
        out[DataKeys.STRONG_AFFINE], IDENTITY
    )


def test_cutout_patch_and_option_validation():
    profile = get_profile(
        "dermoscopy", image_size=SIZE, strong_view="randaugment", strong_op_pool=["identity"], strong_ops=1
    )
    image = _rand((3, *SIZE), seed=10) * 0.4  # never exactly 0.5
    for seed in range(5):
        _, strong, _ = _views(profile, image, seed)
        patch = (strong == 0.5).all(dim=0)
        assert 0.0 < float(patch.float().mean()) <= 0.25 + 1e-6  # at most half of each side
    with pytest.raises(ValueError, match="strong_view"):
        get_profile("ultrasound", strong_view="geometric")
    with pytest.raises(ValueError, match="magnitude"):
        get_profile("ultrasound", strong_view="randaugment", strong_magnitude=11)
    with pytest.raises(ValueError, match="num_ops"):
        get_profile("ultrasound", strong_view="randaugment", strong_ops=99)
    with pytest.raises(ValueError, match="unknown"):
        get_profile("histology", strong_view="randaugment", strong_op_pool=["solarize"])


# ---------------------------------------------------------------- contrastive views (SEMISE's NT-Xent)
def _ramps(channels, size=(48, 56)):
    """Each pixel holds its own coordinates (row and column in [0, 1]): a crop shows which rows and columns it kept."""
    h, w = size
    rows = torch.linspace(0, 1, h)[:, None].expand(h, w)
    cols = torch.linspace(0, 1, w)[None, :].expand(h, w)
    return torch.stack([rows, cols, (rows + cols) / 2][:channels])


def _crop_only(name):
    """A profile whose contrastive views skip the weak and strong augmentations: the crops alone (any channels)."""
    profile = get_profile(name, image_size=SIZE)
    profile.weak = lambda keys, mask_keys=(): []
    profile.strong = lambda keys: []
    return profile


@pytest.mark.parametrize("name", sorted(CHANNELS))
def test_contrastive_views_are_independent_random_crops(name):
    crop_only = _crop_only(name)
    image = _ramps(3)
    kept = []
    for seed in range(8):
        out = _run(crop_only.unlabeled_transforms(views="contrastive"), image, seed)
        assert set(out) == {DataKeys.IMAGE_VIEW1, DataKeys.IMAGE_VIEW2}
        boxes = []
        for key in (DataKeys.IMAGE_VIEW1, DataKeys.IMAGE_VIEW2):
            view = torch.as_tensor(out[key])
            assert view.shape == (3, *SIZE)
            # the rows and columns the crop kept, from the coordinate ramps
            boxes.append(
                tuple(round(float(v), 2) for v in (view[0].min(), view[0].max(), view[1].min(), view[1].max()))
            )
        first, second = boxes
        assert first != second  # the two views of one image differ geometrically
        for low_row, high_row, low_col, high_col in boxes:  # each side at least 30 % of the image's
            assert high_row - low_row >= 0.3 - 0.05 and high_col - low_col >= 0.3 - 0.05
        kept.append(first)
    assert len(set(kept)) == len(kept)  # and from one seed to the next


@pytest.mark.parametrize("name", sorted(CHANNELS))
def test_contrastive_views_of_the_real_profiles_are_augmented_reproducibly(name):
    profile = get_profile(name, image_size=SIZE)
    image = _rand((CHANNELS[name], 48, 56))
    a = _run(profile.unlabeled_transforms(views="contrastive"), image, 3)
    b = _run(profile.unlabeled_transforms(views="contrastive"), image, 3)
    for key in (DataKeys.IMAGE_VIEW1, DataKeys.IMAGE_VIEW2):
        assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key]))
        assert a[key].shape == (CHANNELS[name], *SIZE)
    assert not torch.equal(torch.as_tensor(a[DataKeys.IMAGE_VIEW1]), torch.as_tensor(a[DataKeys.IMAGE_VIEW2]))
    with pytest.raises(ValueError, match="views must be one of"):
        profile.unlabeled_transforms(views="three")
