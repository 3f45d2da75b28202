"""A synthetic, labelled, B-mode-breast-ultrasound-like data set: the project's embedded default.

The default bundle must run on a fresh machine with no data, learn something measurable in a couple
of minutes on a laptop CPU, and leave room for semi-supervised methods to help. This module renders
such a data set: 8-bit greyscale images of a breast lesion, a binary lesion mask aligned with each
image, a benign/malignant label and a patient id, written as a :class:`~monai_ssl_ext.data.manifest.Manifest`.

Image model (one image, all geometry in fractions of the image size so that any size looks alike)
--------------------------------------------------------------------------------------------------
The renderer builds a *reflectivity* map (mean backscattered power per pixel), turns it into a speckled
echo envelope and log-compresses it, the order in which a scanner forms a B-mode image:

1. **Tissue layers** (top to bottom): coupling gel (anechoic), a bright skin line over the dermis,
   hypoechoic subcutaneous fat crossed by thin curved Cooper's ligaments (a level set of a smooth random
   field), brighter fibroglandular tissue with horizontal streaks and interspersed fat lobules, then
   retromammary fat and, sometimes, the striated pectoralis muscle. Layer boundaries undulate (a few
   random sinusoids). Streaks are Gaussian noise smoothed far more laterally than axially, which is how
   tissue interfaces parallel to the skin appear.
2. **Lesion**: an ellipse whose radius is modulated by angle, ``r(theta)``, which gives the mask. Each
   feature below is drawn per lesion from *overlapping* class-conditional distributions, following
   the BI-RADS ultrasound lexicon (ACR BI-RADS Atlas, 5th ed., 2013) and Stavros et al., *Radiology*
   196:123-134, 1995:

   ==========================  ====================================  =======================================
   feature                     benign (more often)                   malignant (more often)
   ==========================  ====================================  =======================================
   margin (shape of r(theta))  circumscribed oval, gently lobulated  irregular, microlobulated, spiculated
   orientation                 parallel, wider than tall             not parallel, taller than wide
   interior echo               homogeneous hypoechoic, some cysts    heterogeneous, microcalcifications
   boundary                    sharp, thin echogenic capsule         indistinct, echogenic halo
   posterior features          enhancement                           shadowing
   ==========================  ====================================  =======================================

   Interior echo is a low reflectivity times a smooth log-normal texture whose spread is the
   heterogeneity. Posterior features come from the beam's path through the lesion: reflectivity at
   and below the lesion is scaled by ``exp(k * L)``, with ``L`` the path length travelled inside the
   lesion, so a shadow or enhancement is strongest under the lesion's thickest part, as on a scanner.
   No feature alone decides the class (aspect, solidity or posterior brightness alone is 68-74 %
   accurate); four hand-crafted features with a nearest-centroid rule reach about 82-85 % on held-out
   patients, so a classifier has something to learn and semi-supervised methods room to help. The
   malignant prevalence is 0.4 (BUSI, a public breast ultrasound set, has about 0.33 among lesions).
   About 20 % of benign lesions are anechoic cysts with strong posterior enhancement.
3. **Speckle**: circular complex Gaussian scatterers weighted by ``sqrt(reflectivity)`` and blurred by
   an anisotropic point-spread function (wider laterally than axially); the envelope magnitude is then
   Rayleigh distributed with spatially correlated grains (Burckhardt, *IEEE Trans. Sonics Ultrason.*
   25:1-6, 1978), and bright/dark tissue keeps its speckle statistics. Breast scanners compound a few
   beam-steering angles and smooth after log compression; three independent speckle realisations are
   averaged in intensity and the log image is lightly blurred, which gives the softer grain of
   clinical breast images.
4. **Attenuation and time-gain compensation**: ``exp(-alpha * depth)`` partly undone by a TGC curve
   with random slider offsets, so images differ in depth-dependent brightness; then a random overall
   gain and dynamic range for the log compression (28-38 dB of display range, a gamma of 1.2-1.6) and
   8-bit quantisation.

Textbook lesions and lesion size
--------------------------------
``overlap`` (default 1) is the share of lesions whose features keep these overlapping draws; each of the
others is then moved to its class's side of every feature (malignant: taller than wide, indistinct,
heterogeneous, shadowing; benign: oval and parallel, sharp, homogeneous, enhancing, without spicules, halo
or calcifications). ``lesion_scale`` (default 1) multiplies the lesion's width. ``monai-ssl demo`` uses 0.5
and 1.6, so that at 64 px the classes can be learnt from the images and more labels clearly help: the room
unlabeled images can fill (docs/benchmarks.md). The defaults draw nothing extra and leave every image as it is.

Patients and views
------------------
About a quarter of the patients have two images: two views of the same lesion and breast (same
reflectivity map) with the probe slid sideways by up to 10 % of the width, a new speckle realisation
and new gain/TGC settings. The
``group`` key keeps them on one side of every split, which is what makes group-aware splitting matter.

Determinism
-----------
Every random choice comes from :func:`numpy.random.default_rng` seeded with
:func:`~monai_ssl_ext.utils.seeding.derive_seed` of ``(seed, stream, patient[, view])``: an image depends
only on the seed and its own position, never on the generation order, and the same arguments give
byte-identical images (and, with the same Pillow, byte-identical PNG files).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from scipy import ndimage

from monai_ssl_ext.data.label_budget import stratified_group_split
from monai_ssl_ext.data.manifest import Manifest, ManifestError
from monai_ssl_ext.keys import DataKeys
from monai_ssl_ext.utils.atomic import atomic_path
from monai_ssl_ext.utils.seeding import derive_seed

__all__ = [
    "BUILDER_NAME",
    "CLASSES",
    "MANIFEST_NAME",
    "SPLIT_FRACTIONS",
    "SYNTHETIC_VERSION",
    "SyntheticCase",
    "ensure_synthetic_dataset",
    "generate_synthetic_ultrasound",
    "iter_synthetic_ultrasound",
    "render_synthetic_case",
    "write_synthetic_dataset",
]

BUILDER_NAME = "synthetic_ultrasound"
# bump when the renderer changes the pixels for given arguments, so that cached data sets are rebuilt
SYNTHETIC_VERSION = 2
CLASSES = ("benign", "malignant")
MANIFEST_NAME = "datalist.json"
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)

MALIGNANT_PREVALENCE = 0.4
TWO_VIEW_FRACTION = 0.25
_MIN_IMAGE_SIZE = 32
_MAX_LESION_SCALE = 2.5  # beyond it nearly every lesion is shrunk back to the largest that fits
_COMPOUND_ANGLES = 3

# independent random streams for the same user seed
_LAYOUT_STREAM = 0x5E7A1
_CASE_STREAM = 0x5E7A2

_DESCRIPTION = (
    "Synthetic B-mode breast ultrasound, generated by monai_ssl_ext.data.synthetic (no real patient data). "
    "One lesion per image with a binary mask. Benign lesions are more often oval and circumscribed, wider than "
    "tall, homogeneously hypoechoic (some anechoic cysts), with a sharp margin or thin capsule and posterior "
    "enhancement; malignant lesions are more often irregular, microlobulated or spiculated, taller than wide, "
    "heterogeneous with microcalcifications, with an indistinct margin or echogenic halo and posterior shadowing. "
    "The class-conditional distributions overlap, so no single feature decides the class. About a quarter of the "
    "patients have two views of the same lesion; 'group' keeps them in one split."
)
_CASE_FILE = re.compile(r"^case_\d+(_mask)?\.png$")

logger = logging.getLogger(__name__)


class SyntheticCase(NamedTuple):
    """One rendered image.

    Attributes:
        image: ``(H, W)`` uint8 B-mode image, rows top (skin) to bottom (deep).
        mask: ``(H, W)`` uint8 lesion mask in ``{0, 255}``, aligned with ``image``.
        label: class index into :data:`CLASSES` (0 benign, 1 malignant).
        group: patient id (``"patient_0007"``); the views of one patient share it.
    """

    image: np.ndarray
    mask: np.ndarray
    label: int
    group: str


# ---------------------------------------------------------------------------------------------- parameters
@dataclasses.dataclass(frozen=True)
class _Lesion:
    """Lesion parameters of one patient; lengths are fractions of the image size."""

    half_width: float
    aspect: float  # height / width: < 1 is "wider than tall" (parallel to the skin)
    tilt: float  # radians
    harmonics: tuple[tuple[int, float, float], ...]  # (order, amplitude, phase) of r(theta)
    spicules: tuple[tuple[float, float, float], ...]  # (angle, length, half-width in radians)
    echo_level: float  # interior reflectivity relative to fibroglandular tissue
    heterogeneity: float  # std of the log of the interior texture
    edge_blur: float  # pixels at 128 px: sharp (< 1) or indistinct margin
    capsule: float  # strength of a thin bright rim on the margin
    halo: float  # strength of a thick bright rim outside the margin (desmoplastic reaction)
    calcifications: int
    posterior: float  # reflectivity factor beneath the lesion's thickest part: < 1 shadow, > 1 enhancement


def _random_harmonics(rng: np.random.Generator, orders: range, scale: float) -> list[tuple[int, float, float]]:
    """``(order, amplitude, phase)`` terms of ``r(theta)`` with Rayleigh amplitudes of mean about ``scale``."""
    amps = rng.rayleigh(scale * 0.8, len(orders))
    phases = rng.uniform(0, 2 * np.pi, len(orders))
    return [(k, float(a), float(p)) for k, a, p in zip(orders, amps, phases, strict=True)]


def _draw_lesion(rng: np.random.Generator, label: int, overlap: float = 1.0, lesion_scale: float = 1.0) -> _Lesion:
    """Draw lesion features from the overlapping class-conditional distributions of the module docstring.

    With ``overlap < 1`` a share ``1 - overlap`` of the lesions is then made a textbook case of its class
    (:func:`_textbook`); ``lesion_scale`` multiplies the half-width. The defaults draw nothing extra, so they
    leave every image as it was.
    """
    malignant = label == 1
    cyst = not malignant and rng.random() < 0.2
    if malignant:
        aspect = float(np.clip(rng.normal(0.9, 0.25), 0.45, 1.6))
        tilt = float(rng.normal(0.0, np.deg2rad(25)))
        margin = rng.choice(["circumscribed", "microlobulated", "irregular", "spiculated"], p=[0.3, 0.25, 0.2, 0.25])
    else:
        aspect = float(np.clip(rng.normal(0.7, 0.18), 0.35, 1.3))
        tilt = float(rng.normal(0.0, np.deg2rad(12)))
        margins, p = ["circumscribed", "lobulated", "microlobulated", "irregular"], [0.6, 0.25, 0.05, 0.1]
        margin = "circumscribed" if cyst else rng.choice(margins, p=p)

    # every contour gets a little low-order wobble; the margin type adds its characteristic band of
    # harmonics with random amplitudes and phases, so no two lobulated or spiculated contours repeat
    harmonics = _random_harmonics(rng, range(2, 4), 0.025)
    spicules: list[tuple[float, float, float]] = []
    if margin == "lobulated":
        harmonics += _random_harmonics(rng, range(3, 6), 0.06)
    elif margin == "microlobulated":
        harmonics += _random_harmonics(rng, range(8, 17), 0.03)
    elif margin == "irregular":
        harmonics += _random_harmonics(rng, range(3, 9), 0.07)
    elif margin == "spiculated":
        harmonics += _random_harmonics(rng, range(3, 7), 0.04)
        n = int(rng.integers(3, 10))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        spicules = [(float(a), float(rng.uniform(0.2, 0.9)), float(rng.uniform(0.08, 0.2))) for a in angles]

    if cyst:
        echo, het = float(rng.uniform(0.005, 0.03)), float(rng.uniform(0.0, 0.1))
    elif malignant:
        echo, het = float(rng.uniform(0.06, 0.3)), float(rng.uniform(0.25, 0.8))
    else:
        echo, het = float(rng.uniform(0.05, 0.25)), float(rng.uniform(0.05, 0.35))

    indistinct = rng.random() < (0.55 if malignant else 0.1)
    edge_blur = float(rng.uniform(1.3, 2.5) if indistinct else rng.uniform(0.4, 1.0))
    capsule = float(rng.uniform(0.6, 1.5)) if rng.random() < (0.05 if malignant else 0.35) else 0.0
    halo = float(rng.uniform(0.5, 1.2)) if rng.random() < (0.35 if malignant else 0.05) else 0.0
    calcifications = int(rng.integers(2, 8)) if rng.random() < (0.3 if malignant else 0.04) else 0

    if cyst:
        posterior = float(rng.uniform(4.0, 8.0))  # fluid barely attenuates: strong enhancement
    else:
        kind = rng.choice(["shadow", "none", "enhancement"], p=[0.45, 0.35, 0.2] if malignant else [0.12, 0.43, 0.45])
        low, high = {"shadow": (0.06, 0.35), "none": (0.8, 1.25), "enhancement": (2.0, 5.0)}[str(kind)]
        posterior = float(rng.uniform(low, high))

    lesion = _Lesion(
        half_width=float(rng.uniform(0.08, 0.19)) * lesion_scale,
        aspect=aspect,
        tilt=tilt,
        harmonics=tuple(harmonics),
        spicules=tuple(spicules),
        echo_level=echo,
        heterogeneity=het,
        edge_blur=edge_blur,
        capsule=capsule,
        halo=halo,
        calcifications=calcifications,
        posterior=posterior,
    )
    if overlap < 1.0 and rng.random() < 1.0 - overlap:
        lesion = _textbook(lesion, malignant)
    return lesion


def _textbook(lesion: _Lesion, malignant: bool) -> _Lesion:
    """The lesion moved to the characteristic side of each feature of its class (the table of the module
    docstring), its other draws kept: a malignant one taller than wide, indistinct, heterogeneous and
    shadowing; a benign one oval and parallel, sharp, homogeneous and enhancing, without spicules, halo or
    calcifications."""
    if malignant:
        return dataclasses.replace(
            lesion,
            aspect=max(lesion.aspect, 1.1),
            edge_blur=max(lesion.edge_blur, 1.5),
            heterogeneity=max(lesion.heterogeneity, 0.5),
            posterior=min(lesion.posterior, 0.3),
        )
    return dataclasses.replace(
        lesion,
        aspect=min(lesion.aspect, 0.65),
        edge_blur=min(lesion.edge_blur, 0.8),
        heterogeneity=min(lesion.heterogeneity, 0.2),
        posterior=max(lesion.posterior, 2.0),
        spicules=(),
        halo=0.0,
        calcifications=0,
    )


# ---------------------------------------------------------------------------------------------- rendering
def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: tuple[float, float]) -> np.ndarray:
    """Gaussian noise smoothed by ``sigma`` (rows, cols), rescaled to zero mean and unit standard deviation."""
    # three sigmas of kernel are indistinguishable from four here and a quarter cheaper
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect", truncate=3.0)
    return (field - field.mean()) / (field.std() + 1e-12)


def _undulation(rng: np.random.Generator, x: np.ndarray, amplitude: float) -> np.ndarray:
    """A smooth random curve over normalised lateral position ``x``: the sum of three sinusoids."""
    out = np.zeros_like(x)
    for cycles in (0.5, 1.2, 2.5):
        out += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * (cycles * x + rng.uniform()))
    return amplitude * out / 2.0


def _step(depth: np.ndarray, boundary: np.ndarray, width: float) -> np.ndarray:
    """Smooth 0-to-1 transition below ``boundary`` (a logistic ramp of ``width``, all in normalised depth)."""
    return 0.5 * (1.0 + np.tanh((depth - boundary) / width))


def _tissue(rng: np.random.Generator, shape: tuple[int, int], size: int) -> np.ndarray:
    """Reflectivity of the breast wall without the lesion, ``shape`` float, gland about 1.

    Rows are depth (``shape[0] == size``); columns may extend beyond the image for the views' probe shifts.
    """
    scale = size / 128.0
    depth = (np.arange(shape[0], dtype=float)[:, None] + 0.5) / size
    x = (np.arange(shape[1], dtype=float)[None, :] + 0.5) / size

    skin = rng.uniform(0.035, 0.06) + _undulation(rng, x, 0.006)
    fat_bottom = rng.uniform(0.17, 0.3) + _undulation(rng, x, 0.04)
    gland_bottom = rng.uniform(0.74, 0.9) + _undulation(rng, x, 0.04)
    muscle_top = gland_bottom + rng.uniform(0.05, 0.1)

    # hypoechoic fat lobules separated by thin curved Cooper's ligaments: the ligaments are the level set
    # of a smooth random field, which draws a network of curvilinear lines
    fat = rng.uniform(0.08, 0.16) * np.exp(0.3 * _smooth_noise(rng, shape, (3 * scale, 3 * scale)))
    level = _smooth_noise(rng, shape, (5 * scale, 9 * scale))
    fat *= 1.0 + rng.uniform(3.0, 8.0) * np.exp(-0.5 * (level / 0.08) ** 2)
    # fibroglandular tissue: streaks parallel to the skin and interspersed dark fat lobules
    streaks = _smooth_noise(rng, shape, (0.8 * scale, 7 * scale))
    patches = _smooth_noise(rng, shape, (4 * scale, 7 * scale))
    gland = rng.uniform(0.8, 1.2) * np.exp(0.35 * streaks + 0.6 * patches)
    retro = 0.15 * np.exp(0.3 * _smooth_noise(rng, shape, (2 * scale, 6 * scale)))
    muscle = 0.45 * np.exp(0.6 * _smooth_noise(rng, shape, (0.6 * scale, 10 * scale)))

    w_skin = _step(depth, skin, 0.004)
    w_fat = _step(depth, skin + 0.025, 0.006)
    w_gland = _step(depth, fat_bottom, 0.02)
    w_retro = _step(depth, gland_bottom, 0.02)
    w_muscle = _step(depth, muscle_top, 0.01)

    reflect = 0.01 + w_skin * (1.6 - 0.01)  # gel above the skin, then dermis
    reflect = reflect * (1 - w_fat) + fat * w_fat
    reflect = reflect * (1 - w_gland) + gland * w_gland
    reflect = reflect * (1 - w_retro) + retro * w_retro
    reflect = reflect * (1 - w_muscle) + muscle * w_muscle
    # the skin line: a bright specular interface
    reflect += 4.0 * np.exp(-0.5 * ((depth - skin - 0.006) / 0.005) ** 2)
    return reflect


def _lesion_mask(
    lesion: _Lesion, shape: tuple[int, int], size: int, centre: tuple[float, float], extent: float
) -> np.ndarray:
    """Boolean ``shape`` mask of ``r(theta)`` around ``centre`` (row, col), lengths scaled by ``size`` pixels.

    Only the box of half-side ``extent`` pixels around the centre is evaluated: the contour lies inside it.
    """
    r0, r1 = max(0, int(centre[0] - extent) - 1), min(shape[0], int(centre[0] + extent) + 2)
    c0, c1 = max(0, int(centre[1] - extent) - 1), min(shape[1], int(centre[1] + extent) + 2)
    rows = np.arange(r0, r1, dtype=float)[:, None] - centre[0]
    cols = np.arange(c0, c1, dtype=float)[None, :] - centre[1]
    a = lesion.half_width * size
    b = a * lesion.aspect
    c, s = np.cos(lesion.tilt), np.sin(lesion.tilt)
    u = (cols * c + rows * s) / a
    v = (-cols * s + rows * c) / b
    mask = np.zeros(shape, dtype=bool)
    mask[r0:r1, c0:c1] = np.hypot(u, v) <= _contour(lesion, np.arctan2(v, u))
    return mask


def _contour(lesion: _Lesion, theta: np.ndarray) -> np.ndarray:
    """Radius multiplier ``r(theta)`` of the ellipse: harmonics plus tapering spicules."""
    radius = np.ones_like(theta)
    for order, amp, phase in lesion.harmonics:
        radius += amp * np.cos(order * theta + phase)
    for angle, length, half_width in lesion.spicules:
        delta = np.mod(theta - angle + np.pi, 2 * np.pi) - np.pi  # wrapped to [-pi, pi)
        radius += length * np.clip(1.0 - np.abs(delta) / half_width, 0.0, None) ** 1.5
    return radius


def _max_extent(lesion: _Lesion) -> float:
    """Largest distance of the contour from the centre, in fractions of the image size."""
    theta = np.linspace(-np.pi, np.pi, 721)
    r = _contour(lesion, theta)
    a = lesion.half_width
    return float(np.max(r * np.hypot(a * np.cos(theta), a * lesion.aspect * np.sin(theta))))


def _patient_scene(
    rng: np.random.Generator, label: int, size: int, pad: int, overlap: float, lesion_scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Reflectivity and lesion mask of one patient, ``(size, size + 2 * pad)``: ``pad`` columns each side
    leave room for the views' lateral probe shifts (the probe slides on the skin, so rows are not padded)."""
    scale = size / 128.0
    shape = (size, size + 2 * pad)
    lesion = _draw_lesion(rng, label, overlap, lesion_scale)
    # keep the lesion inside every view: views crop columns [off, off + size) with off in [0, 2 * pad]
    extent = _max_extent(lesion) * size + 1.0  # a pixel of margin: the contour is sampled, not solved
    room = min(0.42 * size, (size - 2 * pad) / 2 - 2)
    if extent > room:
        shrink = room / extent
        lesion = dataclasses.replace(lesion, half_width=lesion.half_width * shrink)
        extent = room
    # prefer the fibroglandular layer, with room beneath the lesion for its posterior features
    top, bottom = np.clip([0.3 * size + 0.5 * extent, 0.66 * size], extent + 1, size - extent - 1)
    cy = rng.uniform(top, bottom)
    # sonographers centre the lesion, roughly
    cx = np.clip(pad + size * rng.uniform(0.3, 0.7), 2 * pad + extent + 1, size - extent - 1)
    mask = _lesion_mask(lesion, shape, size, (cy, cx), extent)

    reflect = _tissue(rng, shape, size)
    texture = np.exp(lesion.heterogeneity * _smooth_noise(rng, shape, (1.5 * scale, 1.5 * scale)))
    inside = ndimage.gaussian_filter(mask.astype(float), lesion.edge_blur * scale)
    reflect = reflect * (1 - inside) + lesion.echo_level * texture * inside
    if lesion.capsule:
        sharp = ndimage.gaussian_filter(mask.astype(float), 0.7 * scale)
        reflect *= 1 + lesion.capsule * 4 * sharp * (1 - sharp)
    if lesion.halo:
        ring = np.clip(ndimage.gaussian_filter(mask.astype(float), 3 * scale) - mask, 0, None)
        reflect *= 1 + lesion.halo * 2 * ring
    if lesion.calcifications:
        # away from the margin where possible, so the bright dots read as intralesional
        core = ndimage.binary_erosion(mask, iterations=2)
        idx = np.flatnonzero(core if core.any() else mask)
        for i in rng.choice(idx, size=min(lesion.calcifications, idx.size), replace=False):
            reflect.flat[i] = rng.uniform(6.0, 15.0)
    # posterior features: relative attenuation integrated along the beam (rows) through the lesion
    path = np.cumsum(mask, axis=0, dtype=float)
    thickest = max(path[-1].max(), 1.0)
    factor = np.exp(np.log(lesion.posterior) * path / thickest)
    reflect *= ndimage.gaussian_filter1d(factor, 1.0 * scale, axis=1)
    return reflect, mask


