"""Transforms: loading, modality profiles and the weak/strong views of semi-supervised training."""

from .intensity import RandSpeckleNoise, RandSpeckleNoised
from .loading import MaskMismatchError, ReadImage, ReadImaged, ReadMask, ReadMaskd, to_channels
from .profiles import PROFILES, ModalityProfile, UltrasoundProfile, get_profile, register_profile

__all__ = [
    "PROFILES",
    "MaskMismatchError",
    "ModalityProfile",
    "RandSpeckleNoise",
    "RandSpeckleNoised",
    "ReadImage",
    "ReadImaged",
    "ReadMask",
    "ReadMaskd",
    "UltrasoundProfile",
    "get_profile",
    "register_profile",
    "to_channels",
]
