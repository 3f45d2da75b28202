"""Stain transforms for H&E histology, array and dictionary versions side by side.

- :func:`rgb_to_hed` / :func:`hed_to_rgb`: colour deconvolution into haematoxylin, eosin and DAB
  concentrations (Ruifrok & Johnston 2001) and back.
- :func:`macenko_stains`: the stain matrix and maximum concentrations of an H&E image (Macenko et al. 2009).
- :class:`MacenkoNormalize` / :class:`MacenkoNormalized`: deterministic stain normalisation to a reference,
  the optional normalisation of the histology profile.
- :class:`RandHEDJitter` / :class:`RandHEDJitterd`: random stain perturbation in HED space (Tellez et al.
  2018, 2019), the core of the histology strong view.

Images are channel-first RGB ``(3, H, W)`` floats in [0, 1]. Optical densities follow Beer-Lambert with
the natural logarithm and the 8-bit offset of the Macenko reference code, ``OD = -ln((255 I + 1) / I_0)``.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_tensor

from monai_ssl_ext.transforms.shared_draw import SharedDrawd

__all__ = [
    "MACENKO_REFERENCE_MAX_CONCENTRATIONS",
    "MACENKO_REFERENCE_STAIN_MATRIX",
    "RUIFROK_HED_MATRIX",
    "MacenkoNormalize",
    "MacenkoNormalized",
    "RandHEDJitter",
    "RandHEDJitterd",
    "StainEstimationError",
    "hed_to_rgb",
    "macenko_stains",
    "rgb_to_hed",
]

logger = logging.getLogger(__name__)

# Optical-density vectors (rows: haematoxylin, eosin, DAB; columns: R, G, B) measured by Ruifrok & Johnston,
# "Quantification of histochemical staining by color deconvolution", Anal. Quant. Cytol. Histol. 23(4), 2001;
# scikit-image's ``rgb_from_hed`` holds the same vectors rounded to two decimals. Normalised to unit length.
RUIFROK_HED_MATRIX: tuple[tuple[float, float, float], ...] = (
    (0.650, 0.704, 0.286),
    (0.072, 0.990, 0.105),
    (0.268, 0.570, 0.776),
)

# Reference H&E stain vectors (rows: H, E; columns: R, G, B OD, unit length) and the 99th-percentile
# concentrations of the reference slide: the values of the Python port of the MATLAB implementation of
# Macenko et al. 2009 (``HEnorm_python``), which torchstain's ``MacenkoNormalizer`` also uses as defaults.
MACENKO_REFERENCE_STAIN_MATRIX: tuple[tuple[float, float, float], ...] = (
    (0.5626, 0.7201, 0.4062),
    (0.2159, 0.8012, 0.5581),
)
MACENKO_REFERENCE_MAX_CONCENTRATIONS: tuple[float, float] = (1.9705, 1.0308)

# OD = -ln((255 I + 1) / 256): the 8-bit convention of the Macenko reference code with I_0 = 256, so that white
# glass has OD 0, a black pixel OD ln(256) (instead of the unbounded -ln(0)), and the map stays exactly invertible
_HED_OD_MAX = float(np.log(256.0))
# torch.quantile refuses inputs above 2**24 elements
_QUANTILE_LIMIT = 2**24


class StainEstimationError(ValueError):
    """The stain vectors of an image cannot be estimated (too little stained tissue, degenerate colours)."""


def _unit_rows(matrix: Any, rows: int) -> torch.Tensor:
    m = torch.as_tensor(matrix, dtype=torch.float64)
    if m.shape != (rows, 3):
        raise ValueError(f"expected a ({rows}, 3) stain matrix (rows: stains, columns: R, G, B), got {tuple(m.shape)}.")
    norms = torch.linalg.vector_norm(m, dim=1, keepdim=True)
    if torch.any(norms <= 0):
        raise ValueError("stain vectors must be non-zero.")
    return m / norms


def _check_rgb(img: torch.Tensor, name: str) -> None:
    if img.ndim < 3 or img.shape[-3] != 3:
        raise ValueError(f"{name} needs an RGB image (..., 3, H, W), got shape {tuple(img.shape)}.")


def _percentile(values: torch.Tensor, q: float) -> torch.Tensor:
    if values.numel() <= _QUANTILE_LIMIT:
        return torch.quantile(values, q / 100.0)
    k = max(1, min(values.numel(), round(q / 100.0 * (values.numel() - 1)) + 1))
    return values.kthvalue(k).values


# ---------------------------------------------------------------- colour deconvolution


def rgb_to_hed(img: torch.Tensor, stain_matrix: Any = RUIFROK_HED_MATRIX) -> torch.Tensor:
    """Colour deconvolution: RGB ``(..., 3, H, W)`` in [0, 1] to H, E, DAB concentrations (OD units).

    Beer-Lambert per channel, ``OD = -ln((255 I + 1) / 256)`` (white glass has OD 0; the 8-bit offset bounds
    a black pixel's OD at ln 256 instead of infinity, so a dark nucleus does not dominate the perturbation),
    and ``OD = c M`` with ``M`` the unit-length stain vectors (rows), so ``c = OD M^-1`` (Ruifrok & Johnston
    2001). Concentrations are not clipped at 0, which keeps :func:`hed_to_rgb` an exact inverse.
    """
    _check_rgb(img, "rgb_to_hed")
    x = img if img.is_floating_point() else img.float()
    od = _HED_OD_MAX - torch.log1p(255.0 * x.clamp_min(0.0))
    inverse = torch.linalg.inv(_unit_rows(stain_matrix, 3))
    return torch.einsum("...chw,cs->...shw", od, inverse.to(od.device, od.dtype))


def hed_to_rgb(hed: torch.Tensor, stain_matrix: Any = RUIFROK_HED_MATRIX, clip: bool = True) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hed`: concentrations ``(..., 3, H, W)`` to RGB, ``I = (256 exp(-c M) - 1) / 255``."""
    _check_rgb(hed, "hed_to_rgb")
    m = _unit_rows(stain_matrix, 3).to(hed.device, hed.dtype)
    rgb = torch.expm1(_HED_OD_MAX - torch.einsum("...shw,sc->...chw", hed, m)) / 255.0
    return rgb.clamp(0.0, 1.0) if clip else rgb


# ---------------------------------------------------------------- HED jitter


class RandHEDJitter(RandomizableTransform):
    """Stain colour augmentation in HED space (Tellez et al., IEEE TMI 2018; Medical Image Analysis 2019).

    The image is deconvolved into haematoxylin, eosin and DAB concentrations ``c`` with the Ruifrok &
    Johnston matrix (:func:`rgb_to_hed`), each channel is perturbed as ``c'_i = alpha_i c_i + beta_i`` with
    ``alpha_i ~ U(1 - sigma, 1 + sigma)`` and ``beta_i ~ U(-bias, bias)`` drawn independently per channel,
    and the result is recombined (:func:`hed_to_rgb`) and clipped to [0, 1]. This imitates a slide stained
    more or less strongly with either dye, the dominant source of colour variation between laboratories.

    Choices and their sources:

    - Ruifrok & Johnston's measured H, E and DAB vectors (:data:`RUIFROK_HED_MATRIX`), as in Tellez et al.
      (who use scikit-image's ``rgb2hed``).
    - Concentrations here are natural-log optical densities (see :func:`rgb_to_hed`), so ``beta`` is an OD
      offset and ``alpha`` scales the amount of each dye. Implementations built on other versions of
      scikit-image's ``rgb2hed`` use differently scaled or shifted logarithms, so numerical ranges do not
      transfer one to one. Tellez et al. (2019) compare a light setting (0.05 for both ranges) and a strong
      one (0.2). The defaults ``sigma = 0.2`` (dye amount +-20 %, the strong multiplicative range) and
      ``bias = 0.05`` (+-0.05 OD per stain, a few per cent of the light through unstained glass) give clearly
      visible but plausible stain shifts on NCT-CRC-HE patches; ``bias = 0.2`` in these units washes tissue out.
    - With ``alpha = 1`` and ``beta = 0`` the transform is the identity up to float error (the deconvolution
      is an exact inverse pair).

    Input: ``(3, H, W)`` (or ``(..., 3, H, W)``) float tensor or array in [0, 1]. Output: same shape, type
    and dtype, in [0, 1] (unclipped if ``clip=False``).

    Args:
        prob: probability of applying the perturbation.
        sigma: half-width of the multiplicative range ``U(1 - sigma, 1 + sigma)``, or ``(min, max)`` of alpha.
        bias: half-width of the additive range ``U(-bias, bias)`` (OD units), or ``(min, max)`` of beta.
        stain_matrix: ``(3, 3)`` stain OD vectors (rows H, E, DAB); Ruifrok & Johnston's by default.
        clip: clip the output to [0, 1].
    """

    backend = ("torch", "numpy")

    def __init__(
        self,
        prob: float = 1.0,
        sigma: float | Sequence[float] = 0.2,
        bias: float | Sequence[float] = 0.05,
        stain_matrix: Any = RUIFROK_HED_MATRIX,
        clip: bool = True,
    ) -> None:
        super().__init__(prob)
        self.alpha_range = (1.0 - sigma, 1.0 + sigma) if isinstance(sigma, (int, float)) else tuple(sigma)
        self.beta_range = (-bias, bias) if isinstance(bias, (int, float)) else tuple(bias)
        for name, (lo, hi) in (("sigma", self.alpha_range), ("bias", self.beta_range)):
            if lo > hi:
                raise ValueError(f"{name} must give a range (min, max) with min <= max, got ({lo}, {hi}).")
        self.stain_matrix = _unit_rows(stain_matrix, 3)
        self.clip = clip
        self._alpha = np.ones(3)
        self._beta = np.zeros(3)

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self._alpha = self.R.uniform(*self.alpha_range, size=3)
        self._beta = self.R.uniform(*self.beta_range, size=3)

    def perturb(self, img: torch.Tensor, alpha: Sequence[float], beta: Sequence[float]) -> torch.Tensor:
        """Apply given ``alpha`` and ``beta`` (three values each, H, E, DAB) to an RGB tensor in [0, 1]."""
        _check_rgb(img, type(self).__name__)
        x = img if img.is_floating_point() else img.float()
        hed = rgb_to_hed(x, self.stain_matrix)
        a = torch.as_tensor(np.asarray(alpha, dtype=np.float64), dtype=hed.dtype, device=hed.device).view(3, 1, 1)
        b = torch.as_tensor(np.asarray(beta, dtype=np.float64), dtype=hed.dtype, device=hed.device).view(3, 1, 1)
        return hed_to_rgb(hed * a + b, self.stain_matrix, clip=self.clip)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        out = self.perturb(convert_to_tensor(img, track_meta=False), self._alpha, self._beta)
        return convert_to_dst_type(out, img, dtype=out.dtype)[0]


class RandHEDJitterd(SharedDrawd):
    """Dictionary version of :class:`RandHEDJitter` (one draw shared by all ``keys``)."""

    backend = RandHEDJitter.backend

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        sigma: float | Sequence[float] = 0.2,
        bias: float | Sequence[float] = 0.05,
        stain_matrix: Any = RUIFROK_HED_MATRIX,
        clip: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        jitter = RandHEDJitter(prob=1.0, sigma=sigma, bias=bias, stain_matrix=stain_matrix, clip=clip)
        super().__init__(keys, jitter, prob, allow_missing_keys)


# ---------------------------------------------------------------- Macenko


def _optical_density(img: torch.Tensor, io: float) -> torch.Tensor:
    """``OD = -ln((255 I + 1) / I_0)`` of an RGB image in [0, 1], in float64 (the reference code's 8-bit convention)."""
    return -torch.log((255.0 * img.double().clamp(0.0, 1.0) + 1.0) / io)


def macenko_stains(
    img: torch.Tensor, io: float = 240.0, alpha: float = 1.0, beta: float = 0.15, min_tissue_fraction: float = 0.05
) -> tuple[torch.Tensor, torch.Tensor]:
    """The H&E stain matrix and maximum concentrations of an RGB image (Macenko et al., ISBI 2009).

    Pixels whose optical density reaches ``beta`` in every channel are stained tissue. Their ODs span a plane
    (the two leading eigenvectors of their covariance); the angle of each pixel in that plane is measured,
    and the directions at the ``alpha`` and ``100 - alpha`` percentiles of the angle are the two stains
    (robust extremes). The one with the larger red OD is haematoxylin, which absorbs more red light than
    eosin. Concentrations are the least-squares solution of ``OD = C M`` over all pixels and their 99th
    percentiles the maximum concentrations, as in the paper's reference implementation.

    Args:
        img: RGB ``(3, H, W)`` in [0, 1].
        io: background intensity (8-bit units).
        alpha: angle percentile of the extremes.
        beta: OD threshold of a tissue pixel.
        min_tissue_fraction: fewest tissue pixels, as a fraction of the image.

    Returns:
        ``(stains, max_concentrations)``: unit stain vectors ``(2, 3)`` (rows H, E; float64) and ``(2,)``.

    Raises:
        StainEstimationError: too little stained tissue, or no two separable stain directions.
    """
    _check_rgb(img, "macenko_stains")
    od = _optical_density(img, io).reshape(3, -1)
    tissue = od[:, (od >= beta).all(dim=0)]
    needed = max(10, int(np.ceil(min_tissue_fraction * od.shape[1])))
    if tissue.shape[1] < needed:
        raise StainEstimationError(
            f"too little stained tissue: {tissue.shape[1]} of {od.shape[1]} pixels have OD >= {beta} in every "
            f"channel (at least {needed} needed)"
        )
    _, vectors = torch.linalg.eigh(torch.cov(tissue))
    plane = vectors[:, 1:3]  # eigh sorts eigenvalues in ascending order: the last two span the stain plane
    projected = plane.T @ tissue
    phi = torch.atan2(projected[1], projected[0])
    extremes = []
    for q in (alpha, 100.0 - alpha):
        angle = _percentile(phi, q)
        v = plane @ torch.stack([torch.cos(angle), torch.sin(angle)])
        extremes.append(v * torch.sign(v.sum()))  # eigenvector signs are arbitrary; stain ODs are positive
    first, second = extremes
    if float(torch.dot(first, second) / (first.norm() * second.norm())) > 0.9999:
        raise StainEstimationError("the tissue shows one stain direction only; two stains cannot be separated")
    stains = torch.stack([first, second] if first[0] > second[0] else [second, first])
    stains = stains / torch.linalg.vector_norm(stains, dim=1, keepdim=True)
    concentrations = torch.linalg.lstsq(stains.T, od).solution
    max_concentrations = torch.stack([_percentile(concentrations[0], 99.0), _percentile(concentrations[1], 99.0)])
    return stains, max_concentrations


class MacenkoNormalize(Transform):
    """Macenko stain normalisation of an H&E image to a reference appearance.

    Macenko et al., "A method for normalizing histology slides for quantitative analysis", ISBI 2009: the
    image's H&E stain matrix ``M`` and 99th-percentile concentrations ``C_max`` are estimated with
    :func:`macenko_stains`; the concentrations ``C`` (least squares of ``OD = C M``) are rescaled to the
    reference maxima and recombined with the reference stain vectors,
    ``I = (I_0 / 255) exp(-(C * C_max_ref / C_max) M_ref)``, clipped to [0, 1].

    Choices and their sources:

    - Reference stain vectors ``M_ref`` = H (0.5626, 0.7201, 0.4062), E (0.2159, 0.8012, 0.5581) and maximum
      concentrations ``C_max_ref`` = (1.9705, 1.0308): the values of the Python port of the paper's MATLAB
      implementation (``HEnorm_python``), also torchstain's defaults. Pass ``stain_matrix`` /
      ``max_concentrations`` (or use :meth:`from_reference` on a chosen target patch) to normalise to
      another slide.
    - ``I_0 = 240`` (background intensity in 8-bit units), ``beta = 0.15`` (OD threshold for tissue) and
      ``alpha = 1`` (angle percentile, robust extremes): the paper's values, as in the reference code. The
      OD uses the reference code's 8-bit convention ``-ln((255 I + 1) / I_0)``, which the reference maxima
      assume. Normalised background is therefore ``240 / 255``, as in the reference implementation.
    - Failure: a patch that is mostly glass, fat or a single stain has no stable stain plane. With
      ``on_failure="keep"`` (default) the image is returned unchanged, a warning is logged, and a
      ``MetaTensor`` input records ``meta["stain_normalised"] = False`` (``True`` on success); with
      ``on_failure="raise"`` a :class:`StainEstimationError` is raised. ``min_tissue_fraction = 0.05``
      requires 5 % of the pixels to be stained tissue (a margin above the handful of pixels the
      eigen-analysis needs, chosen so that the background and adipose patches of NCT-CRC-HE are kept
      rather than mapped to arbitrary stain directions).

    The estimation is a few full-image passes (eigen-analysis, percentiles, least squares), so it belongs in
    the cacheable pre-processing, not in the per-iteration augmentation.

    Input: RGB ``(3, H, W)`` float tensor or array in [0, 1] (a ``MetaTensor`` keeps its metadata). Output:
    same shape, type and dtype, in [0, 1].

    Args:
        stain_matrix: reference ``(2, 3)`` H and E OD vectors (rows, normalised to unit length).
        max_concentrations: reference 99th-percentile concentrations of H and E.
        io: background (transmitted light) intensity, 8-bit units.
        alpha: percentile of the angle extremes (robust minimum and maximum).
        beta: OD threshold below which a pixel counts as background.
        min_tissue_fraction: fewest stained-tissue pixels, as a fraction of the image, to attempt estimation.
        on_failure: ``"keep"`` (return the input, warn and record) or ``"raise"``.
    """

    backend = ("torch", "numpy")

    def __init__(
        self,
        stain_matrix: Any = MACENKO_REFERENCE_STAIN_MATRIX,
        max_concentrations: Sequence[float] = MACENKO_REFERENCE_MAX_CONCENTRATIONS,
        io: float = 240.0,
        alpha: float = 1.0,
        beta: float = 0.15,
        min_tissue_fraction: float = 0.05,
        on_failure: str = "keep",
    ) -> None:
        if on_failure not in ("keep", "raise"):
            raise ValueError(f"on_failure must be 'keep' or 'raise', got {on_failure!r}.")
        self.stain_matrix = _unit_rows(stain_matrix, 2)
        self.max_concentrations = torch.as_tensor(max_concentrations, dtype=torch.float64).reshape(2)
        if torch.any(self.max_concentrations <= 0):
            raise ValueError(f"max_concentrations must be positive, got {max_concentrations!r}.")
        self.io = float(io)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.min_tissue_fraction = float(min_tissue_fraction)
        self.on_failure = on_failure

    @classmethod
    def from_reference(cls, reference: NdarrayOrTensor, **kwargs: Any) -> MacenkoNormalize:
        """A normaliser to the stains of a ``reference`` RGB image (estimated with the same settings)."""
        settings = {k: kwargs[k] for k in ("io", "alpha", "beta", "min_tissue_fraction") if k in kwargs}
        stains, max_c = macenko_stains(convert_to_tensor(reference, track_meta=False), **settings)
        return cls(stain_matrix=stains, max_concentrations=max_c, **kwargs)

    def normalise(self, img: torch.Tensor) -> torch.Tensor:
        """Normalise a plain RGB tensor; raises :class:`StainEstimationError` when estimation fails."""
        _check_rgb(img, type(self).__name__)
        if img.ndim != 3:
            raise ValueError(f"{type(self).__name__} expects one (3, H, W) image, got shape {tuple(img.shape)}.")
        stains, max_c = macenko_stains(
            img, io=self.io, alpha=self.alpha, beta=self.beta, min_tissue_fraction=self.min_tissue_fraction
        )
        od = _optical_density(img, self.io).reshape(3, -1)
        concentrations = torch.linalg.lstsq(stains.T, od).solution
        concentrations = concentrations * (self.max_concentrations / max_c)[:, None]
        rgb = (self.io / 255.0) * torch.exp(-(self.stain_matrix.T @ concentrations))
        return rgb.reshape(img.shape).clamp(0.0, 1.0).to(img.dtype if img.is_floating_point() else torch.float32)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        t = convert_to_tensor(img, track_meta=False)
        try:
            out = self.normalise(t)
        except StainEstimationError as error:
            if self.on_failure == "raise":
                raise
            source = img.meta.get("filename_or_obj", "an image") if isinstance(img, MetaTensor) else "an image"
            logger.warning(f"Macenko normalisation skipped for {source}: {error}; the image is kept unchanged.")
            if isinstance(img, MetaTensor):
                img.meta["stain_normalised"] = False
            return img
        result = convert_to_dst_type(out, img, dtype=out.dtype)[0]
        if isinstance(result, MetaTensor):
            result.meta["stain_normalised"] = True
        return result


class MacenkoNormalized(MapTransform):
    """Dictionary version of :class:`MacenkoNormalize`, applied to each image under ``keys``."""

    backend = MacenkoNormalize.backend

    def __init__(
        self,
        keys: KeysCollection,
        stain_matrix: Any = MACENKO_REFERENCE_STAIN_MATRIX,
        max_concentrations: Sequence[float] = MACENKO_REFERENCE_MAX_CONCENTRATIONS,
        io: float = 240.0,
        alpha: float = 1.0,
        beta: float = 0.15,
        min_tissue_fraction: float = 0.05,
        on_failure: str = "keep",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = MacenkoNormalize(
            stain_matrix=stain_matrix,
            max_concentrations=max_concentrations,
            io=io,
            alpha=alpha,
            beta=beta,
            min_tissue_fraction=min_tissue_fraction,
            on_failure=on_failure,
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d