def _scan(rng: np.random.Generator, reflect: np.ndarray, scale: float) -> np.ndarray:
    """Speckle, attenuation, TGC and log compression of a reflectivity map; returns uint8 of the same shape."""
    h, w = reflect.shape
    depth = (np.arange(h, dtype=float)[:, None] + 0.5) / h
    # attenuation partly compensated by a TGC curve with slider offsets (in nepers over the depth)
    alpha = rng.uniform(0.8, 2.0)
    knots = np.linspace(0, 1, 6)
    tgc = alpha * rng.uniform(0.65, 1.05) * depth + np.interp(depth, knots, rng.normal(0, 0.18, knots.size))
    power = reflect * np.exp(-2 * alpha * depth + 2 * tgc)

    # fully developed speckle: complex Gaussian scatterers through an anisotropic PSF, envelope detection;
    # breast scanners compound a few steering angles (independent speckle), which smooths the grain
    psf = (0.9 * scale, 1.8 * scale)  # (axial, lateral) sigma in pixels
    amp = np.sqrt(power)
    intensity = np.zeros_like(power)
    for _ in range(_COMPOUND_ANGLES):
        re = ndimage.gaussian_filter(amp * rng.standard_normal((h, w)), psf, truncate=3.0)
        im = ndimage.gaussian_filter(amp * rng.standard_normal((h, w)), psf, truncate=3.0)
        intensity += re**2 + im**2
    db = 10 * np.log10(intensity / _COMPOUND_ANGLES + 1e-24)
    # and smooth lightly after log compression (speckle reduction), which also removes isolated black pixels
    db = ndimage.gaussian_filter(db, 0.6 * scale)
    dynamic_range = rng.uniform(28.0, 38.0)
    # anchor on the brightest tissue so the image fills the grey scale like a scanner's display
    white = np.percentile(db, 99.5) + rng.uniform(0.0, 5.0)
    display = np.clip(1 + (db - white) / dynamic_range, 0.0, 1.0) ** rng.uniform(1.2, 1.6)
    return np.round(255 * display).astype(np.uint8)


