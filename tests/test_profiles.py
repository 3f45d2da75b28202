"""Modality profiles (ultrasound, dermoscopy, histology) and their colour and stain transforms."""

from __future__ import annotations

import colorsys
import logging

import numpy as np
import pytest
import torch
from conftest import shared_data
from monai.data import MetaTensor
from monai.transforms import RandFlipd
from PIL import Image

from monai_ssl_ext.keys import DataKeys
from monai_ssl_ext.transforms import (
    MACENKO_REFERENCE_MAX_CONCENTRATIONS,
    MACENKO_REFERENCE_STAIN_MATRIX,
    PROFILES,
    RUIFROK_HED_MATRIX,
    DermoscopyProfile,
    HistologyProfile,
    MacenkoNormalize,
    MacenkoNormalized,
    RandColorJitter,
    RandColorJitterd,
    RandHEDJitter,
    RandHEDJitterd,
    ShadesOfGrey,
    ShadesOfGreyd,
    StainEstimationError,
    UltrasoundProfile,
    get_profile,
    hed_to_rgb,
    hsv_to_rgb,
    macenko_stains,
    rgb_to_hed,
    rgb_to_hsv,
)

CHANNELS = {"ultrasound": 1, "dermoscopy": 3, "histology": 3, "xray": 1}
CUTOUT_FILL = {"ultrasound": 0.0, "dermoscopy": 0.5, "histology": 0.5, "xray": 0.0}
SIZE = 32


pytestmark = pytest.mark.usefixtures("one_thread")


def _rand(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _save(array, path):
    Image.fromarray(array).save(path)
    return str(path)


def _unit(v):
    v = torch.as_tensor(v, dtype=torch.float64)
    return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)


def _cos(a, b):
    return float(_unit(a) @ _unit(b))


def _p_norms(img, p=6.0):
    return img.double().reshape(img.shape[0], -1).pow(p).mean(dim=1).pow(1.0 / p)


def _synthetic_he(stains, seed=0, size=64, max_h=1.5, max_e=1.2):
    """An H&E-like (3, size, size) patch in [0, 1] rendered from known unit stain vectors (rows H, E).

    A quarter is glass, a quarter nearly pure haematoxylin (nuclei), a quarter nearly pure eosin (stroma)
    and a quarter a mixture, in the OD convention of the Macenko reference code (I_0 = 240).
    """
    g = torch.Generator().manual_seed(seed)
    n = size * size
    kind = torch.randint(0, 4, (n,), generator=g)
    u = torch.rand(4, n, generator=g, dtype=torch.float64)
    c_h = torch.where(kind == 1, 0.3 + (max_h - 0.3) * u[0], torch.where(kind == 2, 0.05 * u[1], 0.2 + 0.8 * u[2]))
    c_e = torch.where(kind == 2, 0.3 + (max_e - 0.3) * u[0], torch.where(kind == 1, 0.05 * u[1], 0.2 + 0.8 * u[3]))
    conc = torch.stack([c_h, c_e]) * (kind != 0)
    od = _unit(torch.as_tensor(stains, dtype=torch.float64)).T @ conc
    img = (240.0 * torch.exp(-od) - 1.0) / 255.0
    return img.reshape(3, size, size).float().clamp(0.0, 1.0), conc


# ---------------------------------------------------------------- shades of grey


