"""Colour transforms for RGB modalities, array and dictionary versions side by side.

- :class:`ShadesOfGrey` / :class:`ShadesOfGreyd`: deterministic colour constancy (Finlayson & Trezzi 2004),
  the normalisation of the dermoscopy profile.
- :class:`RandColorJitter` / :class:`RandColorJitterd`: random brightness, contrast, saturation and hue on
  tensors in [0, 1] (MONAI has no hue jitter), part of the strong views of the colour profiles.
- :func:`rgb_to_hsv` / :func:`hsv_to_rgb`: the HSV round trip the hue jitter uses.

Images are channel-first ``(C, H, W)`` (or batched ``(..., C, H, W)``) floats in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_tensor

from monai_ssl_ext.transforms.shared_draw import SharedDrawd

__all__ = [
    "RandColorJitter",
    "RandColorJitterd",
    "ShadesOfGrey",
    "ShadesOfGreyd",
    "hsv_to_rgb",
    "rgb_to_hsv",
    "shades_of_grey",
]

# ITU-R BT.601 luma weights: the grey image of saturation and contrast jitter (as torchvision's ColorJitter
# and PIL's "L" conversion, which the loaders use for RGB -> greyscale)
_LUMA = (0.299, 0.587, 0.114)


# ---------------------------------------------------------------- shades of grey


def shades_of_grey(img: torch.Tensor, power: float = 6.0, clip: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Shades-of-grey colour constancy of a ``(C, H, W)`` image (see :class:`ShadesOfGrey`)."""
    if img.ndim < 3:
        raise ValueError(f"expected a channel-first (C, H, W) image, got shape {tuple(img.shape)}.")
    x = img.to(torch.float64)
    flat = x.reshape(*x.shape[:-2], -1).clamp_min(0.0)
    if math.isinf(power):
        illuminant = flat.amax(dim=-1)
    else:
        illuminant = flat.pow(power).mean(dim=-1).pow(1.0 / power)
    # a black channel carries no information about the light: leave it (and an all-black image) as it is
    valid = illuminant > eps
    channels = img.shape[-3]
    norm = torch.linalg.vector_norm(illuminant, dim=-1, keepdim=True)
    gain = torch.where(valid, norm / (math.sqrt(channels) * illuminant.clamp_min(eps)), torch.ones_like(illuminant))
    out = (x * gain[..., None, None]).to(img.dtype)
    return out.clamp(0.0, 1.0) if clip else out


class ShadesOfGrey(Transform):
    """Shades-of-grey colour constancy (Finlayson & Trezzi, "Shades of gray and colour constancy", CIC 2004).

    The illuminant colour is estimated per channel by the Minkowski p-norm mean of the image,
    ``e_c = (mean_x I_c(x)^p)^(1/p)`` (p = 1 is grey world, p = inf is max-RGB / white patch), and each
    channel is scaled by the von Kries gain ``g_c = ||e||_2 / (sqrt(C) e_c)``. Afterwards every channel has
    the same p-norm mean ``||e||_2 / sqrt(C)``: the estimated light is grey and keeps its Euclidean length,
    so the overall brightness is unchanged.

    Choices and their sources:

    - ``power = 6``: the value Finlayson & Trezzi found best and the one used for dermoscopy by Barata et al.
      ("Improving dermoscopy image classification using color constancy", IEEE JBHI 2015) and by ISIC
      challenge entries (e.g. Ng et al., ISIC 2017/2018), where it removes the colour cast of different
      dermatoscopes and light sources.
    - The gain normalisation ``||e||_2 / sqrt(C)`` is that of the ``shade_of_gray_cc`` function widely
      copied in ISIC challenge code; no gamma correction is applied (the images are display-referred 8-bit
      files, and that function's gamma step is optional).
    - Output clipped to [0, 1] (``clip=True``): a saturated highlight cannot be brightened beyond white.
      Clipping is the only step that can make the channel p-norms differ afterwards.

    Input: ``(C, H, W)`` (any ``C``; meaningful for ``C = 3``) float array or tensor in [0, 1], numpy or
    torch (a ``MetaTensor`` keeps its metadata). Output: same shape, type and dtype, in [0, 1].

    Args:
        power: Minkowski norm ``p`` (``float("inf")`` for max-RGB).
        clip: clip the output to [0, 1].
    """

    backend = ("torch", "numpy")

    def __init__(self, power: float = 6.0, clip: bool = True) -> None:
        if power <= 0:
            raise ValueError(f"power must be positive, got {power}.")
        self.power = float(power)
        self.clip = clip

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        t = convert_to_tensor(img, track_meta=False)
        out = shades_of_grey(t.float() if not t.is_floating_point() else t, power=self.power, clip=self.clip)
        return convert_to_dst_type(out, img, dtype=out.dtype)[0]