def render_synthetic_case(
    seed: int, patient: int, view: int, image_size: int = 128, overlap: float = 1.0, lesion_scale: float = 1.0
) -> SyntheticCase:
    """Render view ``view`` of patient ``patient``; a pure function of its arguments.

    The patient's label, lesion and tissue come from ``derive_seed(seed, stream, patient)``; the speckle,
    gain and TGC of the view from ``derive_seed(seed, stream, patient, view + 1)``. View 0 is centred on
    the patient's scene, other views slide the probe sideways by up to 10 % of ``image_size``.

    Args:
        overlap: share of the lesions whose features keep the overlapping class-conditional draws; the
            others are textbook cases of their class (1: all overlapping, the realistic default; 0: all
            textbook).
        lesion_scale: factor on the lesion's size (a lesion is still shrunk to fit the image).

    Returns:
        :class:`SyntheticCase` with ``(image_size, image_size)`` image and mask.
    """
    _check_arguments(1, image_size, overlap, lesion_scale)
    scale = image_size / 128.0
    pad = max(2, round(0.05 * image_size))

    rng = np.random.default_rng(derive_seed(seed, _CASE_STREAM, patient))
    label = int(rng.random() < MALIGNANT_PREVALENCE)
    reflect, mask = _patient_scene(rng, label, image_size, pad, overlap, lesion_scale)

    view_rng = np.random.default_rng(derive_seed(seed, _CASE_STREAM, patient, view + 1))
    # the first view is centred on the lesion's scene, a second one slides the probe sideways
    c0 = pad if view == 0 else int(view_rng.integers(0, 2 * pad + 1))
    window = (slice(None), slice(c0, c0 + image_size))
    image = _scan(view_rng, reflect[window], scale)
    return SyntheticCase(image, mask[window].astype(np.uint8) * 255, label, f"patient_{patient:04d}")


