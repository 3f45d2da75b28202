"""Transforms: loading, colour and stain transforms, modality profiles and the weak/strong views of training
(with the RandAugment-style geometric strong view and :func:`warp_to_strong` for its pixel targets)."""

from .colour import (
    RandColorJitter,
    RandColorJitterd,
    ShadesOfGrey,
    ShadesOfGreyd,
    hsv_to_rgb,
    rgb_to_hsv,
    shades_of_grey,
)
from .intensity import RandSpeckleNoise, RandSpeckleNoised
from .loading import MaskMismatchError, ReadImage, ReadImaged, ReadMask, ReadMaskd, to_channels
from .profiles import (
    PROFILES,
    STRONG_VIEWS,
    DermoscopyProfile,
    HistologyProfile,
    ModalityProfile,
    UltrasoundProfile,
    get_profile,
    register_profile,
)
from .randaugment import ALL_OPS, COLOUR_OPS, GEOMETRIC_OPS, GREY_OPS, OP_MAX, RandAugmentd, warp_to_strong
from .reseed import InPlaceReseed
from .stain import (
    MACENKO_REFERENCE_MAX_CONCENTRATIONS,
    MACENKO_REFERENCE_STAIN_MATRIX,
    RUIFROK_HED_MATRIX,
    MacenkoNormalize,
    MacenkoNormalized,
    RandHEDJitter,
    RandHEDJitterd,
    StainEstimationError,
    hed_to_rgb,
    macenko_stains,
    rgb_to_hed,
)

__all__ = [
    "ALL_OPS",
    "COLOUR_OPS",
    "GEOMETRIC_OPS",
    "GREY_OPS",
    "MACENKO_REFERENCE_MAX_CONCENTRATIONS",
    "MACENKO_REFERENCE_STAIN_MATRIX",
    "OP_MAX",
    "PROFILES",
    "RUIFROK_HED_MATRIX",
    "STRONG_VIEWS",
    "DermoscopyProfile",
    "HistologyProfile",
    "InPlaceReseed",
    "MacenkoNormalize",
    "MacenkoNormalized",
    "MaskMismatchError",
    "ModalityProfile",
    "RandAugmentd",
    "RandColorJitter",
    "RandColorJitterd",
    "RandHEDJitter",
    "RandHEDJitterd",
    "RandSpeckleNoise",
    "RandSpeckleNoised",
    "ReadImage",
    "ReadImaged",
    "ReadMask",
    "ReadMaskd",
    "ShadesOfGrey",
    "ShadesOfGreyd",
    "StainEstimationError",
    "UltrasoundProfile",
    "get_profile",
    "hed_to_rgb",
    "hsv_to_rgb",
    "macenko_stains",
    "register_profile",
    "rgb_to_hed",
    "rgb_to_hsv",
    "shades_of_grey",
    "to_channels",
    "warp_to_strong",
]