class ShadesOfGreyd(MapTransform):
    """Dictionary version of :class:`ShadesOfGrey`, applied to each image under ``keys``."""

    backend = ShadesOfGrey.backend

    def __init__(
        self, keys: KeysCollection, power: float = 6.0, clip: bool = True, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = ShadesOfGrey(power=power, clip=clip)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


# ---------------------------------------------------------------- HSV


def rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    """RGB ``(..., 3, H, W)`` in [0, 1] to HSV with hue, saturation and value all in [0, 1]."""
    r, g, b = img.unbind(dim=-3)
    maxc = img.amax(dim=-3)
    minc = img.amin(dim=-3)
    delta = maxc - minc
    grey = delta <= 0
    # the divisors are replaced where they are zero; those pixels are grey (hue and saturation 0)
    safe_delta = torch.where(grey, torch.ones_like(delta), delta)
    safe_max = torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    sat = torch.where(grey, torch.zeros_like(delta), delta / safe_max)
    hue_r = ((g - b) / safe_delta) % 6.0
    hue_g = (b - r) / safe_delta + 2.0
    hue_b = (r - g) / safe_delta + 4.0
    hue = torch.where(maxc == r, hue_r, torch.where(maxc == g, hue_g, hue_b))
    hue = torch.where(grey, torch.zeros_like(hue), hue / 6.0)
    return torch.stack([hue, sat, maxc], dim=-3)


def hsv_to_rgb(img: torch.Tensor) -> torch.Tensor:
    """HSV ``(..., 3, H, W)`` (hue in [0, 1), wrapping) to RGB in [0, 1]."""
    h, s, v = img.unbind(dim=-3)
    h6 = (h % 1.0) * 6.0

    # closed form of the hexcone model: channel n in (R, G, B) = (5, 3, 1)
    def channel(n: float) -> torch.Tensor:
        k = (n + h6) % 6.0
        return v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)

    return torch.stack([channel(5.0), channel(3.0), channel(1.0)], dim=-3)


# ---------------------------------------------------------------- colour jitter


def _grey(img: torch.Tensor) -> torch.Tensor:
    if img.shape[-3] != 3:
        return img.mean(dim=-3, keepdim=True)
    w = torch.tensor(_LUMA, dtype=img.dtype, device=img.device).view(3, 1, 1)
    return (img * w).sum(dim=-3, keepdim=True)


def _blend(img: torch.Tensor, other: torch.Tensor, factor: float) -> torch.Tensor:
    return (factor * img + (1.0 - factor) * other).clamp(0.0, 1.0)


def _factor_range(value: float | Sequence[float], name: str, centre: float = 1.0) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{name} must be non-negative, got {value}.")
        lo, hi = centre - float(value), centre + float(value)
        return (max(lo, 0.0), hi) if centre == 1.0 else (lo, hi)
    lo, hi = (float(v) for v in value)
    if lo > hi:
        raise ValueError(f"{name} range must be (min, max), got {value!r}.")
    return lo, hi