def _check_arguments(num_images: int, image_size: int, overlap: float = 1.0, lesion_scale: float = 1.0) -> None:
    if int(num_images) < 1:
        raise ValueError(f"num_images must be positive, got {num_images}.")
    if int(image_size) < _MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {_MIN_IMAGE_SIZE} pixels, got {image_size}.")
    if not 0.0 <= float(overlap) <= 1.0:
        raise ValueError(f"overlap is a share of the lesions, between 0 and 1; got {overlap}.")
    if not 0.0 < float(lesion_scale) <= _MAX_LESION_SCALE:
        raise ValueError(f"lesion_scale must be in (0, {_MAX_LESION_SCALE}], got {lesion_scale}.")


def _layout(num_images: int, seed: int) -> list[tuple[int, int]]:
    """``(patient, view)`` of each image: patients in order, a fraction of them with two views."""
    rng = np.random.default_rng(derive_seed(seed, _LAYOUT_STREAM))
    out: list[tuple[int, int]] = []
    patient = 0
    while len(out) < num_images:
        views = 2 if rng.random() < TWO_VIEW_FRACTION else 1
        out.extend((patient, v) for v in range(min(views, num_images - len(out))))
        patient += 1
    return out


def iter_synthetic_ultrasound(
    num_images: int = 600, image_size: int = 128, seed: int = 0, overlap: float = 1.0, lesion_scale: float = 1.0
) -> Iterator[SyntheticCase]:
    """Yield ``num_images`` cases one at a time (constant memory); see :func:`generate_synthetic_ultrasound`."""
    _check_arguments(num_images, image_size, overlap, lesion_scale)
    for patient, view in _layout(num_images, seed):
        yield render_synthetic_case(seed, patient, view, image_size, overlap, lesion_scale)


