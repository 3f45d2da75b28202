"""RandAugment-style strong views with geometry, and the warp that keeps pixel targets aligned with them.

:class:`RandAugmentd` turns the weak view of an unlabeled image into a strong view: ``num_ops`` operations
drawn from a per-modality pool (RandAugment, Cubuk et al., CVPR Workshops 2020, as used for FixMatch's strong
view, Sohn et al., NeurIPS 2020), geometric ones included, then Cutout (DeVries & Taylor 2017).

Pixel alignment: forward warp with a returned affine (option (a))
-----------------------------------------------------------------
A geometric strong view is no longer pixel-aligned with the weak view, so a pixel pseudo label made on the
weak view must be moved into the strong view's frame before it supervises the strong prediction.
:class:`RandAugmentd` composes every geometric operation it drew into **one** affine map and resamples the
image once with ``torch.nn.functional.affine_grid`` / ``grid_sample``; it stores that map, ``theta``, under
``strong_affine`` (:attr:`~monai_ssl_ext.keys.DataKeys.STRONG_AFFINE`): a ``(2, 3)`` float32 tensor in
normalised coordinates (``align_corners=False``, x then y, each in [-1, 1]) that maps a pixel of the
**strong** view to the location of the **weak** view it was sampled from, exactly the ``theta`` of
``affine_grid``. So ``strong_geometry = grid_sample(weak, affine_grid(theta))`` holds by construction, and
:func:`warp_to_strong` applies the same ``theta`` to weak-view labels or probabilities. Why a forward warp of
the targets rather than an inverse warp of the strong predictions back to the weak frame (option (b)):
the loss stays in the frame where the strong prediction is made, so the gradient reaches the network
output without passing through a resampling; the pseudo labels are detached targets that can be resampled
with nearest neighbours (exact class values, no new label values); and the strong-view pixels whose source
lies outside the weak view (the zero-padded border the geometry uncovers) are returned as invalid and can
simply be dropped from the loss, whereas the inverse warp would have to invert the affine and would still
mix in padding.

How an algorithm uses it (pixel pseudo labels from the weak view supervise the strong view)::

    from monai_ssl_ext.keys import DataKeys
    from monai_ssl_ext.transforms import warp_to_strong

    probs = torch.softmax(out_w["seg"].detach() / T, dim=1)        # (B, K, H, W), weak-view frame
    affine = unlabeled.get(DataKeys.STRONG_AFFINE)                  # (B, 2, 3) after collation, or None
    if affine is not None:                                          # None: photometric strong view, aligned
        probs, valid = warp_to_strong(probs, affine, mode="nearest")  # now in the strong-view frame
    pseudo, mask = seg_selector(probs, indices)                     # argmax and confidence, per pixel
    if affine is not None:
        mask = mask * valid                                         # border uncovered by the geometry: ignored
    loss = masked_cross_entropy(out_s["seg"], pseudo, mask)

Integer pseudo labels ``(B, H, W)`` can be warped instead (``mode="nearest"``, optionally with
``ignore_value=-1`` to write an ignore index where ``valid`` is false), and a ``(B, H, W)`` confidence mask
likewise. Image-level (classification) pseudo labels need no warp. The key is absent when the profile's
``strong_view`` is ``"photometric"`` (views already aligned): treat a missing key as the identity.

Order of operations inside the strong view: the drawn photometric operations act first, in the drawn order,
on the weak view (so global statistics such as the mean of ``contrast`` or the histogram of ``equalize`` are
those of the image, not of the padding); then the drawn geometric operations, composed in the drawn order,
are applied with one bilinear resampling (zeros outside the weak view); then the result is clipped to
[0, 1] and the Cutout patch (in the strong view's frame) is filled.

Operations (``r = m / 10`` for the magnitude ``m`` of the draw; ``s`` a random sign; maxima in :data:`OP_MAX`):

- geometric: ``rotate`` (``s r 30`` degrees), ``shear_x`` / ``shear_y`` (``s r 0.3``), ``translate_x`` /
  ``translate_y`` (``s r 0.2`` of the width / height), ``scale`` (zoom ``1 + s r 0.25``); rotation and shear
  act in pixel units, so they stay rigid on non-square images. Flips are left to the weak views.
- grey-level (safe for single-channel or replicated-grey images: the same map on every channel):
  ``brightness`` (``x (1 + s r 0.4)``), ``contrast`` (blend with the mean grey, factor ``1 + s r 0.4``),
  ``gamma`` (``x ** exp(s r 0.5)``), ``sharpness`` (PIL's: blend with a 3x3 smoothed image, factor
  ``1 + s r 0.9``), ``blur`` (Gaussian, sigma ``r 1.5`` px), ``noise`` (additive Gaussian, sigma ``r 0.08``,
  X-ray quantum noise), ``speckle`` (multiplicative, ``x (1 + sigma n)``, sigma ``r 0.25``, ultrasound),
  ``posterize`` (``round(4 r)`` of 8 bits dropped), ``equalize`` (per-channel histogram equalisation over
  256 bins, blended with weight ``r``), ``autocontrast`` (stretch the min..max of all channels together to
  [0, 1], blended with weight ``r``), ``identity``.
- colour (three channels, colour modalities only): ``saturation`` (blend with luma, factor ``1 + s r 0.5``),
  ``hue`` (``s r 0.1`` turns), ``hed`` (stain jitter, :class:`~monai_ssl_ext.transforms.stain.RandHEDJitter`
  with ``alpha ~ U(1 - r hed_sigma, 1 + r hed_sigma)``, ``beta ~ U(-r hed_bias, r hed_bias)``).

With ``grey=True`` colour operations are refused and noise is drawn once per pixel for all channels, so
a grey image (one channel, or three equal ones) stays grey: no hue change in ultrasound or X-ray.

Every random number comes from the transform's ``R`` (seeded by ``Compose.set_random_state``, i.e. by
:class:`~monai_ssl_ext.data.streams.SeededTransformDataset` per sample), noise from a ``torch.Generator``
seeded from ``R``: the same seed gives the same strong view and affine.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_dst_type, convert_to_tensor

from monai_ssl_ext.keys import DataKeys
from monai_ssl_ext.transforms.colour import _blend, _grey, hsv_to_rgb, rgb_to_hsv
from monai_ssl_ext.transforms.stain import RandHEDJitter

__all__ = [
    "ALL_OPS",
    "COLOUR_OPS",
    "GEOMETRIC_OPS",
    "GREY_OPS",
    "OP_MAX",
    "RandAugmentd",
    "warp_to_strong",
]

GEOMETRIC_OPS: tuple[str, ...] = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y", "scale")
GREY_OPS: tuple[str, ...] = (
    "brightness",
    "contrast",
    "gamma",
    "sharpness",
    "blur",
    "noise",
    "speckle",
    "posterize",
    "equalize",
    "autocontrast",
    "identity",
)
COLOUR_OPS: tuple[str, ...] = ("saturation", "hue", "hed")
ALL_OPS: tuple[str, ...] = GEOMETRIC_OPS + GREY_OPS + COLOUR_OPS

# strength of each operation at magnitude 10 (units in the module docstring)
OP_MAX: dict[str, float] = {
    "rotate": 30.0,
    "shear_x": 0.3,
    "shear_y": 0.3,
    "translate_x": 0.2,
    "translate_y": 0.2,
    "scale": 0.25,
    "brightness": 0.4,
    "contrast": 0.4,
    "gamma": 0.5,
    "sharpness": 0.9,
    "blur": 1.5,
    "noise": 0.08,
    "speckle": 0.25,
    "posterize": 4.0,
    "equalize": 1.0,
    "autocontrast": 1.0,
    "identity": 0.0,
    "saturation": 0.5,
    "hue": 0.1,
    "hed": 1.0,
}
MAX_MAGNITUDE = 10.0


# ---------------------------------------------------------------- the warp an algorithm uses


def warp_to_strong(
    x: torch.Tensor, affine: torch.Tensor | np.ndarray, mode: str = "nearest", ignore_value: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move weak-view labels, masks or probabilities into the frame of the geometric strong view.

    ``out = grid_sample(x, affine_grid(affine))`` with ``align_corners=False``: the same resampling that made
    the strong view from the weak one (see the module docstring), with border padding, plus the mask of the
    strong-view pixels whose source lies inside the weak view.

    Args:
        x: with a batch of affines ``(B, 2, 3)``: ``(B, H, W)`` (labels, confidence mask) or ``(B, C, H, W)``
            (probabilities, one-hot masks); with one affine ``(2, 3)``: ``(H, W)`` or ``(C, H, W)``.
            Integer and boolean tensors are warped with nearest neighbours only and keep their dtype.
        affine: ``strong_affine`` of the unlabeled batch (``theta`` of ``affine_grid``: strong -> weak, normalised).
        mode: ``"nearest"`` (labels; exact values) or ``"bilinear"`` (probabilities).
        ignore_value: written into ``out`` where the source is outside the weak view (e.g. ``-1`` for an
            ignore index); ``None`` leaves the border-padded values there.

    Returns:
        ``(out, valid)``: ``out`` of the shape and dtype of ``x``; ``valid`` a boolean ``(B, H, W)`` (or
        ``(H, W)``) tensor, ``False`` where the strong pixel has no source in the weak view (drop it from the loss).
    """
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"mode must be 'nearest' or 'bilinear', got {mode!r}.")
    x = convert_to_tensor(x, track_meta=False)
    theta = torch.as_tensor(affine)
    single = theta.ndim == 2
    if single:
        theta = theta[None]
    if theta.ndim != 3 or tuple(theta.shape[1:]) != (2, 3):
        raise ValueError(f"affine must be (2, 3) or (B, 2, 3), got shape {tuple(theta.shape)}.")
    expect = (2, 3) if single else (3, 4)
    if x.ndim not in expect:
        raise ValueError(
            f"with an affine of shape {tuple(torch.as_tensor(affine).shape)} x must have {expect[0]} or {expect[1]} "
            f"dimensions ({'(H, W) or (C, H, W)' if single else '(B, H, W) or (B, C, H, W)'}), got {tuple(x.shape)}."
        )
    no_channel = x.ndim == expect[0]
    xb = x.unsqueeze(-3) if no_channel else x
    if single:
        xb = xb[None]
    if xb.shape[0] != theta.shape[0]:
        raise ValueError(f"{theta.shape[0]} affines for a batch of {xb.shape[0]}.")
    exact = not x.is_floating_point()
    if exact and mode != "nearest":
        raise ValueError(f"integer or boolean tensors ({x.dtype}) can only be warped with mode='nearest'.")
    work = xb.to(torch.float64 if x.dtype in (torch.int64, torch.int32, torch.float64) else torch.float32)
    theta = theta.to(device=work.device, dtype=work.dtype)
    grid = F.affine_grid(theta, list(work.shape), align_corners=False)
    out = F.grid_sample(work, grid, mode=mode, padding_mode="border", align_corners=False)
    valid = (grid.abs() <= 1.0).all(dim=-1)
    if ignore_value is not None:
        out = out.masked_fill(~valid[:, None], float(ignore_value))
    if exact:
        out = out.round()
    out = out.to(x.dtype)
    if single:
        out, valid = out[0], valid[0]
    return (out.squeeze(-3) if no_channel else out), valid