class RandColorJitter(RandomizableTransform):
    """Random brightness, contrast, saturation and hue changes of an image in [0, 1].

    The operations and their parameterisation follow torchvision's ``ColorJitter`` (the colour distortion
    of SimCLR, Chen et al., ICML 2020, and of many FixMatch-style strong views), applied in a random order:

    - brightness ``f``: ``x * f``;
    - contrast ``f``: blend with the mean grey level, ``f x + (1 - f) mean(grey(x))``;
    - saturation ``f``: blend with the per-pixel grey image, ``f x + (1 - f) grey(x)``
      (grey = ITU-R BT.601 luma);
    - hue ``d``: rotate the hue by ``d`` turns in HSV space (``d`` in [-0.5, 0.5]).

    Each factor ``f`` is drawn uniformly from ``[max(0, 1 - s), 1 + s]`` for a strength ``s`` (or from an
    explicit ``(min, max)``) and the hue shift from ``[-h, h]``; each step clips to [0, 1]. A factor of
    exactly 1 (and a hue shift of 0) skips its step, so zero strengths give the input unchanged. Saturation
    and hue need three channels and are skipped for other channel counts.

    Input: ``(C, H, W)`` or ``(..., C, H, W)`` float tensor or array in [0, 1]; output of the same shape,
    type and dtype, in [0, 1].

    Args:
        prob: probability of applying the jitter.
        brightness, contrast, saturation: strength ``s`` or range ``(min, max)`` of the factors.
        hue: maximum absolute hue shift in turns (<= 0.5) or a range ``(min, max)``.
    """

    backend = ("torch", "numpy")

    def __init__(
        self,
        prob: float = 1.0,
        brightness: float | Sequence[float] = 0.0,
        contrast: float | Sequence[float] = 0.0,
        saturation: float | Sequence[float] = 0.0,
        hue: float | Sequence[float] = 0.0,
    ) -> None:
        super().__init__(prob)
        self.brightness = _factor_range(brightness, "brightness")
        self.contrast = _factor_range(contrast, "contrast")
        self.saturation = _factor_range(saturation, "saturation")
        self.hue = _factor_range(hue, "hue", centre=0.0)
        if not -0.5 <= self.hue[0] <= self.hue[1] <= 0.5:
            raise ValueError(f"hue shifts must lie in [-0.5, 0.5], got {hue!r}.")
        self._factors = (1.0, 1.0, 1.0, 0.0)
        self._order: tuple[int, ...] = (0, 1, 2, 3)

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self._factors = (
            float(self.R.uniform(*self.brightness)),
            float(self.R.uniform(*self.contrast)),
            float(self.R.uniform(*self.saturation)),
            float(self.R.uniform(*self.hue)),
        )
        self._order = tuple(int(i) for i in self.R.permutation(4))

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        x = convert_to_tensor(img, track_meta=False)
        if not x.is_floating_point():
            x = x.float()
        for op in self._order:
            x = self._apply(op, x)
        return convert_to_dst_type(x, img, dtype=x.dtype)[0]

    def _apply(self, op: int, x: torch.Tensor) -> torch.Tensor:
        value = self._factors[op]
        if op == 3:
            if value == 0.0 or x.shape[-3] != 3:
                return x
            hsv = rgb_to_hsv(x.clamp(0.0, 1.0))
            hsv = torch.stack([(hsv[..., 0, :, :] + value) % 1.0, hsv[..., 1, :, :], hsv[..., 2, :, :]], dim=-3)
            return hsv_to_rgb(hsv).clamp(0.0, 1.0)
        if value == 1.0:
            return x
        if op == 0:
            return (x * value).clamp(0.0, 1.0)
        if op == 1:
            return _blend(x, _grey(x).mean(dim=(-3, -2, -1), keepdim=True), value)
        if x.shape[-3] != 3:
            return x
        return _blend(x, _grey(x), value)


class RandColorJitterd(SharedDrawd):
    """Dictionary version of :class:`RandColorJitter` (one draw shared by all ``keys``)."""

    backend = RandColorJitter.backend

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        brightness: float | Sequence[float] = 0.0,
        contrast: float | Sequence[float] = 0.0,
        saturation: float | Sequence[float] = 0.0,
        hue: float | Sequence[float] = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        jitter = RandColorJitter(prob=1.0, brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
        super().__init__(keys, jitter, prob, allow_missing_keys)