def test_shades_of_grey_removes_a_colour_cast():
    texture = 0.2 + 0.5 * _rand((1, 24, 24))
    cast = torch.tensor([1.0, 0.8, 0.55]).view(3, 1, 1)
    img = texture * cast
    before = _p_norms(img)
    assert before[0] / before[2] > 1.7
    out = ShadesOfGrey()(img)
    after = _p_norms(out)
    # grey-world check of the p-norm: every channel now sees the same (grey) light, of the same length
    torch.testing.assert_close(after, after.mean().expand(3), rtol=1e-5, atol=0)
    assert float(after[0]) == pytest.approx(float(torch.linalg.vector_norm(before)) / 3**0.5, rel=1e-5)
    # a grey scene under a coloured light comes back grey: all channels equal
    torch.testing.assert_close(out[0], out[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[0], out[2], rtol=1e-5, atol=1e-6)
    assert out.shape == img.shape and out.dtype == img.dtype


def test_shades_of_grey_power_one_is_grey_world_and_grey_is_kept():
    img = _rand((3, 16, 16), seed=1) * torch.tensor([0.9, 0.6, 0.3]).view(3, 1, 1)
    out = ShadesOfGrey(power=1.0)(img)
    means = out.double().mean(dim=(1, 2))
    torch.testing.assert_close(means, means.mean().expand(3), rtol=1e-5, atol=0)
    grey = _rand((1, 16, 16), seed=2).expand(3, -1, -1).clone()
    torch.testing.assert_close(ShadesOfGrey()(grey), grey)
    black = torch.zeros(3, 8, 8)
    assert torch.equal(ShadesOfGrey()(black), black)
    with pytest.raises(ValueError):
        ShadesOfGrey(power=0)


def test_shades_of_grey_clips_and_keeps_types():
    bright = torch.full((3, 8, 8), 0.6) * torch.tensor([1.0, 0.7, 0.4]).view(3, 1, 1)
    bright[:, 0, 0] = 1.0  # a white highlight: the blue gain pushes it beyond 1
    out = ShadesOfGrey()(bright)
    assert out.max() <= 1.0 and out.min() >= 0.0
    assert ShadesOfGrey(clip=False)(bright).max() > 1.0
    as_numpy = ShadesOfGrey()(bright.numpy())
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == np.float32
    np.testing.assert_allclose(as_numpy, out.numpy(), rtol=1e-6)
    meta = ShadesOfGrey()(MetaTensor(bright, meta={"filename_or_obj": "x.jpg"}))
    assert isinstance(meta, MetaTensor) and meta.meta["filename_or_obj"] == "x.jpg"
    d = ShadesOfGreyd(["image"])({"image": bright, "label": 1})
    torch.testing.assert_close(d["image"], out)
    assert d["label"] == 1


# ---------------------------------------------------------------- HSV and colour jitter


def test_hsv_known_colours_and_round_trip():
    pixels = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.5], [1, 1, 0], [0, 0, 0]])
    img = pixels.T.reshape(3, 1, 6)
    hsv = rgb_to_hsv(img).reshape(3, 6).T
    expected = torch.tensor([[0, 1, 1], [1 / 3, 1, 1], [2 / 3, 1, 1], [0, 0, 0.5], [1 / 6, 1, 1], [0, 0, 0]])
    torch.testing.assert_close(hsv, expected)
    rand = _rand((3, 12, 12), seed=3)
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(rand)), rand, atol=1e-5, rtol=0)
    ours = rgb_to_hsv(rand).reshape(3, -1).T
    for i in range(0, ours.shape[0], 17):
        ref = torch.tensor(colorsys.rgb_to_hsv(*rand.reshape(3, -1)[:, i].tolist()), dtype=torch.float32)
        torch.testing.assert_close(ours[i], ref, atol=1e-5, rtol=0)


def test_color_jitter_zero_strength_is_identity():
    img = _rand((3, 16, 16), seed=4)
    t = RandColorJitter(prob=1.0).set_random_state(0)
    for _ in range(3):
        assert torch.equal(t(img), img)
    grey = _rand((1, 8, 8))
    assert torch.equal(RandColorJitter(prob=0.0, brightness=0.5, hue=0.2)(grey), grey)


def test_color_jitter_hand_checked_operations():
    img = _rand((3, 8, 8), seed=5)
    half = RandColorJitter(brightness=(0.5, 0.5)).set_random_state(0)(img)
    torch.testing.assert_close(half, img * 0.5)
    red = torch.zeros(3, 4, 4)
    red[0] = 0.8
    # a third of a turn moves red to green
    green = RandColorJitter(hue=(1 / 3, 1 / 3)).set_random_state(0)(red)
    torch.testing.assert_close(green, torch.stack([torch.zeros(4, 4), torch.full((4, 4), 0.8), torch.zeros(4, 4)]))
    desaturated = RandColorJitter(saturation=(0.0, 0.0)).set_random_state(0)(img)
    luma = 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]
    for c in range(3):
        torch.testing.assert_close(desaturated[c], luma)
    flat = RandColorJitter(contrast=(0.0, 0.0)).set_random_state(0)(img)
    torch.testing.assert_close(flat, torch.full_like(img, float(luma.mean())))
    with pytest.raises(ValueError):
        RandColorJitter(hue=0.7)
    with pytest.raises(ValueError):
        RandColorJitter(brightness=-0.1)