# ---------------------------------------------------------------- operations on (C, H, W) tensors


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    h, w = x.shape[-2:]
    radius = min(max(1, math.ceil(3.0 * sigma)), h - 1, w - 1)
    if sigma < 0.05 or radius < 1:
        return x
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[0]
    y = F.pad(x[None], (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y[0]


def _sharpness(x: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL's ``ImageEnhance.Sharpness``: blend with the image smoothed by [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13."""
    if x.shape[-1] < 3 or x.shape[-2] < 3:
        return x
    c = x.shape[0]
    kernel = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(c, 1, 3, 3)
    smooth = x.clone()
    smooth[:, 1:-1, 1:-1] = F.conv2d(x[None], kernel, groups=c)[0]
    return _blend(x, smooth, factor)


def _posterize(x: torch.Tensor, drop_bits: int) -> torch.Tensor:
    if drop_bits <= 0:
        return x
    step = float(2**drop_bits)
    q = torch.floor((x.clamp(0.0, 1.0) * 255.0).round() / step) * step
    return q / 255.0


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageOps.equalize`` on 256 levels, channel by channel."""
    idx = (x.clamp(0.0, 1.0) * 255.0).round().long()
    out = torch.empty_like(x)
    for ch in range(x.shape[0]):
        hist = torch.bincount(idx[ch].flatten(), minlength=256).to(torch.float64)
        last = hist[hist > 0][-1]
        step = math.floor((float(hist.sum()) - float(last)) / 255.0)
        if step == 0:
            out[ch] = x[ch]
            continue
        before = torch.cumsum(hist, 0) - hist
        lut = (torch.floor((before + step // 2) / step).clamp(max=255.0) / 255.0).to(x.dtype)
        out[ch] = lut[idx[ch]]
    return out


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.amin(), x.amax()
    if float(hi - lo) <= 1e-6:
        return x
    return (x - lo) / (hi - lo)


def _hue(x: torch.Tensor, shift: float) -> torch.Tensor:
    hsv = rgb_to_hsv(x.clamp(0.0, 1.0))
    hsv = torch.stack([(hsv[0] + shift) % 1.0, hsv[1], hsv[2]])
    return hsv_to_rgb(hsv).clamp(0.0, 1.0)


def _forward_matrix(name: str, value: float, size: tuple[int, int]) -> np.ndarray:
    """3x3 map of an operation from weak-view to strong-view pixel coordinates (origin at the image centre)."""
    h, w = size
    m = np.eye(3)
    if name == "rotate":
        a = math.radians(value)
        m[:2, :2] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
    elif name == "shear_x":
        m[0, 1] = value
    elif name == "shear_y":
        m[1, 0] = value
    elif name == "translate_x":
        m[0, 2] = value * w
    elif name == "translate_y":
        m[1, 2] = value * h
    elif name == "scale":
        m[0, 0] = m[1, 1] = 1.0 + value
    return m


def _theta(forward: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """``affine_grid``'s theta (strong -> weak, normalised, align_corners=False) of a forward pixel map."""
    h, w = size
    d = np.diag([w / 2.0, h / 2.0, 1.0])
    theta = np.linalg.inv(d) @ np.linalg.inv(forward) @ d
    return torch.as_tensor(theta[:2], dtype=torch.float32)


# ---------------------------------------------------------------- the transform


class RandAugmentd(RandomizableTransform, MapTransform):
    """RandAugment-style strong view with geometry and Cutout; the geometry's affine goes under ``affine_key``.

    Per call: ``num_ops`` distinct operations are drawn from ``ops`` (uniformly, without replacement), each
    with magnitude ``m ~ U(0, magnitude)`` (``random_magnitude=True``, FixMatch's variant: a random magnitude
    per operation) or ``m = magnitude``, on the 0-10 scale of AutoAugment/RandAugment where 10 is the maximum
    of :data:`OP_MAX`; signed operations get a random sign. Then, with probability ``cutout_prob``, one
    rectangle of ``f`` times the height and width (``f ~ U(*cutout_size)``), centred anywhere and clipped at
    the borders, is set to ``fill``. One draw is shared by all ``keys`` (views of one image; they must have
    the same spatial size). The order of application, the operations and the affine are described in
    :mod:`monai_ssl_ext.transforms.randaugment`; ``affine_key`` always receives the ``(2, 3)`` theta (the
    identity when no geometric operation was drawn), so that a batch collates.

    Args:
        keys: images ``(C, H, W)`` in [0, 1] to transform.
        ops: the pool of operation names (see :data:`ALL_OPS`).
        num_ops: operations per view (RandAugment's N).
        magnitude: RandAugment's M, in [0, 10].
        random_magnitude: draw each operation's magnitude from ``U(0, magnitude)``.
        grey: the images are grey (one channel or replicated grey): refuse colour operations, share noise.
        cutout_prob: probability of the Cutout patch (1: always, as FixMatch's strong view).
        cutout_size: range of the patch side as a fraction of the image side.
        fill: Cutout fill value.
        op_max: overrides of :data:`OP_MAX` (strength at magnitude 10).
        hed_sigma, hed_bias: ranges of the ``hed`` operation at magnitude 10 (see :class:`RandHEDJitter`).
        affine_key: where the affine is stored (``None``: not stored).
        allow_missing_keys: do not fail on absent keys.
    """

    backend = ("torch",)

    def __init__(
        self,
        keys: KeysCollection,
        ops: Sequence[str],
        num_ops: int = 2,
        magnitude: float = 10.0,
        random_magnitude: bool = True,
        grey: bool = False,
        cutout_prob: float = 1.0,
        cutout_size: tuple[float, float] = (0.25, 0.5),
        fill: float = 0.0,
        op_max: Mapping[str, float] | None = None,
        hed_sigma: float = 0.2,
        hed_bias: float = 0.05,
        affine_key: str | None = DataKeys.STRONG_AFFINE,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.ops = tuple(str(op) for op in ops)
        unknown = sorted(set(self.ops) - set(ALL_OPS))
        if unknown:
            raise ValueError(f"unknown strong-view operations {unknown}; available: {list(ALL_OPS)}.")
        if len(set(self.ops)) != len(self.ops) or not self.ops:
            raise ValueError(f"ops must be a non-empty list of distinct names, got {list(self.ops)}.")
        if grey and set(self.ops) & set(COLOUR_OPS):
            raise ValueError(
                f"colour operations {sorted(set(self.ops) & set(COLOUR_OPS))} change the hue of a grey image; "
                "leave them out of a grey modality's pool."
            )
        self.num_ops = int(num_ops)
        if not 0 <= self.num_ops <= len(self.ops):
            raise ValueError(f"num_ops must lie in [0, {len(self.ops)}] (the pool size), got {num_ops}.")
        self.magnitude = float(magnitude)
        if not 0.0 <= self.magnitude <= MAX_MAGNITUDE:
            raise ValueError(f"magnitude must lie in [0, {MAX_MAGNITUDE:g}], got {magnitude}.")
        self.random_magnitude = bool(random_magnitude)
        self.grey = bool(grey)
        if not 0.0 <= cutout_prob <= 1.0:
            raise ValueError(f"cutout_prob must lie in [0, 1], got {cutout_prob}.")
        lo, hi = (float(v) for v in cutout_size)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"cutout_size must be (min, max) fractions in [0, 1], got {cutout_size!r}.")
        self.cutout_prob = float(cutout_prob)
        self.cutout_size = (lo, hi)
        self.fill = float(fill)
        self.op_max = {**OP_MAX, **(dict(op_max) if op_max else {})}
        self.hed = RandHEDJitter(prob=1.0, sigma=hed_sigma, bias=hed_bias)
        self.hed_sigma, self.hed_bias = float(hed_sigma), float(hed_bias)
        self.affine_key = affine_key
        self._draws: list[tuple[str, float, float, Any]] = []
        self._cutout: tuple[float, float, float] | None = None

    # ------------------------------------------------------------ drawing
    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        chosen = self.R.choice(len(self.ops), size=self.num_ops, replace=False) if self.num_ops else []
        draws = []
        for i in chosen:
            name = self.ops[int(i)]
            m = float(self.R.uniform(0.0, self.magnitude)) if self.random_magnitude else self.magnitude
            sign = 1.0 if self.R.randint(2) else -1.0
            extra: Any = None
            if name in ("noise", "speckle"):
                extra = int(self.R.randint(0, 2**31 - 1))
            elif name == "hed":
                extra = (self.R.uniform(-1.0, 1.0, size=3), self.R.uniform(-1.0, 1.0, size=3))
            draws.append((name, m / MAX_MAGNITUDE, sign, extra))
        self._draws = draws
        self._cutout = None
        if self.R.uniform() < self.cutout_prob:
            self._cutout = (float(self.R.uniform(*self.cutout_size)), float(self.R.uniform()), float(self.R.uniform()))

    def affine(self, size: tuple[int, int]) -> torch.Tensor:
        """The ``(2, 3)`` theta (strong -> weak, normalised) of the current draw for images of ``size`` (H, W)."""
        forward = np.eye(3)
        for name, r, sign, _ in self._draws:
            if name in GEOMETRIC_OPS:
                forward = _forward_matrix(name, sign * r * self.op_max[name], size) @ forward
        return _theta(forward, size)

    # ------------------------------------------------------------ applying
    def _photometric(self, x: torch.Tensor, name: str, r: float, sign: float, extra: Any) -> torch.Tensor:
        strength = r * self.op_max[name]
        if name == "identity" or strength == 0.0:
            return x
        if name == "brightness":
            return (x * (1.0 + sign * strength)).clamp(0.0, 1.0)
        if name == "contrast":
            return _blend(x, _grey(x).mean(dim=(-3, -2, -1), keepdim=True), 1.0 + sign * strength)
        if name == "gamma":
            return x.clamp(0.0, 1.0).pow(math.exp(sign * strength))
        if name == "sharpness":
            return _sharpness(x, 1.0 + sign * strength)
        if name == "blur":
            return _blur(x, strength).clamp(0.0, 1.0)
        if name in ("noise", "speckle"):
            shape = (1, *x.shape[-2:]) if self.grey else tuple(x.shape)
            gen = torch.Generator(device="cpu").manual_seed(extra)
            n = torch.randn(shape, generator=gen, dtype=torch.float32).to(x.device, x.dtype)
            out = x + strength * n if name == "noise" else x * (1.0 + strength * n)
            return out.clamp(0.0, 1.0)
        if name == "posterize":
            return _posterize(x, round(strength))
        if name == "equalize":
            return _blend(_equalize(x), x, strength)
        if name == "autocontrast":
            return _blend(_autocontrast(x), x, strength)
        if x.shape[-3] != 3:  # colour operations: RGB only
            return x
        if name == "saturation":
            return _blend(x, _grey(x), 1.0 + sign * strength)
        if name == "hue":
            return _hue(x, sign * strength)
        if name == "hed":
            u_alpha, u_beta = extra
            alpha = 1.0 + strength * self.hed_sigma * u_alpha
            beta = strength * self.hed_bias * u_beta
            return self.hed.perturb(x, alpha, beta).to(x.dtype)
        raise AssertionError(name)  # pragma: no cover - names are validated in __init__

    def apply(self, img: NdarrayOrTensor, theta: torch.Tensor) -> NdarrayOrTensor:
        """The strong view of one image under the current draw (``theta`` from :meth:`affine`)."""
        x = convert_to_tensor(img, track_meta=False)
        if not x.is_floating_point():
            x = x.float()
        if x.ndim != 3:
            raise ValueError(f"expected a channel-first (C, H, W) image, got shape {tuple(x.shape)}.")
        for name, r, sign, extra in self._draws:
            if name not in GEOMETRIC_OPS:
                x = self._photometric(x, name, r, sign, extra)
        if any(name in GEOMETRIC_OPS for name, *_ in self._draws):
            t = theta.to(x.device, x.dtype)[None]
            grid = F.affine_grid(t, [1, *x.shape], align_corners=False)
            x = F.grid_sample(x[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        x = x.clamp(0.0, 1.0)
        if self._cutout is not None:
            frac, cy, cx = self._cutout
            h, w = x.shape[-2:]
            ph, pw = round(frac * h), round(frac * w)
            y0, x0 = round(cy * h - ph / 2.0), round(cx * w - pw / 2.0)
            x = x.clone()
            x[:, max(y0, 0) : max(y0 + ph, 0), max(x0, 0) : max(x0 + pw, 0)] = self.fill
        return convert_to_dst_type(x, img, dtype=x.dtype)[0]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        keys = list(self.key_iterator(d))
        sizes = {tuple(d[key].shape[-2:]) for key in keys}
        if len(sizes) > 1:
            raise ValueError(f"the views under {keys} differ in size {sorted(sizes)}; one affine cannot serve them.")
        if not sizes:
            return d
        size = sizes.pop()
        theta = self.affine(size)
        for key in keys:
            d[key] = self.apply(d[key], theta)
        if self.affine_key is not None:
            d[self.affine_key] = theta
        return d