def generate_synthetic_ultrasound(
    num_images: int = 600, image_size: int = 128, seed: int = 0, overlap: float = 1.0, lesion_scale: float = 1.0
) -> list[SyntheticCase]:
    """Render the synthetic data set in memory.

    Args:
        num_images: number of images; patients with two views share a ``group``.
        image_size: side of the square images in pixels (at least 32).
        seed: the same arguments give byte-identical images.
        overlap: share of lesions drawn from the overlapping class-conditional distributions, the rest
            textbook cases of their class (see :func:`render_synthetic_case`).
        lesion_scale: factor on the lesions' size.

    Returns:
        :class:`SyntheticCase` tuples ``(image, mask, label, group)``: ``image`` ``(H, W)`` uint8,
        ``mask`` ``(H, W)`` uint8 in ``{0, 255}``, ``label`` 0 benign / 1 malignant, ``group`` patient id.
    """
    return list(iter_synthetic_ultrasound(num_images, image_size, seed, overlap, lesion_scale))


# ---------------------------------------------------------------------------------------------- files
def _source(num_images: int, image_size: int, seed: int, overlap: float, lesion_scale: float) -> dict:
    return {
        "builder": BUILDER_NAME,
        "version": SYNTHETIC_VERSION,
        "num_images": int(num_images),
        "image_size": int(image_size),
        "seed": int(seed),
        "overlap": float(overlap),
        "lesion_scale": float(lesion_scale),
        "split_fractions": list(SPLIT_FRACTIONS),
    }


