"""Errors raised by the clinical readers: each names the file and the cause in one line."""

from __future__ import annotations

import os

__all__ = ["ImageReadError", "MissingDecoderError"]


class ImageReadError(ValueError):
    """A file that cannot be turned into a correct image. ``str(err)`` is ``"<path>: <cause>"``."""

    def __init__(self, path: str | os.PathLike, cause: str) -> None:
        self.path = str(path)
        # library messages may span lines; ours are one line, which logs and tables rely on
        self.cause = " ".join(str(cause).split())
        super().__init__(f"{self.path}: {self.cause}")


class MissingDecoderError(ImageReadError):
    """The file is valid but its compression needs a decoder package that is not installed."""

    def __init__(self, path: str | os.PathLike, what: str, install: str) -> None:
        self.install = install
        super().__init__(path, f"{what} needs a decoder that is not installed; install it with: {install}")
