"""Clinical image readers: every reader returns a channel-first ``(C, H, W)`` array and a meta dict."""

from .errors import ImageReadError, MissingDecoderError
from .raster import RASTER_SUFFIXES, read_raster
from .reader import read_image

__all__ = ["RASTER_SUFFIXES", "ImageReadError", "MissingDecoderError", "read_image", "read_raster"]