def _is_complete(manifest_path: Path, source: dict) -> bool:
    """Whether ``manifest_path`` is a synthetic manifest of exactly ``source`` with all its files present.

    Raises:
        ManifestError: the file exists but was not written by this builder (it is never overwritten).
    """
    if not manifest_path.is_file():
        return False
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{manifest_path}: exists but is not valid JSON; not overwriting it ({e}).") from e
    found = data.get("source", {}) if isinstance(data, dict) else {}
    if not isinstance(found, dict) or found.get("builder") != BUILDER_NAME:
        raise ManifestError(
            f"{manifest_path}: exists and was not written by the '{BUILDER_NAME}' builder; "
            "choose an empty folder for the synthetic data set."
        )
    if any(found.get(k) != v for k, v in source.items()):
        return False
    root = manifest_path.parent
    return all(
        (root / e[key]).is_file()
        for split in ("training", "validation", "test")
        for e in data.get(split, [])
        for key in (DataKeys.IMAGE, DataKeys.MASK)
    )


def _save_png(array: np.ndarray, path: Path) -> None:
    # atomic so that a concurrent reader (another rank, a second run) never decodes a half-written PNG
    with atomic_path(path) as tmp:
        Image.fromarray(array, mode="L").save(tmp, format="PNG")


def _generate(root: Path, num_images: int, image_size: int, seed: int, overlap: float, lesion_scale: float) -> Path:
    _check_arguments(num_images, image_size, overlap, lesion_scale)  # before anything on disk changes
    manifest_path = root / MANIFEST_NAME
    logger.info(
        "Generating %d synthetic ultrasound images of %d px (seed %d, overlap %g, lesion scale %g) in %s",
        num_images,
        image_size,
        seed,
        overlap,
        lesion_scale,
        root,
    )
    # invalidate first: an interrupted regeneration must not leave a manifest over mixed files
    manifest_path.unlink(missing_ok=True)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(num_images)))
    entries, written = [], set()
    cases = iter_synthetic_ultrasound(num_images, image_size, seed, overlap, lesion_scale)
    for i, case in enumerate(cases, start=1):
        image_rel, mask_rel = f"images/case_{i:0{width}d}.png", f"masks/case_{i:0{width}d}_mask.png"
        _save_png(case.image, root / image_rel)
        _save_png(case.mask, root / mask_rel)
        written.update((image_rel, mask_rel))
        entries.append(
            {DataKeys.IMAGE: image_rel, DataKeys.LABEL: case.label, DataKeys.MASK: mask_rel, DataKeys.GROUP: case.group}
        )
    # cases of an earlier, larger generation would otherwise linger beside the new manifest
    for sub in ("images", "masks"):
        for f in (root / sub).iterdir():
            if _CASE_FILE.match(f.name) and f"{sub}/{f.name}" not in written:
                f.unlink()
    training, validation, test = stratified_group_split(entries, SPLIT_FRACTIONS, seed=seed)
    manifest = Manifest(
        name=BUILDER_NAME,
        classes=list(CLASSES),
        training=training,
        validation=validation,
        test=test,
        description=_DESCRIPTION,
        source=_source(num_images, image_size, seed, overlap, lesion_scale),
    )
    return manifest.save(manifest_path)