def test_color_jitter_is_deterministic_and_in_range():
    img = _rand((3, 16, 16), seed=6)
    kwargs = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}
    a = RandColorJitter(**kwargs).set_random_state(7)(img)
    b = RandColorJitter(**kwargs).set_random_state(7)(img)
    c = RandColorJitter(**kwargs).set_random_state(8)(img)
    assert torch.equal(a, b) and not torch.allclose(a, c) and not torch.allclose(a, img)
    assert a.min() >= 0.0 and a.max() <= 1.0
    d = RandColorJitterd(["x", "y"], **kwargs).set_random_state(7)({"x": img.clone(), "y": img.clone(), "z": img})
    assert torch.equal(d["x"], d["y"]) and d["z"] is img
    assert not torch.allclose(d["x"], img)


# ---------------------------------------------------------------- HED and HED jitter


def test_hed_round_trip_and_pure_stain():
    img = _rand((3, 16, 16), seed=9)
    torch.testing.assert_close(hed_to_rgb(rgb_to_hed(img)), img, atol=1e-5, rtol=0)
    # a pixel of haematoxylin only, concentration 0.5 (OD = -ln((255 I + 1) / 256)), deconvolves to (0.5, 0, 0)
    od = 0.5 * _unit(RUIFROK_HED_MATRIX[0])
    pixel = ((256.0 * torch.exp(-od) - 1.0) / 255.0).float().view(3, 1, 1)
    torch.testing.assert_close(rgb_to_hed(pixel).flatten(), torch.tensor([0.5, 0.0, 0.0]), atol=1e-5, rtol=0)
    white = torch.ones(3, 2, 2)
    torch.testing.assert_close(rgb_to_hed(white), torch.zeros(3, 2, 2), atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        rgb_to_hed(torch.rand(1, 4, 4))


def test_hed_jitter_identity_parameters():
    img = _rand((3, 16, 16), seed=10)
    jitter = RandHEDJitter(sigma=0.0, bias=0.0).set_random_state(0)
    torch.testing.assert_close(jitter(img), img, atol=1e-5, rtol=0)
    torch.testing.assert_close(RandHEDJitter().perturb(img, [1, 1, 1], [0, 0, 0]), img, atol=1e-5, rtol=0)


def test_hed_jitter_moves_along_the_stain():
    img, _ = _synthetic_he(RUIFROK_HED_MATRIX[:2], seed=1, size=16)
    more_h = RandHEDJitter().perturb(img, [1, 1, 1], [0.2, 0, 0])
    # more haematoxylin darkens every channel, red and green (which it absorbs) more than blue
    drop = (img - more_h).mean(dim=(1, 2))
    assert torch.all(drop > 0) and drop[0] > drop[2] and drop[1] > drop[2]
    hed_shift = rgb_to_hed(more_h) - rgb_to_hed(img)
    assert float(hed_shift[0].median()) == pytest.approx(0.2, abs=0.02)
    assert float(hed_shift[1:].abs().median()) < 0.02


def test_hed_jitter_is_deterministic_and_in_range():
    img = _rand((3, 16, 16), seed=11)
    a = RandHEDJitter().set_random_state(3)(img)
    b = RandHEDJitter().set_random_state(3)(img)
    c = RandHEDJitter().set_random_state(4)(img)
    assert torch.equal(a, b) and not torch.allclose(a, c) and not torch.allclose(a, img, atol=1e-3)
    assert a.min() >= 0.0 and a.max() <= 1.0 and a.shape == img.shape
    assert torch.equal(RandHEDJitter(prob=0.0)(img), img)
    d = RandHEDJitterd(["x", "y"]).set_random_state(3)({"x": img.clone(), "y": img.clone()})
    assert torch.equal(d["x"], d["y"]) and torch.equal(d["x"], a)
    with pytest.raises(ValueError):
        RandHEDJitter()(torch.rand(1, 4, 4))


# ---------------------------------------------------------------- Macenko


def test_macenko_recovers_known_stain_vectors():
    true = _unit([[0.60, 0.75, 0.28], [0.25, 0.85, 0.46]])
    img, conc = _synthetic_he(true, seed=2)
    stains, max_c = macenko_stains(img)
    assert stains.shape == (2, 3) and max_c.shape == (2,)
    assert _cos(stains[0], true[0]) > 0.95
    assert _cos(stains[1], true[1]) > 0.95
    torch.testing.assert_close(max_c, torch.quantile(conc, 0.99, dim=1), rtol=0.02, atol=0)


def test_macenko_recovers_ruifrok_vectors():
    # Ruifrok's eosin absorbs almost no red, so pure-eosin pixels fall below the tissue threshold in red and
    # the eosin direction is estimated from mixed pixels: still close, as the method's own limitation allows
    true = _unit(RUIFROK_HED_MATRIX[:2])
    stains, _ = macenko_stains(_synthetic_he(true, seed=2)[0])
    assert _cos(stains[0], true[0]) > 0.99
    assert _cos(stains[1], true[1]) > 0.95


def test_macenko_maps_a_patch_to_the_reference_stains():
    source = _unit([[0.70, 0.66, 0.27], [0.10, 0.95, 0.30]])
    img, _ = _synthetic_he(source, seed=3)
    out = MacenkoNormalize()(img)
    assert out.shape == img.shape and out.min() >= 0.0 and out.max() <= 1.0
    stains, max_c = macenko_stains(out)
    reference = _unit(MACENKO_REFERENCE_STAIN_MATRIX)
    assert _cos(stains[0], reference[0]) > 0.95
    assert _cos(stains[1], reference[1]) > 0.95
    torch.testing.assert_close(
        max_c, torch.tensor(MACENKO_REFERENCE_MAX_CONCENTRATIONS, dtype=max_c.dtype), rtol=0.1, atol=0
    )
    # a patch that already has the reference stains and maxima is (nearly) left as it is
    ref_img, _ = _synthetic_he(reference, seed=4, max_h=1.9705 / 0.99, max_e=1.0308 / 0.99)
    assert float((MacenkoNormalize()(ref_img) - ref_img).abs().mean()) < 0.03


def test_macenko_from_reference_and_dictionary_version():
    target, _ = _synthetic_he(_unit([[0.60, 0.75, 0.28], [0.20, 0.90, 0.40]]), seed=5)
    normaliser = MacenkoNormalize.from_reference(target)
    stains, _ = macenko_stains(target)
    torch.testing.assert_close(normaliser.stain_matrix, stains)
    img, _ = _synthetic_he(RUIFROK_HED_MATRIX[:2], seed=6)
    out = MacenkoNormalized(["image"])({"image": img})["image"]
    torch.testing.assert_close(out, MacenkoNormalize()(img))
    as_numpy = MacenkoNormalize()(img.numpy())
    assert isinstance(as_numpy, np.ndarray)


def test_macenko_background_patch_is_kept_or_raises(caplog):
    glass = MetaTensor(0.93 + 0.02 * _rand((3, 32, 32), seed=7), meta={"filename_or_obj": "glass.tif"})
    with pytest.raises(StainEstimationError, match="stained tissue"):
        MacenkoNormalize(on_failure="raise")(glass)
    with caplog.at_level(logging.WARNING):
        kept = MacenkoNormalize()(glass)
    assert kept is glass and kept.meta["stain_normalised"] is False
    assert "glass.tif" in caplog.text
    tissue, _ = _synthetic_he(RUIFROK_HED_MATRIX[:2], seed=8)
    done = MacenkoNormalize()(MetaTensor(tissue))
    assert isinstance(done, MetaTensor) and done.meta["stain_normalised"] is True
    with pytest.raises(ValueError):
        MacenkoNormalize(on_failure="ignore")


# ---------------------------------------------------------------- profiles: registry and preprocess


def test_profiles_are_registered_with_their_channels():
    assert {"ultrasound", "dermoscopy", "histology"} <= set(PROFILES)
    assert isinstance(get_profile("dermoscopy"), DermoscopyProfile)
    assert isinstance(get_profile("histology"), HistologyProfile)
    assert isinstance(get_profile("ultrasound"), UltrasoundProfile)
    for name, channels in CHANNELS.items():
        profile = get_profile(name, image_size=(24, 40))
        assert profile.channels == channels and profile.image_size == (24, 40)
    for name in ("dermoscopy", "histology"):
        with pytest.raises(ValueError, match="channels=3"):
            get_profile(name, channels=1)


def _lesion_png(tmp_path):
    image = np.zeros((40, 60, 3), np.uint8)
    image[...] = (210, 160, 130)  # pinkish skin under a warm light
    image[10:25, 20:45] = (90, 50, 40)
    mask = np.zeros((40, 60), np.uint8)
    mask[10:25, 20:45] = 255
    return _save(image, tmp_path / "lesion.png"), _save(mask, tmp_path / "lesion_mask.png")


@pytest.mark.parametrize("name", ["ultrasound", "dermoscopy"])
def test_preprocess_png_with_mask(name, tmp_path):
    image, mask = _lesion_png(tmp_path)
    out = get_profile(name, image_size=SIZE).preprocess(with_mask=True)({DataKeys.IMAGE: image, DataKeys.MASK: mask})
    img, m = out[DataKeys.IMAGE], out[DataKeys.MASK]
    assert tuple(img.shape) == (CHANNELS[name], SIZE, SIZE) and img.dtype == torch.float32
    assert tuple(m.shape) == (1, SIZE, SIZE) and set(m.unique().tolist()) == {0.0, 1.0}
    assert img.min() >= 0.0 and img.max() <= 1.0
    # the resized mask covers the dark lesion of the resized image
    lesion, skin = img[:, m[0] > 0], img[:, m[0] == 0]
    assert float(lesion.max()) < float(skin.min())


def test_dermoscopy_preprocess_balances_the_colours(tmp_path):
    image, _ = _lesion_png(tmp_path)
    raw = get_profile("dermoscopy", image_size=SIZE, colour_constancy=False).preprocess()({DataKeys.IMAGE: image})
    balanced = get_profile("dermoscopy", image_size=SIZE).preprocess()({DataKeys.IMAGE: image})
    before, after = _p_norms(raw[DataKeys.IMAGE]), _p_norms(balanced[DataKeys.IMAGE])
    assert float(before.max() / before.min()) > 1.4
    assert float(after.max() / after.min()) < 1.02


def test_histology_preprocess_png(tmp_path):
    img, _ = _synthetic_he(_unit([[0.70, 0.66, 0.27], [0.10, 0.95, 0.30]]), seed=9, size=48)
    path = _save((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), tmp_path / "patch.png")
    plain = get_profile("histology", image_size=SIZE)
    assert not any(isinstance(t, MacenkoNormalized) for t in plain.preprocess().transforms)
    out = plain.preprocess()({DataKeys.IMAGE: path})[DataKeys.IMAGE]
    assert tuple(out.shape) == (3, SIZE, SIZE) and out.min() >= 0.0 and out.max() <= 1.0
    normalised = get_profile("histology", image_size=SIZE, stain_normalisation=True).preprocess(keep_meta=True)
    res = normalised({DataKeys.IMAGE: path})[DataKeys.IMAGE]
    assert tuple(res.shape) == (3, SIZE, SIZE) and res.min() >= 0.0 and res.max() <= 1.0
    assert res.meta["stain_normalised"] is True
    assert not torch.allclose(torch.as_tensor(res), torch.as_tensor(out), atol=0.02)


# ---------------------------------------------------------------- profiles: weak and strong views


def _views(profile, image, seed):
    transform = profile.unlabeled_transforms()
    transform.set_random_state(seed)
    out = transform({DataKeys.IMAGE: image.clone()})
    assert DataKeys.IMAGE not in out
    return torch.as_tensor(out[DataKeys.IMAGE_WEAK]), torch.as_tensor(out[DataKeys.IMAGE_STRONG])


@pytest.mark.parametrize("name", sorted(CHANNELS))
def test_unlabeled_views_shapes_ranges_and_difference(name):
    profile = get_profile(name, image_size=SIZE)
    image = _rand((CHANNELS[name], SIZE, SIZE), seed=12)
    differ = 0
    for seed in range(10):
        weak, strong = _views(profile, image, seed)
        assert weak.shape == strong.shape == (CHANNELS[name], SIZE, SIZE)
        for view in (weak, strong):
            assert view.dtype == torch.float32
            assert view.min() >= 0.0 and view.max() <= 1.0 + 1e-6
        differ += not torch.allclose(weak, strong)
    assert differ >= 8


@pytest.mark.parametrize("name", sorted(CHANNELS))
def test_unlabeled_views_are_deterministic(name):
    profile = get_profile(name, image_size=SIZE)
    image = _rand((CHANNELS[name], SIZE, SIZE), seed=13)
    weak_a, strong_a = _views(profile, image, 21)
    weak_b, strong_b = _views(profile, image, 21)
    assert torch.equal(weak_a, weak_b) and torch.equal(strong_a, strong_b)
    others = [_views(profile, image, seed) for seed in (22, 23, 24)]
    assert any(not torch.equal(strong, strong_a) for _, strong in others)
    assert any(not torch.equal(weak, weak_a) for weak, _ in others)


@pytest.mark.parametrize("name", sorted(CHANNELS))
def test_strong_view_stays_pixel_aligned_with_the_weak_view(name):
    profile = get_profile(name, image_size=SIZE)
    image = torch.full((CHANNELS[name], SIZE, SIZE), 0.2)
    image[:, 6:18, 4:20] = 0.9  # off-centre, so every geometric change would move it
    fill = CUTOUT_FILL[name]
    for seed in range(8):
        weak, strong = _views(profile, image, seed)
        # outside the cut-out (exactly the fill value in every channel) the strong view is a photometric
        # function of the weak one: a flip or a shift of even 2 px drops this correlation below 0.93
        keep = ~(strong == fill).all(dim=0)
        pair = torch.stack([weak.mean(dim=0)[keep], strong.mean(dim=0)[keep]])
        assert float(torch.corrcoef(pair)[0, 1]) > 0.93, seed


@pytest.mark.parametrize("name", sorted(CHANNELS))
def test_weak_augmentation_keeps_masks_aligned(name):
    profile = get_profile(name, image_size=SIZE)
    image = torch.zeros(CHANNELS[name], SIZE, SIZE)
    image[:, 6:18, 4:20] = 1.0
    mask = (image[:1] > 0).float()
    transform = profile.labeled_transforms(with_mask=True)
    moved = 0
    for seed in range(8):
        transform.set_random_state(seed)
        out = transform({DataKeys.IMAGE: image.clone(), DataKeys.MASK: mask.clone()})
        img, m = torch.as_tensor(out[DataKeys.IMAGE]), torch.as_tensor(out[DataKeys.MASK])
        assert tuple(img.shape) == (CHANNELS[name], SIZE, SIZE) and tuple(m.shape) == (1, SIZE, SIZE)
        assert set(m.unique().tolist()) <= {0.0, 1.0} and m.sum() > 0
        grey = img.mean(dim=0, keepdim=True)
        assert float(grey[m > 0].mean()) > 0.9, seed
        assert float(grey[m == 0].mean()) < 0.05, seed
        assert float(((grey > 0.5) == (m > 0)).float().mean()) > 0.98, seed
        moved += not torch.equal(m, mask)
    assert moved >= 4


@pytest.mark.parametrize("name", ["dermoscopy", "histology"])
def test_weak_views_of_non_square_inputs_keep_their_shape(name):
    profile = get_profile(name, image_size=(24, 40))
    transform = profile.labeled_transforms(with_mask=True)
    image, mask = _rand((3, 24, 40)), (_rand((1, 24, 40), seed=1) > 0.5).float()
    for seed in range(6):
        transform.set_random_state(seed)
        out = transform({DataKeys.IMAGE: image, DataKeys.MASK: mask})
        assert tuple(out[DataKeys.IMAGE].shape) == (3, 24, 40) and tuple(out[DataKeys.MASK].shape) == (1, 24, 40)


# ---------------------------------------------------------------- real data


@pytest.mark.real_data
def test_ham10000_through_the_dermoscopy_preprocess():
    image = shared_data("ham10000", "images", "ISIC_0024306.jpg")
    mask = shared_data("ham10000", "masks", "ISIC_0024306_segmentation.png")
    profile = get_profile("dermoscopy", image_size=(96, 128))
    # the rules load_manifest gives the entries of the HAM10000 manifest ("mask_resize": true): its masks
    # are 600 x 450, the images here 200 x 150
    rules = {"resize": True, "lesion_class": "nv"}
    entry = {DataKeys.IMAGE: str(image), DataKeys.MASK: str(mask), DataKeys.MASK_RULES: rules}
    out = profile.preprocess(with_mask=True)(entry)
    img, m = out[DataKeys.IMAGE], out[DataKeys.MASK]
    assert tuple(img.shape) == (3, 96, 128) and tuple(m.shape) == (1, 96, 128)
    assert torch.isfinite(img).all() and img.min() >= 0.0 and img.max() <= 1.0
    assert set(m.unique().tolist()) == {0.0, 1.0} and 0.02 < float(m.mean()) < 0.9
    # aligned: the pigmented lesion under the mask is darker than the surrounding skin
    grey = img.mean(dim=0)
    assert float(grey[m[0] > 0].mean()) < float(grey[m[0] == 0].mean()) - 0.05
    # shades of grey on the full-resolution photograph equalises the channels' 6-norms
    raw = profile.read(with_mask=False)[0]({DataKeys.IMAGE: str(image)})[DataKeys.IMAGE]
    norms = _p_norms(ShadesOfGrey()(raw))
    assert float(norms.max() / norms.min()) < 1.01


@pytest.mark.real_data
def test_nct_crc_he_through_the_histology_preprocess_with_macenko():
    files = sorted(shared_data("nct_crc_he_samples").glob("*.tif"))
    if not files:
        pytest.skip("no NCT-CRC-HE patches in ../shared/data/nct_crc_he_samples")
    preprocess = get_profile("histology", image_size=64, stain_normalisation=True).preprocess(keep_meta=True)
    normalised = 0
    for path in files:
        img = preprocess({DataKeys.IMAGE: str(path)})[DataKeys.IMAGE]
        assert tuple(img.shape) == (3, 64, 64)
        assert torch.isfinite(img).all() and img.min() >= 0.0 and img.max() <= 1.0
        normalised += bool(img.meta["stain_normalised"])
        if path.name.startswith("TUM"):
            assert img.meta["stain_normalised"] is True
    assert normalised >= len(files) // 2


def test_xray_weak_view_never_mirrors_the_chest():
    # a left-right asymmetric image (heart on one side) stays on its side under every weak view: no flips,
    # only rotations of up to 10 degrees and shifts of up to 6 %
    profile = get_profile("xray", image_size=SIZE)
    assert not any(isinstance(t, RandFlipd) for t in profile.labeled_transforms().transforms)
    image = torch.zeros(1, SIZE, SIZE)
    image[:, 8:24, 2:12] = 1.0  # left third only
    transform = profile.labeled_transforms()
    for seed in range(12):
        transform.set_random_state(seed)
        out = torch.as_tensor(transform({DataKeys.IMAGE: image.clone()})[DataKeys.IMAGE])
        left, right = out[..., : SIZE // 2].sum(), out[..., SIZE // 2 :].sum()
        assert left > 4 * right, seed