def ensure_synthetic_dataset(
    root: str | os.PathLike,
    num_images: int = 600,
    image_size: int = 128,
    seed: int = 0,
    overlap: float = 1.0,
    lesion_scale: float = 1.0,
) -> Path:
    """Generate the synthetic data set under ``root`` unless an identical one is already there.

    Layout: ``root/images/case_0001.png``, ``root/masks/case_0001_mask.png`` (8-bit greyscale PNG, mask
    0/255) and ``root/datalist.json``, a :class:`~monai_ssl_ext.data.manifest.Manifest` with stratified,
    patient-disjoint ``training``/``validation``/``test`` splits (70/10/20 %). The manifest is written last
    and atomically, so a half-generated folder is never taken for a complete one; its ``source`` records
    the arguments, and a call with other arguments (or with files missing) regenerates. ``overlap`` and
    ``lesion_scale``: see :func:`render_synthetic_case`.

    Returns:
        The path of ``datalist.json``.

    Raises:
        ManifestError: ``root/datalist.json`` exists but is not a synthetic manifest (never overwritten).
    """
    root = Path(root).expanduser()
    manifest_path = root / MANIFEST_NAME
    if _is_complete(manifest_path, _source(num_images, image_size, seed, overlap, lesion_scale)):
        return manifest_path
    return _generate(root, num_images, image_size, seed, overlap, lesion_scale)


def write_synthetic_dataset(
    output: str,
    num_images: int = 600,
    image_size: int = 128,
    seed: int = 0,
    force: bool = False,
    overlap: float = 1.0,
    lesion_scale: float = 1.0,
) -> str:
    """Command-line entry: write the synthetic data set into the folder ``output``; returns the manifest path.

    Args:
        output: folder to write ``images/``, ``masks/`` and ``datalist.json`` into.
        num_images: number of images.
        image_size: side of the square images in pixels.
        seed: generation and split seed.
        force: regenerate even if an identical data set is already there.
        overlap: share of lesions with overlapping class features, the rest textbook cases (1: realistic).
        lesion_scale: factor on the lesions' size.
    """
    root = Path(output).expanduser()
    if force:
        # still refuses to overwrite a manifest of another data set
        _is_complete(root / MANIFEST_NAME, _source(num_images, image_size, seed, overlap, lesion_scale))
        return str(_generate(root, num_images, image_size, seed, overlap, lesion_scale))
    return str(ensure_synthetic_dataset(root, num_images, image_size, seed, overlap, lesion_scale))
